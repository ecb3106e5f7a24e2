//! The service's costs across processes (a plain bench binary: `cargo bench -p openhcl_vpci
//! --bench service`). Three figures, each a ratio of two things measured in the same run:
//!
//! - **latency**: one request and its completion (QUERY_RESOURCE_REQUIREMENTS, which the
//!   relay forwards) between a guest process and a host_sim process, through `openhcl-vpci`
//!   vs over a direct ring between the same two processes. Measured interleaved: many rounds,
//!   each one batch of round trips on each path back to back (which goes first alternates);
//!   the figure is the ratio of the two medians of the per-round-trip times (target <= 1.5).
//!   A third path goes through a bare forwarder process (`support/forwarder.rs`: the same
//!   hop, no relay), so the summary also splits the service's cost into the hop's and the
//!   relay's; the 64-bus figure is also measured through it.
//! - **64 buses**: the vPCI part of a probe (version, relations, requirements, D0 entry,
//!   resources; 1 ms per host answer) on 64 buses at once, a guest thread per bus, vs on one
//!   bus: wall-clock ratio (target <= 1.3).
//! - **idle bus memory**: the service's private memory (`Anonymous` in
//!   `/proc/PID/smaps_rollup`: heap and thread stacks; the rings are shared memfd pages and
//!   not counted) with 65 idle probed buses vs 1, per bus (target <= 64 KiB).
//!
//! The host endpoint is `vpci_endpoints`' (as in the process tests), run by this binary
//! re-executed in the `host` role. `-- --test` runs everything small, as a smoke test;
//! `-- latency`, `-- probe` or `-- memory` runs that part alone (for profiling it).

#![forbid(unsafe_code)]

#[allow(dead_code, unreachable_pub)]
#[path = "support/client.rs"]
mod client;
#[path = "support/forwarder.rs"]
mod forwarder;

use client::{Offers, RawBus};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};
use vpci_endpoints::host;

const ROLE: &str = "OPENHCL_VPCI_BENCH_ROLE";

