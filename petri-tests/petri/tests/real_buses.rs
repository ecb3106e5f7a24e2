//! Several buses in one real-driver VM: one kernel process (one `pci-hyperv` module) probes
//! every bus of the scenario, each with its own host side and, through the relay, its own
//! relay. What happens on one bus stays there.

use petri::explore::run_seed;
use petri::outcome::Outcome;
use petri::scenario::{GuestKind, Scenario};

/// Bus 0's host is slow (every answer 2 ms late) and ejects its function while the driver
/// sets up its interrupt, so bus 0's eject work runs while the process context goes on to
/// probe bus 1; bus 1 is a plain host with two functions.
const STALL_AND_EJECT: &str = r#"
name = "two-buses"
title = "A slow host ejecting on bus 0, a plain one on bus 1"
schedules = 3

[[bus]]
name = "slow"
functions = [{ slot = 1 }]
policy = { latency = "2ms" }
[[bus.script.steps]]
when = { received = { message = "CREATE_INTERRUPT_MESSAGE*", slot = 1 } }
action = { kind = "eject", slot = 1 }

[[bus]]
name = "plain"
functions = [{ slot = 1 }, { slot = 2 }]
"#;

/// Bus 0 as C7 (its host tears the BARs down at the eject, a second after boot), bus 1
/// plain.
const PULLED_BARS: &str = r#"
name = "two-buses-c7"
title = "C7 on bus 0, a plain bus 1"
schedules = 2

[[bus]]
name = "pulled"
functions = [{ slot = 1 }]
policy = { teardown = "at_eject" }
[[bus.script.steps]]
when = { at = "1s" }
action = { kind = "eject", slot = 1 }

[[bus]]
name = "plain"
functions = [{ slot = 1 }]
"#;

fn scenario(text: &str) -> Scenario {
    Scenario::from_toml("test", text).unwrap()
}

/// Whether the guest's trace shows bus 1 (PCI domain 2) finding and binding `slots`.
fn bus1_probed(trace: &[String], slots: &[u32]) -> Result<(), String> {
    for slot in slots {
        let found = format!("pci 0002:00:{slot:02x}.0 [");
        let bound = format!("endpoint probe {slot:02x}.0 (domain 0002)");
        if !trace.iter().any(|l| l.contains(&found)) {
            return Err(format!("bus 1 never found slot {slot}"));
        }
        if !trace.iter().any(|l| l.contains(&bound)) {
            return Err(format!("bus 1 never bound a driver to slot {slot}"));
        }
    }
    Ok(())
}

/// Bus 0 stalls and ejects mid-probe; bus 1 probes both its functions normally, directly and
/// through the relay, on every real driver: each run ends clean (bus 0's function gone from
/// the guest as from its host, bus 1's two held), and bus 0's eject fired.
#[test]
fn a_stalling_ejecting_bus_leaves_the_other_alone() {
    let s = scenario(STALL_AND_EJECT);
    for guest in GuestKind::REAL {
        for relay in [false, true] {
            for seed in 0..s.schedules {
                let r = run_seed(&s, guest, relay, seed, false).unwrap();
                let at = format!("{guest} relay={relay} seed {seed}");
                assert_eq!(r.outcome, Outcome::Ok, "{at}: {:#?}", r.guest_trace);
                assert!(r.unfired_steps.is_empty(), "{at}: {:?}", r.unfired_steps);
                if let Err(e) = bus1_probed(&r.guest_trace, &[1, 2]) {
                    panic!("{at}: {e}: {:#?}", r.guest_trace);
                }
            }
        }
    }
}

/// C7 on bus 0 of two: directly the driver's remove reads bus 0's pulled BAR, and the failure
/// is bus 0's; through the relay nothing fails. Bus 1 probed in both.
#[test]
fn a_failure_on_one_bus_is_that_bus_s() {
    let s = scenario(PULLED_BARS);
    for guest in [GuestKind::Debian510, GuestKind::Debian61] {
        for seed in 0..s.schedules {
            let direct = run_seed(&s, guest, false, seed, false).unwrap();
            assert!(
                matches!(&direct.outcome, Outcome::Guest { bus: 0, failure, .. } if failure == "unbacked_access"),
                "{guest} seed {seed}: {:?}",
                direct.outcome
            );
            bus1_probed(&direct.guest_trace, &[1]).unwrap();
            let relayed = run_seed(&s, guest, true, seed, false).unwrap();
            assert_eq!(relayed.outcome, Outcome::Ok, "{guest} seed {seed}");
            bus1_probed(&relayed.guest_trace, &[1]).unwrap();
        }
    }
}
