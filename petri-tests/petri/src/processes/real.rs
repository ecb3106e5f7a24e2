//! The real-driver guest endpoint of a multi-process run: the real `pci-hyperv.c` (a
//! kernel_shim child process) against the service's guest-side ring of the first bus offered,
//! in real time. The kernel_shim [`Controller`] here speaks the real ring instead of petri's
//! in-process delivery: packets the driver sends go on the ring, packets on the ring are
//! delivered to the driver as they arrive, and its config-window and BAR accesses are the
//! service's `mmio` control messages. Time is real: virtual time follows the wall clock, so
//! the driver's timed waits expire as they would in a VM.
//!
//! Scheduling is the kernel's, roughly: the running context runs on until it blocks, a
//! context busy-polling with `udelay` runs only when nothing else can, and an idle guest waits
//! for the ring or the control connection. A rescind from the service (or its end) is the
//! channel's rescind (the driver removes the bus); a `teardown` line on stdin removes the
//! driver and unloads the module, as at the end of a simulated run.
//!
//! It prints the bus's state (`@@ guest state ...`) whenever it changes, its first failure,
//! and how the guest process ended (`@@ guest done ...`).

use super::ctl::Ctl;
use super::report::{GuestState, failure_line};
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
use vpci_protocol::WinSlot;

/// The VMBus instance GUID of the bus (bytes 4-5 give the PCI domain).
const INSTANCE: [u8; 16] = [
    0x5e, 0x7a, 0x11, 0x9c, 0x01, 0x00, 0x4f, 0x2b, 0x8a, 0x3d, 0x66, 0x10, 0x52, 0xe4, 0x07, 0xc1,
];

/// How long an idle guest sleeps before it looks at the ring and the clock again.
const IDLE: Duration = Duration::from_micros(100);

