//! The host endpoint: host_sim buses offered and served over the service's control plane (it
//! listens; the service connects as the opener). Each bus the service opens runs host_sim's
//! async adapter over the ring (real time) on the host's one bus thread (an
//! `openhcl_vpci::executor::Pool`, which waits on every ring's doorbell and every adapter's
//! timers, so buses busy at once share its wake-ups, as a host's channel workers would), and
//! the host's one monitor thread prints the bus's state whenever it changes (`@@ host state
//! ...`, `monitor.rs`); the first open of a bus also starts its hot-plug storm or its
//! rescind/re-offer loop, if the spec asks for one (`drive.rs`).
//!
//! A fault of `fault.rs` may be played on one bus (`fault=...`): its ring closed, the control
//! connection shut, or garbage written into its ring. A storm stops when its bus's ring ends.
//! Every ring is read to its end: what the service wrote before ending it still counts.
//!
//! A bus the host rescinds (a scenario's script, or the re-offer loop) is rescinded to the
//! service as well, once the adapter has revoked its ring.

mod drive;
mod fault;
mod mmio;
mod monitor;

pub use fault::{FaultKind, FaultSpec};

use crate::{SpecError, bus_name};
use host_sim::{BusConfig, FunctionSpec, HostClock, RunExit, SharedBus, Sleep, Time};
use openhcl_vpci::control::{self, Message, MmioOp};
use openhcl_vpci::executor;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};
use vmbus_channel::ChannelError;

/// The host endpoint's settings.
#[derive(Clone, Debug)]
pub struct HostSpec {
    /// The buses offered at boot, offered as `bus0`, `bus1`, ...
    pub buses: Vec<BusConfig>,
    /// Hot-add/eject cycles per bus once it negotiated (0: none).
    pub storm: u32,
    /// Rescind/re-offer rounds per bus once it negotiated (0: none).
    pub reoffer: u32,
    /// A chaotic host (a scenario's `[chaos]`), played on every bus once it negotiated, at
    /// random moments of real time: its actions are shared out among the buses (bus `i` of
    /// `n` takes every `n`-th), each waits 0 to `2 * every` ms before its next action, and
    /// each bus's choices are seeded by the spec's seed and the bus's index.
    pub chaos: Option<host_sim::ChaosSpec>,
    /// How many of the last buses are offered late: `late_delay` after the message that all
    /// boot-time offers were delivered (0: every bus at boot).
    pub late: usize,
    /// How long after the boot-time offers the late buses are offered.
    pub late_delay: Duration,
    /// A fault to play on one bus, if any.
    pub fault: Option<FaultSpec>,
    /// How often the monitor looks at each bus's state (2 ms by default; a benchmark, which
    /// reads no state lines, looks seldom: each look wakes every bus's thread).
    pub monitor_period: Duration,
}

impl HostSpec {
    /// `buses` buses of `functions` NIC-like functions (slots 0..n), every host answer
    /// `latency` late; no storm, no re-offer.
    pub fn plain(buses: usize, functions: u32, latency: Duration) -> Self {
        let bus = || {
            let mut config = BusConfig {
                functions: (0..functions).map(FunctionSpec::nic).collect(),
                ..BusConfig::default()
            };
            config.policy.latency = Time(latency);
            config
        };
        Self {
            buses: (0..buses).map(|_| bus()).collect(),
            storm: 0,
            reoffer: 0,
            chaos: None,
            late: 0,
            late_delay: DEFAULT_LATE_DELAY,
            fault: None,
            monitor_period: monitor::DEFAULT_PERIOD,
        }
    }

