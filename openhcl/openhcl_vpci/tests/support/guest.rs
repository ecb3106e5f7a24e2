//! A guest endpoint: connects to the service's guest socket, opens every bus offered with a
//! ring of its own and runs the Linux 6.2 or 6.3 model of pci-hyperv on it in real time. Its
//! config-space and BAR accesses go over the control plane. A rescinded bus is removed by the
//! model, then released (after `release_delay`, to play a guest slow to let go).
//!
//! Progress is printed on stdout as `@@ ...` lines for the tests to read.

use futures::FutureExt;
use futures::executor::block_on;
use guest_linux::{ContextId, GuestConfig, GuestEnv, KernelModel, LinuxGuest};
use openhcl_vpci::control::{self, Message, MmioOp};
use std::collections::{BTreeMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vmbus_channel::{ChannelExt, Packet, RingChannel, RingChannelConfig};
use vpci_protocol::WinSlot;

/// The guest endpoint's settings.
#[derive(Clone, Copy, Debug)]
pub struct GuestSpec {
    /// The model.
    pub model: KernelModel,
    /// How long the guest waits before releasing a removed bus.
    pub release_delay: Duration,
}

impl GuestSpec {
    /// Parses `model=6.2|6.3,release_ms=N`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut spec = GuestSpec {
            model: KernelModel::Linux62,
            release_delay: Duration::ZERO,
        };
        for kv in s.split(',').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("model", "6.2")) => spec.model = KernelModel::Linux62,
                Some(("model", "6.3")) => spec.model = KernelModel::Linux63,
                Some(("release_ms", v)) => {
                    spec.release_delay =
                        Duration::from_millis(v.parse().map_err(|_| format!("bad {kv}"))?)
                }
                _ => return Err(format!("bad {kv:?}")),
            }
        }
        Ok(spec)
    }
}

/// The control connection: the reader thread's messages, and a backlog of those that
/// arrived while an access waited for its answer.
struct Ctl {
    stream: UnixStream,
    rx: mpsc::Receiver<Option<Message>>,
    backlog: VecDeque<Message>,
    next_id: u64,
    gone: bool,
}

impl Ctl {
    fn mmio(&mut self, bus: &str, op: MmioOp) -> Option<u32> {
        if self.gone {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let m = Message::Mmio {
            id,
            bus: bus.to_owned(),
            op,
        };
        if control::send(&self.stream, &m, None).is_err() {
            self.gone = true;
            return None;
        }
        loop {
            match self.rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Some(Message::MmioDone { id: got, value })) if got == id => return value,
                Ok(Some(other)) => self.backlog.push_back(other),
                Ok(None) | Err(_) => {
                    self.gone = true;
                    return None;
                }
            }
        }
    }

    fn next(&mut self) -> Option<Message> {
        if let Some(m) = self.backlog.pop_front() {
            return Some(m);
        }
        match self.rx.try_recv() {
            Ok(Some(m)) => Some(m),
            Ok(None) | Err(mpsc::TryRecvError::Disconnected) => {
                self.gone = true;
                None
            }
            Err(mpsc::TryRecvError::Empty) => None,
        }
    }
}

struct Env<'a> {
    now: Duration,
    bus: &'a str,
    ctl: &'a mut Ctl,
    outbox: &'a mut Vec<Packet>,
}

impl GuestEnv for Env<'_> {
    fn now(&self) -> Duration {
        self.now
    }
    fn send(&mut self, packet: Packet) {
        self.outbox.push(packet);
    }
    fn config_read(&mut self, slot: WinSlot, offset: u16, len: u8) -> Option<u32> {
        let slot = slot.raw();
        self.ctl
            .mmio(self.bus, MmioOp::ConfigRead { slot, offset, len })
    }
    fn config_write(&mut self, slot: WinSlot, offset: u16, len: u8, value: u32) -> bool {
        let slot = slot.raw();
        let op = MmioOp::ConfigWrite {
            slot,
            offset,
            len,
            value,
        };
        self.ctl.mmio(self.bus, op).is_some()
    }
    fn bar_read(&mut self, slot: WinSlot, bar: u8, offset: u64, len: u8) -> Option<u32> {
        let slot = slot.raw();
        let op = MmioOp::BarRead {
            slot,
            bar,
            offset,
            len,
        };
        self.ctl.mmio(self.bus, op)
    }
    fn bar_write(&mut self, slot: WinSlot, bar: u8, offset: u64, len: u8, value: u32) -> bool {
        let slot = slot.raw();
        let op = MmioOp::BarWrite {
            slot,
            bar,
            offset,
            len,
            value,
        };
        self.ctl.mmio(self.bus, op).is_some()
    }
    fn retarget_interrupt(&mut self, _: WinSlot, _: u32) {}
}

struct Bus {
    guest: LinuxGuest,
    ring: RingChannel,
    ring_ended: bool,
    /// The service rescinded the bus (at this time).
    rescinded: Option<Instant>,
    probed: bool,
    failed: bool,
    devices: usize,
}

