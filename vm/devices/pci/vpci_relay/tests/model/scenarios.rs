//! Scripted scenarios: each counterexample the checker found, replayed step by step through
//! the model, with every promise to both peers asserted at its end.

use super::*;
use vpci_relay::Safeguards;

/// Bounds generous enough for the scripted scenarios below.
pub(super) const SCRIPT: Bounds = Bounds {
    relations: 8,
    ejects: 4,
    adds: 4,
    drops: 2,
    ignores: 2,
    late_answers: 2,
    rescinds: 1,
    slows: 2,
    stales: 2,
    guest_stalls: 2,
    slow_reads: 2,
    ..Bounds::BASE
};

/// The state where the guest's driver of function 1 waits for its CREATE_INTERRUPT_MESSAGE2
/// and the host has not answered it yet.
fn driver_1_waits(m: &RelayModel) -> State {
    let mut s = m.settle(m.init_states().remove(0));
    s = m.step(&s, Action::HostRelations);
    s = m.run_guest(s);
    for req in [Req::Requirements(1), Req::D0Entry, Req::Assigned(1)] {
        s = m.complete(&s, req, Outcome::Success);
        s = m.run_guest(s);
    }
    assert_eq!(s.guest.children[&1].driver, Driver::WaitInterrupt);
    s
}

/// Asserts that `s` is quiescent and that every promise to both peers holds in it.
pub(super) fn assert_promises_kept(s: &State) {
    println!("{s:?}");
    assert!(s.quiescent(), "not quiescent: {s:?}");
    assert_eq!(s.guest.failure, None);
    assert_eq!(s.seen.g1, None);
    assert_eq!(s.seen.g2, None);
    assert_eq!(s.seen.eject_during_probe, None);
    assert_eq!(s.seen.g3, None);
    assert!(
        s.guest.waiting.is_empty(),
        "unanswered: {:?}",
        s.guest.waiting
    );
    assert!(s.final_view_agrees(), "{}", s.final_view_diff());
    assert_eq!(s.host.stray_ejection_complete, None);
    assert_eq!(s.seen.eject_overdue, None);
    assert!(
        !s.host.ejects_owed(),
        "EJECTs unanswered: {:?}",
        s.host.slots
    );
    assert_eq!(s.seen.host_blamed, None);
    assert_eq!(s.seen.overgrown, None);
    assert_eq!(s.seen.unjust_refusal, None);
    assert_eq!(s.seen.gave_up_on_live_guest, None);
}

/// Bug 1: the host ejects function 1#1 and, before the guest has completed that eject, lists
/// slot 1 again with a new function 1#2 (another device id and serial). Once the guest has let
/// go of 1#1, 1#2 must reach it.
///
/// Relay bug 1: failed on the relay of 074d841, passes since 3e768a8 (the re-listing of a slot
/// whose host state is Ejecting is ignored; at the guest's EJECTION_COMPLETE the slot is
/// forgotten).
#[test]
fn bug1_relisted_during_eject_reaches_the_guest() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostEject(1));
    s = m.step(&s, Action::HostAdd(1));
    s = m.settle(s);
    assert_promises_kept(&s);
    assert_eq!(s.guest.held(), vec![(1, 2)]);
}

/// Bug 1 (identity in place): the host lists slot 1 with a new function 1#2 in place of 1#1, in
/// one relations message. A function is its slot and identity, so that is 1#1 leaving and 1#2
/// arriving: the guest must be sent EJECT for 1#1 (Linux matches children by slot, vendor,
/// device id and serial, and would otherwise unlink 1#1 with its driver bound, C4), then 1#2.
///
/// Relay bug 1: failed on the relay of 074d841, passes since 3e768a8 (`host_relations` ignores
/// a new description for a listed slot, and the host's relations go to the guest byte for byte:
/// C4, G1).
#[test]
fn bug1_identity_change_in_place_is_an_eject_and_an_add() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostAdd(1));
    s = m.settle(s);
    assert_promises_kept(&s);
    assert_eq!(s.guest.held(), vec![(1, 2)]);
}

