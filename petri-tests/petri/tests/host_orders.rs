//! Orders of host actions beyond the race catalogue (`tests/host_orders/*.toml`): EJECTs,
//! re-listings, drops, duplicates, failures, delays and rescinds inside the probe, on one bus
//! or two, chaotic or scripted. Each file states what it expects: through the relay the
//! models (6.2, 6.3) and the real 5.10 driver pass every schedule, and directly the 6.2 model
//! fails at least one (so the order reaches a race the relay must close). A step a file needs
//! that never fires fails it, as in `petri run`.

use petri::explore::{Strategy, check, explore};
use petri::scenario::{GuestKind, load};

/// Runs `file` on `guest` (`relay` or direct) for `schedules` seeded schedules and checks the
/// file's expectation.
fn expect(file: &str, guest: GuestKind, relay: bool, schedules: u64) {
    let scenario = match load(file) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let strategy = Strategy::Random { first_seed: 0 };
    let summary = match explore(&scenario, guest, relay, schedules, strategy, |_| {}) {
        Ok(s) => s,
        Err(e) => panic!("{file} {} relay={relay}: {e}", guest.name()),
    };
    assert!(
        scenario.expectation(guest, relay).is_some(),
        "{file} states no expectation for {} relay={relay}",
        guest.name()
    );
    if let Err(e) = check(&scenario, guest, &summary) {
        panic!("{file} {} relay={relay}: {e}", guest.name());
    }
}

/// Every file in the directory, sorted.
fn files() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/host_orders");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("tests/host_orders")
        .filter_map(|e| Some(e.ok()?.path().to_str()?.to_owned()))
        .filter(|p| p.ends_with(".toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 13, "{files:?}");
    files
}

#[test]
fn the_models_pass_through_the_relay_and_6_2_fails_directly() {
    for file in files() {
        expect(&file, GuestKind::Linux62, true, 20);
        expect(&file, GuestKind::Linux63, true, 20);
        expect(&file, GuestKind::Linux62, false, 20);
    }
}

#[test]
fn the_real_510_driver_passes_through_the_relay() {
    for file in files() {
        expect(&file, GuestKind::Debian510, true, 2);
    }
}
