//! The kernel_shim [`Controller`] of a real-guest run: the host (host_sim, optionally behind
//! the relay), the scenario's command sequence and the scheduler, in one object the guest
//! session calls at every scheduling point.
//!
//! At each point the options are the guest's runnable contexts (in the order the guest lists
//! them) and, when something is in flight to the guest, its delivery; petri's [`Chooser`]
//! picks one. A context busy-polling with `udelay` is offered only when nothing else can
//! happen, as in the model VM. When nothing can run, virtual time jumps to the earliest
//! guest, host or relay deadline; when there is none, the run is quiescent and the next
//! command of the sequence is given (or, if a command is still pending, the guest is hung).

use super::bars::GuestBars;
use super::observe::Observer;
use crate::host_side::{HostSide, ToGuest};
use crate::outcome::Outcome;
use crate::scenario::Servicing;
use crate::sched::{Choice, Chooser};
use crate::trace::{Lane, Mark, Trace};
use crate::vm::{Chaos, RunLimits};
use kernel_shim::guest::{Action, Controller, Sched};
use kernel_shim::host::{RetargetRequest, WindowAccess};
use kernel_shim::protocol::{Command, ContextKind, EventKind, GuestPacket, SchedPoint};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use vpci_protocol::WinSlot;
use vpci_relay::VirtualClock;

mod choices;
mod contexts;
mod end_checks;
mod servicing;
mod stall;

use contexts::kernel_context_name;
use stall::StallState;

/// How many wake-up latencies a kernel thread draws from (none, then 4 to 1,024 points).
const WAKEUP_CHOICES: usize = 12;
/// The scheduling points each step of wake-up latency adds.
const WAKEUP_STEP: u64 = 48;

/// One option at a scheduling point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pick {
    /// Run this guest context.
    Run(u32),
    /// Deliver what is in flight to the guest on this bus.
    Deliver(usize),
}

/// Where the run is in its command sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Giving the boot commands (endpoint setup, init, probe).
    Boot,
    /// The probe is done: run until quiescent (the scenario plays out).
    Settle,
    /// Tearing down (remove, module exit): leaks and crashes on the way are findings.
    Teardown,
}

/// Everything a real-guest run holds besides the guest process.
pub(super) struct RealController {
    /// Each bus's host side, by bus index.
    pub(super) sides: Vec<HostSide>,
    clock: VirtualClock,
    pub(super) now: Duration,
    chooser: Chooser,
    pub(super) choices: Vec<Choice>,
    last: Option<Pick>,
    pub(super) steps: u64,
    limits: RunLimits,
    commands: VecDeque<Command>,
    teardown: VecDeque<Command>,
    phase: Phase,
    waiting: Option<Command>,
    pub(super) results: Vec<(u32, i32)>,
    /// The buses whose probe returned success.
    probed: BTreeSet<u32>,
    spinning: BTreeSet<u32>,
    /// Scheduling points so far.
    points: u64,
    /// The contexts runnable at the last point.
    was_runnable: BTreeSet<u32>,
    /// When each newly woken kernel thread may first run.
    ready_at: BTreeMap<u32, u64>,
    /// The channel callbacks' contexts.
    tasklets: BTreeSet<u32>,
    /// Contexts that reached `udelay` since the world last changed.
    polled: BTreeSet<u32>,
    /// The last answer changed the world and the guest asks again at the same point.
    reasked: bool,
    contexts: BTreeMap<u32, String>,
    pub(super) process: u32,
    pub(super) current: u32,
    pub(super) trace: Option<Trace>,
    pub(super) observer: Observer,
    /// A bound or hang that ended the run early.
    pub(super) early: Option<Outcome>,
    /// What the host saw once the scenario settled (before teardown).
    pub(super) host_visible: Outcome,
    chaos: Option<Chaos>,
    /// Where the guest put each bus's BARs, by bus index.
    pub(super) bars: Vec<GuestBars>,
    pub(super) hot_plug: Option<HotPlug>,
    /// A bus whose driver stalls, and the scenario's inspect checks.
    stall: StallState,
    /// When each bus's relay is serviced.
    pub(super) servicing: Servicing,
    /// Each bus once the scenario settled (before the teardown).
    pub(super) views: Vec<crate::outcome::BusView>,
}