/// Bug 1 (identity in place, request outstanding): the host replaces 1#1 by 1#2 while 1#1's
/// driver waits for its interrupt, and ignores that request (1#1 is gone). The relay must
/// answer it itself, as for any departed function.
///
/// Relay bug 1: failed on the relay of 074d841, passes since 3e768a8 (1#1 still counts as
/// listed, so the request is never answered: the guest waits for ever, the relations change
/// runs into max_hold).
#[test]
fn bug1_request_of_replaced_function_is_answered() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = driver_1_waits(&m);
    s = m.step(&s, Action::HostAdd(1));
    s = m.complete(&s, Req::Interrupt(1), Outcome::Ignore);
    s = m.settle(s);
    assert!(!s.seen.change_timed_out);
    assert_promises_kept(&s);
}

/// Bug 2: the host drops function 1 from its relations while the guest holds it (the relay
/// ejects it at the guest by itself), then sends EJECT for it. That EJECT must be answered by
/// exactly one EJECTION_COMPLETE, and is no malformed packet.
///
/// Relay bug 2: failed on the relay of 074d841, passes since 3e768a8 (the guest's
/// EJECTION_COMPLETE is taken for the relay's own eject and not forwarded: the host waits 60
/// s).
#[test]
fn bug2_eject_after_drop_is_answered() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostDrop(1));
    s = m.step(&s, Action::HostEject(1));
    s = m.settle(s);
    assert_promises_kept(&s);
}

/// Bug 2 (late EJECT): the host drops function 1, the guest lets go of it, and only then does
/// the host send EJECT for it. The relay answers it, and does not count it as malformed.
///
/// Relay bug 2: failed on the relay of 074d841, passes since 3e768a8 (answered, but counted as
/// `UnknownSlot`).
#[test]
fn bug2_eject_after_drop_completed_is_not_malformed() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostDrop(1));
    s = m.settle(s);
    assert!(s.guest.children.is_empty());
    s = m.step(&s, Action::HostEject(1));
    s = m.settle(s);
    assert_promises_kept(&s);
}

/// A duplicate EJECT (the host sends EJECT for function 1 twice before the guest completes)
/// is answered twice: every EJECT gets exactly one EJECTION_COMPLETE.
///
/// Failed on the relay of 074d841 (the second EJECT was dropped as a repeat), passes since
/// 3e768a8.
#[test]
fn duplicate_eject_is_answered_twice() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostEject(1));
    s = m.step(&s, Action::HostEject(1));
    s = m.settle(s);
    assert_promises_kept(&s);
}

/// EJECT after a re-listing (issue 12, freedom 1): the host ejects 1#1, lists slot 1 with a
/// new function 1#2 before that EJECT is answered, and sends EJECT(1) again. An EJECT names
/// the function the host listed last in its slot (the project's decision on the protocol's
/// ambiguity), so the second EJECT ejects 1#2, which the host tears down at once: the relay
/// must never announce 1#2 to the guest (G3; its driver would read a torn-down device, C7),
/// must answer both EJECTs with one EJECTION_COMPLETE each, and the guest ends with nothing in
/// slot 1.
///
/// Failed from 7857c65 to 89d0372 (the relay read the second EJECT as a repeat of the first
/// and announced 1#2: C7, G3); passes since main's 97b51b5 (merged with 6acc2b6).
#[test]
fn eject_after_relist_ejects_the_new_function() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostEject(1));
    s = m.step(&s, Action::HostAdd(1));
    s = m.step(&s, Action::HostEject(1));
    assert!(s.seen.eject_after_relist);
    // The host tore 1#2 down (the relay may already have answered this EJECT).
    assert_eq!(s.host.slot(1).ident, 2);
    assert!(!s.host.mapped(1, 2));
    s = m.settle(s);
    assert_promises_kept(&s);
    assert!(s.guest.held().is_empty());
}

