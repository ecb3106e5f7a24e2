//! Model check of the real `BusRelay` (see `model/mod.rs`).

mod model;

use model::*;
use stateright::{Checker, Model};
use std::time::Instant;
use vpci_relay::Safeguards;

const G1: &str = "G1 one change at a time";
const G2: &str = "G2 eject only when settled";
const G3: &str = "G3 never announce a removed function";
const G5: &str = "G5 rescind ends with CloseGuest";
const G7: &str = "G7 every request exactly one completion";

/// Prints a counterexample: each action and what it made the relay send to either side.
fn print_path(name: &str, path: stateright::Path<State, Action>) {
    println!("counterexample for \"{name}\":");
    let steps = path.into_vec();
    let mut prev: Option<Action> = None;
    let mut last = None;
    for (state, action) in steps {
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

/// Runs the checker and returns it.
fn check(bounds: Bounds, safeguards: Safeguards) -> impl Checker<RelayModel> {
    let start = Instant::now();
    let c = RelayModel::new(bounds, safeguards)
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
    c
}

/// Every property holds for every interleaving within the bounds, with all safeguards on.
#[test]
fn model_check_all_safeguards_on() {
    let c = check(Bounds::SMALL, Safeguards::ALL_ON);
    for (name, path) in c.discoveries() {
        print_path(name, path);
    }
    c.assert_properties();
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
        .finish_when(stateright::HasDiscoveries::AnyFailures)
        .spawn_bfs()
        .join();
    println!(
        "{safeguards:?}: {} unique states, {:?}",
        c.unique_state_count(),
        start.elapsed()
    );
    let mut failed = Vec::new();
    for p in c.model().properties() {
        if p.expectation != stateright::Expectation::Always {
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