/// Hot-plug cycles the host runs once the scenario settled: add a function, wait until the
/// run is quiescent, eject it, wait again.
#[derive(Clone, Copy, Debug)]
pub(super) struct HotPlug {
    /// The slot added and ejected.
    pub(super) slot: u32,
    /// How many add/eject cycles.
    pub(super) cycles: u32,
    /// Host actions taken so far (two per cycle).
    pub(super) done: u32,
}

/// The run's command sequence.
pub(super) struct Plan {
    /// Commands up to and including the probe of every bus.
    pub(super) boot: Vec<Command>,
    /// Commands after the scenario settled: each bus's remove (given only for a bus whose
    /// probe succeeded), then module exit.
    pub(super) remove: Vec<Command>,
    /// Hot-plug cycles before the teardown, if any.
    pub(super) hot_plug: Option<HotPlug>,
    /// The PCI domain each bus's driver is asked to take, by bus index.
    pub(super) domains: Vec<u16>,
    /// The driver of one bus stalls for a while (`[guest] stall`).
    pub(super) stall: Option<crate::vm::GuestStall>,
    /// The relay's inspect trees must hold these once the run settled: (bus, path, value).
    pub(super) checks: Vec<(usize, String, serde_json::Value)>,
}

impl RealController {
    pub(super) fn new(
        sides: Vec<HostSide>,
        clock: VirtualClock,
        chooser: Chooser,
        limits: RunLimits,
        plan: Plan,
        record: bool,
        chaos: Option<Chaos>,
    ) -> Self {
        let buses = sides.len();
        let mut teardown: VecDeque<Command> = plan.remove.into();
        teardown.push_back(Command::Exit);
        Self {
            sides,
            clock,
            now: Duration::ZERO,
            chooser,
            choices: Vec::new(),
            last: None,
            steps: 0,
            limits,
            commands: plan.boot.into(),
            teardown,
            phase: Phase::Boot,
            waiting: None,
            results: Vec::new(),
            probed: BTreeSet::new(),
            spinning: BTreeSet::new(),
            polled: BTreeSet::new(),
            tasklets: BTreeSet::new(),
            points: 0,
            was_runnable: BTreeSet::new(),
            ready_at: BTreeMap::new(),
            reasked: false,
            contexts: BTreeMap::new(),
            process: 0,
            current: 0,
            trace: record.then(Trace::default),
            observer: Observer::new(&plan.domains),
            early: None,
            host_visible: Outcome::Ok,
            chaos,
            bars: (0..buses).map(|_| GuestBars::default()).collect(),
            hot_plug: plan.hot_plug,
            stall: StallState::new(plan.stall, plan.checks, plan.domains),
            servicing: Servicing::Off,
            views: Vec::new(),
        }
    }

