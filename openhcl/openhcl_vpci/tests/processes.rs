//! host_sim, `openhcl-vpci` and a Linux guest model in three processes, over the control
//! plane and ring channels of real memfds and eventfds. Every wait is bounded: a hang fails
//! the test instead of blocking the suite.

mod support;

use std::time::Duration;
use support::Rig;

/// The re-executed host or guest endpoint (does nothing in a normal test run).
#[test]
fn child_role() {
    support::child_role();
}

const LIMIT: Duration = Duration::from_secs(60);

/// (1) The guest probes a bus of two functions through the service; inspect shows it; on
/// SIGTERM the service closes the bus in order (the guest removes and releases it) and exits.
#[test]
fn guest_probes_two_functions_through_the_service() {
    let mut rig = Rig::start("probe", "buses=1,functions=2", &[], "model=6.2");
    rig.guest.wait_for(LIMIT, |l| l == "guest probed bus0");
    rig.guest.wait_for(LIMIT, |l| l == "guest devices bus0 2");
    let tree = rig.inspect("buses/bus0");
    assert!(tree.contains("\"guest_state\": \"Open\""), "{tree}");
    // The relay calls the probe done once the bus has been quiet for the settle window.
    let start = std::time::Instant::now();
    loop {
        let phase = rig.inspect("buses/bus0/relay/guest");
        if phase.contains("installed") {
            break;
        }
        assert!(start.elapsed() < LIMIT, "{phase}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !rig.guest
            .seen()
            .iter()
            .any(|l| l.starts_with("guest failure") || l.starts_with("guest violation")),
        "{:?}",
        rig.guest.seen()
    );
    rig.service.signal(rustix::process::Signal::TERM);
    assert!(rig.service.wait_exit(LIMIT).success());
    rig.guest
        .wait_for(LIMIT, |l| l.starts_with("guest released bus0 failed=false"));
    no_guest_failure(&rig);
}

fn no_guest_failure(rig: &Rig) {
    let seen = rig.guest.seen();
    assert!(
        !seen
            .iter()
            .any(|l| l.starts_with("guest failure") || l.starts_with("guest violation")),
        "{seen:?}"
    );
}

/// Cycles per bus in [`hot_plug_storm_across_four_buses`]; `OPENHCL_VPCI_STORM` overrides.
fn storm_cycles() -> u32 {
    std::env::var("OPENHCL_VPCI_STORM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(125)
}

/// (2) Hot-add/eject cycles on 4 buses at once against the 6.2 model: no guest failure and
/// every host EJECT answered by the guest's EJECTION_COMPLETE through the relay.
#[test]
fn hot_plug_storm_across_four_buses() {
    let cycles = storm_cycles();
    let rig = Rig::start(
        "storm",
        &format!("buses=4,functions=1,storm={cycles}"),
        &[],
        "model=6.2",
    );
    let limit = Duration::from_secs(60) + Duration::from_millis(u64::from(cycles) * 200);
    let start = std::time::Instant::now();
    for bus in 0..4 {
        rig.host
            .wait_for(limit, |l| l.starts_with(&format!("storm bus{bus} ")));
    }
    eprintln!("{} cycles in {:?}", 4 * cycles, start.elapsed());
    eprintln!(
        "bus0 counters: {}",
        rig.inspect("buses/bus0/relay/counters")
    );
    for bus in 0..4 {
        let line = format!("storm bus{bus} cycles={cycles} answered={cycles} unanswered=0");
        assert!(rig.host.seen().contains(&line), "{:?}", rig.host.seen());
    }
    no_guest_failure(&rig);
}

/// (3) The host process dies while the guest probes (every host answer takes 20 ms): the
/// relay ends the bus in order, the guest removes and releases it, nothing hangs.
#[test]
fn host_killed_mid_probe() {
    let mut rig = Rig::start(
        "host-kill",
        "buses=2,functions=2,latency_ms=20",
        &[],
        "model=6.2",
    );
    rig.guest.wait_for(LIMIT, |l| l == "guest offer bus1");
    std::thread::sleep(Duration::from_millis(60));
    rig.host.child.kill().expect("kill host");
    rig.host.wait_exit(LIMIT);
    for bus in ["bus0", "bus1"] {
        rig.guest
            .wait_for(LIMIT, |l| l.starts_with(&format!("guest released {bus} ")));
    }
    no_guest_failure(&rig);
    let tree = rig.inspect("");
    assert!(tree.contains("\"host\": \"gone\""), "{tree}");
    // The service is still up, and stops cleanly on SIGTERM.
    rig.service.signal(rustix::process::Signal::TERM);
    assert!(rig.service.wait_exit(LIMIT).success());
}

/// (4) The service dies while the guest probes: the guest sees its buses rescinded (the
/// rings and the control connection end), removes them, and exits; nothing hangs.
#[test]
fn service_killed_mid_probe() {
    let mut rig = Rig::start(
        "service-kill",
        "buses=2,functions=2,latency_ms=20",
        &[],
        "model=6.3",
    );
    rig.guest.wait_for(LIMIT, |l| l == "guest offer bus1");
    std::thread::sleep(Duration::from_millis(60));
    rig.service.child.kill().expect("kill service");
    rig.guest.wait_for(LIMIT, |l| l == "guest service gone");
    let exit = rig.guest.wait_for(LIMIT, |l| l.starts_with("guest exit"));
    assert_eq!(
        exit,
        "guest exit violations=0 unremoved=[]",
        "{:?}",
        rig.guest.seen()
    );
    no_guest_failure(&rig);
    rig.guest.wait_exit(LIMIT);
    rig.host.wait_for(LIMIT, |l| l == "host service gone");
}

/// (5) A bus rescinded and offered again 100 times while the guest takes 5 ms to release
/// it: the service holds each re-offer until the release (the guest never sees an offer of
/// a bus it still holds), and every round completes.
#[test]
fn reoffer_held_until_the_slow_guest_releases() {
    let rig = Rig::start(
        "reoffer",
        "buses=1,functions=1,reoffer=100",
        &[],
        "model=6.3,release_ms=5",
    );
    rig.host
        .wait_for(Duration::from_secs(120), |l| l.starts_with("reoffer bus0 "));
    assert_eq!(
        rig.host.seen().iter().find(|l| l.starts_with("reoffer")),
        Some(&"reoffer bus0 done=100".to_owned())
    );
    no_guest_failure(&rig);
    let held = rig.inspect("buses/bus0/held_reoffers");
    let held: u64 = held.trim().trim_matches('"').parse().unwrap_or(0);
    assert!(held > 0, "no re-offer was ever held: {held}");
    let offers = rig
        .guest
        .seen()
        .iter()
        .filter(|l| *l == "guest offer bus0")
        .count();
    assert_eq!(offers, 101);
}
