//! The real-driver guest endpoint of a multi-process run: the real `pci-hyperv.c` (a
//! kernel_shim child process) against the service's guest-side rings of the buses offered at
//! boot (up to 8, one driver instance each, in PCI domains 1, 2, ...), in real time. The kernel_shim [`Controller`] here speaks the real ring instead of petri's
//! in-process delivery: packets the driver sends go on the ring, packets on the ring are
//! delivered to the driver as they arrive, and its config-window and BAR accesses are the
//! service's `mmio` control messages. Time is real: virtual time follows the wall clock, so
//! the driver's timed waits expire as they would in a VM. A bus offered after the boot-time
//! ones (a late offer, up to 8 buses in all) gets a driver instance of its own, probed once
//! nothing else runs.
//!
//! Scheduling is the kernel's, roughly: the running context runs on until it blocks, a
//! context busy-polling with `udelay` runs only when nothing else can, and an idle guest waits
//! for the rings or the control connection. A rescind from the service (or its ring's end) is
//! that channel's rescind (the driver removes the bus); a `teardown` line on stdin removes
//! every bus still there and unloads the module, as at the end of a simulated run.
//!
//! It prints each bus's state (`@@ guest state ...`) whenever it changes, the first failure,
//! and how the guest process ended (`@@ guest done ...`).

use super::report::failure_line;
use crate::outcome::Outcome;
use crate::real::bars::GuestBars;
use crate::real::observe::Observer;
use futures::FutureExt;
use futures::executor::block_on;
use kernel_shim::DriverVersion;
use kernel_shim::guest::{Action, Controller, Ending, Sched, Session};
use kernel_shim::host::{RetargetRequest, WindowAccess};
use kernel_shim::protocol::{Command, ContextKind, EventKind, GuestPacket, SchedPoint};
use openhcl_vpci::control::{Message, MmioOp};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vmbus_channel::{Channel, ChannelExt, RingChannel};
use vpci_endpoints::ctl::Ctl;
use vpci_endpoints::report::GuestState;
use vpci_protocol::WinSlot;

/// The VMBus instance GUID of the first bus (bytes 4-5 give the PCI domain).
const INSTANCE: [u8; 16] = [
    0x5e, 0x7a, 0x11, 0x9c, 0x01, 0x00, 0x4f, 0x2b, 0x8a, 0x3d, 0x66, 0x10, 0x52, 0xe4, 0x07, 0xc1,
];

/// The most buses a real guest process runs (the runtime's `KSHIM_MAX_BUS`).
pub const MAX_BUSES: usize = 8;

/// How long the guest waits for more boot-time offers after the first, if the service does
/// not say it has delivered them all.
const OFFER_WAIT: Duration = Duration::from_secs(2);

/// The PCI domain of bus `i`: 1, 2, ...
fn domain(i: usize) -> u16 {
    u16::try_from(i + 1).unwrap_or(u16::MAX)
}

/// The instance GUID of bus `i`: the first bus's with its domain in bytes 4-5.
fn instance(i: usize) -> [u8; 16] {
    let mut guid = INSTANCE;
    let [lo, hi] = domain(i).to_le_bytes();
    guid[4] = lo;
    guid[5] = hi;
    guid
}

/// How long an idle guest sleeps before it looks at the ring and the clock again.
const IDLE: Duration = Duration::from_micros(100);