    /// The name of a guest context, for reports.
    pub(super) fn context_name(&self, id: u32) -> String {
        self.contexts
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("context {id}"))
    }

    fn note(&mut self, from: Lane, to: Lane, label: String, mark: Mark) {
        if let Some(t) = &mut self.trace {
            t.push(self.now, from, to, label, mark);
        }
    }

    fn pump(&mut self) {
        for side in &mut self.sides {
            side.pump(self.now, self.trace.as_mut());
        }
    }

    fn result_of(&self, command: &Command) -> Option<i32> {
        let n = command.number();
        self.results
            .iter()
            .rev()
            .find(|(c, _)| *c == n)
            .map(|(_, r)| *r)
    }

    fn next_deadline(&self, sched: &Sched) -> Option<u64> {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let hosts = self
            .sides
            .iter()
            .filter_map(|s| s.host.poll_timeout())
            .min();
        [
            Some(sched.next_deadline_ns).filter(|&d| d > 0),
            hosts.map(ns),
            self.clock.next_deadline().map(ns),
            self.stall.next_change_ns(self.now),
        ]
        .into_iter()
        .flatten()
        .filter(|&t| t > sched.now_ns)
        .min()
    }

    /// The buses with something in flight that can be delivered now: always, when there is
    /// something. A rescind starts the guest's `vmbus_onoffer_rescind` context, which resets the channel
    /// callback (waiting out a running one) before it sets `channel->rescind`; whether the
    /// channel's tasklet reads the packets delivered before it first is the scheduler's
    /// choice, as in the kernel.
    /// Nothing reaches a stalled bus.
    fn deliverable(&self, _sched: &Sched) -> impl Iterator<Item = usize> + '_ {
        let stalled = self.stall.stalled_bus(self.now);
        self.sides
            .iter()
            .enumerate()
            .filter(move |(i, s)| s.has_in_flight() && stalled != Some(*i))
            .map(|(i, _)| i)
    }

    /// The options at this point, in a stable order: runnable contexts (spinning ones only
    /// when nothing else can happen; a stalled bus's never), then each bus's delivery.
    fn options(&self, sched: &Sched) -> (Vec<Pick>, bool) {
        let awake = |c: &&u32| self.ready_at.get(c).is_none_or(|&at| self.points >= at);
        let runnable: Vec<u32> = sched
            .runnable
            .iter()
            .copied()
            .filter(|&c| !self.stall.withholds(self.now, c))
            .collect();
        let mut out: Vec<Pick> = runnable
            .iter()
            .filter(|c| !self.spinning.contains(c))
            .filter(awake)
            .map(|&c| Pick::Run(c))
            .collect();
        if out.is_empty() {
            // Nothing else can happen: a context's wake-up latency is over.
            out = runnable
                .iter()
                .filter(|c| !self.spinning.contains(c))
                .map(|&c| Pick::Run(c))
                .collect();
        }
        out.extend(self.deliverable(sched).map(Pick::Deliver));
        if !out.is_empty() {
            return (out, false);
        }
        let spinners: Vec<Pick> = runnable.iter().map(|&c| Pick::Run(c)).collect();
        (spinners, true)
    }

    fn stop(&mut self, outcome: Outcome) -> Action {
        let why = outcome.to_string();
        if self.early.is_none() {
            self.early = Some(outcome);
        }
        Action::Stop(why)
    }

    fn hang(&mut self, why: String) -> Action {
        let context = self.context_name(self.process);
        let (function, bus) = match &self.waiting {
            Some(Command::Probe { bus, .. }) => ("hv_pci_probe", *bus),
            Some(Command::Remove { bus }) => ("hv_pci_remove", *bus),
            Some(Command::Exit) => ("cleanup_module", 0),
            Some(Command::Init) => ("init_module", 0),
            _ => ("?", 0),
        };
        let outcome = Outcome::Guest {
            bus: usize::try_from(bus).unwrap_or(0),
            failure: "hang".to_owned(),
            context,
            function: function.to_owned(),
            message: why,
        };
        self.stop(outcome)
    }

    /// The run is quiescent: give the next command, or find the guest hung.
    fn quiescent(&mut self, sched: &Sched) -> Action {
        if let Some(cmd) = self.waiting.clone() {
            if self.result_of(&cmd).is_none() {
                return self.hang(format!(
                    "{cmd:?} never returns: its context waits on what nothing will bring"
                ));
            }
            self.waiting = None;
        }
        if self.phase == Phase::Boot && self.commands.is_empty() {
            self.phase = Phase::Settle;
        }
        if self.phase == Phase::Settle && self.hot_plug_step() {
            if let Some(f) = self.observer.failure.clone() {
                return self.stop(f);
            }
            return self.schedule(sched);
        }
        if self.phase == Phase::Settle {
            if let Some(action) = self.settle_stall(sched) {
                return action;
            }
            self.host_visible = self.host_visible_now();
            self.views = self.views_now();
            if let Some(f) = self.observer.failure.clone() {
                return self.stop(f);
            }
            // A ghost is found before the teardown, which would let go of it.
            if matches!(self.host_visible, Outcome::GhostDevice { .. }) {
                return self.stop(self.host_visible.clone());
            }
            self.phase = Phase::Teardown;
            self.lift_stall();
            // Linux calls remove only for a bound driver.
            let probed = &self.probed;
            self.teardown
                .retain(|c| !matches!(c, Command::Remove { bus } if !probed.contains(bus)));
        }
        let next = match self.phase {
            Phase::Boot => self.commands.pop_front(),
            _ => self.teardown.pop_front(),
        };
        match next {
            Some(cmd) => {
                self.note(
                    Lane::Guest,
                    Lane::Guest,
                    format!("command {cmd:?}"),
                    Mark::None,
                );
                self.waiting = Some(cmd.clone());
                self.world_changed();
                Action::Command(cmd)
            }
            None => {
                let _ = sched;
                self.stop(Outcome::StepLimit)
            }
        }
    }

    /// Draws, for each kernel thread that has just become runnable (a tasklet scheduled, a
    /// worker woken for a work item), how many scheduling points pass before it may run:
    /// wake-up latency as a choice like any other, none by default (so the systematic
    /// explorer starts from prompt wake-ups), else 4 to 1,024 points. The real driver runs
    /// hundreds of points between two messages; a woken worker offered at every one of them
    /// would nearly always run at once, and the races where it runs late (C3: the eject work
    /// in the middle of the probe path's scan) would stay out of a seeded run's reach.
    fn draw_wakeups(&mut self, sched: &Sched) {
        let runnable: BTreeSet<u32> = sched.runnable.iter().copied().collect();
        self.ready_at.retain(|c, _| runnable.contains(c));
        for &c in &sched.runnable {
            if c == sched.current || c == self.process || self.was_runnable.contains(&c) {
                continue;
            }
            let index = self.chooser.choose(WAKEUP_CHOICES, Some(0));
            self.choices.push(Choice {
                index,
                of: WAKEUP_CHOICES,
            });
            let delay = u64::try_from(index).unwrap_or(0) * WAKEUP_STEP;
            self.ready_at.insert(c, self.points + delay);
        }
        self.was_runnable = runnable;
    }

    /// Something a busy-polling context may be waiting for happened.
    fn world_changed(&mut self) {
        self.reasked = true;
        self.spinning.clear();
        self.polled.clear();
    }

    fn deliver(&mut self, bus: usize) -> Action {
        // What a busy-polling context waits for may be in this delivery.
        self.world_changed();
        let mut channel = ChildChannel {
            bus,
            observer: &mut self.observer,
            action: None,
        };
        if let Some(side) = self.sides.get_mut(bus) {
            side.deliver(self.now, &mut channel, self.trace.as_mut());
        }
        channel.action.unwrap_or(Action::Run(self.current))
    }

    /// The bus whose config window holds `addr`, and what the access means there (bus 0 and
    /// `Outside` when no window does: a BAR, or nothing).
    fn window_access(&self, addr: u64, size: u32) -> (usize, WindowAccess) {
        self.observer
            .buses
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b.window.decode(addr, size)))
            .find(|(_, a)| *a != WindowAccess::Outside)
            .unwrap_or((0, WindowAccess::Outside))
    }

    fn chaos_acts(&mut self, stuck: bool) -> bool {
        let Some(chaos) = self.chaos.as_mut() else {
            return false;
        };
        if self.phase == Phase::Teardown || !chaos.acts_now(stuck) {
            return false;
        }
        let bus = chaos.bus(self.sides.len());
        let Some(side) = self.sides.get_mut(bus) else {
            return false;
        };
        let action = chaos.action(&side.host);
        let label = format!("bus {bus}: chaos: {}", crate::labels::action(&action));
        side.act(self.now, action);
        self.world_changed();
        self.note(Lane::Host, Lane::Host, label, Mark::None);
        self.pump();
        true
    }
}