    /// Parses `buses=N,functions=N,latency_ms=N` (1 bus of 1 function with no latency by
    /// default) with `storm=N` or `reoffer=N`, and `late=N,late_ms=N` (the last `late`
    /// buses offered `late_ms` after the boot-time ones), and a fault: `fault=close_ring|
    /// close_control|hold_access|garbage|pull_bars,fault_bus=N,fault_after=N,fault_hold_ms=N`
    /// ([`FaultSpec`]); `monitor_ms=N` sets [`monitor_period`](Self::monitor_period) (at
    /// least 1).
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let (mut buses, mut functions, mut latency, mut storm, mut reoffer) = (1, 1, 0, 0, 0);
        let (mut late, mut late_ms, mut monitor_ms) = (0, None, None);
        let (mut fault, mut fault_bus, mut fault_after, mut hold) = (None, None, None, None);
        for kv in s.split(',').filter(|kv| !kv.is_empty()) {
            let bad = || SpecError::BadItem(kv.to_owned());
            let (k, v) = kv.split_once('=').ok_or_else(bad)?;
            let n = || v.parse::<u32>().map_err(|_| bad());
            match k {
                "buses" => buses = n()?,
                "functions" => functions = n()?,
                "latency_ms" => latency = n()?,
                "storm" => storm = n()?,
                "reoffer" => reoffer = n()?,
                "late" => late = n()?,
                "late_ms" => late_ms = Some(n()?),
                "monitor_ms" => monitor_ms = Some(n()?.max(1)),
                "fault" => fault = Some(v),
                "fault_bus" => fault_bus = Some(n()?),
                "fault_after" => fault_after = Some(n()?),
                "fault_hold_ms" => hold = Some(n()?),
                _ => return Err(SpecError::UnknownKey(k.to_owned())),
            }
        }
        let buses = usize::try_from(buses).map_err(|_| SpecError::BadItem(s.to_owned()))?;
        let latency = Duration::from_millis(u64::from(latency));
        let mut spec = Self {
            storm,
            reoffer,
            late: usize::try_from(late).map_err(|_| SpecError::BadItem(s.to_owned()))?,
            fault: FaultSpec::from_parts(fault, fault_bus, fault_after, hold)?,
            ..Self::plain(buses, functions, latency)
        };
        if let Some(ms) = late_ms {
            spec.late_delay = Duration::from_millis(u64::from(ms));
        }
        if let Some(ms) = monitor_ms {
            spec.monitor_period = Duration::from_millis(u64::from(ms));
        }
        spec.validate()?;
        Ok(spec)
    }

    /// Refuses two of a storm, a re-offer loop and a chaotic host together (each reads the
    /// bus's events and acts on it), and more late buses than buses.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.storm > 0 && self.reoffer > 0 {
            return Err(SpecError::Conflict(
                "a storm and a re-offer loop exclude each other",
            ));
        }
        if self.chaos.is_some() && (self.storm > 0 || self.reoffer > 0) {
            return Err(SpecError::Conflict(
                "a chaotic host excludes a storm and a re-offer loop",
            ));
        }
        if self.late > self.buses.len() {
            return Err(SpecError::Conflict("more late buses than buses"));
        }
        if self.fault.is_some_and(|f| f.bus >= self.buses.len()) {
            return Err(SpecError::Conflict("a fault on a bus not offered"));
        }
        Ok(())
    }

    /// How many buses are offered at boot.
    fn at_boot(&self) -> usize {
        self.buses.len().saturating_sub(self.late)
    }
}

/// How long after the boot-time offers the late buses are offered, by default.
const DEFAULT_LATE_DELAY: Duration = Duration::from_millis(500);

/// How long the host keeps its rings after shutting its control connection for a fault.
const LINGER_LIMIT: Duration = Duration::from_secs(30);

/// A bus's adapter, as the pool runs it.
type Run =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<RunExit, ChannelError>> + Send>>;

/// Real time for host_sim's adapter.
#[derive(Clone, Copy, Debug)]
struct RealClock(Instant);

impl HostClock for RealClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep_until(&self, deadline: Duration) -> Sleep {
        // On the bus's thread this is its poll loop's timeout: no timer thread.
        let at = self.0.checked_add(deadline).unwrap_or_else(Instant::now);
        Box::pin(executor::sleep_until(at))
    }
}

/// The control connection's sending half, shared by the bus threads.
#[derive(Clone)]
struct Writer(Arc<Mutex<UnixStream>>);

impl Writer {
    fn send(&self, message: &Message) {
        let stream = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = control::send(&stream, message, None);
    }
}

/// The buses the service has open, and where to tell each bus's loop of a release or a
/// reopening.
#[derive(Default)]
struct Buses {
    open: HashMap<String, SharedBus>,
    wake: HashMap<String, mpsc::Sender<()>>,
    /// Buses whose latest ring has ended.
    ended: HashSet<String>,
}

/// Shared between the control loop and the bus threads.
#[derive(Clone)]
struct Host {
    spec: Arc<HostSpec>,
    writer: Writer,
    clock: RealClock,
    buses: Arc<Mutex<Buses>>,
    /// Set once the fault may strike.
    armed: fault::Armed,
    /// The monitor thread's list of buses to watch.
    monitor: mpsc::Sender<monitor::Watched>,
    /// The thread every bus's adapter runs on.
    pool: executor::Pool,
}

impl Host {
    fn buses(&self) -> std::sync::MutexGuard<'_, Buses> {
        self.buses.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bus open under `bus` now (a re-offered bus is a new one).
    fn current(&self, bus: &str) -> Option<SharedBus> {
        self.buses().open.get(bus).cloned()
    }