/// The same with the guest's EJECTION_COMPLETE for 1#1 first: the host ejects 1#1, lists 1#2,
/// the guest lets go of 1#1 (the relay forwards its EJECTION_COMPLETE), and only then does the
/// host EJECT slot 1 again: the EJECT names 1#2, which must not reach the guest either.
#[test]
fn eject_after_relist_and_complete_ejects_the_new_function() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostEject(1));
    s = m.step(&s, Action::HostAdd(1));
    s = m.run(s);
    s = m.step(&s, Action::HostEject(1));
    s = m.settle(s);
    assert_promises_kept(&s);
    assert!(s.guest.held().is_empty());
}

/// A repeat stays a repeat: the host ejects 1#1, lists 1#1 again (the same function: a repeat
/// of its relations, which makes nothing new), and sends EJECT(1) again. Both EJECTs name 1#1;
/// each is answered once and the guest ends with nothing.
#[test]
fn eject_after_repeated_listing_is_a_repeat() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostEject(1));
    s = m.step(&s, Action::HostRelations);
    s = m.step(&s, Action::HostEject(1));
    assert!(!s.seen.eject_after_relist);
    s = m.settle(s);
    assert_promises_kept(&s);
    assert!(s.guest.held().is_empty());
}

/// Slow host past `max_hold` during D0 entry, with an EJECT held (issue 12, freedom 2): the
/// guest's probe path sends BUS_D0ENTRY; the host is slow to answer it; meanwhile it EJECTs
/// 1#1, which the relay must hold (the probe path is in progress). Time passes beyond the
/// relay's `max_hold` (30 s): the relay answers the host's EJECT itself (well within the
/// host's 60 s), keeps 1#1's BARs shielded, and still does not deliver the EJECT while the
/// probe path waits. Then the host answers D0 entry; the probe path finishes (touching 1#1
/// through the shield), and only then does the guest get the EJECT, whose EJECTION_COMPLETE
/// is not forwarded a second time.
///
/// Failed at 89d0372: at 30.1 s the expired hold delivered the EJECT into the waiting probe
/// path (no EJECT during probe, G1), and the probe path then touched the ejected function
/// (C3). Passes since the merge of 6acc2b6 (97b51b5, 97de9bc).
#[test]
fn slow_d0_entry_past_max_hold_with_eject_held() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.settle(m.init_states().remove(0));
    s = m.step(&s, Action::HostRelations);
    s = m.run_guest(s);
    s = m.complete(&s, Req::Requirements(1), Outcome::Success);
    s = m.run_guest(s);
    assert_eq!(s.guest.probe, Probe::WaitD0);
    s = m.complete(&s, Req::D0Entry, Outcome::Slow);
    s = m.step(&s, Action::HostEject(1));
    // Time passes (the guest waits for D0 entry) until the relay wants no timer.
    s = m.run(s);
    println!("after the wait: {s:?}");
    assert!(s.now > m.max_hold(), "time passed beyond max_hold: {s:?}");
    assert_eq!(s.seen.eject_during_probe, None, "{s:?}");
    assert_eq!(s.seen.eject_overdue, None, "{s:?}");
    assert!(!s.host.ejects_owed(), "the relay answered the EJECT: {s:?}");
    assert_eq!(s.guest.probe, Probe::WaitD0);
    let txid = *s.host.slow.keys().next().expect("D0 entry still slow");
    s = m.step(&s, Action::HostSlowAnswer { txid });
    assert!(s.seen.slow_past_hold);
    s = m.settle(s);
    assert_promises_kept(&s);
    assert!(s.guest.held().is_empty());
}

