//! A model check of the real [`BusRelay`](vpci_relay::BusRelay), unchanged and driven only
//! through its public API, with [stateright]: every interleaving of an abstract Hyper-V host
//! and an abstract unfixed Linux 6.2 guest, within bounds, is explored breadth first, and the
//! relay's guarantees are checked in every state reached.
//!
//! # The model (`model/mod.rs`)
//!
//! **State.** `BusRelay` is neither `Clone` nor `Hash`, so the model state keeps the
//! *sequence of inputs* the relay was fed (a shared, persistent list) and, for identity, a
//! 64-bit hash of the relay's full `Debug` rendering (every field of the relay: functions,
//! requests, held changes, timers' inputs, counters, next transaction id) taken after each
//! step. `next_state` rebuilds the relay by replaying the inputs and then feeds the new ones.
//! Equality and hashing of a state use that fingerprint plus the abstract host, the abstract
//! guest, the clock, the last backing the relay emitted per function and the observation
//! flags, never the history: two histories that leave everything equal are one state. (A
//! fingerprint finer than the relay's real state only costs states, it cannot hide one;
//! collisions of the 64-bit hash are the one theoretical gap.)
//!
//! **Host** (one bus, slots 1 and 2; slot 1 present at boot, slot 2 hot-added). Its actions:
//! send BUS_RELATIONS2 listing what it has (once the guest's QUERY_BUS_RELATIONS has reached
//! it; again at any later time, which covers Hyper-V's repeat after D0 entry), optionally
//! leaving a listed function out (a surprise removal, [`Bounds::surprise_removal`]); hot-add
//! or re-add a function (announced with relations at once); EJECT an announced function (its
//! device is torn down at once, as in OpenVMM issue #3077; when the relay forwards
//! EJECTION_COMPLETE the function is removed and may be re-added); rescind the channel; and
//! answer each request the relay forwarded, in any order: success, or, for an interrupt
//! request of a function it has removed, a failure or no answer at all. Packets from the
//! relay reach the host at once.
//!
//! **Guest** (Linux 6.2's `pci-hyperv`, per `/work/shared/spec/linux-guest.md`). Four kinds of
//! context, each step of which is a separate action so that host actions interleave between
//! them: the probe path (QUERY_PROTOCOL_VERSION; QUERY_BUS_RELATIONS and wait for the survey;
//! BUS_D0ENTRY; RESOURCES_ASSIGNED2 per child linked at the survey; root-bus creation, which
//! reads each function's config space and starts its driver); the ordered workqueue (relations
//! work: QUERY_RESOURCE_REQUIREMENTS per new function, then survey completion, or a rescan
//! once installed; eject work: remove the driver (DELETE_INTERRUPT, a BAR read, a config read)
//! then EJECTION_COMPLETE, or, with no root bus yet, EJECTION_COMPLETE at once); one driver
//! per function (config and BAR reads, CREATE_INTERRUPT_MESSAGE2, wait, unmask). The channel
//! callback runs atomically when a packet arrives: completions wake their waiter, relations
//! become the newest record plus a work item (records collapse), EJECT marks the child and
//! queues the eject work. The races of the catalogue become failures:
//! C2 (EJECT while a driver sets up its interrupt, or a failed CREATE_INTERRUPT: NULL
//! descriptor at unmask), C3 (an ejection completed before the root bus existed, and the
//! probe path then touches the function), C4 (relations adding a function after the survey,
//! before the root bus; or dropping one the guest holds), C1/C5 (the channel closed while the
//! probe path is mid-flight), C7 (a BAR access to a function whose device the host removed,
//! unless the relay emitted a Shield backing for it; a config access the relay forwards to
//! such a device). A failed guest takes no further step: the counterexample ends there.
//!
//! **Time.** A virtual clock; the action `AdvanceTime` moves it to the relay's
//! `poll_timeout()` and calls `handle_timeout`, so settle windows (100 ms), the departed-request
//! timeout (1 s) and holds (30 s) expire. Time passes only while every guest context waits and
//! the host owes no answer: guest steps and host answers are taken to be quick next to the
//! settle window, the assumption the relay's settle rule rests on. (Without it the model
//! would "find" a driver that pauses 100 ms between its config reads and its interrupt
//! request, which no quiet window can tell from a settled one.)
//!
//! # Properties
//!
//! Always: no guest panic or fault (C1-C5, C7); G1, at most one host change (an EJECT, or a
//! relations message that changes what the guest has) outstanding at the guest, a relations
//! change counting as finished when every function it lists has been queried and, for one
//! that arrived during the probe path, the probe path is done; G2, no EJECT for a function the
//! guest has not settled (probe path done, function linked, driver not setting up an
//! interrupt); G3, a relations message never announces a function the host has already taken
//! back; G7, no completion for a request the guest is not waiting for, and, at quiescence (no
//! guest step, nothing owed by the host, no relay timer), every guest request has been
//! answered; G7 (delivery), at quiescence the guest holds exactly the functions the host has
//! announced and still has, and no host EJECT waits for an answer; G5, at quiescence after a
//! rescind the guest channel is closed; and the host never gets an EJECTION_COMPLETE it did
//! not ask for. Sometimes (so the check is not vacuous): an eject was held, a function was
//! coalesced, a request was answered locally, an eject removed a bound driver, a rescind
//! closed the guest.
//!
//! # Bounds and cost
//!
//! Measured on 2 threads in a debug build (`cargo test` is unoptimized), on a shared machine:
//!
//! | test | bound | unique states | depth | time |
//! | --- | --- | --- | --- | --- |
//! | `model_check_all_safeguards_on` | [`Bounds::DEFAULT`]: 4 relations, 2 ejects, 1 hot-add, 1 re-add, 1 rescind | 229,402 | 49 | 20-30 s |
//! | `model_check_two_at_boot` | [`Bounds::TWO_AT_BOOT`] | 90,969 | 49 | 8-15 s |
//! | `model_check_surprise_removal_without_re_add` | [`Bounds::SURPRISE`] without re-add | 121,007 | 40 | 10 s |
//! | `model_check_surprise_removal` (ignored) | [`Bounds::SURPRISE`] | 864,263 | 51 | 77-140 s |
//! | `model_check_large_bound` (ignored) | [`Bounds::LARGE`]: 5 relations, 3 ejects, 2 re-adds | 2,666,405 | 62 | 7.7 min |
//!
//! The teeth run at [`Bounds::SMALL`] on one thread and stop at the first counterexample
//! (under a second each).
//!
//! # Teeth
//!
//! With one safeguard of [`Safeguards`](vpci_relay::Safeguards) switched off the checker finds
//! a counterexample for each: `one_change_at_a_time` (a hot-add delivered during the probe
//! path: C4, G1), `hold_eject_until_settled` (EJECT before the root bus: C3, G2),
//! `coalesce` (a function the host took back is announced: G3; the guest itself survives
//! it, thanks to the shield and the local answers), `local_answers` (the host's failure of a
//! departed function's interrupt request reaches the guest: C2), `rescind_at_safe_point` (the
//! guest channel closed mid-probe: C5), `removal_shield` (the driver-remove path reads a
//! torn-down device: C7).
//!
//! # Relay bugs this model found
//!
//! All at the surprise-removal bound (a relations message leaving out a function the guest
//! holds, then the slot re-added); all fixed since by the relay's owners, and kept as
//! scripted regression tests:
//! - the re-added function was never announced
//!   (`re_add_during_synthesized_eject_reaches_the_guest`; seen failing at bacc3b6, passes
//!   since 2c9b344);
//! - a host EJECT of the re-added function was dropped as a repeat, and the slot was later
//!   re-announced with device backing, so the guest's driver read a torn-down device (C7, G3)
//!   (`eject_of_re_added_function_is_completed`; the checker's counterexample was seen at
//!   bacc3b6, the scripted test was written after 2c9b344 landed and has only been seen
//!   passing);
//! - the successor installed at the guest's EJECTION_COMPLETE waited for a bus-quiet timer
//!   nobody armed (`successor_announced_after_eject_complete`; seen failing at 2c9b344,
//!   passes since 06cc642).
//!
//! # Not modelled
//!
//! Version fallback (the guest asks for 1.4 only), D0 entry failure and the kdump retry,
//! config writes and the relay's config cache (`handle_config_read_result`), the allow-list
//! (every function is allowed), malformed packets (the fuzz targets cover them), more than
//! one interrupt per function, and the guest's own reaction to a rescind beyond "a bound
//! driver's remove path reads its BARs". Packets reach the host at once, and the guest's
//! channel callback runs atomically with the relay's output.
//!
//! # Reading a counterexample
//!
//! Each failing property prints its path, one line per action: the virtual time after it, the
//! action (`Guest(Probe)`, `Guest(Work)`, `Guest(Driver(n))` are guest steps; `Host*` are host
//! actions; `HostComplete { txid, .. }` names the relay's transaction id of the forwarded
//! request), and what that step made the relay deliver (`guest<-EJECT(1)`,
//! `host<-EJECTION_COMPLETE(1)`, `guest<-done Interrupt(2) ok=true`, `guest<-CLOSE`). The last
//! line gives the guest's failure and the observation flags (`g1`/`g2`/`g3` say which change
//! broke the rule). Run a single test with `-- --nocapture` to see them.

