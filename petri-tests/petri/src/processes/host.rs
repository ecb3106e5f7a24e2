//! The host endpoint of a multi-process run: host_sim buses (a scenario's, or `N` buses of
//! `M` functions) served over the service's control plane, one thread per open bus
//! (host_sim's async adapter over the ring, real time), a monitor per bus that prints the
//! host's state whenever it changes (for the end-of-run checks), and, if asked, a hot-plug
//! storm per bus.
//!
//! Progress is printed on stdout as `@@ ...` lines for the driving process to read.

use super::report::HostState;
use crate::scenario;
use futures::executor::block_on;
use host_sim::{
    BusConfig, FunctionSpec, HostAction, HostClock, HostEventKind, RunExit, SharedBus, Sleep, Time,
};
use openhcl_vpci::control::{self, Message, MmioOp};
use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use vpci_protocol::WinSlot;

/// The host endpoint's settings.
#[derive(Clone, Debug)]
pub struct HostSpec {
    /// The buses offered at boot.
    pub buses: Vec<BusConfig>,
    /// Hot-add/eject cycles per bus after it negotiated (0: none).
    pub storm: u32,
}

impl HostSpec {
    /// Parses `scenario=NAME|PATH` or `buses=N,functions=N,latency_ms=N`, with `storm=N`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (mut buses, mut functions, mut latency, mut storm) = (1usize, 1u32, 0u64, 0u32);
        let mut from_scenario = None;
        for kv in s.split(',').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or(format!("bad {kv:?}"))?;
            let n = || v.parse::<u64>().map_err(|_| format!("bad {kv:?}"));
            match k {
                "scenario" => {
                    let sc = scenario::load(v).map_err(|e| e.to_string())?;
                    from_scenario = Some(sc.buses);
                }
                "buses" => buses = usize::try_from(n()?).map_err(|_| format!("bad {kv:?}"))?,
                "functions" => {
                    functions = u32::try_from(n()?).map_err(|_| format!("bad {kv:?}"))?
                }
                "latency_ms" => latency = n()?,
                "storm" => storm = u32::try_from(n()?).map_err(|_| format!("bad {kv:?}"))?,
                _ => return Err(format!("unknown key {k:?}")),
            }
        }
        let buses = match from_scenario {
            Some(b) => b,
            None => (0..buses)
                .map(|_| {
                    let mut config = BusConfig {
                        functions: (0..functions).map(FunctionSpec::nic).collect(),
                        ..BusConfig::default()
                    };
                    config.policy.latency = Time(Duration::from_millis(latency));
                    config
                })
                .collect(),
        };
        Ok(Self { buses, storm })
    }
}

/// Real time for host_sim's adapter.
#[derive(Clone, Copy, Debug)]
struct RealClock(Instant);

impl HostClock for RealClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep_until(&self, deadline: Duration) -> Sleep {
        let left = deadline.saturating_sub(self.0.elapsed());
        Box::pin(futures_timer::Delay::new(left))
    }
}

type Writer = Arc<Mutex<UnixStream>>;

fn send(writer: &Writer, message: &Message) {
    let stream = writer.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = control::send(&stream, message, None);
}

/// The bus id the service knows bus `i` by.
pub(crate) fn bus_name(i: usize) -> String {
    format!("bus{i}")
}

/// Listens on `socket` and serves one service connection until it ends.
pub fn run(socket: &std::path::Path, spec: HostSpec) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    println!("@@ host listening");
    let (stream, _) = listener.accept()?;
    let writer: Writer = Arc::new(Mutex::new(stream.try_clone()?));
    let clock = RealClock(Instant::now());
    let mut open: HashMap<String, SharedBus> = HashMap::new();
    for i in 0..spec.buses.len() {
        send(&writer, &Message::Offer { bus: bus_name(i) });
    }
    send(&writer, &Message::AllOffersDelivered);
    while let Ok(Some((message, fd))) = control::recv(&stream) {
        match message {
            Message::Open { bus } => {
                let Some(fd) = fd else { continue };
                let config = (0..spec.buses.len())
                    .find(|&i| bus_name(i) == bus)
                    .and_then(|i| spec.buses.get(i).cloned());
                let Some(mut config) = config else {
                    println!("@@ host open of unknown {bus}");
                    continue;
                };
                config.name = bus.clone();
                let shared = match host_sim::HostBus::new(config) {
                    Ok(b) => SharedBus::new(b),
                    Err(e) => {
                        println!("@@ host bus config {bus}: {e}");
                        continue;
                    }
                };
                open.insert(bus.clone(), shared.clone());
                start_bus(&bus, shared, fd, clock, &writer, spec.storm);
            }
            Message::Mmio { id, bus, op } => {
                let value = open.get(&bus).and_then(|s| s.with(|b| access(b, op)));
                send(&writer, &Message::MmioDone { id, value });
            }
            Message::Release { .. } | Message::Close { .. } => {}
            other => println!("@@ host unexpected {other:?}"),
        }
    }
    println!("@@ host service gone");
    Ok(())
}

