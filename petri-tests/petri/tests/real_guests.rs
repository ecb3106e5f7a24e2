//! The real Linux drivers (Debian 11's 5.10, Debian 12's 6.1, Debian 13's 6.12, run by
//! kernel_shim) as petri
//! guests: the catalogue's expectations for them over a few seeded schedules each (every run
//! is a guest process), C3 on 5.10 by systematic search, replay bit for bit, and the JSON
//! that `petri run --json` prints for them.

mod cli;

use cli::petri;

use petri::explore::{Strategy, check, explore, run_seed};
use petri::scenario::{GuestKind, Scenario, catalogue, load};
use std::process::Output;

/// Seeded schedules per scenario, guest and mode in the suite (the demo and the flowey
/// pipeline run more).
const SCHEDULES: u64 = 8;

fn scenario(name: &str) -> Scenario {
    load(name).unwrap()
}

/// Every expectation a built-in scenario states for a real driver holds over the first
/// seeds: 5.10 fails direct on C3 and C4 (no per-bus state_lock), all three fail direct on C7
/// (no kernel fix), on C5 (the child the relations work recorded leaks when the probe fails)
/// and on a dropped-then-ejected function, 5.10 crashes on a hostile host's unknown completion,
/// 6.12 behaves as 6.1 throughout, and through the relay none ever fails.
#[test]
fn catalogue_expectations_hold_for_the_real_drivers() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for scenario in catalogue() {
        for guest in GuestKind::REAL {
            for relay in [false, true] {
                if scenario.expectation(guest, relay).is_none() {
                    continue;
                }
                let summary = explore(
                    &scenario,
                    guest,
                    relay,
                    SCHEDULES,
                    Strategy::Random { first_seed: 0 },
                    |_| {},
                )
                .unwrap();
                checked += 1;
                if let Err(e) = check(&scenario, guest, &summary) {
                    problems.push(format!("{} {guest} relay={relay}: {e}", scenario.name));
                }
            }
        }
    }
    assert!(checked >= 40, "only {checked} expectations stated");
    assert!(problems.is_empty(), "{problems:#?}");
}

/// C3 (the host ejects a function while the probe path sets it up): 5.10, without the
/// per-bus state_lock, binds a driver to the function after its eject work gave it back to
/// the host, in many of 300 seeded schedules; 6.1 and 6.12 never do.
#[test]
#[ignore = "300 guest processes per driver; run by `cargo xflowey catalogue`"]
fn c3_on_5_10_needs_the_state_lock() {
    let c3 = scenario("c3");
    let on = |guest, strategy, n| explore(&c3, guest, false, n, strategy, |_| {}).unwrap();
    let strategy = Strategy::Random { first_seed: 1000 };
    let old = on(GuestKind::Debian510, strategy, 300);
    assert!(
        old.outcomes.contains_key("ejected_device_access"),
        "{:?}",
        old.outcomes
    );
    for guest in [GuestKind::Debian61, GuestKind::Debian612] {
        let new = on(guest, strategy, 300);
        assert_eq!(new.failures, 0, "{guest}: {:?}", new.first_failure);
    }
}