mod model;

use model::*;

use stateright::{Checker, Expectation, HasDiscoveries, Model};
use std::time::Instant;
use vpci_relay::Safeguards;

/// Prints a counterexample: each action and what it made the relay deliver to either side.
fn print_path(name: &str, path: stateright::Path<State, Action>) {
    println!("counterexample for \"{name}\":");
    let mut prev: Option<Action> = None;
    let mut last = None;
    for (state, action) in path.into_vec() {
        if let Some(a) = prev {
            println!("  {:>8?}  {a:?}  => {}", state.now, state.last);
        }
        prev = action;
        last = Some(state);
    }
    if let Some(s) = last {
        println!("  failure: {:?}; seen: {:?}", s.guest.failure, s.seen);
    }
}

/// Runs the exhaustive check with all safeguards on, prints its size and every failure, and
/// asserts that every property holds (and every `sometimes` property the bound can reach was
/// reached).
fn check_all_on(bounds: Bounds) {
    let start = Instant::now();
    let c = RelayModel::new(bounds, Safeguards::ALL_ON)
        .checker()
        .threads(2)
        .spawn_bfs()
        .join();
    println!(
        "{bounds:?}: {} unique states, {} total, depth {}, {:?}",
        c.unique_state_count(),
        c.state_count(),
        c.max_depth(),
        start.elapsed()
    );
    let mut broken = Vec::new();
    for p in c.model().properties() {
        match (c.discovery(p.name), p.expectation) {
            (Some(path), Expectation::Always) => {
                print_path(p.name, path);
                broken.push(p.name);
            }
            (Some(_), _) => println!("reached: {}", p.name),
            (None, Expectation::Sometimes) if bounds.can_reach(p.name) => {
                broken.push(p.name);
            }
            (None, _) => {}
        }
    }
    assert!(broken.is_empty(), "broken or never reached: {broken:#?}");
}

