//! The host's side of removal: ejects and their 60-second wait, teardown timing, rescind,
//! hot-add, surprise removal, replacement, and ejects of several incarnations of a slot.

mod common;

use common::*;
use host_sim::*;
use vpci_protocol::*;

/// Eject: EJECT goes out, the function stays until EJECTION_COMPLETE, then it is gone and
/// its requests fail.
#[test]
fn eject_waits_for_ejection_complete() {
    let mut g = Guest::with_functions(&[1, 2]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.act(HostAction::Eject { slot: 1 }).unwrap();
    let out = g.take();
    assert!(matches!(g.decode_message(&out[0]), Message::Eject(e) if e.body.wslot == slot(1)));
    assert!(g.bus.eject_outstanding(slot(1)));
    assert_eq!(
        g.act(HostAction::Eject { slot: 1 }),
        Err(ActionError::EjectOutstanding(1))
    );
    // Still assigned: the host answers for it.
    let id = g.request(create_interrupt2(1, 0x30, 0));
    assert_eq!(g.expect_completion(id).status, Status::SUCCESS);
    g.advance(3 * MS);
    g.send(ejection_complete(1));
    assert!(!g.bus.eject_outstanding(slot(1)));
    assert_eq!(g.bus.slots(), [slot(2)]);
    assert!(g.has_event(|e| matches!(
        e,
        HostEventKind::EjectCompleted { slot: s, waited } if *s == slot(1) && *waited == 3 * MS
    )));
    assert!(g.take().is_empty(), "no relations after removal by default");
    let id = g.request(qrr(1));
    assert_eq!(g.expect_completion(id).status, Status::BAD_DATA);
    assert_eq!(g.bus.poll_timeout(), None, "the 60 s wait is cancelled");
}

/// With `relations_after_removal`, the host lists the remaining functions once an ejected
/// one is gone.
#[test]
fn relations_after_removal_policy() {
    let mut g = Guest::new(BusConfig {
        functions: vec![FunctionSpec::nic(1), FunctionSpec::nic(2)],
        policy: HostPolicy {
            relations_after_removal: true,
            ..HostPolicy::default()
        },
        ..BusConfig::default()
    });
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.act(HostAction::Eject { slot: 1 }).unwrap();
    g.take();
    g.send(ejection_complete(1));
    let out = g.take();
    assert_eq!(relation_slots(&g.decode_message(&out[0])), [slot(2)]);
}

/// Hyper-V gives up on an eject after 60 s of virtual time and removes the function by
/// force; a late EJECTION_COMPLETE is then an error.
#[test]
fn eject_gives_up_after_60_seconds() {
    let mut g = Guest::with_functions(&[1]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.advance(SEC);
    g.act(HostAction::Eject { slot: 1 }).unwrap();
    g.take();
    assert_eq!(g.bus.poll_timeout(), Some(61 * SEC));
    g.advance(59 * SEC);
    assert_eq!(g.bus.slots(), [slot(1)], "still waiting at 60 s");
    g.advance(SEC);
    assert!(g.bus.slots().is_empty());
    let timed_out = g
        .events
        .iter()
        .find(|e| matches!(e.kind, HostEventKind::EjectTimedOut { .. }))
        .unwrap();
    assert_eq!(timed_out.at, 61 * SEC);
    assert!(g.has_event(|e| matches!(
        e,
        HostEventKind::FunctionRemoved {
            reason: RemovalReason::EjectTimedOut,
            ..
        }
    )));
    g.send(ejection_complete(1));
    assert!(g.has_event(|e| matches!(
        e,
        HostEventKind::GuestError(GuestError::UnexpectedEjectionComplete(_))
    )));
}

/// `Teardown::AtEject` unmaps the BARs as EJECT goes out (OpenVMM issue #3077, C7): a BAR
/// read faults while config space still answers. `AtEjectionComplete` keeps the BARs until
/// the guest lets go.
#[test]
fn teardown_timing() {
    for teardown in [Teardown::AtEject, Teardown::AtEjectionComplete] {
        let mut g = Guest::new(BusConfig {
            functions: vec![FunctionSpec::nic(1)],
            policy: HostPolicy {
                teardown,
                ..HostPolicy::default()
            },
            ..BusConfig::default()
        });
        g.probe_to_survey(ProtocolVersion::V1_4);
        g.enter_d0(0xfe00_0000);
        g.bus.bar_write(slot(1), 0, 0x10, &[0xab]).unwrap();
        g.act(HostAction::Eject { slot: 1 }).unwrap();
        let mut buf = [0u8; 1];
        let during = g.bus.bar_read(slot(1), 0, 0x10, &mut buf);
        match teardown {
            Teardown::AtEject => {
                assert_eq!(during.unwrap_err().reason, UnmappedReason::TornDown);
                assert!(g.bus.torn_down(slot(1)));
            }
            Teardown::AtEjectionComplete => {
                during.unwrap();
                assert_eq!(buf, [0xab]);
            }
        }
        assert_eq!(g.bus.config_read(slot(1), 0, 2), Ok(0x15b3));
        g.send(ejection_complete(1));
        assert_eq!(
            g.bus
                .bar_read(slot(1), 0, 0x10, &mut buf)
                .unwrap_err()
                .reason,
            UnmappedReason::NoFunction
        );
        assert_eq!(g.bus.config_read(slot(1), 0, 4), Ok(0xffff_ffff));
        let unmapped: Vec<_> = g
            .events
            .iter()
            .filter(|e| matches!(e.kind, HostEventKind::BarsTornDown { .. }))
            .collect();
        assert_eq!(unmapped.len(), 1, "{teardown:?}: unmapped once");
    }
}

/// With `AbsentConfig::Fault`, config accesses to an absent function are errors.
#[test]
fn absent_config_can_fault() {
    let mut g = Guest::new(BusConfig {
        policy: HostPolicy {
            absent_config: AbsentConfig::Fault,
            ..HostPolicy::default()
        },
        ..BusConfig::default()
    });
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.enter_d0(0xfe00_0000);
    assert_eq!(
        g.bus.config_read(slot(3), 0, 4).unwrap_err().reason,
        UnmappedReason::NoFunction
    );
    assert!(g.bus.config_write(slot(3), 4, 2, 6).is_err());
}

/// Rescind: what was sent before still goes out, then nothing more; guest packets are
/// ignored, actions fail, and no timer is left (an outstanding eject is forgotten).
#[test]
fn rescind_ends_the_bus() {
    let mut g = Guest::with_functions(&[1]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.bus.act(g.now, HostAction::Eject { slot: 1 }).unwrap();
    g.bus.act(g.now, HostAction::Rescind {}).unwrap();
    assert!(g.bus.rescinded());
    assert!(
        g.bus.poll_transmit().is_some(),
        "the EJECT sent before still leaves"
    );
    assert!(g.bus.poll_transmit().is_none());
    assert_eq!(g.bus.poll_timeout(), None);
    g.request(qrr(1));
    assert!(g.take().is_empty());
    assert!(g.has_event(|e| matches!(e, HostEventKind::IgnoredAfterRescind)));
    assert_eq!(
        g.act(HostAction::SendRelations {}),
        Err(ActionError::Rescinded)
    );
}

/// Hot-add sends relations listing the new function; surprise removal sends relations
/// without it and its slot is gone; re-adding a slot with a new serial is a new identity.
#[test]
fn hot_add_surprise_remove_and_reserial() {
    let mut g = Guest::with_functions(&[1]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.act(HostAction::HotAdd(FunctionSpec::nic(2))).unwrap();
    let out = g.take();
    assert_eq!(
        relation_slots(&g.decode_message(&out[0])),
        [slot(1), slot(2)]
    );
    assert_eq!(
        g.act(HostAction::HotAdd(FunctionSpec::nic(2))),
        Err(ActionError::SlotOccupied(2))
    );
    g.act(HostAction::Reserial {
        slot: 2,
        serial: 99,
    })
    .unwrap();
    let out = g.take();
    assert_eq!(relation_serials(&g.decode_message(&out[0])), [1, 99]);
    g.act(HostAction::SurpriseRemove { slot: 1 }).unwrap();
    let out = g.take();
    assert_eq!(relation_slots(&g.decode_message(&out[0])), [slot(2)]);
    assert!(g.has_event(|e| matches!(
        e,
        HostEventKind::FunctionRemoved {
            reason: RemovalReason::Surprise,
            ..
        }
    )));
    assert_eq!(
        g.act(HostAction::SurpriseRemove { slot: 1 }),
        Err(ActionError::NoSuchSlot(1))
    );
    // A duplicate relations message repeats the current list unchanged.
    g.act(HostAction::SendRelations {}).unwrap();
    g.act(HostAction::SendRelations {}).unwrap();
    let out = g.take();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].payload, out[1].payload);
}

/// A function re-added in a slot whose eject is outstanding survives that eject's
/// completion: the completion belongs to the old function.
#[test]
fn replaced_function_survives_the_old_eject() {
    let mut g = Guest::with_functions(&[2]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.act(HostAction::Eject { slot: 2 }).unwrap();
    g.act(HostAction::Reserial { slot: 2, serial: 7 }).unwrap();
    g.send(ejection_complete(2));
    assert_eq!(g.bus.function(slot(2)).unwrap().serial, 7);
    assert!(!g.bus.eject_outstanding(slot(2)));
}

/// An EJECT names the function the host listed last in its slot: with an eject of the old
/// function unanswered, the host may eject the one it listed since; each is outstanding on
/// its own, and once both are answered both functions are gone.
#[test]
fn eject_of_the_newest_function_while_the_old_one_is_outstanding() {
    let mut g = Guest::with_functions(&[2]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.act(HostAction::Eject { slot: 2 }).unwrap();
    g.act(HostAction::Reserial { slot: 2, serial: 7 }).unwrap();
    assert!(g.bus.eject_outstanding(slot(2)));
    assert!(
        !g.bus.ejecting(slot(2)),
        "the new function is not being ejected yet"
    );
    g.take();
    g.act(HostAction::Eject { slot: 2 }).unwrap();
    let out = g.take();
    assert!(matches!(g.decode_message(&out[0]), Message::Eject(e) if e.body.wslot == slot(2)));
    assert!(g.bus.ejecting(slot(2)));
    assert_eq!(
        g.act(HostAction::Eject { slot: 2 }),
        Err(ActionError::EjectOutstanding(2)),
        "a third EJECT would repeat the second"
    );
    // The first answer ends the older eject: the new function stays, its eject outstanding.
    g.send(ejection_complete(2));
    assert_eq!(g.bus.function(slot(2)).unwrap().serial, 7);
    assert!(g.bus.ejecting(slot(2)));
    // The second ends the new function's.
    g.send(ejection_complete(2));
    assert_eq!(g.bus.slots(), []);
    assert!(!g.bus.eject_outstanding(slot(2)));
    assert_eq!(g.bus.poll_timeout(), None);
}

/// Each incarnation's eject has its own 60 s: the older one times out first, without taking
/// the new function; the newer one's timeout removes it.
#[test]
fn ejects_of_two_incarnations_time_out_apart() {
    let mut g = Guest::with_functions(&[2]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.act(HostAction::Eject { slot: 2 }).unwrap();
    g.advance(10 * SEC);
    g.act(HostAction::Reserial { slot: 2, serial: 7 }).unwrap();
    g.act(HostAction::Eject { slot: 2 }).unwrap();
    g.advance(55 * SEC);
    assert_eq!(g.bus.function(slot(2)).unwrap().serial, 7);
    assert!(g.bus.ejecting(slot(2)));
    g.advance(10 * SEC);
    assert_eq!(g.bus.slots(), []);
    assert!(!g.bus.eject_outstanding(slot(2)));
}