/// Starts an opened bus's threads: the adapter over its ring, its monitor and its storm.
fn start_bus(
    bus: &str,
    shared: SharedBus,
    fd: std::os::fd::OwnedFd,
    clock: RealClock,
    writer: &Writer,
    storm: u32,
) {
    let (name, s, w) = (bus.to_owned(), shared.clone(), writer.clone());
    std::thread::spawn(move || {
        let exit = control::accept_ring(fd).map(|ring| block_on(host_sim::run_bus(s, ring, clock)));
        // A rescind of the host's own (a script's) goes to the service as a rescind.
        if let Ok(Ok(RunExit::Rescinded)) = exit {
            send(&w, &Message::Rescind { bus: name.clone() });
        }
        println!("@@ host bus {name} ended {exit:?}");
    });
    let (name, s) = (bus.to_owned(), shared.clone());
    std::thread::spawn(move || monitor(&name, &s, storm == 0));
    if storm > 0 {
        let name = bus.to_owned();
        std::thread::spawn(move || run_storm(&name, &shared, storm, clock));
    }
}

/// Prints the bus's state (`@@ host state ...`) whenever it changes; drains the bus's events
/// when nothing else reads them.
fn monitor(bus: &str, shared: &SharedBus, drain: bool) {
    let mut last = None;
    loop {
        let state = shared.with(|b| {
            if drain {
                while b.poll_event().is_some() {}
            }
            HostState {
                bus: bus.to_owned(),
                rescinded: b.rescinded(),
                broke_protocol: b.broke_protocol(),
                ejecting: b
                    .slots()
                    .into_iter()
                    .filter(|&s| b.eject_outstanding(s))
                    .collect(),
                functions: crate::vm::host_functions(b),
            }
        });
        if last.as_ref() != Some(&state) {
            println!("@@ {}", state.line());
            let ended = state.rescinded;
            last = Some(state);
            if ended {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn access(bus: &mut host_sim::HostBus, op: MmioOp) -> Option<u32> {
    match op {
        MmioOp::ConfigRead { slot, offset, len } => {
            bus.config_read(WinSlot::from_raw(slot), offset, len).ok()
        }
        MmioOp::ConfigWrite {
            slot,
            offset,
            len,
            value,
        } => bus
            .config_write(WinSlot::from_raw(slot), offset, len, value)
            .ok()
            .map(|_| 0),
        MmioOp::BarRead {
            slot,
            bar,
            offset,
            len,
        } => {
            let mut data = [0u8; 4];
            let buf = data.get_mut(..usize::from(len))?;
            bus.bar_read(WinSlot::from_raw(slot), bar, offset, buf)
                .ok()?;
            Some(u32::from_le_bytes(data))
        }
        MmioOp::BarWrite {
            slot,
            bar,
            offset,
            len,
            value,
        } => {
            let bytes = value.to_le_bytes();
            let data = bytes.get(..usize::from(len))?;
            bus.bar_write(WinSlot::from_raw(slot), bar, offset, data)
                .ok()
                .map(|_| 0)
        }
    }
}

/// Waits (polling the bus's events) until `done` says so, or `limit` passes.
fn wait_event(
    shared: &SharedBus,
    limit: Duration,
    mut done: impl FnMut(&HostEventKind) -> bool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        while let Some(e) = shared.with(|b| b.poll_event()) {
            if done(&e.kind) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

/// `cycles` times: hot-add a function in the first free slot, eject it (before the guest
/// hears of it, while it probes, or once it has had it a while), wait for the answer.
fn run_storm(bus: &str, shared: &SharedBus, cycles: u32, clock: RealClock) {
    if !wait_event(shared, Duration::from_secs(30), |k| {
        matches!(k, HostEventKind::Negotiated { .. })
    }) {
        println!("@@ host {bus} never negotiated");
        return;
    }
    let slot = shared.with(|b| b.slots().iter().map(|s| s.raw() + 1).max().unwrap_or(0));
    let wslot = WinSlot::from_raw(slot);
    let (mut answered, mut timed_out) = (0u32, 0u32);
    let started = Instant::now();
    for c in 0..cycles {
        let f = FunctionSpec::nic(slot).with_serial(10_000 + c);
        if shared.act(clock.now(), HostAction::HotAdd(f)).is_err() {
            println!("@@ host {bus} hot-add refused at cycle {c}");
            break;
        }
        match c % 4 {
            0 => {}
            1 => std::thread::sleep(Duration::from_millis(1)),
            2 => std::thread::sleep(Duration::from_millis(120)),
            _ => std::thread::sleep(Duration::from_millis(15)),
        }
        if shared
            .act(clock.now(), HostAction::Eject { slot: wslot.raw() })
            .is_err()
        {
            println!("@@ host {bus} eject refused at cycle {c}");
            break;
        }
        let mut out = None;
        wait_event(shared, Duration::from_secs(70), |k| match k {
            HostEventKind::EjectCompleted { slot, .. } if *slot == wslot => {
                out = Some(true);
                true
            }
            HostEventKind::EjectTimedOut { slot } if *slot == wslot => {
                out = Some(false);
                true
            }
            _ => false,
        });
        match out {
            Some(true) => answered += 1,
            _ => timed_out += 1,
        }
    }
    let ms = started.elapsed().as_millis();
    println!("@@ storm {bus} cycles={cycles} answered={answered} unanswered={timed_out} ms={ms}");
}