/// With every safeguard on, no interleaving within the default bound (a new function, a
/// surprise removal, an ignored request answered late, two ejects of any slot the host has
/// listed, a rescind) breaks a property; and the interesting cases occur.
///
/// RELAY BUGS 1 AND 2: fails on the relay of 074d841 (see the module doc's counterexamples).
#[test]
fn model_check_all_safeguards_on() {
    check_all_on(Bounds::DEFAULT);
}

/// The same with two new functions in a slot (re-listed while the old one is listed,
/// ejecting or still held by the guest).
///
/// RELAY BUG 1: fails on the relay of 074d841.
#[test]
fn model_check_relist() {
    check_all_on(Bounds::RELIST);
}

/// The same with both functions present at boot.
///
/// RELAY BUGS 1 AND 2: fails on the relay of 074d841.
#[test]
fn model_check_two_at_boot() {
    check_all_on(Bounds::TWO_AT_BOOT);
}

/// The same with a request limit of one, so a table that keeps answered requests refuses the
/// next one within the bound.
///
/// RELAY BUGS 1, 2 AND 3: fails on the relay of 074d841.
#[test]
fn model_check_request_table() {
    check_all_on(Bounds::REQUEST_TABLE);
}

/// The teeth's bound (the old model's host) holds with every safeguard on, so each teeth
/// counterexample below is the switched-off safeguard's doing.
#[test]
fn model_check_teeth_bound() {
    check_all_on(Bounds::SMALL);
}

