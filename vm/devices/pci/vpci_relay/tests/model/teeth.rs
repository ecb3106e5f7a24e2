//! The teeth: with one safeguard of [`Safeguards`] switched off, the checker finds a
//! counterexample at a bound that holds with every safeguard on (see `model_check.rs`'s
//! module documentation, "Teeth").

use super::*;
use crate::print_path;
use stateright::{Checker, Expectation, HasDiscoveries, Model};
use std::time::Instant;
use vpci_relay::Safeguards;

/// Runs the checker (breadth first, one thread: the search order and the counterexample are
/// the same on every run) at `bounds` with the safeguard `off` switches off, until `finish`,
/// and prints how many states it saw and how long it took.
fn check_with_one_off(
    bounds: Bounds,
    off: fn(&mut Safeguards),
    finish: HasDiscoveries,
) -> impl Checker<RelayModel> {
    let mut safeguards = Safeguards::ALL_ON;
    off(&mut safeguards);
    let start = Instant::now();
    let c = RelayModel::new(bounds, safeguards)
        .checker()
        .finish_when(finish)
        .spawn_bfs()
        .join();
    println!(
        "{safeguards:?}: {} unique states, {:?}",
        c.unique_state_count(),
        start.elapsed()
    );
    c
}

/// Runs the checker with one safeguard off until the first failure (one thread, so the search
/// order and the counterexample are the same on every run), prints each counterexample, and
/// returns the failed properties with the failure (if any) the guest died of.
fn teeth(off: fn(&mut Safeguards)) -> Vec<(&'static str, Option<Failure>)> {
    teeth_at(Bounds::SMALL, off)
}

/// [`teeth`] at another bound (one that holds with every safeguard on).
fn teeth_at(bounds: Bounds, off: fn(&mut Safeguards)) -> Vec<(&'static str, Option<Failure>)> {
    let c = check_with_one_off(bounds, off, HasDiscoveries::AnyFailures);
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

/// Teeth of guarantee 2's wait: without it, a guest whose vCPU sits in a config read the
/// device is slow on looks quiet once the settle window has passed, and a change (an EJECT
/// or relations adding a function) reaches it mid-read (`ChangeDuringAccess`).
#[test]
fn teeth_accesses_hold_the_bus() {
    let failed = teeth_at(Bounds::SLOW_READ, |s| s.accesses_hold_the_bus = false);
    assert!(
        failed
            .iter()
            .any(|(_, f)| matches!(f, Some(Failure::ChangeDuringAccess(_)))),
        "{failed:?}"
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

/// Runs the checker with one safeguard off until it finds a counterexample for `property`
/// (one thread), prints it, and returns whether it found one.
fn teeth_for(bounds: Bounds, off: fn(&mut Safeguards), property: &'static str) -> bool {
    let c = check_with_one_off(bounds, off, HasDiscoveries::AnyOf([property].into()));
    let found = c.discovery(property);
    let is_found = found.is_some();
    if let Some(path) = found {
        print_path(property, path);
    }
    is_found
}

/// Teeth of guarantee 8 for writes, at the default bound (which holds with every safeguard
/// on): without the shield, a config write that follows a read across the host's removal of
/// the function (an EJECT or a rescind; the read forwarded while the host had it, the write
/// after: the root-bus scan's BAR sizing) is forwarded to the torn-down device.
#[test]
fn teeth_removal_shield_writes() {
    assert!(teeth_for(
        Bounds::DEFAULT,
        |s| s.removal_shield = false,
        WRITES_SHIELDED
    ));
}