/// A process that is killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_socket(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Host role: `spec` served on each socket named (the same process serves them all).
fn host_role() {
    let spec = std::env::var("BENCH_HOST_SPEC").unwrap_or_default();
    let sockets = std::env::var("BENCH_HOST_SOCKETS").unwrap_or_default();
    let threads: Vec<_> = sockets
        .split(',')
        .map(|s| {
            let (socket, spec) = (PathBuf::from(s), spec.clone());
            std::thread::spawn(move || {
                host::run(&socket, host::HostSpec::parse(&spec).expect("host spec"))
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// A host process serving `spec` on `sockets`, and a service in front of the first.
struct Rig {
    dir: PathBuf,
    _host: Proc,
    service: Proc,
}

impl Rig {
    fn start(name: &str, spec: &str, sockets: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("vpci-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        let paths: Vec<String> = sockets
            .iter()
            .map(|s| dir.join(s).display().to_string())
            .collect();
        let host = Command::new(std::env::current_exe().expect("exe"))
            .env(ROLE, "host")
            .env("BENCH_HOST_SPEC", spec)
            .env("BENCH_HOST_SOCKETS", paths.join(","))
            .stdout(Stdio::null())
            .spawn()
            .expect("host");
        for p in &paths {
            wait_for_socket(Path::new(p));
        }
        let service = Command::new(env!("CARGO_BIN_EXE_openhcl-vpci"))
            .arg("serve")
            .arg("--host")
            .arg(dir.join(sockets[0]))
            .arg("--guest")
            .arg(dir.join("guest.sock"))
            .arg("--control")
            .arg(dir.join("control.sock"))
            .env("RUST_LOG", "error")
            .stderr(Stdio::null())
            .spawn()
            .expect("service");
        wait_for_socket(&dir.join("guest.sock"));
        Self {
            dir,
            _host: Proc(host),
            service: Proc(service),
        }
    }

    fn guest(&self) -> Offers {
        Offers::connect(&self.dir.join("guest.sock"))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median round-trip times, in microseconds, over the three paths of the latency figure.
struct Latency {
    /// Through the service.
    through: f64,
    /// Over a direct ring to the host.
    direct: f64,
    /// Through a bare forwarder process ([`forwarder`]): the hop without the relay.
    forwarded: f64,
}

/// (a) Round-trip latency through the service, direct, and through a bare forwarder,
/// interleaved (each round times a batch on each path; the order rotates).
fn latency(smoke: bool) -> Latency {
    let rig = Rig::start(
        "latency",
        "buses=1,functions=2,monitor_ms=100",
        &["host.sock", "direct.sock", "forward.sock"],
    );
    let guest = rig.guest();
    let bus = guest.offers(1).remove(0);
    let mut relayed = RawBus::new(guest.open(&bus));
    relayed.probe(&[0, 1]);
    let direct_offers = Offers::connect(&rig.dir.join("direct.sock"));
    let bus = direct_offers.offers(1).remove(0);
    let mut direct = RawBus::new(direct_offers.open(&bus));
    direct.probe(&[0, 1]);
    let (_forwarder, mut rings) = start_forwarder(&rig, "forward.sock", 1);
    let mut forwarded = RawBus::new(rings.remove(0));
    forwarded.probe(&[0, 1]);
    // Past the relay's settle window: the bus is installed, the steady state.
    std::thread::sleep(Duration::from_millis(300));
    let (rounds, batch) = if smoke { (6, 5) } else { (402, 50) };
    let mut times: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let time = |b: &mut RawBus| {
        let t = Instant::now();
        for _ in 0..batch {
            b.round_trip(1);
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(batch)
    };
    let mut paths = [&mut relayed, &mut direct, &mut forwarded];
    for _ in 0..3 {
        for p in paths.iter_mut() {
            time(p);
        }
    }
    for r in 0..rounds {
        for k in 0..3 {
            let i = (r + k) % 3;
            if let (Some(p), Some(t)) = (paths.get_mut(i), times.get_mut(i)) {
                t.push(time(p));
            }
        }
    }
    let [through, direct, forwarded] = times;
    let (mut through, mut direct, mut forwarded) = (through, direct, forwarded);
    Latency {
        through: median(&mut through),
        direct: median(&mut direct),
        forwarded: median(&mut forwarded),
    }
}

/// A bare forwarder process in front of the host socket `host_socket` of `rig`, for `buses`
/// buses, and the guest end of each bus's ring through it.
fn start_forwarder(
    rig: &Rig,
    host_socket: &str,
    buses: usize,
) -> (Proc, Vec<vmbus_channel::RingChannel>) {
    let socket = rig.dir.join(format!("forwarder-{host_socket}"));
    let forwarder = Proc(
        Command::new(std::env::current_exe().expect("exe"))
            .env(ROLE, "forwarder")
            .env("BENCH_FWD_HOST", rig.dir.join(host_socket))
            .env("BENCH_FWD_GUEST", &socket)
            .env("BENCH_FWD_BUSES", buses.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("forwarder"),
    );
    wait_for_socket(&socket);
    let rings = (0..buses)
        .map(|_| {
            let stream = std::os::unix::net::UnixStream::connect(&socket).expect("forwarder");
            vmbus_channel::RingChannel::open_from(std::os::fd::OwnedFd::from(stream))
                .expect("forwarder ring")
        })
        .collect();
    (forwarder, rings)
}

/// CPU time the live threads of process `pid` have used so far, in nanoseconds (the first
/// field of each `/proc/PID/task/TID/schedstat`). Exact where the clock-tick counts of
/// `/proc/PID/stat` are 10 ms steps; it misses threads that end in between, which is why the
/// probe window keeps every thread it measures alive across it.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
        })
        .sum()
}

/// (b) The vPCI probe on `n` buses at once (a thread per bus): wall-clock time, and the CPU
/// time the three processes spent in it (ms).
/// What stands between the benchmark's guest and the host.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `openhcl-vpci`.
    Service,
    /// A bare forwarder process ([`forwarder`]): the hop without the relay.
    Forwarder,
}

fn probe_buses(n: usize, via: Via) -> (Duration, Duration) {
    let rig = Rig::start(
        &format!("probe{n}"),
        &format!("buses={n},functions=2,latency_ms=1,monitor_ms=100"),
        &["host.sock", "forward.sock"],
    );
    // Open every ring first (the service opens the host's on each open), then probe all.
    let (middle, rings) = match via {
        Via::Service => {
            let guest = rig.guest();
            let buses = guest.offers(n);
            let rings: Vec<_> = buses.iter().map(|b| guest.open(b)).collect();
            (None, rings)
        }
        Via::Forwarder => {
            let (forwarder, rings) = start_forwarder(&rig, "forward.sock", n);
            (Some(forwarder), rings)
        }
    };
    std::thread::sleep(Duration::from_millis(200));
    let middle_pid = middle.as_ref().map_or(rig.service.0.id(), |p| p.0.id());
    let pids = [std::process::id(), rig._host.0.id(), middle_pid];
    // The guest threads exist before the window opens and keep their rings past its end: the
    // window holds the probes, not thread creation or the rings' teardown.
    let (go, finish) = (Arc::new(Barrier::new(n + 1)), Arc::new(Barrier::new(n + 1)));
    let (done_tx, done_rx) = mpsc::channel();
    let threads: Vec<_> = rings
        .into_iter()
        .map(|ring| {
            let (go, finish, done) = (go.clone(), finish.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let mut bus = RawBus::new(ring);
                go.wait();
                bus.probe(&[0, 1]);
                let _ = done.send(());
                // Alive until the CPU time was read.
                finish.wait();
                bus
            })
        })
        .collect();
    let cpu_before = pids.map(cpu_ns);
    mark_window(n, "start");
    let start = Instant::now();
    go.wait();
    for _ in 0..n {
        done_rx.recv().expect("probe thread");
    }
    let wall = start.elapsed();
    mark_window(n, "end");
    let cpu = pids.map(cpu_ns);
    finish.wait();
    let buses: Vec<RawBus> = threads
        .into_iter()
        .map(|t| t.join().expect("probe thread"))
        .collect();
    drop(buses);
    let spent: Vec<Duration> = cpu
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| Duration::from_nanos(after.saturating_sub(*before)))
        .collect();
    if std::env::var_os("VPCI_BENCH_WINDOW").is_some() {
        eprintln!(
            "window {n} cpu: guest {:.1?}, host {:.1?}, service {:.1?}",
            spent[0], spent[1], spent[2]
        );
    }
    (wall, spent.iter().sum())
}

/// With `VPCI_BENCH_WINDOW` set, prints the clock at a probe window's start and end (an
/// `Instant`, which is the monotonic clock on Linux), for `perf record -k CLOCK_MONOTONIC`
/// and `perf report --time` to profile the window alone.
fn mark_window(n: usize, edge: &str) {
    if std::env::var_os("VPCI_BENCH_WINDOW").is_some() {
        eprintln!("window {n} {edge} {:?}", Instant::now());
    }
}

/// The private (anonymous) memory of process `pid`, in KiB.
fn anonymous_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// (c) The service's private memory with `n` idle probed buses, in KiB.
fn idle_memory(n: usize) -> u64 {
    let rig = Rig::start(
        &format!("memory{n}"),
        &format!("buses={n},functions=2,monitor_ms=100"),
        &["host.sock"],
    );
    let guest = rig.guest();
    let buses = guest.offers(n);
    let mut open: Vec<RawBus> = buses.iter().map(|b| RawBus::new(guest.open(b))).collect();
    for b in &mut open {
        b.probe(&[0, 1]);
    }
    // Every bus settled and idle.
    std::thread::sleep(Duration::from_millis(1000));
    let kib = anonymous_kib(rig.service.0.id());
    drop(open);
    kib
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("host") => return host_role(),
        Ok("forwarder") => {
            let var = |name| PathBuf::from(std::env::var_os(name).unwrap_or_default());
            let buses = std::env::var("BENCH_FWD_BUSES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            return forwarder::run(&var("BENCH_FWD_HOST"), &var("BENCH_FWD_GUEST"), buses);
        }
        _ => {}
    }
    let smoke = std::env::args().any(|a| a == "--test");
    let parts = ["latency", "probe", "memory"];
    let chosen: Vec<String> = std::env::args()
        .filter(|a| parts.contains(&a.as_str()))
        .collect();
    let run = |part: &str| chosen.is_empty() || chosen.iter().any(|c| c == part);
    if !run("latency") || !run("probe") || !run("memory") {
        only(smoke, &run);
        return;
    }
    let Latency {
        through,
        direct,
        forwarded,
    } = latency(smoke);
    println!(
        "latency: through the service {through:.1} us, direct ring {direct:.1} us, through a bare \
         forwarder {forwarded:.1} us per request/completion (the service adds {:.1} us; the \
         relay over the bare hop {:.1} us)",
        through - direct,
        through - forwarded
    );
    let many = if smoke { 4 } else { 64 };
    let (one, one_cpu) = probe_buses(1, Via::Service);
    let (all, all_cpu) = probe_buses(many, Via::Service);
    println!(
        "probe: 1 bus {one:.1?} ({one_cpu:.1?} CPU), {many} buses {all:.1?} ({all_cpu:.1?} CPU, \
         the three processes)"
    );
    let (fwd_one, _) = probe_buses(1, Via::Forwarder);
    let (fwd_all, _) = probe_buses(many, Via::Forwarder);
    println!("probe through a bare forwarder: 1 bus {fwd_one:.1?}, {many} buses {fwd_all:.1?}");
    let (few, lots) = if smoke { (1, 3) } else { (1, 65) };
    let base = idle_memory(few);
    let more = idle_memory(lots);
    let per_bus = more.saturating_sub(base) as f64 / (lots - few) as f64;
    println!(
        "memory: {few} idle bus {base} KiB, {lots} idle buses {more} KiB (service, Anonymous)"
    );
    println!();
    if smoke {
        println!("summary: smoke run (-- --test), no measurement");
        return;
    }
    println!(
        "summary: service/direct latency ratio of medians {:.2} (target <= 1.5); a bare \
         forwarder/direct {:.2}, service/bare forwarder {:.2}",
        through / direct,
        forwarded / direct,
        through / forwarded
    );
    println!(
        "summary: {many} buses / 1 bus probe wall-clock ratio {:.2} (target <= 1.3); \
         {:.2} ms of CPU per bus-probe across the three processes",
        all.as_secs_f64() / one.as_secs_f64(),
        all_cpu.as_secs_f64() * 1e3 / many as f64
    );
    println!(
        "summary: through a bare forwarder (the hop, no relay) {many} buses / 1 bus {:.2}",
        fwd_all.as_secs_f64() / fwd_one.as_secs_f64()
    );
    println!("summary: {per_bus:.1} KiB resident per idle bus, rings excluded (target <= 64 KiB)");
}

/// Runs the parts `run` selects and prints their raw figures (no summary).
fn only(smoke: bool, run: &dyn Fn(&str) -> bool) {
    if run("latency") {
        let l = latency(smoke);
        println!(
            "latency: through the service {:.1} us, direct ring {:.1} us, bare forwarder {:.1} us",
            l.through, l.direct, l.forwarded
        );
    }
    if run("probe") {
        let many = if smoke { 4 } else { 64 };
        let (one, one_cpu) = probe_buses(1, Via::Service);
        let (all, all_cpu) = probe_buses(many, Via::Service);
        println!(
            "probe: 1 bus {one:.1?} ({one_cpu:.1?} CPU), {many} buses {all:.1?} ({all_cpu:.1?} CPU)"
        );
    }
    if run("memory") {
        let (few, lots) = if smoke { (1, 3) } else { (1, 65) };
        println!(
            "memory: {few} idle bus {} KiB, {lots} idle buses {} KiB",
            idle_memory(few),
            idle_memory(lots)
        );
    }
}
