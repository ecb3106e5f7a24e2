//! The race catalogue through petri: every built-in scenario, on both guest models, direct and
//! through the relay, over a fixed number of seeded schedules, against its expectations (the
//! unfixed guest fails where the catalogue says it does; nothing fails through the relay).

use petri::explore::{Strategy, check, explore};
use petri::scenario::{GuestKind, catalogue};

/// Schedules per combination in the test suite (the flowey pipeline runs more).
const SCHEDULES: u64 = 60;

fn run(name: &str) {
    let scenario = catalogue()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no built-in scenario {name}"));
    let mut problems = Vec::new();
    for guest in GuestKind::ALL {
        for relay in [false, true] {
            let n = SCHEDULES.min(scenario.schedules);
            let summary = explore(
                &scenario,
                guest,
                relay,
                n,
                Strategy::Random { first_seed: 0 },
                |_| {},
            )
            .unwrap();
            eprintln!(
                "{name} {guest} relay={relay}: {:?} first {:?}",
                summary.outcomes, summary.first_failure
            );
            if let Err(e) = check(&scenario, guest, &summary) {
                problems.push(format!(
                    "{guest} {}: {e}",
                    if relay { "relay" } else { "direct" }
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{name}: {problems:#?}");
}

/// Every built-in scenario file parses.
#[test]
fn builtins_parse() {
    assert_eq!(catalogue().len(), 9);
}

#[test]
fn c1() {
    run("c1");
}
#[test]
fn c2() {
    run("c2");
}
#[test]
fn c2_failed() {
    run("c2-failed");
}
#[test]
fn c3() {
    run("c3");
}
#[test]
fn c4() {
    run("c4");
}
#[test]
fn c5() {
    run("c5");
}
#[test]
fn c7() {
    run("c7");
}
#[test]
fn re_add() {
    run("re-add");
}
#[test]
fn drop_then_eject() {
    run("drop-then-eject");
}
