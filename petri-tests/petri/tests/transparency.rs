//! The relay is transparent to a fixed guest (issue 13, "Debian 13's driver"): on benign host
//! orders the real Debian 6.1 and 6.12 drivers do the same things with devices through the
//! relay as directly (the same functions found with the same identities, the same resources
//! assigned and released, the same functions let go, in the same order), over several seeds.

use petri::explore::run_seed;
use petri::outcome::Outcome;
use petri::scenario::{GuestKind, Scenario};

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

/// The same device history with and without the relay, for each fixed real driver.
#[test]
fn fixed_real_drivers_see_the_same_devices_through_the_relay() {
    let scenario = Scenario::from_toml("benign", BENIGN).expect("scenario");
    for guest in [GuestKind::Debian61, GuestKind::Debian612] {
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
