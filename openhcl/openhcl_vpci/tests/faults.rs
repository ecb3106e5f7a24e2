//! Faults injected into a running `openhcl-vpci` while every bus storms (hot-add and EJECT
//! cycles on 3 buses at once, the endpoints of `vpci_endpoints` in their own processes): a
//! host that closes one bus's ring or its control connection while a guest request waits on
//! it, a host or a guest that writes an invalid write index into its ring of one bus. Each
//! checks that the request is answered, that the faulted bus winds down in order on the
//! guest's side (and on the host's: its EJECT answered), that the other buses run their
//! storms to the end, that the service stays up (inspect shows the fault) without spinning,
//! and that nothing hangs: every wait is bounded.

use rustix::process::Signal;
use std::time::{Duration, Instant};
use vpci_endpoints::report::{GuestState, HostState, StormSummary};
mod common;

use common::inspect;
use vpci_endpoints::rig::Rig;

/// The re-executed host or guest endpoint (does nothing in a normal test run).
#[test]
fn child_role() {
    vpci_endpoints::rig::child_role();
}

/// The bound on every wait.
const LIMIT: Duration = Duration::from_secs(30);
/// Buses in every storm; the fault is on `bus1`.
const BUSES: usize = 3;
/// Hot-add/eject cycles per bus.
const CYCLES: u32 = 60;
/// Packets the service sends on the faulted bus's ring before the fault (a few cycles in).
const FAULT_AFTER: u32 = 15;

fn start(test: &str, host: &str, guest: &str) -> Rig {
    start_with(test, host, &[], guest)
}

fn start_with(test: &str, host: &str, service_args: &[&str], guest: &str) -> Rig {
    common::start(&format!("faults-{test}"), host, service_args, guest, &[])
}

/// A storm on every bus with `fault` (host spec items) added.
fn storm_host(fault: &str) -> String {
    format!("buses={BUSES},functions=1,storm={CYCLES}{fault}")
}

fn no_guest_failure(rig: &Rig) {
    let seen = rig.guest.seen();
    assert!(
        !seen.iter().any(|l| l.starts_with("guest failure")
            || l.starts_with("guest violation")
            || l.starts_with("guest stuck")
            || l == "guest service gone"),
        "{seen:?}"
    );
}