/// A failing seed of a real driver replays to the same outcome, trace and choices.
#[test]
fn real_guest_replays_bit_for_bit() {
    let c4 = scenario("c4");
    let found = explore(
        &c4,
        GuestKind::Debian510,
        false,
        SCHEDULES,
        Strategy::Random { first_seed: 0 },
        |_| {},
    )
    .unwrap();
    let seed = found.first_failing_seed.expect("a failing seed");
    let a = run_seed(&c4, GuestKind::Debian510, false, seed, true).unwrap();
    let b = run_seed(&c4, GuestKind::Debian510, false, seed, true).unwrap();
    assert_eq!(Some(a.outcome.to_string()), found.first_failure);
    assert_eq!(a.outcome, b.outcome);
    assert_eq!(a.choices, b.choices);
    assert_eq!(a.steps, b.steps);
    let lines = |r: &petri::outcome::RunResult| {
        r.trace
            .as_ref()
            .map(|t| t.lines.iter().map(ToString::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert!(!lines(&a).is_empty());
    assert_eq!(lines(&a), lines(&b));
    assert_eq!(a.guest_trace, b.guest_trace);
}

/// `petri replay` of a real driver's failing seed prints the same bytes twice, with the
/// crash marked and the failure kind on its last line.
#[test]
fn cli_replay_of_a_real_guest_is_stable() {
    let args = ["replay", "--seed", "1", "c7", "--guest", "6.1"];
    let a = petri(&args);
    let b = petri(&args);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    let text = String::from_utf8_lossy(&a.stdout);
    assert!(text.contains("[CRASH]"), "{text}");
    assert!(
        text.lines().last().unwrap().contains("unbacked_access"),
        "{text}"
    );
}

/// `petri run --guest 5.10 --json` prints one object with the documented fields, the real
/// driver's name, and outcomes that add up to the schedules run; through the relay nothing
/// fails and `first_failing_seed` is null.
#[test]
fn run_json_for_a_real_guest() {
    let parse = |out: &Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(text.lines().count(), 1, "{text}");
        serde_json::from_str(text.trim()).unwrap()
    };
    let v = parse(&petri(&[
        "run",
        "c4",
        "--guest",
        "5.10",
        "--direct",
        "--schedules",
        "4",
        "--json",
    ]));
    assert_eq!(v["scenario"], "c4");
    assert_eq!(v["guest"], "debian-5.10");
    assert_eq!(v["relay"], false);
    assert_eq!(v["schedules"], 4);
    let failures = v["failures"].as_u64().unwrap();
    assert!(failures > 0);
    assert!(v["first_failing_seed"].is_u64());
    let outcomes = v["outcomes"].as_object().unwrap();
    let total: u64 = outcomes.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(total, 4);
    // C4 on 5.10: the hot-added function is found unusable, or never found at all.
    let c4_kinds: u64 = ["unresourced_device", "lost_device"]
        .iter()
        .filter_map(|k| outcomes.get(*k).and_then(serde_json::Value::as_u64))
        .sum();
    assert_eq!(c4_kinds, failures, "{outcomes:?}");
    assert!(v["first_failure"].as_str().unwrap().contains("02.0"));

    let v = parse(&petri(&[
        "run",
        "c4",
        "--guest",
        "debian-6.1",
        "--relay",
        "--schedules",
        "4",
        "--json",
    ]));
    assert_eq!(v["guest"], "debian-6.1");
    assert_eq!(v["relay"], true);
    assert_eq!(v["failures"], 0);
    assert!(v["first_failing_seed"].is_null());
    assert_eq!(v["outcomes"]["ok"], 4);

    // Debian 13's driver by its short name: C4 is harmless to it even direct.
    let v = parse(&petri(&[
        "run",
        "c4",
        "--guest",
        "6.12",
        "--direct",
        "--schedules",
        "4",
        "--json",
    ]));
    assert_eq!(v["guest"], "debian-6.12");
    assert_eq!(v["relay"], false);
    assert_eq!(v["failures"], 0);
    assert_eq!(v["outcomes"]["ok"], 4);
}

/// The real guests' names parse in their long and short forms, and a scenario with more buses
/// than one guest process runs (8, the runtime's `KSHIM_MAX_BUS`) is refused for them with a
/// clear error rather than run wrongly. (Several buses run: `real_buses.rs`.)
#[test]
fn names_and_bus_limit() {
    assert_eq!(GuestKind::parse("5.10"), Some(GuestKind::Debian510));
    assert_eq!(GuestKind::parse("debian-6.1"), Some(GuestKind::Debian61));
    assert_eq!(GuestKind::parse("6.12"), Some(GuestKind::Debian612));
    assert_eq!(GuestKind::parse("debian-6.12"), Some(GuestKind::Debian612));
    assert_eq!(GuestKind::parse("linux-6.12"), None);
    assert_eq!(GuestKind::Debian612.name(), "debian-6.12");
    assert_eq!(GuestKind::parse("linux-5.10"), None);
    assert_eq!(GuestKind::parse("debian-6.2"), None);
    let mut nine = scenario("re-add");
    let bus = nine.buses[0].clone();
    nine.buses.resize(9, bus);
    let err = run_seed(&nine, GuestKind::Debian61, false, 0, false).unwrap_err();
    assert!(err.to_string().contains("1 to 8 buses"), "{err}");
}

/// Hot-plug cycles of the long haul: enough to show the shape in the suite, many more in the
/// flowey pipeline (`PETRI_REAL_LONG_HAUL_CYCLES`).
fn long_haul_cycles() -> u32 {
    std::env::var("PETRI_REAL_LONG_HAUL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// The hot-plug long haul against the real Debian 5.10 driver, with and without the relay:
/// the host adds a function and ejects it again as fast as it can (as soon as the run is
/// quiescent), for many cycles in one guest process; every add reaches the guest, every
/// eject leaves it, and the driver's removal and the module's unload leave nothing behind.
/// Prints the figures (cycles, virtual time, wall time, scheduling choices).
#[test]
#[ignore = "a minute or more; run by `cargo xflowey catalogue`"]
fn hot_plug_long_haul_on_debian_5_10() {
    let cycles = long_haul_cycles();
    for relay in [false, true] {
        let started = std::time::Instant::now();
        let haul = petri::real::hot_plug_long_haul(
            kernel_shim::DriverVersion::Debian5_10,
            relay,
            cycles,
            7,
        )
        .unwrap();
        let wall = started.elapsed();
        eprintln!(
            "long haul debian-5.10 {}: {} cycles, outcome {}, {:.1} s virtual, {:.2} s wall \
             ({:.0} cycles/s), {} guest steps",
            if relay { "relay" } else { "direct" },
            haul.cycles,
            haul.result.outcome,
            haul.result.end.as_secs_f64(),
            wall.as_secs_f64(),
            f64::from(haul.cycles) / wall.as_secs_f64(),
            haul.result.steps,
        );
        assert_eq!(haul.cycles, cycles, "{}", haul.result.outcome);
        assert!(!haul.result.outcome.failed(), "{}", haul.result.outcome);
    }
}

/// The real drivers' end state is compared identity by identity, not slot by slot: a host
/// that lists a new serial number in a slot without an eject leaves the unfixed driver with a
/// `pci_dev` of the old function (its PCI core never rescans an occupied slot): a
/// `ghost_device`, though the slot is the host's. Through the relay, which ejects the old
/// function first, the driver holds the new one.
#[test]
fn real_drivers_are_checked_identity_by_identity() {
    let scenario = Scenario::from_toml(
        "reserial",
        r#"
name = "reserial"
title = "A slot re-listed with a new identity"
description = "After the probe the host lists a new serial number in slot 1, without an eject."
schedules = 4

[[bus]]
functions = [{ slot = 1, serial = 3 }]

[[bus.script.steps]]
when = { at = "1s" }
action = { kind = "reserial", slot = 1, serial = 7 }
"#,
    )
    .unwrap();
    for guest in GuestKind::REAL {
        let r = run_seed(&scenario, guest, false, 0, false).unwrap();
        let petri::outcome::Outcome::GhostDevice { held, listed, .. } = r.outcome else {
            panic!("{guest} direct: {:?}", r.outcome);
        };
        assert_eq!((held.vendor_id, held.device_id), (0x15b3, 0x101a));
        assert_eq!(held.serial, 3, "{guest}");
        assert_eq!(listed.map(|l| l.serial), Some(7), "{guest}");
        for seed in 0..4 {
            let r = run_seed(&scenario, guest, true, seed, false).unwrap();
            assert_eq!(
                r.outcome,
                petri::outcome::Outcome::Ok,
                "{guest} relay {seed}"
            );
        }
    }
}
