//! The model guest endpoint: connects to the service's guest socket (or, as an opener, to
//! any offerer's), opens every bus offered with a ring of its own and runs a Linux model of
//! pci-hyperv (6.2 or 6.3, [`guest_linux`]) on it in real time; config-space and BAR accesses
//! go over the control plane. A bus rescinded (or whose ring ended) is removed by the model;
//! once rescinded and removed it is released, after `release_delay` (to play a guest slow to
//! let go).
//!
//! Lines (`@@ ...`): `guest offer BUS`, each bus's state whenever it changes
//! ([`GuestState`]), its first failure ([`GuestFailure`]), `guest probed BUS`, `guest devices
//! BUS N` (functions with a driver bound), `guest violation: ...` (an offer of a bus still
//! held, a rescind of one never offered), `guest released BUS failed=.. probe=..`, and at
//! the end `guest exit violations=N unremoved=[..]`.
//!
//! For the service's fault tests: with `requests=1` every request sent that asks for a
//! completion (`guest request BUS tid=T type=NAME`) and every completion received (`guest
//! completion BUS tid=T status=S`) is printed; with `garbage_bus=N` (and `garbage_after=K`,
//! 0 by default) the guest holds the EJECT after the K-th on bus N, writes an invalid write
//! index into its own ring of that bus instead of answering, and sends nothing more on it
//! (`guest fault BUS garbage holding EJECT write_index=V`).

use crate::SpecError;
use crate::ctl::Ctl;
use crate::report::{GuestFailure, GuestState, model_functions};
use crate::tap::RingTap;
use futures::FutureExt;
use futures::executor::block_on;
use guest_linux::{ContextId, GuestConfig, GuestEnv, KernelModel, LinuxGuest};
use openhcl_vpci::control::{Message, MmioOp};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use vmbus_channel::{Channel, ChannelExt, Packet, PacketKind, RingChannel};
use vpci_protocol::{MessageType, WinSlot};

/// How long the guest keeps removing its buses once the service is gone.
const GONE_LIMIT: Duration = Duration::from_secs(20);

/// The model guest's settings.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The model and its drivers (each bus gets a copy, without tracing).
    pub config: GuestConfig,
    /// How long the guest waits after a rescind before releasing the removed bus.
    pub release_delay: Duration,
}

/// What the service's fault tests ask of the model guest beyond its [`ModelSpec`] (parsed
/// from the same spec string by [`ModelFaults::parse`]; [`run`] asks for none of it).
#[derive(Clone, Debug, Default)]
pub struct ModelFaults {
    /// Print every request that asks for a completion, and every completion.
    pub trace_requests: bool,
    /// Write garbage into the ring of this bus (its index) at an EJECT.
    pub garbage_bus: Option<usize>,
    /// How many EJECTs on that bus are answered before the one held.
    pub garbage_after: u32,
    /// Once connected, read and write a BAR of slot 0 on this bus, which the service does
    /// not run (as a driver that touches its device after its bus went away would), and
    /// print what came back: `guest touch BUS read=V write=V` (`fault` for none).
    pub touch_bus: Option<String>,
}

/// The spec keys [`ModelFaults`] reads (and [`ModelSpec::parse`] leaves to it).
const FAULT_KEYS: [&str; 4] = ["requests", "garbage_bus", "garbage_after", "touch_bus"];

impl ModelFaults {
    /// Reads `requests=0|1`, `garbage_bus=N`, `garbage_after=N` (0 by default) and
    /// `touch_bus=NAME` from a model guest's spec string, ignoring its other keys.
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let mut faults = Self::default();
        for kv in s.split(',').filter(|kv| !kv.is_empty()) {
            let bad = || SpecError::BadItem(kv.to_owned());
            match kv.split_once('=').ok_or_else(bad)? {
                ("requests", v) => faults.trace_requests = v == "1",
                ("garbage_bus", v) => faults.garbage_bus = Some(v.parse().map_err(|_| bad())?),
                ("garbage_after", v) => faults.garbage_after = v.parse().map_err(|_| bad())?,
                ("touch_bus", v) => faults.touch_bus = Some(v.to_owned()),
                _ => {}
            }
        }
        Ok(faults)
    }
}

impl ModelSpec {
    /// `model`'s default configuration, released at once.
    pub fn new(model: KernelModel) -> Self {
        Self {
            config: GuestConfig::new(model),
            release_delay: Duration::ZERO,
        }
    }