/// Runs `version` on the first bus the service at `socket` offers until the bus is removed
/// and the module unloaded.
pub fn run(socket: &std::path::Path, version: DriverVersion, vectors: u8) -> std::io::Result<()> {
    let mut ctl = Ctl::connect(socket)?;
    println!("@@ guest connected");
    let start = Instant::now();
    let bus = loop {
        match ctl.next() {
            Some(Message::Offer { bus }) => break bus,
            Some(_) => {}
            None if ctl.gone || start.elapsed() > Duration::from_secs(30) => {
                println!("@@ guest exit: no offer");
                return Ok(());
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    let ring = ctl
        .open(&bus)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    println!("@@ guest offer {bus}");
    let session = Session::spawn_with(version, crate::real::INSTRUMENTATION)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut guest = RealGuest::new(ctl, bus.clone(), ring, vectors);
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
    guest.ring.close();
    // A rescinded bus is released; one the guest let go of itself is only closed.
    if guest.rescinded {
        guest.ctl.release(&bus);
    } else {
        guest.ctl.close(&bus);
    }
    println!(
        "@@ guest done {bus} ending={:?} leaks={leaks} points={} torn_down={}",
        outcome.ending, outcome.sched_points, guest.torn_down
    );
    Ok(())
}

/// Where the guest is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Endpoint setup, init, probe.
    Boot,
    /// Probed (or not): running until the bus goes or a teardown is asked for.
    Up,
    /// Removing the bus (after a rescind, or a `remove` command), then unloading.
    Down,
}

/// The kernel_shim controller of the real guest endpoint.
struct RealGuest {
    ctl: Ctl,
    bus: String,
    ring: RingChannel,
    ring_ended: bool,
    start: Instant,
    observer: Observer,
    bars: GuestBars,
    commands: VecDeque<Command>,
    waiting: Option<Command>,
    results: Vec<(u32, i32)>,
    phase: Phase,
    rescind_pending: bool,
    rescinded: bool,
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
    failed: bool,
    last: Option<GuestState>,
}

impl RealGuest {
    fn new(ctl: Ctl, bus: String, ring: RingChannel, vectors: u8) -> Self {
        let commands = [
            Command::Endpoint {
                nvec: u32::from(vectors.max(1)),
                msix: true,
            },
            Command::Init,
            Command::Probe {
                bus: 0,
                instance: INSTANCE,
            },
        ];
        Self {
            ctl,
            bus,
            ring,
            ring_ended: false,
            start: Instant::now(),
            observer: Observer::default(),
            bars: GuestBars::default(),
            commands: commands.into(),
            waiting: None,
            results: Vec::new(),
            phase: Phase::Boot,
            rescind_pending: false,
            rescinded: false,
            teardown: super::ctl::stdin_commands(),
            torn_down: false,
            contexts: BTreeMap::new(),
            current: 0,
            polled: BTreeSet::new(),
            spinning: BTreeSet::new(),
            waited: false,
            failed: false,
            last: None,
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

    fn probed(&self) -> bool {
        let probe = Command::Probe {
            bus: 0,
            instance: INSTANCE,
        }
        .number();
        self.results.iter().any(|&(c, r)| c == probe && r == 0)
    }

    fn fail_once(&mut self, failure: Outcome) {
        if !self.failed {
            self.failed = true;
            println!("@@ {}", failure_line(&self.bus, &failure));
        }
    }

    /// Prints the state and the first failure when they change.
    fn report(&mut self) {
        if let Some(f) = self.observer.failure.clone() {
            self.fail_once(f);
        }
        let state = GuestState {
            bus: self.bus.clone(),
            probed: self.probed(),
            closed: self.rescinded || self.ring_ended,
            held: self.observer.held(0),
        };
        if self.last.as_ref() != Some(&state) {
            println!("@@ {}", state.line());
            self.last = Some(state);
        }
        // The trace is for reports of simulated runs; a long run must not keep it all.
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

    /// Reads the control connection and stdin: a rescind of the bus, or a teardown.
    fn poll_outside(&mut self) {
        while let Some(m) = self.ctl.next() {
            match m {
                Message::Rescind { bus } if bus == self.bus => self.rescind_pending = true,
                Message::Offer { bus } => {
                    println!("@@ guest ignores offer {bus}: a real guest runs one bus")
                }
                _ => {}
            }
        }
        if self.ctl.gone {
            self.rescind_pending = true;
        }
        while let Ok(line) = self.teardown.try_recv() {
            if line == "teardown" && self.phase != Phase::Down {
                self.phase = Phase::Down;
                self.torn_down = true;
                if self.probed() && !self.rescinded {
                    self.commands.push_back(Command::Remove { bus: 0 });
                }
                self.commands.push_back(Command::Exit);
            }
        }
    }

    /// The next packet on the ring, if one is there.
    fn poll_ring(&mut self) -> Option<vmbus_channel::Packet> {
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

    fn command_done(&self) -> bool {
        self.waiting.as_ref().is_none_or(|c| {
            let n = c.number();
            self.results.iter().any(|&(r, _)| r == n)
        })
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
        // Boot commands go as soon as the previous one returned; teardown commands once
        // nothing runs (the rescind's removal has finished).
        let ready = match self.phase {
            Phase::Boot => true,
            Phase::Up => false,
            Phase::Down => sched.runnable.is_empty(),
        };
        if ready && self.command_done() {
            if let Some(cmd) = self.commands.pop_front() {
                return self.command(cmd);
            }
        }
        if let Some(p) = self.poll_ring() {
            self.observer.guest_received(0, &p.payload);
            self.world_changed();
            return Action::deliver(0, &p);
        }
        if self.rescind_pending && !self.rescinded {
            self.rescinded = true;
            self.world_changed();
            if self.phase != Phase::Down {
                // The driver removes the bus in the rescind's context; then the module goes.
                self.phase = Phase::Down;
                self.commands
                    .retain(|c| !matches!(c, Command::Remove { .. }));
                if !self.commands.contains(&Command::Exit) {
                    self.commands.push_back(Command::Exit);
                }
            }
            return Action::Rescind(0);
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
        let packet = packet.to_packet();
        self.observer.guest_sent(0, &packet.payload);
        if !self.ring_ended && block_on(self.ring.send(&packet)).is_err() {
            self.ring_ended = true;
        }
    }

    fn mmio_read(&mut self, addr: u64, size: u32) -> u64 {
        let len = u8::try_from(size.clamp(1, 4)).unwrap_or(4);
        let access = match self.observer.buses.first() {
            Some(b) => b.window.decode(addr, size),
            None => WindowAccess::Outside,
        };
        match access {
            WindowAccess::Config {
                slot: Some(slot),
                offset,
            } => {
                let op = MmioOp::ConfigRead { slot, offset, len };
                let value = self.ctl.mmio(&self.bus, op).unwrap_or(u32::MAX);
                self.bars.read(WinSlot::from_raw(slot), offset, len, value);
                u64::from(value)
            }
            WindowAccess::Config { slot: None, .. } => u64::MAX,
            WindowAccess::SlotSelect | WindowAccess::WindowOther => 0,
            WindowAccess::Outside => match self.bar(addr, size, None) {
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
        let access = match self.observer.buses.first_mut() {
            Some(b) => b.window.write(addr, size, value),
            None => WindowAccess::Outside,
        };
        match access {
            WindowAccess::Config {
                slot: Some(slot),
                offset,
            } => {
                let value = u32::try_from(value & 0xffff_ffff).unwrap_or(u32::MAX);
                self.bars.write(WinSlot::from_raw(slot), offset, len, value);
                let op = MmioOp::ConfigWrite {
                    slot,
                    offset,
                    len,
                    value,
                };
                let _ = self.ctl.mmio(&self.bus, op);
            }
            WindowAccess::Outside if self.bar(addr, size, Some(value)).is_none() => {
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
        let (slot, bar, offset) = self.bars.resolve(addr)?;
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
            let part = self.ctl.mmio(&self.bus, op)?;
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
