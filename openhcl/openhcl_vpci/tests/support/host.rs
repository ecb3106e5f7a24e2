//! A host endpoint: host_sim buses served over the control plane, one thread per open bus
//! (host_sim's async adapter over the ring, real time), plus a scenario thread per bus that
//! acts as a Hyper-V host would (hot-plug storms, rescind and re-offer).
//!
//! Progress is printed on stdout as `@@ ...` lines for the tests to read.

use futures::executor::block_on;
use host_sim::{
    BusConfig, FunctionSpec, HostAction, HostClock, HostEventKind, SharedBus, Sleep, Time,
};
use openhcl_vpci::control::{self, Message, MmioOp};
use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use vpci_protocol::WinSlot;

/// What the host does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Offer the buses and serve them.
    Static,
    /// On each bus, `cycles` times: hot-add a function, eject it, wait for the answer.
    Storm { cycles: u32 },
    /// On each bus, `times` times: rescind it, wait for the release, offer it again.
    Reoffer { times: u32 },
}

/// The host endpoint's settings.
#[derive(Clone, Debug)]
pub struct HostSpec {
    /// Buses offered at boot.
    pub buses: usize,
    /// Functions on each bus at boot (slots 0..n).
    pub functions: u32,
    /// The latency of every host answer.
    pub latency: Duration,
    /// What the host does.
    pub scenario: Scenario,
}

impl HostSpec {
    /// Parses `buses=4,functions=2,latency_ms=0,storm=500|reoffer=100`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut spec = HostSpec {
            buses: 1,
            functions: 2,
            latency: Duration::ZERO,
            scenario: Scenario::Static,
        };
        for kv in s.split(',').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or(format!("bad {kv:?}"))?;
            let n: u64 = v.parse().map_err(|_| format!("bad {kv:?}"))?;
            match k {
                "buses" => spec.buses = n as usize,
                "functions" => spec.functions = n as u32,
                "latency_ms" => spec.latency = Duration::from_millis(n),
                "storm" => spec.scenario = Scenario::Storm { cycles: n as u32 },
                "reoffer" => spec.scenario = Scenario::Reoffer { times: n as u32 },
                _ => return Err(format!("unknown key {k:?}")),
            }
        }
        Ok(spec)
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

fn bus_config(name: &str, spec: &HostSpec) -> BusConfig {
    let mut config = BusConfig {
        name: name.to_owned(),
        functions: (0..spec.functions).map(FunctionSpec::nic).collect(),
        ..BusConfig::default()
    };
    config.policy.latency = Time(spec.latency);
    config
}

/// The buses the service has open, and where to tell each scenario thread of a release.
#[derive(Default)]
struct Buses {
    open: HashMap<String, SharedBus>,
    releases: HashMap<String, mpsc::Sender<()>>,
}

/// Listens on `socket`, serves one service connection until it ends.
pub fn run(socket: &std::path::Path, spec: HostSpec) {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).expect("bind the host socket");
    println!("@@ host listening");
    let (stream, _) = listener.accept().expect("accept the service");
    let writer: Writer = Arc::new(Mutex::new(stream.try_clone().expect("clone")));
    let clock = RealClock(Instant::now());
    let buses: Arc<Mutex<Buses>> = Arc::default();
    for i in 0..spec.buses {
        send(
            &writer,
            &Message::Offer {
                bus: format!("bus{i}"),
            },
        );
    }
    send(&writer, &Message::AllOffersDelivered);
    while let Ok(Some((message, fd))) = control::recv(&stream) {
        match message {
            Message::Open { bus } => {
                let Some(fd) = fd else { continue };
                let shared = match host_sim::HostBus::new(bus_config(&bus, &spec)) {
                    Ok(b) => SharedBus::new(b),
                    Err(e) => panic!("bus config: {e}"),
                };
                let mut b = buses.lock().unwrap_or_else(PoisonError::into_inner);
                b.open.insert(bus.clone(), shared.clone());
                let (release_tx, release_rx) = mpsc::channel();
                let fresh = !b.releases.contains_key(&bus);
                if fresh {
                    b.releases.insert(bus.clone(), release_tx);
                }
                drop(b);
                let name = bus.clone();
                let s = shared.clone();
                std::thread::spawn(move || {
                    let exit = control::accept_ring(fd)
                        .map(|ring| block_on(host_sim::run_bus(s, ring, clock)));
                    println!("@@ host bus {name} ended {exit:?}");
                });
                if fresh {
                    let w = writer.clone();
                    let spec = spec.clone();
                    let buses = buses.clone();
                    std::thread::spawn(move || {
                        scenario(&bus, &spec, &w, &buses, release_rx, clock)
                    });
                } else if let Some(tx) = buses
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .releases
                    .get(&bus)
                {
                    let _ = tx.send(());
                }
            }
            Message::Mmio { id, bus, op } => {
                let shared = buses
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .open
                    .get(&bus)
                    .cloned();
                let value = shared.and_then(|s| s.with(|b| access(b, op)));
                send(&writer, &Message::MmioDone { id, value });
            }
            Message::Release { bus } => {
                let b = buses.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(tx) = b.releases.get(&bus) {
                    let _ = tx.send(());
                }
            }
            Message::Close { .. } => {}
            other => println!("@@ host unexpected {other:?}"),
        }
    }
    println!("@@ host service gone");
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