/// Slow host past `max_hold` on the survey's QUERY_RESOURCE_REQUIREMENTS, with an EJECT held:
/// both functions at boot; the guest's relations work queries 1#1's requirements and the host
/// is slow to answer (the probe path waits on the survey); meanwhile the host EJECTs 2#1. Time
/// passes beyond `max_hold`: the relay answers that EJECT itself and must still hold it from
/// the guest, whose probe path is in progress, until the probe path is done.
///
/// Failed at 89d0372: the relations change timed out at 30.1 s, the EJECT went into the probe
/// path, and the host's EJECT was answered only when that change timed out in turn, at 60.1
/// s (past the host's budget). Passes since the merge of 6acc2b6.
#[test]
fn slow_requirements_past_max_hold_with_eject_held() {
    let m = RelayModel::new(
        Bounds {
            two_at_boot: true,
            ..SCRIPT
        },
        Safeguards::ALL_ON,
    );
    let mut s = m.settle(m.init_states().remove(0));
    s = m.step(&s, Action::HostRelations);
    s = m.run_guest(s);
    s = m.complete(&s, Req::Requirements(1), Outcome::Slow);
    s = m.step(&s, Action::HostEject(2));
    s = m.run(s);
    println!("after the wait: {s:?}");
    assert!(s.now > m.max_hold(), "time passed beyond max_hold: {s:?}");
    assert_eq!(s.seen.eject_during_probe, None, "{s:?}");
    assert_eq!(s.seen.eject_overdue, None, "{s:?}");
    assert!(!s.host.ejects_owed(), "the relay answered the EJECT: {s:?}");
    assert_eq!(s.guest.probe, Probe::WaitSurvey);
    let txid = *s.host.slow.keys().next().expect("requirements still slow");
    s = m.step(&s, Action::HostSlowAnswer { txid });
    assert!(s.seen.slow_past_hold);
    s = m.settle(s);
    assert_promises_kept(&s);
    assert_eq!(s.guest.held(), vec![(1, 1)]);
}

/// Stale relations after an EJECTION_COMPLETE (issue 12, freedom 3): the host ejects 1#1; the
/// guest lets go and the relay forwards its EJECTION_COMPLETE; a relations message the host
/// built before it processed that EJECTION_COMPLETE (so still listing 1#1) arrives after it.
/// 1#1 is the ejected function, not a new one: the relay must never announce it again (G3, and
/// a ghost in the final view).
///
/// Failed at 89d0372 (1#1 announced again: G3, and its driver's config read forwarded to the
/// removed device, C7); passes since the merge of 6acc2b6.
#[test]
fn stale_relations_after_ejection_complete() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostEject(1));
    s = m.run(s);
    assert_eq!(s.host.slot(1).state, HostFn::Removed);
    assert_eq!(s.host.stale, Some(vec![(1, 1)]));
    s = m.step(&s, Action::HostStaleRelations);
    assert!(s.seen.stale_relations);
    s = m.settle(s);
    assert_promises_kept(&s);
    assert!(s.guest.held().is_empty());
    // A new function in the slot afterwards does reach the guest.
    s = m.step(&s, Action::HostAdd(1));
    s = m.settle(s);
    assert_promises_kept(&s);
    assert_eq!(s.guest.held(), vec![(1, 2)]);
}

/// Stale relations after the relay's own answer at `max_hold`: the guest's eject work stalls
/// past `max_hold` (its driver's remove path is slow), the relay answers the host's EJECT
/// itself, the host removes 1#1, and a relations message built before that still lists 1#1.
/// The guest still holds 1#1 (shielded); it must get nothing but its EJECT's end, and nothing
/// of 1#1 must come back.
///
/// Fails on the relay of 97de9bc through cd2ea3f: once the eject change ran out of `max_hold` the relay is
/// idle, and the stale relations, which say exactly what the guest still holds (1#1,
/// ejecting), go to the guest byte for byte. Linux's ordered workqueue finishes the eject
/// (1#1 unlinked), then its relations work finds 1#1 listed and new, and adds it again: its
/// driver reads BARs the relay has released (C7), a ghost of an ejected function.
#[test]
fn stale_relations_after_max_hold_answer_with_slow_guest() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostEject(1));
    // Let the relay deliver the EJECT and the guest remove its driver.
    loop {
        if matches!(s.guest.running, Some(Running::EjectRemoved(_))) {
            break;
        }
        let mut enabled = Vec::new();
        m.actions(&s, &mut enabled);
        let a = *enabled
            .iter()
            .find(|a| matches!(a, Action::Guest(_) | Action::AdvanceTime))
            .expect("the EJECT is delivered");
        s = m.step(&s, a);
    }
    while s.host.ejects_owed() {
        s = m.step(&s, Action::AdvanceTime);
    }
    assert!(s.guest.stalls > 0);
    assert_eq!(s.seen.eject_overdue, None);
    assert_eq!(s.host.slot(1).state, HostFn::Removed);
    s = m.step(&s, Action::HostStaleRelations);
    s = m.settle(s);
    assert_promises_kept(&s);
    assert!(s.guest.held().is_empty());
}