/// The real guest's channel of one bus: what arrives is written into the child process's
/// ring (the answer to the scheduling point), after the observer has seen it.
struct ChildChannel<'a> {
    bus: usize,
    observer: &'a mut Observer,
    action: Option<Action>,
}

impl ToGuest for ChildChannel<'_> {
    fn packet(&mut self, packet: vmbus_channel::Packet) {
        self.observer.guest_received(self.bus, &packet.payload);
        self.observer.wire(self.bus, true, &packet);
        let bus = u32::try_from(self.bus).unwrap_or(u32::MAX);
        self.action = Some(Action::deliver(bus, &packet));
    }

    fn rescind(&mut self) {
        let bus = u32::try_from(self.bus).unwrap_or(u32::MAX);
        self.action = Some(Action::Rescind(bus));
    }
}

impl Controller for RealController {
    fn schedule(&mut self, sched: &Sched) -> Action {
        self.note_point(sched);
        let now = self.now.max(Duration::from_nanos(sched.now_ns));
        let moved = now > self.now;
        self.now = now;
        self.current = sched.current;
        self.clock.advance_to(self.now);
        for side in &mut self.sides {
            // Time moved: the relay's timers may be due.
            side.relay_dirty |= moved;
            if side.host.poll_timeout().is_some_and(|t| t <= now) {
                side.host.handle_timeout(now);
                side.relay_dirty = true;
            }
        }
        self.pump();
        if let Err(reason) = self.service_relays() {
            return self.stop(Outcome::HarnessError { reason });
        }
        if let Some(f) = self.observer.failure.clone() {
            return self.stop(f);
        }
        // A context spins when it comes back to `udelay` a second time with nothing
        // delivered and no time passed in between: its poll found nothing new.
        // (A point asked again after a delivery or a command is the same point, not a
        // second pass.)
        let reasked = std::mem::take(&mut self.reasked);
        if sched.point == SchedPoint::Udelay && !reasked && !self.polled.insert(sched.current) {
            self.spinning.insert(sched.current);
        }
        // The next boot command goes as soon as the previous one returned.
        if self.phase == Phase::Boot
            && self
                .waiting
                .as_ref()
                .is_none_or(|c| self.result_of(c).is_some())
            && !self.commands.is_empty()
        {
            return self.quiescent(sched);
        }
        self.points += 1;
        self.draw_wakeups(sched);
        let (mut options, mut stuck) = self.options(sched);
        if self.chaos_acts(stuck) {
            (options, stuck) = self.options(sched);
        }
        if stuck {
            match self.next_deadline(sched) {
                Some(t) if Duration::from_nanos(t) <= self.limits.max_time => {
                    self.world_changed();
                    return Action::Advance(t);
                }
                Some(_) => return self.stop(Outcome::TimeLimit),
                None if !options.is_empty() => {
                    return self.hang(
                        "spins on a reply nothing will bring (udelay loop, no deadline)".to_owned(),
                    );
                }
                None => return self.quiescent(sched),
            }
        }
        if self.steps >= self.limits.max_steps {
            return self.stop(Outcome::StepLimit);
        }
        let index = if options.len() == 1 {
            0
        } else {
            let sticky = self.last.and_then(|l| options.iter().position(|o| *o == l));
            let index = self.chooser.choose(options.len(), sticky);
            self.choices.push(Choice {
                index,
                of: options.len(),
            });
            self.note_choice(&options, index);
            index
        };
        let Some(&pick) = options.get(index) else {
            return self.stop(Outcome::StepLimit);
        };
        self.last = Some(pick);
        self.steps += 1;
        match pick {
            Pick::Run(c) => Action::Run(c),
            Pick::Deliver(bus) => self.deliver(bus),
        }
    }