fn current(buses: &Mutex<Buses>, bus: &str) -> Option<SharedBus> {
    buses
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .open
        .get(bus)
        .cloned()
}

fn scenario(
    bus: &str,
    spec: &HostSpec,
    writer: &Writer,
    buses: &Mutex<Buses>,
    release: mpsc::Receiver<()>,
    clock: RealClock,
) {
    let Some(shared) = current(buses, bus) else {
        return;
    };
    let limit = Duration::from_secs(30);
    if !wait_event(&shared, limit, |k| {
        matches!(k, HostEventKind::Negotiated { .. })
    }) {
        println!("@@ host {bus} never negotiated");
        return;
    }
    match spec.scenario {
        Scenario::Static => {}
        Scenario::Storm { cycles } => {
            let slot = spec.functions;
            let (mut answered, mut timed_out) = (0u32, 0u32);
            let started = Instant::now();
            for c in 0..cycles {
                let f = FunctionSpec::nic(slot).with_serial(10_000 + c);
                if shared.act(clock.now(), HostAction::HotAdd(f)).is_err() {
                    println!("@@ host {bus} hot-add refused at cycle {c}");
                    break;
                }
                // Eject at every stage of the guest's probe of the new function: before it
                // hears of it, while it probes, once it has had it for a while.
                match c % 4 {
                    0 => {}
                    1 => std::thread::sleep(Duration::from_millis(1)),
                    2 => std::thread::sleep(Duration::from_millis(120)),
                    _ => std::thread::sleep(Duration::from_millis(15)),
                }
                let wslot = WinSlot::from_raw(slot);
                if shared
                    .act(clock.now(), HostAction::Eject { slot: wslot.raw() })
                    .is_err()
                {
                    println!("@@ host {bus} eject refused at cycle {c}");
                    break;
                }
                let mut out = None;
                wait_event(&shared, Duration::from_secs(70), |k| match k {
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
            println!("@@ storm {bus} cycles={cycles} answered={answered} unanswered={timed_out}");
            println!("@@ storm {bus} took {:?}", started.elapsed());
        }
        Scenario::Reoffer { times } => {
            let mut shared = shared;
            for r in 0..times {
                // Let the guest get going (the bus negotiated), then rescind.
                let _ = shared.act(clock.now(), HostAction::Rescind);
                send(
                    writer,
                    &Message::Rescind {
                        bus: bus.to_owned(),
                    },
                );
                if release.recv_timeout(limit).is_err() {
                    println!("@@ reoffer {bus} no release at round {r}");
                    return;
                }
                send(
                    writer,
                    &Message::Offer {
                        bus: bus.to_owned(),
                    },
                );
                // Wait for the service to open the bus again (the scenario's channel rings
                // once more on the open), then for the new bus to negotiate.
                if release.recv_timeout(limit).is_err() {
                    println!("@@ reoffer {bus} not reopened at round {r}");
                    return;
                }
                let Some(next) = current(buses, bus) else {
                    return;
                };
                shared = next;
                if !wait_event(&shared, limit, |k| {
                    matches!(k, HostEventKind::Negotiated { .. })
                }) {
                    println!("@@ reoffer {bus} never negotiated at round {r}");
                    return;
                }
            }
            println!("@@ reoffer {bus} done={times}");
        }
    }
}
