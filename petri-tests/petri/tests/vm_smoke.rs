//! A VM with one function at boot probes to the end on both guest models, directly and
//! through the relay.

use guest_linux::{GuestConfig, KernelModel};
use host_sim::{BusConfig, FunctionSpec};
use petri::outcome::Outcome;
use petri::sched::Chooser;
use petri::vm::{RunLimits, Vm, VmSpec};
use vpci_relay::RelayConfig;

fn spec(model: KernelModel, relay: bool) -> VmSpec {
    VmSpec {
        buses: vec![BusConfig {
            functions: vec![FunctionSpec::nic(1)],
            ..BusConfig::default()
        }],
        guest: GuestConfig::new(model),
        relay: relay.then(RelayConfig::default),
        limits: RunLimits::default(),
        record: true,
    }
}

/// A quiet host: every model boots and binds its driver, direct or through the relay.
#[test]
fn quiet_boot_is_ok() {
    for model in [KernelModel::Linux62, KernelModel::Linux63] {
        for relay in [false, true] {
            for seed in 0..20 {
                let vm = Vm::new(&spec(model, relay), Chooser::seeded(seed)).unwrap();
                let r = vm.run();
                if r.outcome != Outcome::Ok {
                    for l in r.trace.iter().flat_map(|t| &t.lines) {
                        eprintln!("{l}");
                    }
                    for l in &r.guest_trace {
                        eprintln!("{l}");
                    }
                }
                assert_eq!(
                    r.outcome,
                    Outcome::Ok,
                    "{model:?} relay={relay} seed={seed}"
                );
            }
        }
    }
}