/// The buses offered at boot (up to [`MAX_BUSES`]): until the service says all were
/// delivered, or [`OFFER_WAIT`] after the first; none if nothing comes within 30 s.
fn boot_offers(ctl: &mut Ctl) -> Vec<String> {
    let start = Instant::now();
    let mut buses: Vec<String> = Vec::new();
    let mut first: Option<Instant> = None;
    loop {
        match ctl.next_message() {
            Some(Message::Offer { bus }) if buses.len() < MAX_BUSES => {
                first.get_or_insert_with(Instant::now);
                buses.push(bus);
            }
            Some(Message::Offer { bus }) => {
                println!("@@ guest ignores offer {bus}: at most {MAX_BUSES} buses")
            }
            Some(Message::AllOffersDelivered {}) if !buses.is_empty() => return buses,
            Some(_) => {}
            None if ctl.gone() || start.elapsed() > Duration::from_secs(30) => return buses,
            None if first.is_some_and(|t| t.elapsed() > OFFER_WAIT) => return buses,
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Runs `version` on the buses the service at `socket` offers at boot until they are removed
/// and the module unloaded.
pub fn run(socket: &std::path::Path, version: DriverVersion, vectors: u8) -> std::io::Result<()> {
    let mut ctl = Ctl::connect(socket)?;
    println!("@@ guest connected");
    let names = boot_offers(&mut ctl);
    if names.is_empty() {
        println!("@@ guest exit: no offer");
        return Ok(());
    }
    let mut buses = Vec::new();
    for name in names {
        let ring = ctl
            .open(&name)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        println!("@@ guest offer {name}");
        buses.push(RealBus::new(name, ring));
    }
    let session = Session::spawn_with(version, crate::real::INSTRUMENTATION)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut guest = RealGuest::new(ctl, buses, vectors);
    let outcome = session
        .run(&mut guest)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    guest.report();
    let leaks = match &outcome.ending {
        Ending::Done { leaks } => *leaks,
        _ => 0,
    };
    if let Ending::Crash {
        signal,
        ctx,
        last_call,
    } = &outcome.ending
    {
        let failure = Outcome::Guest {
            bus: 0,
            failure: crate::real::crash_kind(*signal, &outcome.stderr).to_owned(),
            context: guest.context_name(*ctx),
            function: last_call.clone(),
            message: crate::real::report_summary(&outcome.stderr),
        };
        guest.fail_once(failure);
    }
    for bus in &mut guest.buses {
        bus.ring.close();
        // A rescinded bus is released; one the guest let go of itself is only closed.
        if bus.rescinded {
            guest.ctl.release(&bus.name);
        } else {
            guest.ctl.close(&bus.name);
        }
    }
    println!(
        "@@ guest done ending={:?} leaks={leaks} points={} torn_down={}",
        outcome.ending, outcome.sched_points, guest.torn_down
    );
    Ok(())
}

/// One bus of the real guest: its ring and what the guest knows of it.
struct RealBus {
    name: String,
    ring: RingChannel,
    ring_ended: bool,
    rescind_pending: bool,
    rescinded: bool,
    bars: GuestBars,
    last: Option<GuestState>,
}

impl RealBus {
    fn new(name: String, ring: RingChannel) -> Self {
        Self {
            name,
            ring,
            ring_ended: false,
            rescind_pending: false,
            rescinded: false,
            bars: GuestBars::default(),
            last: None,
        }
    }

    /// The next packet on the ring, if one is there.
    fn poll(&mut self) -> Option<vmbus_channel::Packet> {
        if self.ring_ended || self.rescinded {
            return None;
        }
        match self.ring.recv().now_or_never() {
            Some(Ok(p)) => Some(p),
            Some(Err(e)) if e.end_reason().is_some() => {
                self.ring_ended = true;
                self.rescind_pending = true;
                None
            }
            _ => None,
        }
    }
}

/// Where the guest is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Endpoint setup, init, a probe per bus.
    Boot,
    /// Running until buses go or a teardown is asked for.
    Up,
    /// Every bus removed or rescinded: unloading.
    Down,
}

/// The kernel_shim controller of the real guest endpoint.
struct RealGuest {
    ctl: Ctl,
    buses: Vec<RealBus>,
    start: Instant,
    observer: Observer,
    commands: VecDeque<Command>,
    waiting: Option<Command>,
    results: Vec<(u32, i32)>,
    /// The buses whose probe returned 0.
    probed: BTreeSet<u32>,
    phase: Phase,
    teardown: mpsc::Receiver<String>,
    torn_down: bool,
    contexts: BTreeMap<u32, String>,
    current: u32,
    /// Contexts that reached `udelay` since the world last changed, and those that came
    /// back to it with nothing new: spinning.
    polled: BTreeSet<u32>,
    spinning: BTreeSet<u32>,
    /// The last answer was an idle wait: a spinner may run now.
    waited: bool,
    /// The bus whose ring is looked at first (rotates, so no bus starves another).
    next_ring: usize,
    failed: bool,
}

/// A bus index as the guest protocol carries it.
fn wire(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

impl RealGuest {
    fn new(ctl: Ctl, buses: Vec<RealBus>, vectors: u8) -> Self {
        let mut commands = vec![
            Command::Endpoint {
                nvec: u32::from(vectors.max(1)),
                msix: true,
            },
            Command::Init,
        ];
        commands.extend((0..buses.len()).map(|i| Command::Probe {
            bus: wire(i),
            instance: instance(i),
        }));
        // Every bus the guest may come to run, so a late offer finds its view ready.
        let domains: Vec<u16> = (0..MAX_BUSES).map(domain).collect();
        Self {
            ctl,
            buses,
            start: Instant::now(),
            observer: Observer::new(&domains),
            commands: commands.into(),
            waiting: None,
            results: Vec::new(),
            probed: BTreeSet::new(),
            phase: Phase::Boot,
            teardown: vpci_endpoints::ctl::stdin_commands(),
            torn_down: false,
            contexts: BTreeMap::new(),
            current: 0,
            polled: BTreeSet::new(),
            spinning: BTreeSet::new(),
            waited: false,
            next_ring: 0,
            failed: false,
        }
    }

    fn context_name(&self, id: u32) -> String {
        self.contexts
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("context {id}"))
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn fail_once(&mut self, failure: Outcome) {
        if !self.failed {
            self.failed = true;
            let index = match &failure {
                Outcome::Guest { bus, .. } => *bus,
                _ => 0,
            };
            let name = self
                .buses
                .get(index)
                .map_or_else(|| format!("bus{index}"), |b| b.name.clone());
            println!("@@ {}", failure_line(&name, &failure));
        }
    }

    /// Prints each bus's state and the first failure when they change.
    fn report(&mut self) {
        if let Some(f) = self.observer.failure.clone() {
            self.fail_once(f);
        }
        for (i, bus) in self.buses.iter_mut().enumerate() {
            let state = GuestState {
                bus: bus.name.clone(),
                probed: self.probed.contains(&wire(i)),
                closed: bus.rescinded || bus.ring_ended,
                held: self
                    .observer
                    .held(i)
                    .into_iter()
                    .map(|(slot, id)| (slot, super::report::function_id(id)))
                    .collect(),
            };
            if bus.last.as_ref() != Some(&state) {
                println!("@@ {}", state.line());
                bus.last = Some(state);
            }
        }
        // The traces are for reports of simulated runs; a long run must not keep them all.
        if self.observer.guest_trace.len() > 4096 {
            self.observer.guest_trace.clear();
        }
        if self.observer.device_history.len() > 4096 {
            self.observer.device_history.clear();
        }
    }

    fn world_changed(&mut self) {
        self.polled.clear();
        self.spinning.clear();
    }

    fn command(&mut self, cmd: Command) -> Action {
        self.waiting = Some(cmd.clone());
        self.world_changed();
        Action::Command(cmd)
    }

    /// Unloads the module once no bus is left (each removed or rescinded).
    fn all_gone(&mut self) {
        if self.phase != Phase::Down && self.buses.iter().all(|b| b.rescinded) {
            self.phase = Phase::Down;
            if !self.commands.contains(&Command::Exit) {
                self.commands.push_back(Command::Exit);
            }
        }
    }

    /// Reads the control connection and stdin: rescinds, or a teardown.
    fn poll_outside(&mut self) {
        while let Some(m) = self.ctl.next_message() {
            match m {
                Message::Rescind { bus } => {
                    if let Some(b) = self.buses.iter_mut().find(|b| b.name == bus) {
                        b.rescind_pending = true;
                    }
                }
                Message::Offer { bus } => self.late_offer(bus),
                _ => {}
            }
        }
        if self.ctl.gone() {
            for b in &mut self.buses {
                b.rescind_pending = true;
            }
        }
        while let Ok(line) = self.teardown.try_recv() {
            if line == "teardown" && self.phase != Phase::Down {
                self.phase = Phase::Down;
                self.torn_down = true;
                for (i, b) in self.buses.iter().enumerate() {
                    if self.probed.contains(&wire(i)) && !b.rescinded && !b.rescind_pending {
                        self.commands.push_back(Command::Remove { bus: wire(i) });
                    }
                }
                self.commands.push_back(Command::Exit);
            }
        }
    }

    /// A bus offered after boot: its ring is opened and its driver instance probed, if the
    /// guest is up and has room for it.
    fn late_offer(&mut self, bus: String) {
        let known = self.buses.iter().any(|b| b.name == bus);
        if known || self.phase != Phase::Up || self.buses.len() >= MAX_BUSES {
            println!("@@ guest ignores offer {bus}");
            return;
        }
        let ring = match self.ctl.open(&bus) {
            Ok(r) => r,
            Err(e) => {
                println!("@@ guest open {bus} failed: {e}");
                return;
            }
        };
        let i = self.buses.len();
        println!("@@ guest late offer {bus}");
        self.buses.push(RealBus::new(bus, ring));
        self.commands.push_back(Command::Probe {
            bus: wire(i),
            instance: instance(i),
        });
    }

    /// The next packet on any ring, with its bus.
    fn poll_rings(&mut self) -> Option<(usize, vmbus_channel::Packet)> {
        let n = self.buses.len();
        for k in 0..n {
            let i = (self.next_ring + k) % n;
            if let Some(p) = self.buses.get_mut(i).and_then(RealBus::poll) {
                self.next_ring = (i + 1) % n;
                return Some((i, p));
            }
        }
        None
    }

    fn command_done(&self) -> bool {
        self.waiting.as_ref().is_none_or(|c| {
            let n = c.number();
            self.results.iter().any(|&(r, _)| r == n)
        })
    }

    /// The bus whose config window `addr` is in, and what the access means there.
    fn window(&mut self, addr: u64, size: u32, write: Option<u64>) -> (usize, WindowAccess) {
        for (i, b) in self.observer.buses.iter_mut().enumerate() {
            let access = match write {
                Some(value) => b.window.write(addr, size, value),
                None => b.window.decode(addr, size),
            };
            if access != WindowAccess::Outside {
                return (i, access);
            }
        }
        (0, WindowAccess::Outside)
    }
}

impl Controller for RealGuest {
    fn schedule(&mut self, sched: &Sched) -> Action {
        self.current = sched.current;
        self.report();
        self.poll_outside();
        if sched.point == SchedPoint::Udelay && !self.polled.insert(sched.current) {
            self.spinning.insert(sched.current);
        }
        if self.phase == Phase::Boot && self.commands.is_empty() && self.command_done() {
            self.phase = Phase::Up;
        }
        // Boot commands go as soon as the previous one returned; a late bus's probe and
        // teardown commands once nothing runs (a rescind's removal has finished).
        let ready = match self.phase {
            Phase::Boot => true,
            Phase::Up | Phase::Down => sched.runnable.is_empty(),
        };
        if ready && self.command_done() {
            if let Some(cmd) = self.commands.pop_front() {
                return self.command(cmd);
            }
        }
        if let Some((i, p)) = self.poll_rings() {
            self.observer.guest_received(i, &p.payload);
            self.world_changed();
            return Action::deliver(wire(i), &p);
        }
        let pending = self
            .buses
            .iter()
            .position(|b| b.rescind_pending && !b.rescinded);
        if let Some(i) = pending {
            if let Some(b) = self.buses.get_mut(i) {
                b.rescinded = true;
            }
            // The driver removes the bus in the rescind's context.
            self.commands
                .retain(|c| !matches!(c, Command::Remove { bus } if *bus == wire(i)));
            self.all_gone();
            self.world_changed();
            return Action::Rescind(wire(i));
        }
        let awake: Vec<u32> = sched
            .runnable
            .iter()
            .copied()
            .filter(|c| !self.spinning.contains(c))
            .collect();
        if awake.contains(&sched.current) {
            return Action::Run(sched.current);
        }
        if let Some(&c) = awake.first() {
            return Action::Run(c);
        }
        if let (Some(&c), true) = (sched.runnable.first(), self.waited) {
            self.waited = false;
            return Action::Run(c);
        }
        // Nothing can run but busy-pollers: the world outside moves on in real time.
        std::thread::sleep(IDLE);
        self.waited = true;
        self.world_changed();
        Action::Advance(self.now_ns())
    }

    fn packet(&mut self, packet: GuestPacket) {
        let i = usize::try_from(packet.bus).unwrap_or(usize::MAX);
        let packet = packet.to_packet();
        self.observer.guest_sent(i, &packet.payload);
        if let Some(b) = self.buses.get_mut(i) {
            if !b.ring_ended && block_on(b.ring.send(&packet)).is_err() {
                b.ring_ended = true;
            }
        }
    }

    fn mmio_read(&mut self, addr: u64, size: u32) -> u64 {
        let len = u8::try_from(size.clamp(1, 4)).unwrap_or(4);
        match self.window(addr, size, None) {
            (
                i,
                WindowAccess::Config {
                    slot: Some(slot),
                    offset,
                },
            ) => {
                let op = MmioOp::ConfigRead { slot, offset, len };
                let Some(b) = self.buses.get_mut(i) else {
                    return u64::MAX;
                };
                let value = self.ctl.mmio(&b.name, op).unwrap_or(u32::MAX);
                b.bars.read(WinSlot::from_raw(slot), offset, len, value);
                u64::from(value)
            }
            (_, WindowAccess::Config { slot: None, .. }) => u64::MAX,
            (_, WindowAccess::SlotSelect | WindowAccess::WindowOther) => 0,
            (_, WindowAccess::Outside) => match self.bar(addr, size, None) {
                Some(v) => v,
                None => {
                    self.unbacked(format!("read of {size} bytes at {addr:#x}"));
                    u64::MAX
                }
            },
        }
    }

    fn mmio_write(&mut self, addr: u64, size: u32, value: u64) {
        let len = u8::try_from(size.clamp(1, 4)).unwrap_or(4);
        match self.window(addr, size, Some(value)) {
            (
                i,
                WindowAccess::Config {
                    slot: Some(slot),
                    offset,
                },
            ) => {
                let value = u32::try_from(value & 0xffff_ffff).unwrap_or(u32::MAX);
                let Some(b) = self.buses.get_mut(i) else {
                    return;
                };
                b.bars.write(WinSlot::from_raw(slot), offset, len, value);
                let op = MmioOp::ConfigWrite {
                    slot,
                    offset,
                    len,
                    value,
                };
                let _ = self.ctl.mmio(&b.name, op);
            }
            (_, WindowAccess::Outside) if self.bar(addr, size, Some(value)).is_none() => {
                self.unbacked(format!("write of {size} bytes at {addr:#x}"));
            }
            _ => {}
        }
    }

    fn hypercall(&mut self, control: u64, input: &[u8]) -> u64 {
        match RetargetRequest::decode(control, input) {
            Ok(_) => 0,
            // HV_STATUS_INVALID_HYPERCALL_CODE
            Err(_) => 2,
        }
    }

    fn result(&mut self, command: u32, result: i32) {
        self.results.push((command, result));
        let answered = self.waiting.as_ref().filter(|c| c.number() == command);
        if let (Some(Command::Probe { bus, .. }), 0) = (answered, result) {
            self.probed.insert(*bus);
        }
        println!("@@ guest command {command} returned {result}");
    }

    fn context(&mut self, id: u32, kind: ContextKind, name: &str) {
        self.contexts.insert(id, format!("{name} ({kind:?})"));
    }

    fn event(&mut self, kind: EventKind, ctx: u32, text: &str) {
        let context = self.context_name(ctx);
        self.observer.event(kind, context, text);
    }
}

impl RealGuest {
    /// A BAR access of `size` bytes (split into 4-byte accesses): the value read, or `None`
    /// when nothing backs the address (a fault).
    fn bar(&mut self, addr: u64, size: u32, write: Option<u64>) -> Option<u64> {
        let (name, (slot, bar, offset)) = self
            .buses
            .iter()
            .find_map(|b| Some((b.name.clone(), b.bars.resolve(addr)?)))?;
        let mut value = 0u64;
        let mut done = 0u32;
        while done < size.min(8) {
            let len = u8::try_from((size - done).min(4)).unwrap_or(4);
            let at = offset + u64::from(done);
            let op = match write {
                Some(v) => MmioOp::BarWrite {
                    slot: slot.raw(),
                    bar,
                    offset: at,
                    len,
                    value: u32::try_from((v >> (8 * done)) & 0xffff_ffff).unwrap_or(0),
                },
                None => MmioOp::BarRead {
                    slot: slot.raw(),
                    bar,
                    offset: at,
                    len,
                },
            };
            let part = self.ctl.mmio(&name, op)?;
            value |= u64::from(part) << (8 * done);
            done += u32::from(len);
        }
        Some(value)
    }

    fn unbacked(&mut self, what: String) {
        let context = self.context_name(self.current);
        self.observer.fail(
            0,
            "unbacked_access",
            context,
            "readl/writel (the endpoint driver)".to_owned(),
            format!("{what}: nothing behind it"),
        );
    }
}
