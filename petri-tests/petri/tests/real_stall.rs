//! `[guest] stall` and `[[check]]` on the real drivers (issue 13, item 2): the model version
//! is tests/stall.rs. Two buses in one real-driver VM; the driver on bus 0 stalls at 2 s
//! (the controller runs none of bus 0's kernel contexts and delivers nothing to it until the
//! run settles); the host then ejects bus 0's function and hot-adds one on bus 1. Bus 1's
//! driver finds and probes its new function as if nothing happened; through the relay the
//! host's EJECT on bus 0 is answered at its deadline by the relay itself, and the relay's
//! inspect tree shows the stall. Directly, the host waits out its 60 s on bus 0.

use petri::explore::run_seed;
use petri::outcome::Outcome;
use petri::scenario::{GuestKind, Scenario};

const STALL: &str = include_str!("data/stall-one-bus.toml");

/// Whether the guest's trace shows bus 1's driver (PCI domain 2) finding `slot` in its
/// scan and giving it its slot number, as its relations work does for a hot-added function.
fn bus1_found(trace: &[String], slot: u32) -> bool {
    let found = format!("pci 0002:00:{slot:02x}.0 [");
    let numbered = "wq:hv_pci_2";
    trace
        .iter()
        .any(|l| l.contains(&found) && l.contains(numbered))
        && trace
            .iter()
            .any(|l| l.contains(numbered) && l.contains(&format!("slot {slot} created")))
}

/// Bus 0's kernel contexts (its channel tasklet, its workqueue `hv_pci_1`): what they logged
/// from 2 s until the stall was lifted, and after.
fn bus0_lines(trace: &petri::trace::Trace) -> (Vec<String>, Vec<String>) {
    let bus0 = |label: &str| label.contains("tasklet:bus0") || label.contains("wq:hv_pci_1");
    let lift = trace
        .lines
        .iter()
        .position(|l| l.label.contains("the stalled driver goes on"))
        .expect("the stall is lifted when the run settles");
    let during = trace.lines[..lift]
        .iter()
        .filter(|l| l.at >= std::time::Duration::from_secs(2) && bus0(&l.label))
        .map(|l| format!("{:?} {}", l.at, l.label))
        .collect();
    let after = trace.lines[lift..]
        .iter()
        .filter(|l| bus0(&l.label))
        .map(|l| format!("{:?} {}", l.at, l.label))
        .collect();
    (during, after)
}

/// Through the relay, bus 0's stall costs bus 1 nothing: its hot-added function is found
/// and probed, every check of the relay's trees holds (bus 0's EJECT answered at the
/// deadline, its function shielded), on every real driver. Directly, the host's EJECT on
/// the stalled bus goes unanswered.
#[test]
fn a_stalled_real_driver_leaves_the_other_bus_alone() {
    let scenario = Scenario::from_toml("stall-one-bus", STALL).expect("scenario");
    for guest in GuestKind::REAL {
        for seed in 0..2 {
            let r = run_seed(&scenario, guest, true, seed, true).expect("run");
            let at = format!("{guest} relay seed {seed}");
            assert_eq!(r.outcome, Outcome::Ok, "{at}: {:#?}", r.guest_trace);
            assert!(r.unfired_steps.is_empty(), "{at}: {:?}", r.unfired_steps);
            assert!(
                bus1_found(&r.guest_trace, 2),
                "{at}: bus 1's relations work never found its new function: {:#?}",
                r.guest_trace
            );
            let (during, after) = bus0_lines(r.trace.as_ref().expect("recorded"));
            assert!(
                during.is_empty(),
                "{at}: bus 0 ran while stalled: {during:#?}"
            );
            assert!(
                !after.is_empty(),
                "{at}: bus 0 never went on after the stall"
            );
        }
        let direct = run_seed(&scenario, guest, false, 0, false).expect("run");
        assert!(
            matches!(direct.outcome, Outcome::EjectUnanswered { bus: 0, .. }),
            "{guest} direct: {}",
            direct.outcome
        );
        assert!(bus1_found(&direct.guest_trace, 2), "{guest} direct");
    }
}