/// Bug 3: a request the relay answered itself (the host ejected the function and never
/// answered its interrupt request) stays in the forwarded-request table; with a limit of one,
/// the next hot-add's QUERY_RESOURCE_REQUIREMENTS is then refused with BAD_DATA though
/// nothing is outstanding.
///
/// Relay bug 3: failed on the relay of 074d841, passes since 3e768a8.
#[test]
fn bug3_answered_request_does_not_block_the_next() {
    let m = RelayModel::new(
        Bounds {
            request_limit: 1,
            ..SCRIPT
        },
        Safeguards::ALL_ON,
    );
    let mut s = driver_1_waits(&m);
    s = m.step(&s, Action::HostEject(1));
    s = m.complete(&s, Req::Interrupt(1), Outcome::Ignore);
    s = m.settle(s);
    assert!(s.seen.answered_locally);
    assert!(s.guest.children.is_empty());
    s = m.step(&s, Action::HostAdd(1));
    s = m.settle(s);
    assert_promises_kept(&s);
}

/// Bug 3 over cycles, at a limit of four: hot-plug cycles in which the host ejects a function
/// and never answers its interrupt request must not use up the request table, and the memory
/// of the relay's own answers stays within its limit (two here).
///
/// Relay bug 3: failed on the relay of 074d841, passes since 3e768a8 (the fourth hot-add's
/// QUERY_RESOURCE_REQUIREMENTS is refused).
#[test]
fn bug3_hot_plug_cycles_do_not_fill_the_table() {
    let bounds = Bounds {
        relations: 20,
        ejects: 10,
        adds: 10,
        ignores: 10,
        late_answers: 0,
        remembered_answers: 2,
        ..SCRIPT
    };
    let m = RelayModel::new(bounds, Safeguards::ALL_ON);
    let mut s = driver_1_waits(&m);
    for cycle in 0..6 {
        s = m.step(&s, Action::HostEject(1));
        s = m.complete(&s, Req::Interrupt(1), Outcome::Ignore);
        s = m.settle(s);
        assert!(s.guest.children.is_empty(), "cycle {cycle}: {s:?}");
        s = m.step(&s, Action::HostAdd(1));
        s = m.run(s);
        assert_eq!(s.seen.unjust_refusal, None, "cycle {cycle}");
        s = m.complete(&s, Req::Requirements(1), Outcome::Success);
        s = m.run(s);
        assert_eq!(s.seen.unjust_refusal, None, "cycle {cycle}");
        assert_eq!(
            s.guest.children.get(&1).map(|c| c.driver),
            Some(Driver::WaitInterrupt),
            "cycle {cycle}: {s:?}"
        );
        assert_eq!(m.relay_of(&s).requests_outstanding(), 1);
        assert_eq!(
            m.relay_of(&s).remembered_local_answers(),
            (cycle + 1).min(2),
            "cycle {cycle}"
        );
    }
}

/// A host that answers a request after the relay already answered it (late) is no protocol
/// violation: the relay drops the answer and the bus stays up.
#[test]
fn late_answer_after_local_answer_is_dropped() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = driver_1_waits(&m);
    s = m.step(&s, Action::HostEject(1));
    s = m.complete(&s, Req::Interrupt(1), Outcome::Ignore);
    s = m.settle(s);
    let txid = *s.host.late.keys().next().unwrap();
    s = m.step(&s, Action::HostLate { txid });
    assert!(s.seen.late_completion);
    s = m.settle(s);
    assert_promises_kept(&s);
    assert_eq!(m.relay_of(&s).host_link(), vpci_relay::HostLink::Up);
}

