//! What the process tests share: starting the three processes (the endpoints are this test
//! binary re-executed; see each file's `child_role`), reading inspect, and the checks a
//! storm ends with. Every wait is bounded.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};
use vpci_endpoints::report::{GuestState, HostState, StormSummary};
use vpci_endpoints::rig::{Launch, Rig, RigSpec, ServiceExe};
use vpci_protocol::WinSlot;

/// The service binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_openhcl-vpci");

/// Starts host (`host` spec), service (`service_args` and `service_env` added) and model
/// guest (`guest` spec); the rig's sockets are named after `test`.
pub fn start(
    test: &str,
    host: &str,
    service_args: &[&str],
    guest: &str,
    service_env: &[(&str, &str)],
) -> Rig {
    let spec = RigSpec {
        launch: Launch::this_test().expect("this test's executable"),
        service: ServiceExe::Binary(BIN.into()),
        host: host.to_owned(),
        guest: guest.to_owned(),
        service_args: service_args.iter().map(|&a| a.to_owned()).collect(),
        service_log: "info",
        verbose: std::env::var_os("OPENHCL_VPCI_TEST_LOG").is_some(),
    };
    match Rig::start_with_env(&format!("openhcl-vpci-{test}"), &spec, service_env) {
        Ok(rig) => rig,
        Err(e) => panic!("{test}: {e}"),
    }
}

/// `openhcl-vpci inspect PATH --json` against the rig's service.
pub fn inspect(rig: &Rig, path: &str) -> String {
    match rig.inspect(path) {
        Ok(tree) => tree,
        Err(e) => panic!("{e}"),
    }
}

/// The service's relay timers are its bus threads' own loop timeouts: the service process
/// has threads, and none of them is `futures-timer`'s.
pub fn no_timer_thread(rig: &Rig) {
    let pid = rig.service.child.id();
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the service's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect();
    assert!(!threads.is_empty());
    assert!(!threads.iter().any(|t| t == "futures-timer"), "{threads:?}");
}

/// The guest reported no failure and no protocol violation.
pub fn no_guest_failure(rig: &Rig) {
    let seen = rig.guest.seen();
    assert!(
        !seen
            .iter()
            .any(|l| l.starts_with("guest failure") || l.starts_with("guest violation")),
        "{seen:?}"
    );
}

/// Once a storm of `cycles` on `buses` buses is over (each summary within `limit`): every
/// cycle ran on every bus (counted by the host: each hot-add made, each EJECT answered by
/// the guest's EJECTION_COMPLETE through the relay, none timed out), the guest heard of at
/// least `1/min_share` of the hot-adds (not vacuous; the relay coalesces an add ejected
/// before the guest heard of it), no guest failure, and no lost event: once quiet, the guest
/// holds exactly what the host lists on each bus. Returns the summaries.
pub fn storm_kept_every_promise(
    rig: &Rig,
    buses: usize,
    cycles: u32,
    limit: Duration,
    min_share: usize,
) -> Vec<StormSummary> {
    let mut summaries = Vec::new();
    for bus in 0..buses {
        let prefix = format!("storm bus{bus} ");
        let line = rig.host.expect_line(limit, |l| l.starts_with(&prefix));
        let Some(s) = StormSummary::parse(&line) else {
            panic!("not a storm summary: {line}");
        };
        assert_eq!(s.cycles, cycles, "{s:?}");
        assert!(s.complete(), "{s:?}");
        summaries.push(s);
    }
    assert!(rig.wait_quiet(Duration::from_millis(750), Instant::now() + limit));
    let (host, guest) = (rig.host.seen(), rig.guest.seen());
    for i in 0..buses {
        let bus = format!("bus{i}");
        let arrivals = GuestState::arrivals(&guest, &bus, WinSlot::from_raw(1));
        assert!(
            arrivals >= cycles as usize / min_share,
            "{bus}: the guest heard of {arrivals} of {cycles} hot-adds"
        );
        let (Some(h), Some(g)) = (HostState::last(&host, &bus), GuestState::last(&guest, &bus))
        else {
            panic!("{bus}: no final state (host {host:?}, guest {guest:?})");
        };
        assert!(h.ejecting.is_empty(), "{h:?}");
        assert!(g.probed && !g.closed, "{g:?}");
        assert_eq!(h.functions, g.held, "{bus}: host and guest disagree");
        // Every config access the relay forwarded was reported done by the service: none
        // still holds the bus, and none had to be given up.
        let in_flight = inspect(rig, &format!("buses/{bus}/relay/accesses/in_flight"));
        assert_eq!(in_flight.trim(), "{}", "{bus}: accesses still in flight");
        let abandoned = inspect(
            rig,
            &format!("buses/{bus}/relay/counters/accesses_abandoned"),
        );
        assert_eq!(abandoned.trim(), "0", "{bus}: accesses given up");
    }
    no_guest_failure(rig);
    summaries
}