    fn packet(&mut self, packet: GuestPacket) {
        let bus = usize::try_from(packet.bus).unwrap_or(usize::MAX);
        let packet = packet.to_packet();
        self.observer.guest_sent(bus, &packet.payload);
        if let Some(side) = self.sides.get_mut(bus) {
            // Kept only for a bus that exists: the guest names the bus.
            self.observer.wire(bus, false, &packet);
            side.outbox.push(packet);
        }
        self.pump();
    }

    fn mmio_read(&mut self, addr: u64, size: u32) -> u64 {
        let len = u8::try_from(size.clamp(1, 4)).unwrap_or(4);
        let (bus, access) = self.window_access(addr, size);
        match access {
            WindowAccess::Config { slot, offset } => {
                let Some(slot) = slot else {
                    return u64::MAX;
                };
                u64::from(self.config_read(bus, WinSlot::from_raw(slot), offset, len))
            }
            WindowAccess::SlotSelect | WindowAccess::WindowOther => 0,
            WindowAccess::Outside => {
                let mut data = [0u8; 8];
                let n = usize::try_from(size).unwrap_or(8).min(8);
                let done = data
                    .get_mut(..n)
                    .map_or(Err(0), |d| self.bar(addr, d, false));
                if let Err(bus) = done {
                    self.unbacked(
                        bus,
                        format!("read of {size} bytes at {addr:#x}: nothing behind it"),
                    );
                    u64::MAX
                } else {
                    u64::from_le_bytes(data)
                }
            }
        }
    }