/// A late answer to a request the relay has already forgotten (its memory of its own answers
/// holds one here, and a second local answer pushed the first out) costs the host nothing
/// worse than a count: the bus stays up, and the guest and the next function are unaffected.
/// (The relay counts it as a `StaleTransaction` fault, so the "conformant host" property
/// would flag it; the exhaustive bounds keep the memory larger than the ignored requests.)
#[test]
fn late_answer_beyond_memory_keeps_the_bus() {
    let m = RelayModel::new(
        Bounds {
            remembered_answers: 1,
            ..SCRIPT
        },
        Safeguards::ALL_ON,
    );
    let mut s = driver_1_waits(&m);
    s = m.step(&s, Action::HostEject(1));
    s = m.complete(&s, Req::Interrupt(1), Outcome::Ignore);
    s = m.settle(s);
    let first = *s.host.late.keys().next().unwrap();
    // A second cycle: 1#2 is added, its interrupt request ignored in turn.
    s = m.step(&s, Action::HostAdd(1));
    s = m.run(s);
    s = m.complete(&s, Req::Requirements(1), Outcome::Success);
    s = m.run(s);
    s = m.step(&s, Action::HostEject(1));
    s = m.complete(&s, Req::Interrupt(1), Outcome::Ignore);
    s = m.settle(s);
    assert_eq!(m.relay_of(&s).remembered_local_answers(), 1);
    s = m.step(&s, Action::HostLate { txid: first });
    assert_eq!(m.relay_of(&s).host_link(), vpci_relay::HostLink::Up);
    s = m.step(&s, Action::HostAdd(1));
    s = m.settle(s);
    assert!(s.quiescent());
    assert_eq!(s.guest.failure, None);
    assert!(s.final_view_agrees(), "{s:?}");
    assert!(!s.host.ejects_owed());
    assert_eq!(m.relay_of(&s).host_link(), vpci_relay::HostLink::Up);
}

/// A slot re-added while the guest still holds its surprise-removed predecessor reaches the
/// guest once the guest has let go of the old function (guarantee 7). The old model found
/// this broken before 2c9b344.
#[test]
fn re_add_during_synthesized_eject_reaches_the_guest() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    assert_eq!(s.guest.probe, Probe::Done);
    assert!(s.final_view_agrees());
    // Surprise removal of 1, then the host re-adds 1 at once.
    s = m.step(&s, Action::HostDrop(1));
    s = m.step(&s, Action::HostAdd(1));
    s = m.settle(s);
    assert_promises_kept(&s);
}

/// After a surprise removal and a re-add of slot 2, a host EJECT of the re-added function
/// (which the guest never saw) is completed by the relay, and a later relations message that
/// still lists slot 2 does not announce it. The old model found this broken before 2c9b344:
/// the guest's driver read the config space of a torn-down device (C7), and the host waited
/// for an EJECTION_COMPLETE that never came.
#[test]
fn eject_of_re_added_function_is_completed() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostAdd(2));
    s = m.settle(s);
    assert!(s.final_view_agrees(), "both functions bound: {s:?}");
    s = m.step(&s, Action::HostDrop(2));
    s = m.step(&s, Action::HostAdd(2));
    s = m.step(&s, Action::HostEject(2));
    s = m.settle(s);
    s = m.step(&s, Action::HostRelations);
    s = m.settle(s);
    assert_promises_kept(&s);
}

/// A re-added function is announced once the guest lets go of its predecessor, even when
/// that EJECTION_COMPLETE leaves the bus busy: the host leaves out a function whose driver
/// still waits for its interrupt, never answers that request, and re-adds the slot. The old
/// model found this broken after 2c9b344 (fixed by 06cc642): no timer retried the held
/// relations. With the re-added function's new identity, it failed again on the relay of
/// 074d841 (relay bug 1: the relations listing 2#2 went to the guest byte for byte while it
/// held 2#1, C4); passes since 3e768a8.
#[test]
fn successor_announced_after_eject_complete() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostAdd(2));
    s = m.run_guest(s);
    s = m.complete(&s, Req::Requirements(2), Outcome::Success);
    s = m.run_guest(s);
    assert_eq!(s.guest.children[&2].driver, Driver::WaitInterrupt);
    s = m.step(&s, Action::HostDrop(2));
    s = m.complete(&s, Req::Interrupt(2), Outcome::Ignore);
    s = m.step(&s, Action::HostAdd(2));
    s = m.settle(s);
    println!("{:#?}", m.relay_of(&s).functions().collect::<Vec<_>>());
    assert_promises_kept(&s);
}