    /// Parses `model=6.2|6.3,release_ms=N` (6.2, 0 by default); the keys of
    /// [`ModelFaults`] are left to it.
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let mut spec = Self::new(KernelModel::Linux62);
        for kv in s.split(',').filter(|kv| !kv.is_empty()) {
            let bad = || SpecError::BadItem(kv.to_owned());
            match kv.split_once('=').ok_or_else(bad)? {
                ("model", "6.2") => spec.config = GuestConfig::new(KernelModel::Linux62),
                ("model", "6.3") => spec.config = GuestConfig::new(KernelModel::Linux63),
                ("model", _) => return Err(bad()),
                ("release_ms", v) => {
                    spec.release_delay = Duration::from_millis(v.parse().map_err(|_| bad())?)
                }
                (k, _) if FAULT_KEYS.contains(&k) => {}
                (k, _) => return Err(SpecError::UnknownKey(k.to_owned())),
            }
        }
        Ok(spec)
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

/// One bus the guest holds.
struct Bus {
    guest: LinuxGuest,
    ring: RingChannel,
    ring_ended: bool,
    /// The service rescinded the bus (at this time), or went away.
    rescinded: Option<Instant>,
    failed: bool,
    probed: bool,
    devices: usize,
    last: Option<GuestState>,
    /// The faults and traces asked for.
    faults: BusFaults,
}

/// What the fault tests ask of one bus.
#[derive(Default)]
struct BusFaults {
    trace_requests: bool,
    /// The tap for writing garbage into the ring, and the EJECTs to answer first.
    garbage: Option<(RingTap, u32)>,
    /// The garbage was written: nothing more is sent.
    struck: bool,
}

/// The guest's buses and what it counted.
struct Guest {
    spec: ModelSpec,
    faults: ModelFaults,
    ctl: Ctl,
    buses: BTreeMap<String, Bus>,
    violations: u32,
}

impl Guest {
    fn offer(&mut self, bus: String) {
        if self.buses.contains_key(&bus) {
            self.violations += 1;
            println!("@@ guest violation: {bus} offered while still held");
            return;
        }
        let ring = match self.ctl.open(&bus) {
            Ok(r) => r,
            Err(e) => {
                println!("@@ guest open {bus} failed: {e}");
                return;
            }
        };
        let mut faults = BusFaults {
            trace_requests: self.faults.trace_requests,
            ..BusFaults::default()
        };
        let ring = match self.faults.garbage_bus.map(crate::bus_name) {
            Some(name) if name == bus => match RingTap::split(ring) {
                Ok((ring, tap)) => {
                    faults.garbage = Some((tap, self.faults.garbage_after));
                    ring
                }
                Err(e) => {
                    println!("@@ guest open {bus} failed: no tap: {e}");
                    return;
                }
            },
            _ => ring,
        };
        let mut config = self.spec.config.clone();
        config.trace = false;
        println!("@@ guest offer {bus}");
        let b = Bus {
            guest: LinuxGuest::new(config),
            ring,
            ring_ended: false,
            rescinded: None,
            failed: false,
            probed: false,
            devices: 0,
            last: None,
            faults,
        };
        self.buses.insert(bus, b);
    }

    fn rescind(&mut self, bus: &str) {
        match self.buses.get_mut(bus) {
            Some(b) => {
                b.rescinded.get_or_insert_with(Instant::now);
                b.guest.rescind();
            }
            None => {
                self.violations += 1;
                println!("@@ guest violation: rescind of unknown {bus}");
            }
        }
    }

