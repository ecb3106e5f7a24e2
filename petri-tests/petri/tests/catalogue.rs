//! The race catalogue through petri: every built-in scenario, on both guest models, direct and
//! through the relay, over its own number of seeded schedules and over up to 1,000 systematic
//! ones (fewest deviations from the default schedule first), against its expectations: the
//! unfixed guest fails where the catalogue says it does, nothing fails through the relay.

use petri::explore::{Strategy, check, explore};
use petri::scenario::{GuestKind, catalogue};

/// Systematic schedules per combination in the test suite (the flowey pipeline runs more
/// seeded ones).
const SYSTEMATIC: u64 = 1000;

fn run(name: &str) {
    let scenario = catalogue()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no built-in scenario {name}"));
    check_all(&scenario);
    // The same with 1 ms of host latency per message: the relay's settle windows and the
    // races' windows now meet real time. What the relay promises (no failure through it, nor
    // where the guest survives directly) still holds; a race window may close with the host's
    // timing, so a direct failure is not required there.
    let mut slow = scenario.clone();
    slow.expect
        .retain(|e| e.result == petri::scenario::Expected::Pass);
    for bus in &mut slow.buses {
        bus.policy.latency = host_sim::Time(std::time::Duration::from_millis(1));
    }
    slow.name = format!("{name} (1 ms host latency)");
    check_all(&slow);
}

fn check_all(scenario: &petri::scenario::Scenario) {
    let name = &scenario.name;
    let mut problems = Vec::new();
    for guest in GuestKind::ALL {
        for relay in [false, true] {
            let runs = [
                (Strategy::Random { first_seed: 0 }, scenario.schedules),
                (Strategy::Systematic, SYSTEMATIC),
            ];
            for (strategy, n) in runs {
                let summary = explore(scenario, guest, relay, n, strategy, |_| {}).unwrap();
                eprintln!(
                    "{name} {guest} relay={relay} {strategy:?}: {:?} first {:?}",
                    summary.outcomes, summary.first_failure
                );
                if let Err(e) = check(scenario, guest, &summary) {
                    let mode = if relay { "relay" } else { "direct" };
                    problems.push(format!("{guest} {mode} {strategy:?}: {e}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{name}: {problems:#?}");
}

/// Every built-in scenario file parses (the catalogue drops one that does not, so count them
/// against the files in `scenarios/`).
#[test]
fn builtins_parse() {
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"))
        .expect("scenarios directory")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "toml"))
        })
        .count();
    assert_eq!(catalogue().len(), files);
}

#[test]
fn c8() {
    run("c8");
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
#[test]
fn hostile_host() {
    run("hostile-host");
}
#[test]
fn chaos() {
    run("chaos");
}
