//! host_sim, `openhcl-vpci` and a Linux guest model in three processes, over the control
//! plane and ring channels of real memfds and eventfds (the endpoints and rig are
//! `vpci_endpoints`'). Every wait is bounded: a hang fails the test instead of blocking the
//! suite.

use std::time::{Duration, Instant};
mod common;

use common::{inspect, no_guest_failure, no_timer_thread};
use vpci_endpoints::rig::Rig;

/// The re-executed host or guest endpoint (does nothing in a normal test run).
#[test]
fn child_role() {
    vpci_endpoints::rig::child_role();
}

const LIMIT: Duration = Duration::from_secs(60);

fn start(test: &str, host: &str, service_args: &[&str], guest: &str) -> Rig {
    common::start(test, host, service_args, guest, &[])
}

/// (1) The guest probes a bus of two functions through the service; inspect shows it; on
/// SIGTERM the service closes the bus in order (the guest removes and releases it) and exits.
/// The service never starts a timer thread for the relay's deadlines.
#[test]
fn guest_probes_two_functions_through_the_service() {
    let mut rig = start("probe", "buses=1,functions=2", &[], "model=6.2");
    rig.guest.expect_line(LIMIT, |l| l == "guest probed bus0");
    rig.guest
        .expect_line(LIMIT, |l| l == "guest devices bus0 2");
    let tree = inspect(&rig, "buses/bus0");
    assert!(tree.contains("\"guest_state\": \"Open\""), "{tree}");
    // The relay calls the probe done once the bus has been quiet for the settle window.
    let start = Instant::now();
    loop {
        let phase = inspect(&rig, "buses/bus0/relay/guest");
        if phase.contains("installed") {
            break;
        }
        assert!(start.elapsed() < LIMIT, "{phase}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The relay's timers (its deadlines for the host's answers, the settle window) were the
    // bus thread's own loop timeout: no `futures-timer` thread was ever started.
    no_timer_thread(&rig);
    no_guest_failure(&rig);
    rig.service.signal(rustix::process::Signal::TERM);
    let status = rig.service.wait_exit(LIMIT);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    rig.guest
        .expect_line(LIMIT, |l| l.starts_with("guest released bus0 failed=false"));
    no_guest_failure(&rig);
}

/// Cycles per bus in the model storms; `OPENHCL_VPCI_STORM` overrides (2,500 in
/// `cargo xflowey storm`).
fn storm_cycles(default: u32) -> u32 {
    std::env::var("OPENHCL_VPCI_STORM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Hot-add/eject cycles on `buses` buses at once against `model`, then the storm's checks
/// ([`common::storm_kept_every_promise`]: every cycle ran, the guest heard of at least a fifth
/// of the hot-adds, no guest failure, nothing lost once quiet).
fn storm(test: &str, model: &str, buses: usize, cycles: u32) {
    let rig = start(
        test,
        &format!("buses={buses},functions=1,storm={cycles}"),
        &[],
        &format!("model={model}"),
    );
    let limit = Duration::from_secs(60) + Duration::from_millis(u64::from(cycles) * 200);
    let started = Instant::now();
    common::storm_kept_every_promise(&rig, buses, cycles, limit, 5);
    eprintln!(
        "{model}: {} cycles in {:?}; bus0 counters: {}",
        buses as u64 * u64::from(cycles),
        started.elapsed(),
        inspect(&rig, "buses/bus0/relay/counters")
    );
}

/// (2) The storm on 4 buses at once against the unfixed 6.2 model.
#[test]
fn hot_plug_storm_across_four_buses() {
    storm("storm-6.2", "6.2", 4, storm_cycles(125));
}

/// (2b) The same storm against the fixed 6.3 model, on 2 buses.
#[test]
fn hot_plug_storm_linux_63() {
    storm("storm-6.3", "6.3", 2, storm_cycles(60));
}

/// (3) The host process dies while the guest probes (every host answer takes 20 ms): the
/// relay ends the bus in order, the guest removes and releases it, nothing hangs.
#[test]
fn host_killed_mid_probe() {
    let mut rig = start(
        "host-kill",
        "buses=2,functions=2,latency_ms=20",
        &[],
        "model=6.2",
    );
    rig.guest.expect_line(LIMIT, |l| l == "guest offer bus1");
    std::thread::sleep(Duration::from_millis(60));
    rig.host.child.kill().expect("kill host");
    assert!(rig.host.wait_exit(LIMIT).is_some());
    for bus in ["bus0", "bus1"] {
        rig.guest
            .expect_line(LIMIT, |l| l.starts_with(&format!("guest released {bus} ")));
    }
    no_guest_failure(&rig);
    let tree = inspect(&rig, "");
    assert!(tree.contains("\"host\": \"gone\""), "{tree}");
    // The service is still up, and stops cleanly on SIGTERM.
    rig.service.signal(rustix::process::Signal::TERM);
    let status = rig.service.wait_exit(LIMIT);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// (4) The service dies while the guest probes: the guest sees its buses rescinded (the
/// rings and the control connection end), removes them, and exits; nothing hangs.
#[test]
fn service_killed_mid_probe() {
    let mut rig = start(
        "service-kill",
        "buses=2,functions=2,latency_ms=20",
        &[],
        "model=6.3",
    );
    rig.guest.expect_line(LIMIT, |l| l == "guest offer bus1");
    std::thread::sleep(Duration::from_millis(60));
    rig.service.child.kill().expect("kill service");
    rig.guest.expect_line(LIMIT, |l| l == "guest service gone");
    let exit = rig
        .guest
        .expect_line(LIMIT, |l| l.starts_with("guest exit"));
    assert_eq!(
        exit,
        "guest exit violations=0 unremoved=[]",
        "{:?}",
        rig.guest.seen()
    );
    no_guest_failure(&rig);
    assert!(rig.guest.wait_exit(LIMIT).is_some());
    rig.host.expect_line(LIMIT, |l| l == "host service gone");
}

/// (5) A bus rescinded and offered again 100 times while the guest takes 5 ms to release
/// it: the service holds each re-offer until the release (the guest never sees an offer of
/// a bus it still holds), and every round completes.
#[test]
fn reoffer_held_until_the_slow_guest_releases() {
    let rig = start(
        "reoffer",
        "buses=1,functions=1,reoffer=100",
        &[],
        "model=6.3,release_ms=5",
    );
    rig.host
        .expect_line(Duration::from_secs(120), |l| l.starts_with("reoffer bus0 "));
    assert_eq!(
        rig.host.seen().iter().find(|l| l.starts_with("reoffer")),
        Some(&"reoffer bus0 done=100".to_owned())
    );
    no_guest_failure(&rig);
    let held = inspect(&rig, "buses/bus0/held_reoffers");
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