    /// Releases each bus that is rescinded, done with and past the release delay.
    fn release_done(&mut self) {
        let delay = self.spec.release_delay;
        let done: Vec<String> = self
            .buses
            .iter()
            .filter(|(_, b)| {
                // hv_pci_remove runs only after a successful probe; a probe the rescind made
                // fail leaves nothing to remove once every context has stopped.
                let probe_failed =
                    matches!(b.guest.probe_result(), Some(Err(_))) && b.guest.runnable().is_empty();
                let finished = b.guest.removed() || b.failed || probe_failed;
                b.rescinded
                    .is_some_and(|at| finished && at.elapsed() >= delay)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in done {
            if let Some(mut b) = self.buses.remove(&name) {
                b.ring.close();
                self.ctl.release(&name);
                println!(
                    "@@ guest released {name} failed={} probe={:?}",
                    b.failed,
                    b.guest.probe_result()
                );
            }
        }
    }
}

/// Connects to `socket` and runs the model on every bus offered until the service goes away
/// and every bus is removed (or 20 s after that).
pub fn run(socket: &std::path::Path, spec: ModelSpec) -> std::io::Result<()> {
    run_with(socket, spec, ModelFaults::default())
}

/// [`run`], with the traces and faults of `faults`.
pub fn run_with(
    socket: &std::path::Path,
    spec: ModelSpec,
    faults: ModelFaults,
) -> std::io::Result<()> {
    let start = Instant::now();
    let mut ctl = Ctl::connect(socket)?;
    println!("@@ guest connected");
    if let Some(bus) = &faults.touch_bus {
        let text = |v: Option<u32>| v.map_or("fault".to_owned(), |v| format!("{v:x}"));
        let (slot, bar, offset, len) = (0, 0, 0x1c, 4);
        let read = ctl.mmio(
            bus,
            MmioOp::BarRead {
                slot,
                bar,
                offset,
                len,
            },
        );
        let write = ctl.mmio(
            bus,
            MmioOp::BarWrite {
                slot,
                bar,
                offset,
                len,
                value: 1,
            },
        );
        println!(
            "@@ guest touch {bus} read={} write={}",
            text(read),
            text(write)
        );
    }
    let mut g = Guest {
        spec,
        faults,
        ctl,
        buses: BTreeMap::new(),
        violations: 0,
    };
    let mut gone_at: Option<Instant> = None;
    loop {
        let mut busy = false;
        while let Some(m) = g.ctl.next_message() {
            busy = true;
            match m {
                Message::Offer { bus } => g.offer(bus),
                Message::Rescind { bus } => g.rescind(&bus),
                Message::AllOffersDelivered {} => println!("@@ guest all offers delivered"),
                other => println!("@@ guest unexpected {other:?}"),
            }
        }
        if g.ctl.gone() && gone_at.is_none() {
            println!("@@ guest service gone");
            gone_at = Some(Instant::now());
            for b in g.buses.values_mut() {
                b.rescinded.get_or_insert_with(Instant::now);
                b.guest.rescind();
            }
        }
        let now = start.elapsed();
        for (name, b) in &mut g.buses {
            busy |= drive(name, b, now, &mut g.ctl);
        }
        g.release_done();
        if gone_at.is_some_and(|at| g.buses.is_empty() || at.elapsed() > GONE_LIMIT) {
            break;
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    for (name, b) in &g.buses {
        println!(
            "@@ guest stuck {name}: blocked {:?} runnable {:?}",
            b.guest.blocked(),
            b.guest.runnable()
        );
    }
    let unremoved: Vec<_> = g.buses.keys().collect();
    println!(
        "@@ guest exit violations={} unremoved={unremoved:?}",
        g.violations
    );
    Ok(())
}

/// Runs one bus's model as far as it can go now and reports what changed; true if anything
/// happened.
fn drive(name: &str, b: &mut Bus, now: Duration, ctl: &mut Ctl) -> bool {
    let mut busy = false;
    while !b.ring_ended {
        match b.ring.recv().now_or_never() {
            Some(Ok(p)) => {
                busy = true;
                if !b.faults.intercept(name, &p) {
                    b.guest.receive(p);
                }
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
        if b.faults.struck {
            continue;
        }
        if !b.ring_ended && block_on(b.ring.send(&p)).is_err() {
            b.ring_ended = true;
        } else if b.faults.trace_requests && !b.ring_ended && p.completion_requested() {
            println!(
                "@@ guest request {name} tid={} type={}",
                p.transaction_id,
                message_type(&p).map_or("?".to_owned(), |t| t.to_string())
            );
        }
    }
    report(name, b);
    busy
}

/// The vPCI message type a packet starts with.
fn message_type(p: &Packet) -> Option<MessageType> {
    let raw: [u8; 4] = p.payload.get(..4)?.try_into().ok()?;
    Some(MessageType(u32::from_le_bytes(raw)))
}

impl BusFaults {
    /// Traces a completion; plays the garbage fault at its EJECT. True if the packet is held
    /// from the model.
    fn intercept(&mut self, bus: &str, p: &Packet) -> bool {
        if self.trace_requests && p.kind == PacketKind::Completion {
            let status = p
                .payload
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes);
            println!(
                "@@ guest completion {bus} tid={} status={}",
                p.transaction_id,
                status.map_or("?".to_owned(), |s| format!("{s:#x}"))
            );
        }
        if self.struck {
            return true;
        }
        let Some((tap, left)) = &mut self.garbage else {
            return false;
        };
        if p.kind != PacketKind::InBand || message_type(p) != Some(MessageType::EJECT) {
            return false;
        }
        if *left > 0 {
            *left -= 1;
            return false;
        }
        self.struck = true;
        match tap.corrupt_write_index() {
            Ok(v) => println!("@@ guest fault {bus} garbage holding EJECT write_index={v:#x}"),
            Err(e) => println!("@@ guest fault {bus} garbage failed: {e}"),
        }
        true
    }
}

/// Prints the bus's first failure and whatever changed in what it holds.
fn report(name: &str, b: &mut Bus) {
    if !b.failed {
        if let Some(f) = b.guest.failure() {
            b.failed = true;
            let failure = GuestFailure {
                bus: name.to_owned(),
                kind: f.kind.name().to_owned(),
                context: format!("{:?}", f.context),
                function: f.function.to_owned(),
                message: f.message.clone(),
            };
            println!("@@ {}", failure.line());
        }
    }
    let probed = b.guest.probe_result() == Some(Ok(()));
    if probed && !b.probed {
        b.probed = true;
        println!("@@ guest probed {name}");
    }
    let devices = b.guest.devices();
    let bound = devices.iter().filter(|d| d.driver_bound).count();
    if bound != b.devices {
        b.devices = bound;
        println!("@@ guest devices {name} {bound}");
    }
    let state = GuestState {
        bus: name.to_owned(),
        probed,
        closed: b.rescinded.is_some() || b.ring_ended,
        held: model_functions(&devices),
    };
    if b.last.as_ref() != Some(&state) {
        println!("@@ {}", state.line());
        b.last = Some(state);
    }
}