/// The default check at a larger bound.
#[test]
#[ignore = "takes minutes in a debug build; run with --ignored (or --release)"]
fn model_check_large_bound() {
    check_all_on(Bounds::LARGE);
}

/// Both functions at boot, at a larger bound.
#[test]
#[ignore = "takes minutes in a debug build; run with --ignored (or --release)"]
fn model_check_large_two_at_boot() {
    check_all_on(Bounds::LARGE_TWO_AT_BOOT);
}

/// Runs the checker with one safeguard off until the first failure (one thread, so the search
/// order and the counterexample are the same on every run), prints each counterexample, and
/// returns the failed properties with the failure (if any) the guest died of.
fn teeth(off: fn(&mut Safeguards)) -> Vec<(&'static str, Option<Failure>)> {
    let mut safeguards = Safeguards::ALL_ON;
    off(&mut safeguards);
    let start = Instant::now();
    let c = RelayModel::new(Bounds::SMALL, safeguards)
        .checker()
        .finish_when(HasDiscoveries::AnyFailures)
        .spawn_bfs()
        .join();
    println!(
        "{safeguards:?}: {} unique states, {:?}",
        c.unique_state_count(),
        start.elapsed()
    );
    let mut failed = Vec::new();
    for p in c.model().properties() {
        if p.expectation != Expectation::Always {
            continue;
        }
        if let Some(path) = c.discovery(p.name) {
            let failure = path.last_state().guest.failure;
            print_path(p.name, path);
            failed.push((p.name, failure));
        }
    }
    assert!(!failed.is_empty(), "no counterexample found");
    failed
}

/// Teeth of guarantee 1: without one change at a time, the hot-add that arrives during the
/// probe path reaches the guest before its survey answer is done (C4; G1 broken).
#[test]
fn teeth_one_change_at_a_time() {
    let failed = teeth(|s| s.one_change_at_a_time = false);
    assert!(
        failed
            .iter()
            .any(|(name, f)| *name == G1 || matches!(f, Some(Failure::C4AddedDuringProbe(_))))
    );
}

/// Teeth of guarantee 2: without the hold, an EJECT lands during the probe path (C3; G2
/// broken).
#[test]
fn teeth_hold_eject_until_settled() {
    let failed = teeth(|s| s.hold_eject_until_settled = false);
    assert!(failed.iter().any(|(name, f)| *name == G2
        || matches!(
            f,
            Some(Failure::C3TouchedEjected(_) | Failure::C2NullDescriptor(_))
        )));
}

/// Teeth of guarantee 3: without coalescing, a function the host took back before the guest
/// heard of it is announced to the guest (G3 broken).
#[test]
fn teeth_coalesce() {
    let failed = teeth(|s| s.coalesce = false);
    assert!(failed.iter().any(|(name, _)| *name == G3));
}

/// Teeth of guarantee 4: without local answers, the host's failure of an interrupt request for
/// a function it ejected reaches the guest: NULL descriptor at unmask (C2).
#[test]
fn teeth_local_answers() {
    let failed = teeth(|s| s.local_answers = false);
    assert!(
        failed
            .iter()
            .any(|(name, f)| *name == G7 || matches!(f, Some(Failure::C2NullDescriptor(_))))
    );
}

/// Teeth of guarantee 5: without the safe point, a rescind during the probe path closes the
/// guest channel under it (C5).
#[test]
fn teeth_rescind_at_safe_point() {
    let failed = teeth(|s| s.rescind_at_safe_point = false);
    assert!(
        failed
            .iter()
            .any(|(name, f)| *name == G5 || matches!(f, Some(Failure::C5CloseDuringProbe)))
    );
}

/// Teeth of guarantee 8: without the shield, the guest's driver-remove path touches a device
/// the host tore down at its EJECT (C7).
#[test]
fn teeth_removal_shield() {
    let failed = teeth(|s| s.removal_shield = false);
    assert!(
        failed
            .iter()
            .any(|(_, f)| matches!(f, Some(Failure::C7BarFault(_) | Failure::C7ConfigFault(_))))
    );
}

// ---- scripted scenarios: each counterexample the checker found, replayed ----

