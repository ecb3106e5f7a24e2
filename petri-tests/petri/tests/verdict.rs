//! A run's verdict looks both ways: a function the guest holds that the host no longer has (or
//! holds with an old identity) is a `ghost_device`, a function the host has that the probed
//! guest lacks is a `lost_device`, and a conformant host's bus the relay dropped is a
//! `lost_bus`.

use guest_linux::{GuestConfig, KernelModel};
use host_sim::{BusConfig, FunctionSpec, HostAction, HostilePacket};
use petri::outcome::{Identity, Outcome};
use petri::sched::Chooser;
use petri::vm::{RunLimits, Vm, VmSpec};
use vpci_relay::RelayConfig;

fn spec(model: KernelModel, functions: &[u32], relay: Option<RelayConfig>) -> VmSpec {
    VmSpec {
        buses: vec![BusConfig {
            functions: functions.iter().map(|&s| FunctionSpec::nic(s)).collect(),
            ..BusConfig::default()
        }],
        guest: GuestConfig::new(model),
        relay,
        limits: RunLimits::default(),
        record: false,
        chaos: None,
        stall: None,
        checks: Vec::new(),
        safeguards: vpci_relay::Safeguards::ALL_ON,
    }
}

/// A direct VM settled after its probe: the guest holds slot 1.
fn settled(model: KernelModel) -> Vm {
    let mut vm = Vm::new(&spec(model, &[1], None), Chooser::seeded(0)).unwrap();
    assert_eq!(vm.settle(), None);
    assert_eq!(vm.failure(), None);
    assert!(
        vm.guest_devices(0)
            .iter()
            .any(|d| d.pci_dev && d.child_present)
    );
    assert_eq!(vm.host_visible_outcome(), Outcome::Ok);
    vm
}

/// The host drops the function and the guest has not seen the relations yet (they are in
/// flight): the guest holds a function the host no longer has.
#[test]
fn a_function_the_host_dropped_is_a_ghost() {
    for model in [KernelModel::Linux62, KernelModel::Linux63] {
        let mut vm = settled(model);
        vm.host_act(0, HostAction::SurpriseRemove { slot: 1 })
            .unwrap();
        let o = vm.host_visible_outcome();
        assert_eq!(o.kind(), "ghost_device", "{model:?}: {o}");
        assert!(
            matches!(o, Outcome::GhostDevice { listed: None, .. }),
            "{o:?}"
        );
    }
}

/// The host lists a new identity in the slot (the same ids, a new serial number): the guest
/// that holds the old one holds a ghost, although the slot is the same.
#[test]
fn an_old_identity_in_a_relisted_slot_is_a_ghost() {
    let mut vm = settled(KernelModel::Linux63);
    vm.host_act(0, HostAction::Reserial { slot: 1, serial: 7 })
        .unwrap();
    let o = vm.host_visible_outcome();
    let Outcome::GhostDevice { held, listed, .. } = o else {
        panic!("{o:?}");
    };
    assert_eq!(held.serial, 1);
    assert_eq!(listed, Some(Identity { serial: 7, ..held }));
}

/// A relay that loses its host link while the host did nothing wrong (here: the link is cut
/// on the relay's side) and so closes the guest's bus leaves the guest without it: a failure,
/// `lost_bus`, not a pass because "the channel ended".
#[test]
fn a_conformant_hosts_bus_dropped_by_the_relay_is_lost() {
    for model in [KernelModel::Linux62, KernelModel::Linux63] {
        let spec = spec(model, &[1, 2], Some(RelayConfig::default()));
        let mut vm = Vm::new(&spec, Chooser::seeded(0)).unwrap();
        assert_eq!(vm.settle(), None);
        assert_eq!(vm.host_visible_outcome(), Outcome::Ok);
        assert!(vm.cut_host_link(0));
        assert_eq!(vm.settle(), None);
        assert!(
            !vm.guest_installed(0),
            "{model:?}: the relay closed the bus"
        );
        assert_eq!(
            vm.host_visible_outcome(),
            Outcome::LostBus { bus: 0 },
            "{model:?}"
        );
    }
}

/// A host that broke the protocol may lose its bus: that is no failure.
#[test]
fn a_hostile_hosts_bus_may_be_dropped() {
    for model in [KernelModel::Linux62, KernelModel::Linux63] {
        let spec = spec(model, &[1], Some(RelayConfig::default()));
        let mut vm = Vm::new(&spec, Chooser::seeded(0)).unwrap();
        assert_eq!(vm.settle(), None);
        vm.host_act(
            0,
            HostAction::Hostile {
                packet: HostilePacket::CompletionForUnknownTransaction {
                    transaction_id: 0xdead,
                    status: 0,
                },
            },
        )
        .unwrap();
        assert_eq!(vm.settle(), None);
        assert!(
            !vm.guest_installed(0),
            "{model:?}: the relay dropped the bus"
        );
        assert_eq!(vm.host_visible_outcome(), Outcome::Ok, "{model:?}");
    }
}

/// The protocol's decided EJECT order: an EJECT names the function the host listed last in
/// its slot. The host ejects slot 1, lists a new identity there while that eject is
/// unanswered, and ejects the slot again: at the end it has nothing in slot 1, and neither
/// may the guest. (A relay that reads the second EJECT as a repeat of the first answers both
/// once the guest lets go of the old function, then shows the guest the new one the host has
/// removed: `ghost_device` on every schedule, models and real drivers alike, as before
/// vpci_relay 97b51b5.)
#[test]
fn relay_reads_an_eject_as_naming_the_slots_newest_function() {
    use petri::explore::run_seed;
    use petri::scenario::{GuestKind, Scenario};
    let scenario = Scenario::from_toml(
        "eject-relisted",
        r#"
name = "eject-relisted"
title = "An EJECT of a slot re-listed while its first eject is unanswered"
description = "The host ejects slot 1, lists a new identity there, and ejects the slot again."
schedules = 4

[[bus]]
functions = [{ slot = 1 }]

[[bus.script.steps]]
when = { at = "1s" }
action = { kind = "eject", slot = 1 }

[[bus.script.steps]]
when = { at = "1s" }
action = { kind = "reserial", slot = 1, serial = 7 }

[[bus.script.steps]]
when = { at = "1s" }
action = { kind = "eject", slot = 1 }
"#,
    )
    .unwrap();
    let mut problems = Vec::new();
    for guest in GuestKind::ALL.into_iter().chain(GuestKind::REAL) {
        for seed in 0..4 {
            let r = run_seed(&scenario, guest, true, seed, false).unwrap();
            if r.outcome != Outcome::Ok {
                problems.push(format!("{guest} seed {seed}: {}", r.outcome));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