/// The faulted bus's relay as it ended (the service keeps its final tree as `last_relay`
/// until the bus runs again), once the relay has stopped.
fn last_relay(rig: &Rig, bus: &str) -> String {
    let start = Instant::now();
    loop {
        if let Ok(tree) = rig.inspect(&format!("buses/{bus}/last_relay")) {
            return tree;
        }
        assert!(start.elapsed() < LIMIT, "{bus}: the relay never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The number `"name": N` in an inspect tree (JSON); panics if there is none.
fn number(tree: &str, name: &str) -> u64 {
    let key = format!("\"{name}\": ");
    let value = tree.split_once(&key).map(|(_, rest)| {
        rest.trim_start_matches('"')
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    });
    match value.and_then(|v| v.parse().ok()) {
        Some(n) => n,
        None => panic!("no number {name} in {tree}"),
    }
}

/// The other buses ran every storm cycle, and once quiet host and guest agree on each.
fn others_storm_to_the_end(rig: &Rig, faulted: &str) {
    for i in (0..BUSES).filter(|&i| format!("bus{i}") != faulted) {
        let bus = format!("bus{i}");
        let prefix = format!("storm {bus} ");
        let line = rig.host.expect_line(LIMIT, |l| l.starts_with(&prefix));
        let Some(s) = StormSummary::parse(&line) else {
            panic!("not a storm summary: {line}");
        };
        assert_eq!(s.cycles, CYCLES, "{s:?}");
        assert!(s.complete(), "{s:?}");
    }
    assert!(rig.wait_quiet(Duration::from_millis(500), Instant::now() + LIMIT));
    let (host, guest) = (rig.host.seen(), rig.guest.seen());
    for i in (0..BUSES).filter(|&i| format!("bus{i}") != faulted) {
        let bus = format!("bus{i}");
        let (h, g) = (HostState::last(&host, &bus), GuestState::last(&guest, &bus));
        let (Some(h), Some(g)) = (h, g) else {
            panic!("{bus}: no final state");
        };
        assert!(h.ejecting.is_empty(), "{h:?}");
        assert!(g.probed && !g.closed, "{g:?}");
        if h.functions != g.held {
            panic!(
                "{bus}: host and guest disagree: {h:?} {g:?}; relay {}",
                inspect(rig, &format!("buses/{bus}/relay"))
            );
        }
    }
}

/// The faulted bus ended in order on the guest's side: closed, nothing held (no ghost).
fn wound_down_in_order(rig: &Rig, bus: &str) {
    let start = Instant::now();
    loop {
        let g = GuestState::last(&rig.guest.seen(), bus);
        if g.as_ref().is_some_and(|g| g.closed && g.held.is_empty()) {
            break;
        }
        assert!(start.elapsed() < LIMIT, "{bus}: not wound down: {g:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every request the guest sent on `bus` that asked for a completion got exactly one.
fn every_request_answered(rig: &Rig, bus: &str) -> Vec<(u64, String)> {
    let seen = rig.guest.seen();
    let tid = |l: &str, prefix: &str| -> Option<(u64, String)> {
        let rest = l.strip_prefix(prefix)?;
        let (t, more) = rest.split_once(' ').unwrap_or((rest, ""));
        Some((t.parse().ok()?, more.to_owned()))
    };
    let requests: Vec<(u64, String)> = seen
        .iter()
        .filter_map(|l| tid(l, &format!("guest request {bus} tid=")))
        .collect();
    let completions: Vec<u64> = seen
        .iter()
        .filter_map(|l| tid(l, &format!("guest completion {bus} tid=")).map(|(t, _)| t))
        .collect();
    for (t, ty) in &requests {
        let asked = requests.iter().filter(|(r, _)| r == t).count();
        let answered = completions.iter().filter(|&c| c == t).count();
        assert_eq!(asked, answered, "{bus}: request tid={t} {ty}");
    }
    requests
}

/// The service's CPU time so far (user and system), from /proc.
fn cpu_time(rig: &Rig) -> Duration {
    let pid = rig.service.child.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses: utime and stime are the
    // 14th and 15th fields of the line, the 12th and 13th after the name.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
        panic!("no CPU times in {stat:?}");
    };
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    Duration::from_millis((user + system) * 10)
}

fn stops_cleanly(rig: &mut Rig) {
    rig.service.signal(Signal::TERM);
    let status = rig.service.wait_exit(LIMIT);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// (1) Mid-storm the host closes bus1's ring while it holds a guest request for a function
/// unanswered: the relay answers the request itself, winds bus1 down in order (the guest
/// removes its functions), and the other buses finish their storms.
#[test]
fn host_closes_a_ring_holding_a_request() {
    let mut rig = start(
        "close-ring",
        &storm_host(&format!(
            ",fault=close_ring,fault_bus=1,fault_after={FAULT_AFTER}"
        )),
        "model=6.3,requests=1",
    );
    let fault = rig.host.expect_line(LIMIT, |l| {
        l.starts_with("host fault bus1 close_ring holding ")
    });
    let held = fault.trim_start_matches("host fault bus1 close_ring holding ");
    wound_down_in_order(&rig, "bus1");
    let relay = last_relay(&rig, "bus1");
    assert!(relay.contains("\"state\": \"rescinded\""), "{relay}");
    others_storm_to_the_end(&rig, "bus1");
    let requests = every_request_answered(&rig, "bus1");
    assert!(
        requests.iter().any(|(_, ty)| ty == &format!("type={held}")),
        "the guest never sent the held {held}: {requests:?}"
    );
    no_guest_failure(&rig);
    let tree = inspect(&rig, "");
    assert!(tree.contains("\"host\": \"connected\""), "{tree}");
    stops_cleanly(&mut rig);
}

/// (2) Mid-storm the host shuts its control connection while it holds a guest's access to
/// bus1: the service answers the access (the guest never times out), and every bus (all
/// came from that host) winds down in order; the service stays up with the host gone.
#[test]
fn host_closes_its_control_connection_holding_an_access() {
    let mut rig = start(
        "close-control",
        &storm_host(&format!(
            ",fault=close_control,fault_bus=1,fault_after={FAULT_AFTER}"
        )),
        "model=6.3,requests=1",
    );
    rig.host.expect_line(LIMIT, |l| {
        l == "host fault bus1 close_control holding an access"
    });
    let fault_at = Instant::now();
    for i in 0..BUSES {
        wound_down_in_order(&rig, &format!("bus{i}"));
        rig.guest.expect_line(LIMIT, |l| {
            l.starts_with(&format!("guest released bus{i} failed=false"))
        });
    }
    // An access nobody answered would have blocked the guest for its 10-second limit.
    assert!(fault_at.elapsed() < Duration::from_secs(8));
    rig.host
        .expect_line(LIMIT, |l| l == "host rings ended true");
    for i in 0..BUSES {
        every_request_answered(&rig, &format!("bus{i}"));
    }
    no_guest_failure(&rig);
    let tree = inspect(&rig, "");
    assert!(tree.contains("\"host\": \"gone\""), "{tree}");
    assert_eq!(number(&tree, "mmio_pending"), 0, "{tree}");
    stops_cleanly(&mut rig);
}

/// (2b) Mid-storm the host holds a guest's access to bus1 (answering it 8 s late) and
/// closes bus1's ring: the guest, blocked on the access, cannot let bus1 go. The relay waits
/// on the access for `departed_request_timeout` (1 s) after the loss (the guest sits in it),
/// gives it up, sends the guest its EJECT, and closes bus1 when that EJECT has waited
/// `max_hold` (1.5 s) unanswered: about 2.5 s after the loss. The access still waiting at
/// the host must then be
/// answered by the service, not dropped: the model guest runs every bus on one thread and
/// gives up on an access after 10 s (taking every bus down), so it closes bus1 long before
/// the host's late answer only if the service answered it. (Blocking that one thread stalls
/// the guest's other buses too, which a real guest would not: bus0's storm must still end
/// with every EJECT answered, but its final view is not compared here.)
#[test]
fn host_holds_an_access_while_its_ring_closes() {
    let mut rig = start_with(
        "hold-access",
        &format!(
            "buses=2,functions=1,storm={CYCLES},fault=hold_access,fault_bus=1,\
             fault_after={FAULT_AFTER},fault_hold_ms=8000"
        ),
        &["--max-hold", "1500ms"],
        "model=6.3",
    );
    rig.host.expect_line(LIMIT, |l| {
        l.starts_with("host fault bus1 hold_access holding an access")
    });
    // Well before the host's answer at 8 s: the service answered the access when bus1
    // stopped (at about 2.5 s), and the guest went on to see bus1 closed.
    rig.guest.expect_line(Duration::from_secs(6), |l| {
        l.starts_with("guest state bus1 ") && l.contains("closed=1")
    });
    let line = rig
        .host
        .expect_line(LIMIT, |l| l.starts_with("storm bus0 "));
    let Some(s) = StormSummary::parse(&line) else {
        panic!("not a storm summary: {line}");
    };
    assert!(s.complete(), "{s:?}");
    // The host's late answer comes after the bus stopped: nobody waits for it any more.
    rig.host
        .expect_line(LIMIT, |l| l == "host fault bus1 hold_access answered");
    assert!(!rig.guest.seen().iter().any(|l| l == "guest service gone"));
    let tree = inspect(&rig, "");
    assert!(tree.contains("\"host\": \"connected\""), "{tree}");
    assert_eq!(number(&tree, "mmio_pending"), 0, "{tree}");
    stops_cleanly(&mut rig);
}

/// (3) Mid-storm the host writes an invalid write index into its ring of bus1: the relay
/// takes bus1's host away as a transport fault (counted, shown in inspect), the guest sees
/// bus1 wound down in order and no malformed packet, the other buses finish their storms,
/// and the service does not spin.
#[test]
fn host_writes_a_garbage_ring_index() {
    let mut rig = start(
        "host-garbage",
        &storm_host(&format!(
            ",fault=garbage,fault_bus=1,fault_after={FAULT_AFTER}"
        )),
        "model=6.3",
    );
    rig.host.expect_line(LIMIT, |l| {
        l.starts_with("host fault bus1 garbage write_index=")
    });
    let (cpu0, wall0) = (cpu_time(&rig), Instant::now());
    wound_down_in_order(&rig, "bus1");
    let relay = last_relay(&rig, "bus1");
    assert!(relay.contains("\"state\": \"failed\""), "{relay}");
    assert_eq!(number(&relay, "malformed_host"), 1, "{relay}");
    others_storm_to_the_end(&rig, "bus1");
    no_guest_failure(&rig);
    // CPU: at most half a core over the rest of the storm, and next to nothing once quiet.
    let (cpu1, wall1) = (cpu_time(&rig), Instant::now());
    let used = cpu1.saturating_sub(cpu0);
    assert!(
        used < (wall1 - wall0) / 2,
        "{used:?} of CPU in {:?}",
        wall1 - wall0
    );
    std::thread::sleep(Duration::from_secs(1));
    let idle = cpu_time(&rig).saturating_sub(cpu1);
    assert!(
        idle < Duration::from_millis(300),
        "{idle:?} of CPU while idle"
    );
    let tree = inspect(&rig, "");
    assert!(tree.contains("\"host\": \"connected\""), "{tree}");
    stops_cleanly(&mut rig);
}

/// (4) The mirror: mid-storm the guest, handed an EJECT on bus1, writes an invalid write
/// index into its ring instead of answering. The service closes bus1 toward the guest, the
/// relay answers the host's EJECT the guest held (and every earlier one was answered), and
/// the other buses finish their storms. (The guest broke its own bus: what its removal path
/// then meets on bus1 is its own doing; the other buses must see no failure.)
#[test]
fn guest_writes_a_garbage_ring_index() {
    let mut rig = start(
        "guest-garbage",
        &storm_host(""),
        "model=6.3,garbage_bus=1,garbage_after=3",
    );
    rig.guest.expect_line(LIMIT, |l| {
        l.starts_with("guest fault bus1 garbage holding EJECT write_index=")
    });
    // The function the EJECT named: the one the guest held in slot 1 when it struck.
    let seen = rig.guest.seen();
    let before: Vec<String> = seen
        .iter()
        .take_while(|l| !l.starts_with("guest fault bus1 "))
        .cloned()
        .collect();
    let held = GuestState::last(&before, "bus1").expect("bus1's state before the fault");
    let Some((_, id)) = held.held.iter().find(|(s, _)| s.raw() == 1) else {
        panic!("the guest held nothing in slot 1 at the EJECT: {held:?}");
    };
    // The storm's function of cycle c has serial 10000 + c.
    let cycle = id.serial.checked_sub(10_000).expect("a storm function");
    let line = rig
        .host
        .expect_line(LIMIT, |l| l.starts_with("storm bus1 "));
    let Some(s) = StormSummary::parse(&line) else {
        panic!("not a storm summary: {line}");
    };
    assert!(s.added < CYCLES, "bus1 stormed on: {s:?}");
    assert!(
        s.answered > cycle,
        "the EJECT of cycle {cycle} or an earlier one went unanswered: {s:?}, {:?}",
        rig.host.seen()
    );
    let unanswered = format!("host bus1 eject unanswered cycle={cycle}");
    assert!(!rig.host.seen().contains(&unanswered), "{unanswered}");
    rig.guest.expect_line(LIMIT, |l| {
        l.starts_with("guest state bus1 ") && l.contains("closed=1")
    });
    others_storm_to_the_end(&rig, "bus1");
    let seen = rig.guest.seen();
    assert!(
        !seen.iter().any(|l| (l.starts_with("guest failure")
            && !l.starts_with("guest failure bus1 "))
            || l.starts_with("guest violation")
            || l == "guest service gone"),
        "{seen:?}"
    );
    let relay = last_relay(&rig, "bus1");
    assert_eq!(number(&relay, "malformed_guest"), 1, "{relay}");
    assert!(number(&relay, "ejects_answered_locally") >= 1, "{relay}");
    let tree = inspect(&rig, "");
    assert!(tree.contains("\"host\": \"connected\""), "{tree}");
    stops_cleanly(&mut rig);
}

/// (5) Mid-storm the host pulls bus1's device memory without telling: from then on it
/// answers every BAR access to bus1 the service forwards with a fault, while the relay still
/// sees the functions listed (as in the window before a host's EJECT reaches the relay, on
/// a host that unmaps at its EJECT). The guest must never see the fault: each such access
/// is answered as a master abort (reads all ones, writes dropped), as the removal shield
/// would, and counted. Every bus, bus1 too, runs its storm to the end with host and guest
/// agreeing. (Regression test: the fault went through and the 6.2 model died of an
/// unbacked access writing its MSI-X table, found by a chaotic host across processes.)
#[test]
fn host_pulls_device_memory_without_telling() {
    let mut rig = start(
        "pull-bars",
        // Armed from the bus's second packet: the boot function's driver probe (its BAR
        // read, its MSI-X table writes) meets the pulled memory; few storm cycles reach a
        // driver before their EJECT.
        &storm_host(",fault=pull_bars,fault_bus=1,fault_after=1"),
        "model=6.2",
    );
    rig.host.expect_line(LIMIT, |l| {
        l == "host fault bus1 pull_bars faulted a BAR access"
    });
    others_storm_to_the_end(&rig, "none");
    no_guest_failure(&rig);
    let tree = inspect(&rig, "");
    assert!(number(&tree, "mmio_host_faults") > 0, "{tree}");
    assert_eq!(number(&tree, "mmio_pending"), 0, "{tree}");
    stops_cleanly(&mut rig);
}

/// (6) A guest's driver touches its device's BARs on a bus the service does not run (its
/// relay closed it, or the host went, while the driver was still in its probe: seen with a
/// chaotic host across processes): the read reads all ones and the write is dropped, as
/// the shield answers, never a fault. (Regression test: both faulted.)
#[test]
fn guest_touches_a_bus_that_is_not_running() {
    let mut rig = start("touch", "buses=1,functions=1", "model=6.2,touch_bus=bus9");
    rig.guest
        .expect_line(LIMIT, |l| l == "guest touch bus9 read=ffffffff write=0");
    no_guest_failure(&rig);
    stops_cleanly(&mut rig);
}