    /// Whether the latest ring of `bus` has ended.
    fn ring_ended(&self, bus: &str) -> bool {
        self.buses().ended.contains(bus)
    }

    /// Whether every bus opened so far has seen its ring end.
    fn all_rings_ended(&self) -> bool {
        let buses = self.buses();
        buses.open.keys().all(|b| buses.ended.contains(b))
    }

    /// The fault, if it is played on `bus`.
    fn fault_on(&self, bus: &str) -> Option<FaultSpec> {
        self.spec.fault.filter(|f| bus_name(f.bus) == bus)
    }

    fn wake(&self, bus: &str) {
        if let Some(tx) = self.buses().wake.get(bus) {
            let _ = tx.send(());
        }
    }
}

/// Listens on `socket` and serves one service connection until it ends.
pub fn run(socket: &std::path::Path, spec: HostSpec) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    println!("@@ host listening");
    let (stream, _) = listener.accept()?;
    let monitor = monitor::start(spec.monitor_period)?;
    let host = Host {
        spec: Arc::new(spec),
        writer: Writer(Arc::new(Mutex::new(stream.try_clone()?))),
        clock: RealClock(Instant::now()),
        buses: Arc::default(),
        armed: fault::Armed::default(),
        monitor,
        pool: executor::Pool::start("host-buses")?,
    };
    for i in 0..host.spec.at_boot() {
        host.writer.send(&Message::Offer { bus: bus_name(i) });
    }
    host.writer.send(&Message::AllOffersDelivered {});
    if host.spec.late > 0 {
        let h = host.clone();
        std::thread::spawn(move || {
            std::thread::sleep(h.spec.late_delay);
            for i in h.spec.at_boot()..h.spec.buses.len() {
                println!("@@ host late offer {}", bus_name(i));
                h.writer.send(&Message::Offer { bus: bus_name(i) });
            }
        });
    }
    // A frame that does not decode ends the connection like a close.
    let mut held = false;
    // BAR accesses faulted by `pull_bars`.
    let mut pulled = 0u64;
    while let Ok(Some((message, fd))) = control::recv(&stream) {
        match message {
            Message::Open { bus } => match fd {
                Some(fd) => open(&host, bus, fd),
                None => println!("@@ host open of {bus} without a ring"),
            },
            Message::Mmio { bus, .. }
                if host.armed.is_armed()
                    && host
                        .fault_on(&bus)
                        .is_some_and(|f| f.kind == FaultKind::CloseControl) =>
            {
                println!("@@ host fault {bus} close_control holding an access");
                let _ = stream.shutdown(std::net::Shutdown::Both);
                break;
            }
            Message::Mmio { id, bus, op }
                if host.armed.is_armed()
                    && !held
                    && host
                        .fault_on(&bus)
                        .is_some_and(|f| f.kind == FaultKind::HoldAccess) =>
            {
                held = true;
                hold_access(&host, id, bus, op);
            }
            Message::Mmio { id, bus, op }
                if host.armed.is_armed()
                    && matches!(op, MmioOp::BarRead { .. } | MmioOp::BarWrite { .. })
                    && host
                        .fault_on(&bus)
                        .is_some_and(|f| f.kind == FaultKind::PullBars) =>
            {
                pulled += 1;
                if pulled == 1 {
                    println!("@@ host fault {bus} pull_bars faulted a BAR access");
                }
                host.writer.send(&Message::MmioDone { id, value: None });
            }
            Message::Mmio { id, bus, op } => {
                let value = host
                    .current(&bus)
                    .and_then(|s| s.with(|b| mmio::access(b, op)));
                host.writer.send(&Message::MmioDone { id, value });
            }
            Message::Release { bus } => host.wake(&bus),
            Message::Close { .. } => {}
            other => println!("@@ host unexpected {other:?}"),
        }
    }
    println!("@@ host service gone");
    if host.armed.is_armed() {
        // The control connection was shut on purpose: the rings live on until the service
        // ends them.
        let start = Instant::now();
        while !host.all_rings_ended() && start.elapsed() < LINGER_LIMIT {
            std::thread::sleep(Duration::from_millis(10));
        }
        println!("@@ host rings ended {}", host.all_rings_ended());
    }
    Ok(())
}

/// Holds a forwarded access to the faulted bus: closes the bus's ring now and answers the
/// access only after the fault's hold time.
fn hold_access(host: &Host, id: u64, bus: String, op: openhcl_vpci::control::MmioOp) {
    let hold = host.spec.fault.map(|f| f.hold).unwrap_or_default();
    println!("@@ host fault {bus} hold_access holding an access for {hold:?}");
    host.armed.close_ring();
    if let Some(shared) = host.current(&bus) {
        // Wakes the bus's adapter, whose ring then closes.
        shared.with(|_| ());
    }
    let h = host.clone();
    std::thread::spawn(move || {
        std::thread::sleep(hold);
        let value = h
            .current(&bus)
            .and_then(|s| s.with(|b| mmio::access(b, op)));
        println!("@@ host fault {bus} hold_access answered");
        h.writer.send(&Message::MmioDone { id, value });
    });
}