/// A stall with a duration ends on time: directly, the driver on bus 0 then answers the
/// host's EJECT itself, within the host's 60 s, and the run ends clean.
#[test]
fn a_stall_for_a_while_ends_on_time() {
    let text = STALL.replace(
        "stall = { bus = 0, at = \"2s\" }",
        "stall = { bus = 0, at = \"2s\", for = \"5s\" }",
    );
    let scenario = Scenario::from_toml("stall-a-while", &text).expect("scenario");
    let r = run_seed(&scenario, GuestKind::Debian61, false, 0, true).expect("run");
    assert_eq!(r.outcome, Outcome::Ok, "{:#?}", r.guest_trace);
    let trace = r.trace.expect("recorded");
    let bus0 = |l: &&petri::trace::Line| {
        l.label.contains("tasklet:bus0") || l.label.contains("wq:hv_pci_1")
    };
    let first_after = trace
        .lines
        .iter()
        .filter(bus0)
        .map(|l| l.at)
        .find(|&t| t >= std::time::Duration::from_secs(2));
    assert!(
        first_after.is_some_and(|t| t >= std::time::Duration::from_secs(7)),
        "bus 0's driver first runs again when the stall ends: {first_after:?}"
    );
}

/// The models take a stall's duration too: stopped from 2 s for 5 s, the 6.3 model answers
/// the host's EJECT itself when it goes on (direct, within the host's 60 s); stopped for
/// good, it never does.
#[test]
fn a_model_stall_for_a_while_ends_on_time() {
    let a_while = STALL.replace(
        "stall = { bus = 0, at = \"2s\" }",
        "stall = { bus = 0, at = \"2s\", for = \"5s\" }",
    );
    let scenario = Scenario::from_toml("stall-a-while", &a_while).expect("scenario");
    let r = run_seed(&scenario, GuestKind::Linux63, false, 0, false).expect("run");
    assert_eq!(r.outcome, Outcome::Ok);
    let scenario = Scenario::from_toml("stall-for-good", STALL).expect("scenario");
    let r = run_seed(&scenario, GuestKind::Linux63, false, 0, false).expect("run");
    assert!(
        matches!(r.outcome, Outcome::EjectUnanswered { bus: 0, .. }),
        "{}",
        r.outcome
    );
}

/// A stall that begins at boot holds bus 0's probe up: its callback never reads the host's
/// answers, the probe waits for them, and the process context probes the buses one after
/// the other. For a second, the probe then completes and the run ends clean; for good, the
/// run reaches its time limit (the probe is waiting on a bus that never goes on).
#[test]
fn a_stall_from_boot_holds_the_probe() {
    let a_while = STALL.replace("at = \"2s\"", "at = \"0s\", for = \"1s\"");
    let scenario = Scenario::from_toml("stall-at-boot", &a_while).expect("scenario");
    let r = run_seed(&scenario, GuestKind::Debian612, false, 0, true).expect("run");
    assert_eq!(r.outcome, Outcome::Ok, "{:#?}", r.guest_trace);
    let trace = r.trace.expect("recorded");
    let probed_at = trace
        .lines
        .iter()
        .find(|l| l.label.contains("command 2 returned 0"))
        .map(|l| l.at);
    assert!(
        probed_at.is_some_and(|t| t >= std::time::Duration::from_secs(1)),
        "bus 0's probe returned before the stall ended: {probed_at:?}"
    );
    let for_good = STALL.replace("at = \"2s\"", "at = \"0s\"");
    let scenario = Scenario::from_toml("stall-at-boot", &for_good).expect("scenario");
    let r = run_seed(&scenario, GuestKind::Debian612, false, 0, false).expect("run");
    assert_eq!(r.outcome, Outcome::TimeLimit);
}
