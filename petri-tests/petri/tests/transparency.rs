//! The relay is transparent to a fixed guest (issue 13, "Debian 13's driver"): on benign host
//! orders the real Debian 6.1 and 6.12 drivers and the Linux 6.3 model do the same things with
//! devices through the relay as directly (the same functions found with the same identities,
//! the same resources assigned and released, the same functions let go, in the same order),
//! over several seeds, on the scenario below and on every benign built-in scenario.

use petri::explore::run_seed;
use petri::outcome::Outcome;
use petri::scenario::{Expected, GuestKind, Scenario, builtin_text, catalogue};

/// The fixed guests: the real drivers with the 2023 series, and its model.
const FIXED: [GuestKind; 3] = [
    GuestKind::Linux63,
    GuestKind::Debian61,
    GuestKind::Debian612,
];

/// A boot with two functions, a hot-add, an eject of a booted function, and a function
/// replaced by an eject and a hot-add with a new serial number: each change waits for the
/// guest to be done with the one before, as a host that is not racing does.
const BENIGN: &str = r#"
name = "benign"
title = "a boot, a hot-add, an eject, a replacement"

[[bus]]
functions = [{ slot = 1 }, { slot = 2, serial = 2 }]

[[bus.script.steps]]
when = { at = "2s" }
action = { kind = "hot_add", slot = 3, serial = 3 }

[[bus.script.steps]]
when = { at = "4s" }
action = { kind = "eject", slot = 2 }

[[bus.script.steps]]
when = { at = "6s" }
action = { kind = "eject", slot = 1 }

[[bus.script.steps]]
when = { at = "8s" }
action = { kind = "hot_add", slot = 1, serial = 11 }
"#;

fn history(scenario: &Scenario, guest: GuestKind, relay: bool, seed: u64) -> Vec<String> {
    let r = run_seed(scenario, guest, relay, seed, false)
        .unwrap_or_else(|e| panic!("{guest} relay={relay} seed {seed}: {e}"));
    assert_eq!(
        r.outcome,
        Outcome::Ok,
        "{guest} relay={relay} seed {seed}: {:?}",
        r.guest_trace.last()
    );
    assert!(r.unfired_steps.is_empty(), "{:?}", r.unfired_steps);
    r.device_history
}

/// The same device history with and without the relay, for each fixed guest, real or
/// modelled.
#[test]
fn fixed_guests_see_the_same_devices_through_the_relay() {
    let scenario = Scenario::from_toml("benign", BENIGN).expect("scenario");
    for guest in FIXED {
        for seed in 0..3 {
            let direct = history(&scenario, guest, false, seed);
            let relayed = history(&scenario, guest, true, seed);
            assert!(
                direct.iter().any(|l| l.contains("found 03.0"))
                    && direct.iter().any(|l| l.contains("let go 02.0"))
                    && direct.iter().any(|l| l.contains("serial 11")),
                "{guest} seed {seed}: the run did not reach every change: {direct:#?}"
            );
            assert_eq!(
                direct, relayed,
                "{guest} seed {seed}: direct (left) and through the relay (right) differ"
            );
        }
    }
}

/// A built-in scenario is benign for `guest` when its host only changes devices as a
/// conformant host may (ejects, hot-adds, new identities, relations changes: no rescind,
/// no protocol breach, no chaos, where the relay changes what the guest sees by design) and
/// the scenario expects `guest` to pass through the relay and not to fail directly (re-add
/// says nothing of 6.3 direct; every run must still end clean, `history` checks).
fn benign_for(scenario: &Scenario, guest: GuestKind) -> bool {
    let text = builtin_text(&scenario.name).unwrap_or_default();
    let conformant = ["kind = \"rescind\"", "kind = \"hostile\"", "[chaos]"]
        .iter()
        .all(|k| !text.contains(k));
    let expected = |relay| scenario.expectation(guest, relay).map(|e| e.result);
    conformant && expected(true) == Some(Expected::Pass) && expected(false) != Some(Expected::Fail)
}

/// Every benign built-in scenario: each fixed guest's device history is the same with and
/// without the relay, and it is not empty (the guest found a function at least).
#[test]
fn benign_builtin_scenarios_are_transparent_to_fixed_guests() {
    let mut covered = Vec::new();
    for scenario in catalogue() {
        for guest in FIXED {
            if !benign_for(&scenario, guest) {
                continue;
            }
            for seed in 0..3 {
                let direct = history(&scenario, guest, false, seed);
                let relayed = history(&scenario, guest, true, seed);
                let at = format!("{} {guest} seed {seed}", scenario.name);
                assert!(
                    direct.iter().any(|l| l.contains(": found ")),
                    "{at}: no device history: {direct:#?}"
                );
                assert_eq!(
                    direct, relayed,
                    "{at}: direct (left) and through the relay (right) differ"
                );
            }
            covered.push(format!("{} {guest}", scenario.name));
        }
    }
    // The built-ins that are benign today (a scenario that stops being so drops out here).
    for name in ["c2", "c2-failed", "c3", "c4", "re-add"] {
        for guest in FIXED {
            let entry = format!("{name} {guest}");
            assert!(covered.contains(&entry), "{entry} not covered: {covered:?}");
        }
    }
}