/// Connects to `socket` and runs until the service goes away and every bus is removed.
pub fn run(socket: &std::path::Path, spec: GuestSpec) {
    let start = Instant::now();
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("cannot reach the service: {e}"),
        }
    };
    println!("@@ guest connected");
    let (tx, rx) = mpsc::channel();
    let reader = stream.try_clone().expect("clone");
    std::thread::spawn(move || {
        while let Ok(Some((m, _))) = control::recv(&reader) {
            if tx.send(Some(m)).is_err() {
                return;
            }
        }
        let _ = tx.send(None);
    });
    let mut ctl = Ctl {
        stream,
        rx,
        backlog: VecDeque::new(),
        next_id: 1,
        gone: false,
    };
    let mut buses: BTreeMap<String, Bus> = BTreeMap::new();
    let mut violations = 0u32;
    let mut gone_at: Option<Instant> = None;
    loop {
        let mut busy = false;
        while let Some(m) = ctl.next() {
            busy = true;
            match m {
                Message::Offer { bus } => {
                    if buses.contains_key(&bus) {
                        violations += 1;
                        println!("@@ guest violation: {bus} offered while still held");
                        continue;
                    }
                    let ring =
                        match control::open_ring(&ctl.stream, &bus, RingChannelConfig::default()) {
                            Ok(r) => r,
                            Err(e) => {
                                println!("@@ guest open {bus} failed: {e}");
                                continue;
                            }
                        };
                    let mut config = GuestConfig::new(spec.model);
                    config.trace = false;
                    println!("@@ guest offer {bus}");
                    buses.insert(
                        bus,
                        Bus {
                            guest: LinuxGuest::new(config),
                            ring,
                            ring_ended: false,
                            rescinded: None,
                            probed: false,
                            failed: false,
                            devices: 0,
                        },
                    );
                }
                Message::Rescind { bus } => match buses.get_mut(&bus) {
                    Some(b) => {
                        b.rescinded = Some(Instant::now());
                        b.guest.rescind();
                    }
                    None => {
                        violations += 1;
                        println!("@@ guest violation: rescind of unknown {bus}");
                    }
                },
                Message::AllOffersDelivered => println!("@@ guest all offers delivered"),
                other => println!("@@ guest unexpected {other:?}"),
            }
        }
        if ctl.gone && gone_at.is_none() {
            println!("@@ guest service gone");
            gone_at = Some(Instant::now());
            for b in buses.values_mut() {
                b.rescinded.get_or_insert(Instant::now());
                b.guest.rescind();
            }
        }
        let now = start.elapsed();
        let mut released = Vec::new();
        for (name, b) in &mut buses {
            busy |= drive(name, b, now, &mut ctl);
            if let Some(at) = b.rescinded {
                // hv_pci_remove runs only after a successful probe; a probe the rescind made
                // fail leaves nothing to remove once every context has stopped.
                let probe_failed =
                    matches!(b.guest.probe_result(), Some(Err(_))) && b.guest.runnable().is_empty();
                let done = b.guest.removed() || b.failed || probe_failed;
                if done && at.elapsed() >= spec.release_delay {
                    released.push(name.clone());
                }
            }
        }
        for name in released {
            if let Some(mut b) = buses.remove(&name) {
                use vmbus_channel::Channel;
                b.ring.close();
                if !ctl.gone {
                    let _ =
                        control::send(&ctl.stream, &Message::Release { bus: name.clone() }, None);
                }
                println!(
                    "@@ guest released {name} failed={} probe={:?}",
                    b.failed,
                    b.guest.probe_result()
                );
            }
        }
        if let Some(at) = gone_at {
            if buses.is_empty() || at.elapsed() > Duration::from_secs(20) {
                break;
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    for (name, b) in &buses {
        println!(
            "@@ guest stuck {name}: blocked {:?} runnable {:?}",
            b.guest.blocked(),
            b.guest.runnable()
        );
    }
    let hung: Vec<_> = buses.keys().cloned().collect();
    println!("@@ guest exit violations={violations} unremoved={hung:?}");
}

/// Runs one bus's model as far as it can go now; true if anything happened.
fn drive(name: &str, b: &mut Bus, now: Duration, ctl: &mut Ctl) -> bool {
    let mut busy = false;
    while !b.ring_ended {
        match b.ring.recv().now_or_never() {
            Some(Ok(p)) => {
                busy = true;
                b.guest.receive(p);
            }
            Some(Err(e)) if e.end_reason().is_some() => {
                b.ring_ended = true;
                b.guest.rescind();
            }
            Some(Err(_)) => {}
            None => break,
        }
    }
    b.guest.advance_time(now);
    let mut outbox = Vec::new();
    for _ in 0..10_000 {
        let spinning = b.guest.spinning();
        let runnable = b.guest.runnable();
        let ctx: Option<ContextId> = runnable
            .iter()
            .copied()
            .find(|c| !spinning.contains(c))
            .or_else(|| runnable.first().copied());
        let Some(ctx) = ctx else { break };
        let mut env = Env {
            now,
            bus: name,
            ctl,
            outbox: &mut outbox,
        };
        b.guest.step(ctx, &mut env);
        if spinning.contains(&ctx) {
            break;
        }
        busy = true;
    }
    for p in outbox {
        busy = true;
        if !b.ring_ended && block_on(b.ring.send(&p)).is_err() {
            b.ring_ended = true;
        }
    }
    if !b.failed {
        if let Some(f) = b.guest.failure() {
            b.failed = true;
            println!("@@ guest failure {name} {}", f.kind.name());
        }
    }
    if !b.probed && b.guest.probe_result() == Some(Ok(())) {
        b.probed = true;
        println!("@@ guest probed {name}");
    }
    let devices = b.guest.devices().iter().filter(|d| d.driver_bound).count();
    if devices != b.devices {
        b.devices = devices;
        println!("@@ guest devices {name} {devices}");
    }
    busy
}