/// The service opened `bus`: a fresh host_sim bus from its config, its adapter and monitor
/// threads, and on its first open its storm or re-offer loop.
fn open(host: &Host, bus: String, fd: OwnedFd) {
    let config = (0..host.spec.buses.len())
        .find(|&i| bus_name(i) == bus)
        .and_then(|i| host.spec.buses.get(i).cloned());
    let Some(mut config) = config else {
        println!("@@ host open of unknown {bus}");
        return;
    };
    config.name = bus.clone();
    let shared = match host_sim::HostBus::new(config) {
        Ok(b) => SharedBus::new(b),
        Err(e) => {
            println!("@@ host bus config {bus}: {e}");
            return;
        }
    };
    let (wake_tx, wake_rx) = mpsc::channel();
    let first = {
        let mut buses = host.buses();
        buses.open.insert(bus.clone(), shared.clone());
        buses.ended.remove(&bus);
        let first = !buses.wake.contains_key(&bus);
        if first {
            buses.wake.insert(bus.clone(), wake_tx);
        }
        first
    };
    let (name, s, w, clock) = (bus.clone(), shared.clone(), host.writer.clone(), host.clock);
    let (h, fault) = (host.clone(), host.fault_on(&bus));
    // The ring is accepted on a thread of its own (it reads the ring's descriptors from the
    // service); the bus then runs on the host's pool, which waits on its ring's doorbell and
    // its timers. A faulty ring, which the garbage fault takes apart, keeps its notifier.
    std::thread::spawn(move || {
        let prepared = control::accept_ring(fd).and_then(|mut ring| match fault {
            Some(f) => fault::FaultyRing::new(ring, f, &name, h.armed.clone())
                .map_err(|e| control::ControlError::Io(std::io::Error::other(e.to_string())))
                .map(|ring| {
                    let run: Run = Box::pin(host_sim::run_bus(s, fault::ReadToEnd(ring), clock));
                    (run, Vec::new())
                }),
            None => {
                let sources = match ring.wait_source() {
                    Ok(source) => vec![source],
                    Err(e) => {
                        println!("@@ host bus {name} waits through its notifier: {e}");
                        Vec::new()
                    }
                };
                let run: Run = Box::pin(host_sim::run_bus(s, fault::ReadToEnd(ring), clock));
                Ok((run, sources))
            }
        });
        let pool = h.pool.clone();
        let end = move |exit: Result<Result<RunExit, ChannelError>, control::ControlError>| {
            h.buses().ended.insert(name.clone());
            // A rescind of the host's own goes to the service as a rescind.
            if let Ok(Ok(RunExit::Rescinded)) = exit {
                w.send(&Message::Rescind { bus: name.clone() });
            }
            println!("@@ host bus {name} ended {exit:?}");
        };
        match prepared {
            Ok((run, sources)) => pool.spawn(async move { end(Ok(run.await)) }, sources),
            Err(e) => end(Err(e)),
        }
    });
    let quiet = host.spec.storm == 0 && host.spec.reoffer == 0 && host.spec.chaos.is_none();
    let _ = host
        .monitor
        .send(monitor::Watched::new(bus.clone(), shared, quiet));
    if !first {
        // The re-offer loop waits for the reopening.
        host.wake(&bus);
        return;
    }
    let h = host.clone();
    if host.spec.storm > 0 {
        std::thread::spawn(move || drive::storm(&h, &bus));
    } else if host.spec.reoffer > 0 {
        std::thread::spawn(move || drive::reoffer(&h, &bus, &wake_rx));
    } else if let Some(spec) = host.spec.chaos {
        std::thread::spawn(move || drive::chaos(&h, &bus, spec));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `monitor_ms` sets how often the monitor looks (never less than 1 ms); 2 ms otherwise.
    #[test]
    fn monitor_period_from_the_spec() {
        let period = |s: &str| HostSpec::parse(s).map(|spec| spec.monitor_period).ok();
        assert_eq!(period("buses=2"), Some(Duration::from_millis(2)));
        assert_eq!(period("monitor_ms=100"), Some(Duration::from_millis(100)));
        assert_eq!(period("monitor_ms=0"), Some(Duration::from_millis(1)));
        assert!(period("monitor_ms=x").is_none());
    }
}