    fn mmio_write(&mut self, addr: u64, size: u32, value: u64) {
        let len = u8::try_from(size.clamp(1, 4)).unwrap_or(4);
        let (bus, _) = self.window_access(addr, size);
        let window = self.observer.buses.get_mut(bus).map(|b| &mut b.window);
        let access = window.map_or(WindowAccess::Outside, |w| w.write(addr, size, value));
        match access {
            WindowAccess::Config {
                slot: Some(slot),
                offset,
            } => self.config_write(
                bus,
                WinSlot::from_raw(slot),
                offset,
                len,
                u32::try_from(value & 0xffff_ffff).unwrap_or(u32::MAX),
            ),
            WindowAccess::Outside => {
                let mut data = value.to_le_bytes();
                let n = usize::try_from(size).unwrap_or(8).min(8);
                let done = data
                    .get_mut(..n)
                    .map_or(Err(0), |d| self.bar(addr, d, true));
                if let Err(bus) = done {
                    self.unbacked(
                        bus,
                        format!("write of {size} bytes at {addr:#x}: nothing behind it"),
                    );
                }
            }
            _ => {}
        }
    }

    fn hypercall(&mut self, control: u64, input: &[u8]) -> u64 {
        match RetargetRequest::decode(control, input) {
            Ok(r) => {
                let label = format!(
                    "retarget interrupt device {:#x} vector {:#x}",
                    r.device_id, r.vector
                );
                self.note(Lane::Guest, Lane::Host, label, Mark::None);
                0
            }
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
        self.note(
            Lane::Guest,
            Lane::Guest,
            format!("command {command} returned {result}"),
            Mark::None,
        );
    }

    fn context(&mut self, id: u32, kind: ContextKind, name: &str) {
        match kind {
            ContextKind::Process => self.process = id,
            ContextKind::Tasklet => {
                self.tasklets.insert(id);
            }
            _ => {}
        }
        self.stall.context(id, name);
        self.contexts.insert(id, kernel_context_name(kind, name));
    }

    fn log(&mut self, _level: u32, ctx: u32, text: &str) {
        let line = format!("{}: {}", self.context_name(ctx), text.trim_end());
        self.observer.guest_trace.push(line.clone());
        self.note(Lane::Guest, Lane::Guest, line, Mark::None);
    }

    fn event(&mut self, kind: EventKind, ctx: u32, text: &str) {
        let context = self.context_name(ctx);
        let line = format!("{context}: {kind:?}: {text}");
        self.observer.guest_trace.push(line.clone());
        self.note(Lane::Guest, Lane::Guest, line, Mark::None);
        self.observer.event(kind, context, text);
    }
}