/// The guest model itself: with the eject hold off, an EJECT that arrives while a driver waits
/// for its CREATE_INTERRUPT_MESSAGE2 completion is 6.2's C2 (the polling loop gives up on the
/// ejecting mark, unmask reads a NULL descriptor); with every safeguard on, the same host
/// actions leave the guest alive, the eject delivered only after the interrupt was answered.
#[test]
fn guest_model_c2_eject_during_interrupt_setup() {
    let run = |safeguards: Safeguards| {
        let m = RelayModel::new(SCRIPT, safeguards);
        let s = driver_1_waits(&m);
        let s = m.step(&s, Action::HostEject(1));
        m.settle(s)
    };
    let mut off = Safeguards::ALL_ON;
    off.hold_eject_until_settled = false;
    assert_eq!(run(off).guest.failure, Some(Failure::C2NullDescriptor(1)));
    let s = run(Safeguards::ALL_ON);
    assert_promises_kept(&s);
}

/// A guest stuck in its eject work (its driver's remove path is slow) past `max_hold`: the
/// relay answers the host's EJECT itself at its deadline and moves on (its documented
/// fallback for a stuck guest), but a relations message it then builds must not list the
/// function the guest is ejecting: Linux's ordered workqueue finishes the eject (1#1
/// unlinked), then its relations work finds 1#1 listed and new and adds it again, and its
/// driver reads BARs the relay has released (C7).
///
/// Found by the checker at [`Bounds::SLOW`] against the relay of 6acc2b6 (still failing at
/// cd2ea3f): boot with 1#1;
/// `HostEject(1)` (delivered); the guest removes the driver and stalls; at 30.2 s the relay
/// answers the EJECT; `HostAdd(2)`: the relay sends the guest RELATIONS[(1, 1), (2, 1)]; the
/// guest completes 1#1's eject, re-adds 1#1, its driver faults.
#[test]
fn stuck_guest_is_not_sent_the_function_it_ejects() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostEject(1));
    s = m.step(&s, Action::Guest(GuestStep::Work));
    assert!(matches!(s.guest.running, Some(Running::EjectRemoved(1))));
    while s.host.ejects_owed() {
        s = m.step(&s, Action::AdvanceTime);
    }
    assert!(s.guest.stuck);
    s = m.step(&s, Action::HostAdd(2));
    s = m.settle(s);
    assert_promises_kept(&s);
    assert_eq!(s.guest.held(), vec![(2, 1)]);
}

/// A slot the host leaves out of its relations while the guest still ejects its function:
/// once the guest lets go, the relay keeps nothing for that slot (the host's omission already
/// told it the slot's next listing is a new function), so no entry outlives both views.
///
/// Found by the checker (TABLES, at every default bound) against the relay of 6acc2b6, still
/// failing at cd2ea3f (and
/// `bug2_eject_after_drop_is_answered` leaves such an entry too: drop, then EJECT): boot
/// with 1#1; `HostEject(1)` (delivered); the guest removes the driver; `HostAdd(1)` (1#2
/// listed); `HostEject(1)` (names 1#2: answered at once); stale RELATIONS[(1, 2)];
/// RELATIONS[] (slot 1 left out); the guest's EJECTION_COMPLETE: the relay still keeps an
/// entry for slot 1 (1#1, host `Ejected`, guest `Hidden`) that neither side has.
#[test]
fn omitted_slot_is_forgotten_once_the_guest_lets_go() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostEject(1));
    s = m.step(&s, Action::Guest(GuestStep::Work));
    s = m.step(&s, Action::HostAdd(1));
    s = m.step(&s, Action::HostEject(1));
    s = m.step(&s, Action::HostStaleRelations);
    s = m.step(&s, Action::HostRelations);
    s = m.settle(s);
    println!("{:#?}", m.relay_of(&s).functions().collect::<Vec<_>>());
    assert_promises_kept(&s);
    assert!(tables_live(&s), "an entry outlives both views");
}