/// Bounds generous enough for the scripted scenarios below.
const SCRIPT: Bounds = Bounds {
    relations: 8,
    ejects: 4,
    adds: 4,
    drops: 2,
    ignores: 2,
    late_answers: 2,
    rescinds: 1,
    request_limit: 4,
    relist: true,
    free_ejects: true,
    two_at_boot: false,
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
fn assert_promises_kept(s: &State) {
    println!("{s:?}");
    assert!(s.quiescent(), "not quiescent: {s:?}");
    assert_eq!(s.guest.failure, None);
    assert_eq!(s.seen.g1, None);
    assert_eq!(s.seen.g3, None);
    assert!(
        s.guest.waiting.is_empty(),
        "unanswered: {:?}",
        s.guest.waiting
    );
    assert!(
        s.views_agree(),
        "the host lists {:?}, the guest holds {:?}",
        s.host.announced(),
        s.guest.held()
    );
    assert_eq!(s.host.stray_ejection_complete, None);
    assert!(
        !s.host.ejects_owed(),
        "EJECTs unanswered: {:?}",
        s.host.slots
    );
    assert_eq!(s.seen.host_blamed, None);
    assert_eq!(s.seen.overgrown, None);
    assert_eq!(s.seen.unjust_refusal, None);
}

/// Bug 1: the host ejects function 1#1 and, before the guest has completed that eject, lists
/// slot 1 again with a new function 1#2 (another device id and serial). Once the guest has let
/// go of 1#1, 1#2 must reach it.
///
/// RELAY BUG 1: fails on the relay of 074d841 (the re-listing of a slot whose host state is
/// Ejecting is ignored; at the guest's EJECTION_COMPLETE the slot is forgotten).
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

/// Bug 1 (identity in place): the host lists slot 1 with a new function 1#2 in place of 1#1,
/// in one relations message. A function is its slot and identity, so that is 1#1 leaving and
/// 1#2 arriving: the guest must be sent EJECT for 1#1 (Linux matches children by slot,
/// vendor, device id and serial, and would otherwise unlink 1#1 with its driver bound, C4),
/// then 1#2.
///
/// RELAY BUG 1: fails on the relay of 074d841 (`host_relations` ignores a new description for
/// a listed slot, and the host's relations go to the guest byte for byte: C4, G1).
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
/// RELAY BUG 1: fails on the relay of 074d841 (1#1 still counts as listed, so the request is
/// never answered: the guest waits for ever, the relations change runs into max_hold).
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
/// RELAY BUG 2: fails on the relay of 074d841 (the guest's EJECTION_COMPLETE is taken for the
/// relay's own eject and not forwarded: the host waits 60 s).
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
/// RELAY BUG 2: fails on the relay of 074d841 (answered, but counted as `UnknownSlot`).
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
#[test]
fn duplicate_eject_is_answered_twice() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    s = m.step(&s, Action::HostEject(1));
    s = m.step(&s, Action::HostEject(1));
    s = m.settle(s);
    assert_promises_kept(&s);
}

/// Bug 3: a request the relay answered itself (the host ejected the function and never
/// answered its interrupt request) stays in the forwarded-request table; with a limit of one,
/// the next hot-add's QUERY_RESOURCE_REQUIREMENTS is then refused with BAD_DATA though
/// nothing is outstanding.
///
/// RELAY BUG 3: fails on the relay of 074d841.
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

/// Bug 3 over cycles, at a limit of four: hot-plug cycles in which the host ejects a
/// function and never answers its interrupt request must not use up the request table.
///
/// RELAY BUG 3: fails on the relay of 074d841 (the fourth hot-add's QUERY_RESOURCE_REQUIREMENTS is refused).
#[test]
fn bug3_hot_plug_cycles_do_not_fill_the_table() {
    let bounds = Bounds {
        relations: 20,
        ejects: 10,
        adds: 10,
        ignores: 10,
        late_answers: 0,
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

/// A slot re-added while the guest still holds its surprise-removed predecessor reaches the
/// guest once the guest has let go of the old function (guarantee 7). The old model found
/// this broken before 2c9b344.
#[test]
fn re_add_during_synthesized_eject_reaches_the_guest() {
    let m = RelayModel::new(SCRIPT, Safeguards::ALL_ON);
    let mut s = m.booted();
    assert_eq!(s.guest.probe, Probe::Done);
    assert!(s.views_agree());
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
    assert!(s.views_agree(), "both functions bound: {s:?}");
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
/// relations.
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
