//! Hot-plug long haul in the manner of the seed's own testing: add and remove a device as
//! fast as the host allows, for hundreds of cycles, through the relay. Nothing fails, every
//! device reaches the guest and leaves it, and no table in the relay grows with the cycles.

use guest_linux::{GuestConfig, KernelModel};
use host_sim::{BusConfig, FunctionSpec, HostAction};
use petri::outcome::Outcome;
use petri::sched::Chooser;
use petri::vm::{RunLimits, Vm, VmSpec};
use std::time::Duration;
use vpci_relay::RelayConfig;

fn spec(model: KernelModel) -> VmSpec {
    let mut guest = GuestConfig::new(model);
    guest.trace = false;
    VmSpec {
        buses: vec![BusConfig {
            functions: vec![FunctionSpec::nic(1)],
            ..BusConfig::default()
        }],
        guest,
        relay: Some(RelayConfig::default()),
        limits: RunLimits {
            max_steps: u64::MAX,
            max_time: Duration::from_secs(1_000_000),
        },
        record: false,
        chaos: None,
        stall: None,
        checks: Vec::new(),
        safeguards: vpci_relay::Safeguards::ALL_ON,
    }
}

fn count(tree: &inspect::Node, path: &str) -> usize {
    match tree.query(path) {
        Ok(inspect::Node::Dir(entries)) => entries.len(),
        _ => 0,
    }
}

/// 300 add/eject cycles of slot 2 on an unfixed guest through the relay, with the guest's
/// scheduling drawn from a seed: every cycle ends with the guest holding exactly what the
/// host has, and the relay's tables do not grow with the cycles: one function entry per slot
/// the host used (slot 2's is the memory of its last ejected function, which keeps a stale
/// listing of it from announcing it again), no live request.
#[test]
fn hot_plug_long_haul_through_the_relay() {
    let mut vm = Vm::new(&spec(KernelModel::Linux62), Chooser::seeded(7)).unwrap();
    assert_eq!(vm.settle(), None);
    assert!(vm.guest_installed(0));
    for cycle in 0..300 {
        vm.host_act(
            0,
            HostAction::HotAdd(FunctionSpec::nic(2).with_serial(cycle)),
        )
        .unwrap();
        assert_eq!(vm.settle(), None, "cycle {cycle}");
        assert_eq!(vm.failure(), None, "cycle {cycle}");
        let present = |vm: &Vm| {
            vm.guest_devices(0)
                .iter()
                .filter(|d| d.child_present)
                .map(|d| (d.slot.raw(), d.serial))
                .collect::<Vec<_>>()
        };
        assert_eq!(present(&vm), [(1, 1), (2, cycle)], "cycle {cycle}");
        assert_eq!(vm.host_visible_outcome(), Outcome::Ok, "cycle {cycle}");
        vm.host_act(0, HostAction::Eject { slot: 2 }).unwrap();
        assert_eq!(vm.settle(), None, "cycle {cycle}");
        assert_eq!(vm.failure(), None, "cycle {cycle}");
        assert_eq!(present(&vm), [(1, 1)], "cycle {cycle}");
        assert_eq!(vm.host_visible_outcome(), Outcome::Ok, "cycle {cycle}");
        assert!(
            vm.now() < Duration::from_secs(u64::from(cycle + 1)),
            "no waits: {:?}",
            vm.now()
        );
        vm.forget_choices();
        let tree = vm.relay_inspect(0).expect("relay running");
        assert_eq!(count(&tree, "functions"), 2, "cycle {cycle}");
        assert_eq!(
            tree.query("functions/02.0/guest").map(|n| n.to_json()),
            Ok(serde_json::json!("Hidden")),
            "cycle {cycle}"
        );
        assert_eq!(count(&tree, "requests/live"), 0, "cycle {cycle}");
    }
}

/// The long haul at scale (the `catalogue` flowey pipeline): 100,000 cycles on each model,
/// in a release build.
#[test]
#[ignore = "minutes in a debug build; run by `cargo xflowey catalogue`"]
fn hot_plug_long_haul_100k() {
    for model in [KernelModel::Linux62, KernelModel::Linux63] {
        let mut vm = Vm::new(&spec(model), Chooser::seeded(11)).unwrap();
        assert_eq!(vm.settle(), None);
        for cycle in 0..100_000u32 {
            vm.host_act(
                0,
                HostAction::HotAdd(FunctionSpec::nic(2).with_serial(cycle)),
            )
            .unwrap();
            assert_eq!(vm.settle(), None, "{model:?} cycle {cycle}");
            vm.host_act(0, HostAction::Eject { slot: 2 }).unwrap();
            assert_eq!(vm.settle(), None, "{model:?} cycle {cycle}");
            assert_eq!(vm.failure(), None, "{model:?} cycle {cycle}");
            vm.forget_choices();
        }
        let tree = vm.relay_inspect(0).expect("relay running");
        assert_eq!(count(&tree, "functions"), 2, "one entry per slot used");
        assert_eq!(count(&tree, "requests/live"), 0);
        assert_eq!(
            vm.guest_devices(0)
                .iter()
                .filter(|d| d.child_present)
                .count(),
            1
        );
    }
}
