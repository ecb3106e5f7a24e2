//! host_sim, `openhcl-vpci` and a Linux guest model in three processes, over the control
//! plane and ring channels of real memfds and eventfds (the endpoints and rig are
//! `vpci_endpoints`'). Every wait is bounded: a hang fails the test instead of blocking the
//! suite.

use std::time::{Duration, Instant};
use vpci_endpoints::report::{GuestState, HostState, StormSummary};
use vpci_endpoints::rig::{Launch, Rig, RigSpec, ServiceExe};
use vpci_protocol::WinSlot;

/// The re-executed host or guest endpoint (does nothing in a normal test run).
#[test]
fn child_role() {
    vpci_endpoints::rig::child_role();
}

const LIMIT: Duration = Duration::from_secs(60);

/// Starts host (`host`), service (`service_args` added) and model guest (`guest`), the
/// endpoints being this test binary re-executed.
fn start(test: &str, host: &str, service_args: &[&str], guest: &str) -> Rig {
    let spec = RigSpec {
        launch: Launch::this_test().expect("this test's executable"),
        service: ServiceExe::Binary(env!("CARGO_BIN_EXE_openhcl-vpci").into()),
        host: host.to_owned(),
        guest: guest.to_owned(),
        service_args: service_args.iter().map(|&a| a.to_owned()).collect(),
        service_log: "info",
        verbose: std::env::var_os("OPENHCL_VPCI_TEST_LOG").is_some(),
    };
    match Rig::start(&format!("openhcl-vpci-{test}"), &spec) {
        Ok(rig) => rig,
        Err(e) => panic!("{test}: {e}"),
    }
}

fn inspect(rig: &Rig, path: &str) -> String {
    match rig.inspect(path) {
        Ok(tree) => tree,
        Err(e) => panic!("{e}"),
    }
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

/// (1) The guest probes a bus of two functions through the service; inspect shows it; on
/// SIGTERM the service closes the bus in order (the guest removes and releases it) and exits.
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

/// Hot-add/eject cycles on `buses` buses at once against `model`, then the checks: every
/// cycle ran on every bus (counted by the host: each hot-add made, each EJECT answered by the
/// guest's EJECTION_COMPLETE through the relay, none timed out), the guest heard of the
/// hot-added function in at least a fifth of them (the relay coalesces an add ejected before
/// the guest heard of it), no guest failure, and no lost event: once quiet, the guest holds
/// exactly what the host lists on each bus.
fn storm(test: &str, model: &str, buses: usize, cycles: u32) {
    let rig = start(
        test,
        &format!("buses={buses},functions=1,storm={cycles}"),
        &[],
        &format!("model={model}"),
    );
    let limit = Duration::from_secs(60) + Duration::from_millis(u64::from(cycles) * 200);
    let started = Instant::now();
    let mut summaries = Vec::new();
    for bus in 0..buses {
        let prefix = format!("storm bus{bus} ");
        let line = rig.host.expect_line(limit, |l| l.starts_with(&prefix));
        match StormSummary::parse(&line) {
            Some(s) => summaries.push(s),
            None => panic!("not a storm summary: {line}"),
        }
    }
    eprintln!(
        "{model}: {} cycles in {:?}; bus0 counters: {}",
        buses as u64 * u64::from(cycles),
        started.elapsed(),
        inspect(&rig, "buses/bus0/relay/counters")
    );
    for s in &summaries {
        assert_eq!(s.cycles, cycles, "{s:?}");
        assert!(s.complete(), "{s:?}");
    }
    assert!(rig.wait_quiet(Duration::from_millis(750), Instant::now() + LIMIT));
    let (host, guest) = (rig.host.seen(), rig.guest.seen());
    for i in 0..buses {
        let bus = format!("bus{i}");
        let arrivals = GuestState::arrivals(&guest, &bus, WinSlot::from_raw(1));
        assert!(
            arrivals >= cycles as usize / 5,
            "{bus}: the guest heard of {arrivals} of {cycles} hot-adds"
        );
        let (h, g) = (HostState::last(&host, &bus), GuestState::last(&guest, &bus));
        let (Some(h), Some(g)) = (h, g) else {
            panic!("{bus}: no final state (host {host:?}, guest {guest:?})");
        };
        assert!(h.ejecting.is_empty(), "{h:?}");
        assert!(g.probed && !g.closed, "{g:?}");
        assert_eq!(h.functions, g.held, "{bus}: host and guest disagree");
    }
    no_guest_failure(&rig);
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
