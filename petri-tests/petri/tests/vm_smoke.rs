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
        chaos: None,
        stall: None,
        checks: Vec::new(),
        safeguards: vpci_relay::Safeguards::ALL_ON,
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

/// Teeth in a whole VM: with one relay safeguard switched off, the unfixed guest fails again
/// through the relay on the catalogue entry that safeguard covers.
#[test]
fn each_relay_safeguard_has_teeth_in_a_vm() {
    use petri::scenario::{GuestKind, catalogue};
    use vpci_relay::Safeguards;
    type SwitchOff = fn(&mut Safeguards);
    let cases: [(&str, SwitchOff); 5] = [
        ("c2", |s| s.hold_eject_until_settled = false),
        ("c2-failed", |s| s.local_answers = false),
        ("c4", |s| s.one_change_at_a_time = false),
        ("c5", |s| s.rescind_at_safe_point = false),
        ("c7", |s| s.removal_shield = false),
    ];
    for (name, switch_off) in cases {
        let scenario = catalogue().into_iter().find(|s| s.name == name).unwrap();
        let mut failures = [0u64; 2];
        for (i, off) in [false, true].into_iter().enumerate() {
            let mut spec = scenario.vm_spec(GuestKind::Linux62, true, false);
            if off {
                switch_off(&mut spec.safeguards);
            }
            for seed in 0..60 {
                let r = Vm::new(&spec, Chooser::seeded(seed)).unwrap().run();
                failures[i] += u64::from(r.outcome.failed());
            }
        }
        assert_eq!(failures[0], 0, "{name}: all safeguards on");
        assert!(
            failures[1] > 0,
            "{name}: the safeguard off must let the race through"
        );
    }
}
