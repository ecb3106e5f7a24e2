//! One VM run: the simulated host, an optional relay and a guest model per bus, under a
//! deterministic scheduler over virtual time.
//!
//! Everything runs on one thread. Between two scheduling choices the run *pumps*: packets move
//! host -> relay -> guest and back, the relay's driver is polled, and each side handles what
//! reached it, until nothing moves. Then the chooser picks one runnable guest context to step.
//! When no context can run, time jumps to the earliest deadline (a host script step or
//! response delay, a relay timer, a guest timed wait). When there is none, the run is over.
//! The same chooser choices always give the same run.

use crate::outcome::{Outcome, RunResult};
use crate::relay_rig::RelayRig;
use crate::sched::{Choice, Chooser};
use crate::trace::{Lane, Mark, Trace};
use futures::task::noop_waker_ref;
use guest_linux::{ContextId, GuestConfig, GuestEnv, LinuxGuest};
use host_sim::{BusConfig, HostBus, HostEventKind};
use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::Duration;
use vmbus_channel::{Channel, ChannelError, Packet, PacketKind};
use vpci_protocol::{MessageType, WinSlot};
use vpci_relay::{Backing, ConfigAccess, ConfigAction, RelayConfig, RelayEvent, VirtualClock};

/// Bounds that end a run that would not end by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunLimits {
    /// The most guest steps.
    pub max_steps: u64,
    /// The latest virtual time.
    pub max_time: Duration,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            max_steps: 20_000,
            max_time: Duration::from_secs(600),
        }
    }
}

/// What one run is made of.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// The host's buses.
    pub buses: Vec<BusConfig>,
    /// The guest's configuration (one guest model per bus).
    pub guest: GuestConfig,
    /// The relay's configuration, or `None` for a direct run.
    pub relay: Option<RelayConfig>,
    /// Run bounds.
    pub limits: RunLimits,
    /// Whether to record the message trace (charts and replays need it; exploration not).
    pub record: bool,
    /// The relay's safeguards (test builds only: every one is on otherwise).
    #[cfg(feature = "safeguard-switches")]
    pub safeguards: vpci_relay::Safeguards,
}

/// Something on its way to the guest over the bus's channel.
enum Delivery {
    /// A packet, from the host (direct) or the relay.
    Packet(Packet, Lane),
    /// The channel's rescind.
    Rescind(Lane),
}

/// What the scheduler can pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// A guest context takes a step.
    Step(usize, ContextId),
    /// The next packet (or the rescind) in flight to a bus's guest arrives.
    Deliver(usize),
}

/// One bus of the VM.
struct Bus {
    host: HostBus,
    guest: LinuxGuest,
    relay: Option<RelayRig>,
    /// Packets waiting for room in a relay channel: towards the relay's host side and guest
    /// side.
    to_relay_host: VecDeque<Packet>,
    to_relay_guest: VecDeque<Packet>,
    /// The guest's sends of the current step.
    outbox: Vec<Packet>,
    /// Packets (and the rescind) on their way to the guest, in order. When each arrives is
    /// a scheduling choice, as VMBus's latency is.
    in_flight: VecDeque<Delivery>,
    host_rescind_sent: bool,
    guest_rescind_sent: bool,
    eject_timeouts: Vec<WinSlot>,
    /// When the guest's probe path returned successfully.
    probed_at: Option<Duration>,
    /// The relay may have something to do (time moved, a config access, a host action), so
    /// the next pump polls it even if no packet moved.
    relay_dirty: bool,
}

/// A VM run in progress.
pub struct Vm {
    buses: Vec<Bus>,
    clock: VirtualClock,
    now: Duration,
    chooser: Chooser,
    choices: Vec<Choice>,
    last: Option<Action>,
    limits: RunLimits,
    trace: Option<Trace>,
    steps: u64,
}

/// The guest's view of everything outside it during one step.
struct Env<'a> {
    now: Duration,
    bus: usize,
    host: &'a mut HostBus,
    relay: Option<&'a mut RelayRig>,
    outbox: &'a mut Vec<Packet>,
    trace: Option<&'a mut Trace>,
    /// The step asked the relay about a config access (the relay may have acted on it).
    touched_relay: bool,
}

fn all_ones(len: u8) -> u32 {
    match len {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
}

impl GuestEnv for Env<'_> {
    fn now(&self) -> Duration {
        self.now
    }

    fn send(&mut self, packet: Packet) {
        self.outbox.push(packet);
    }

    fn config_read(&mut self, slot: WinSlot, offset: u16, len: u8) -> Option<u32> {
        let Some(relay) = self.relay.as_deref_mut() else {
            return self.host.config_read(slot, offset, len).ok();
        };
        self.touched_relay = true;
        match relay.access(ConfigAccess::Read { slot, offset, len }) {
            Some(ConfigAction::Forward) => {
                let value = self.host.config_read(slot, offset, len).ok()?;
                relay.read_result(slot, offset, len, value);
                Some(value)
            }
            Some(ConfigAction::Answer(value)) => Some(value),
            // A stopped relay (or a dropped read) leaves nothing there: a master abort.
            Some(ConfigAction::Drop) | None => Some(all_ones(len)),
        }
    }

    fn config_write(&mut self, slot: WinSlot, offset: u16, len: u8, value: u32) -> bool {
        let Some(relay) = self.relay.as_deref_mut() else {
            return self.host.config_write(slot, offset, len, value).is_ok();
        };
        self.touched_relay = true;
        let access = ConfigAccess::Write {
            slot,
            offset,
            len,
            value,
        };
        match relay.access(access) {
            Some(ConfigAction::Forward) => self.host.config_write(slot, offset, len, value).is_ok(),
            _ => true,
        }
    }

    fn bar_read(&mut self, slot: WinSlot, bar: u8, offset: u64, len: u8) -> Option<u32> {
        let direct = |host: &mut HostBus| {
            let mut data = [0u8; 4];
            let n = usize::from(len.clamp(1, 4));
            let buf = data.get_mut(..n)?;
            host.bar_read(slot, bar, offset, buf).ok()?;
            Some(u32::from_le_bytes(data))
        };
        let Some(relay) = self.relay.as_deref_mut() else {
            return direct(self.host);
        };
        match relay.bars.get(slot) {
            Backing::Device => direct(self.host),
            Backing::Shield => Some(all_ones(len)),
            Backing::Released => None,
        }
    }

    fn bar_write(&mut self, slot: WinSlot, bar: u8, offset: u64, len: u8, value: u32) -> bool {
        let bytes = value.to_le_bytes();
        let n = usize::from(len.clamp(1, 4));
        let data = bytes.get(..n).unwrap_or(&bytes);
        let Some(relay) = self.relay.as_deref_mut() else {
            return self.host.bar_write(slot, bar, offset, data).is_ok();
        };
        match relay.bars.get(slot) {
            Backing::Device => self.host.bar_write(slot, bar, offset, data).is_ok(),
            Backing::Shield => true,
            Backing::Released => false,
        }
    }

    fn retarget_interrupt(&mut self, slot: WinSlot, vector: u32) {
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.push(
                self.now,
                Lane::Guest,
                Lane::Guest,
                format!(
                    "bus {}: retarget interrupt {slot} vector {vector:#x}",
                    self.bus
                ),
                Mark::None,
            );
        }
    }
}

/// The packet as VMBus delivers it: the payload padded with zeros to a multiple of 8 bytes
/// (the ring stores whole 8-byte units, and the reader gets them all).
fn on_the_wire(mut packet: Packet) -> Packet {
    let padded = packet.payload.len().div_ceil(8) * 8;
    packet.payload.resize(padded, 0);
    packet
}

/// A short description of a vPCI packet for traces: the message type and its slot, or the
/// completion's status.
pub fn describe(packet: &Packet) -> String {
    let word = |at: usize| {
        packet
            .payload
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
    };
    match packet.kind {
        PacketKind::Completion => match word(0) {
            Some(status) => format!("completion {status:#010x}"),
            None => "completion (short)".to_owned(),
        },
        PacketKind::InBand => {
            let Some(ty) = word(0) else {
                return "empty packet".to_owned();
            };
            let ty = MessageType(ty);
            let name = ty.to_string();
            let name = name.strip_prefix("PCI_").unwrap_or(&name).to_owned();
            let has_slot = !matches!(
                ty,
                MessageType::BUS_RELATIONS
                    | MessageType::BUS_RELATIONS2
                    | MessageType::QUERY_BUS_RELATIONS
                    | MessageType::QUERY_PROTOCOL_VERSION
                    | MessageType::BUS_D0ENTRY
                    | MessageType::BUS_D0EXIT
            );
            match word(4) {
                Some(slot) if has_slot => format!("{name}({slot})"),
                _ => name,
            }
        }
        other => format!("packet kind {}", other.to_raw()),
    }
}

fn relay_note(event: &RelayEvent) -> Option<(String, Mark)> {
    Some(match event {
        RelayEvent::EjectHeld { slot } => (format!("EJECT({slot}) held: not settled"), Mark::Held),
        RelayEvent::RelationsHeld => ("relations held".to_owned(), Mark::Held),
        RelayEvent::Coalesced { slot } => (
            format!("slot {slot} added and removed unseen: coalesced"),
            Mark::Coalesced,
        ),
        RelayEvent::AnsweredLocally { slot, request } => {
            let slot = slot.map(|s| format!("({s})")).unwrap_or_default();
            (format!("{request}{slot} answered locally"), Mark::Local)
        }
        RelayEvent::EjectAnsweredLocally { slot } => {
            (format!("EJECT({slot}) answered locally"), Mark::Local)
        }
        RelayEvent::Backing { slot, backing } => {
            (format!("{slot} backed by {backing:?}"), Mark::None)
        }
        RelayEvent::HostLost { rescinded } => (
            format!(
                "host lost ({})",
                if *rescinded { "rescind" } else { "fault" }
            ),
            Mark::None,
        ),
        RelayEvent::Malformed { side, fault } => {
            (format!("{side:?} packet refused: {fault}"), Mark::None)
        }
        _ => return None,
    })
}

impl Vm {
    /// Builds a VM for `spec` whose choices come from `chooser`.
    pub fn new(spec: &VmSpec, chooser: Chooser) -> Result<Self, host_sim::ConfigError> {
        let clock = VirtualClock::new();
        let mut buses = Vec::with_capacity(spec.buses.len());
        for config in &spec.buses {
            let relay = spec.relay.as_ref().map(|r| {
                let config = RelayConfig {
                    name: config.name.clone(),
                    ..r.clone()
                };
                #[cfg(feature = "safeguard-switches")]
                let relay = vpci_relay::BusRelay::with_safeguards(config, spec.safeguards);
                #[cfg(not(feature = "safeguard-switches"))]
                let relay = vpci_relay::BusRelay::new(config);
                RelayRig::new(relay, clock.clone(), spec.record)
            });
            buses.push(Bus {
                host: HostBus::new(config.clone())?,
                guest: LinuxGuest::new(spec.guest.clone()),
                relay,
                to_relay_host: VecDeque::new(),
                to_relay_guest: VecDeque::new(),
                outbox: Vec::new(),
                in_flight: VecDeque::new(),
                host_rescind_sent: false,
                guest_rescind_sent: false,
                eject_timeouts: Vec::new(),
                probed_at: None,
                relay_dirty: true,
            });
        }
        Ok(Self {
            buses,
            clock,
            now: Duration::ZERO,
            chooser,
            choices: Vec::new(),
            last: None,
            limits: spec.limits,
            trace: spec.record.then(Trace::default),
            steps: 0,
        })
    }

    fn note(&mut self, from: Lane, to: Lane, label: String, mark: Mark) {
        if let Some(trace) = &mut self.trace {
            trace.push(self.now, from, to, label, mark);
        }
    }

    /// Moves packets between the host, the relay and the guest of every bus until nothing
    /// moves.
    fn pump(&mut self) {
        for index in 0..self.buses.len() {
            self.pump_bus(index);
        }
    }

    fn pump_bus(&mut self, index: usize) {
        let now = self.now;
        let mut cx = Context::from_waker(noop_waker_ref());
        let recording = self.trace.is_some();
        for _ in 0..10_000 {
            let mut moved = false;
            // Notes for the trace; built only when recording (formatting is most of a
            // long run's cost otherwise).
            let mut notes: Vec<(Lane, Lane, String, Mark)> = Vec::new();
            let mut note = |from: Lane, to: Lane, label: &dyn Fn() -> String, mark: Mark| {
                if recording {
                    notes.push((from, to, label(), mark));
                }
            };
            let Some(bus) = self.buses.get_mut(index) else {
                return;
            };
            let relayed = bus.relay.is_some();
            // The guest's sends.
            for p in bus.outbox.drain(..) {
                let p = on_the_wire(p);
                moved = true;
                let to = if relayed { Lane::Relay } else { Lane::Host };
                note(Lane::Guest, to, &|| describe(&p), Mark::None);
                if relayed {
                    bus.to_relay_guest.push_back(p);
                } else {
                    bus.host.handle_packet(now, p);
                }
            }
            // The host's sends, and its rescind once they are out.
            while let Some(p) = bus.host.poll_transmit() {
                let p = on_the_wire(p);
                moved = true;
                if relayed {
                    note(Lane::Host, Lane::Relay, &|| describe(&p), Mark::None);
                    bus.to_relay_host.push_back(p);
                } else {
                    bus.in_flight.push_back(Delivery::Packet(p, Lane::Host));
                }
            }
            while let Some(e) = bus.host.poll_event() {
                match e.kind {
                    HostEventKind::EjectTimedOut { slot } => {
                        bus.eject_timeouts.push(slot);
                        note(
                            Lane::Host,
                            Lane::Host,
                            &|| format!("EJECT({slot}) timed out: removed by force"),
                            Mark::None,
                        );
                    }
                    HostEventKind::BarsTornDown { slot } => {
                        note(
                            Lane::Host,
                            Lane::Host,
                            &|| format!("{slot} device memory torn down"),
                            Mark::None,
                        );
                    }
                    HostEventKind::ScriptStepFired { step } => {
                        note(
                            Lane::Host,
                            Lane::Host,
                            &|| format!("script step {step}"),
                            Mark::None,
                        );
                    }
                    _ => {}
                }
            }
            if bus.host.rescinded() && !bus.host_rescind_sent && bus.to_relay_host.is_empty() {
                bus.host_rescind_sent = true;
                moved = true;
                note(Lane::Host, Lane::Host, &|| "rescind".to_owned(), Mark::None);
                match &mut bus.relay {
                    Some(relay) => relay.host_end.revoke(),
                    None => {
                        bus.guest_rescind_sent = true;
                        bus.in_flight.push_back(Delivery::Rescind(Lane::Host));
                    }
                }
            }
            let poll_relay = moved
                || bus.relay_dirty
                || !bus.to_relay_host.is_empty()
                || !bus.to_relay_guest.is_empty();
            bus.relay_dirty = false;
            if let Some(relay) = bus.relay.as_mut().filter(|_| poll_relay) {
                while let Some(p) = bus.to_relay_host.front() {
                    match relay.host_end.poll_send(&mut cx, p) {
                        Poll::Ready(Ok(())) => {
                            bus.to_relay_host.pop_front();
                            moved = true;
                        }
                        Poll::Ready(Err(_)) => {
                            bus.to_relay_host.clear();
                        }
                        Poll::Pending => break,
                    }
                }
                while let Some(p) = bus.to_relay_guest.front() {
                    match relay.guest_end.poll_send(&mut cx, p) {
                        Poll::Ready(Ok(())) => {
                            bus.to_relay_guest.pop_front();
                            moved = true;
                        }
                        Poll::Ready(Err(_)) => {
                            bus.to_relay_guest.clear();
                        }
                        Poll::Pending => break,
                    }
                }
                relay.poll();
                while let Poll::Ready(Ok(p)) = relay.host_end.poll_recv(&mut cx) {
                    let p = on_the_wire(p);
                    moved = true;
                    note(Lane::Relay, Lane::Host, &|| describe(&p), Mark::None);
                    if !bus.host.rescinded() {
                        bus.host.handle_packet(now, p);
                    }
                }
                loop {
                    match relay.guest_end.poll_recv(&mut cx) {
                        Poll::Ready(Ok(p)) => {
                            let p = on_the_wire(p);
                            moved = true;
                            bus.in_flight.push_back(Delivery::Packet(p, Lane::Relay));
                        }
                        Poll::Ready(Err(ChannelError::Revoked | ChannelError::Closed)) => {
                            if !bus.guest_rescind_sent {
                                bus.guest_rescind_sent = true;
                                moved = true;
                                bus.in_flight.push_back(Delivery::Rescind(Lane::Relay));
                            }
                            break;
                        }
                        Poll::Ready(Err(_)) | Poll::Pending => break,
                    }
                }
                for e in relay.take_events() {
                    if let Some((label, mark)) = relay_note(&e) {
                        note(Lane::Relay, Lane::Relay, &|| label.clone(), mark);
                    }
                }
            }
            for (from, to, label, mark) in notes {
                self.note(from, to, label, mark);
            }
            if !moved {
                return;
            }
        }
    }

    /// What can happen next on every bus, in a stable order: each runnable guest context,
    /// and the arrival of what is in flight to the guest.
    fn runnable(&self) -> Vec<Action> {
        let mut out = Vec::new();
        for (i, bus) in self.buses.iter().enumerate() {
            if bus.guest.failure().is_some() {
                continue;
            }
            out.extend(bus.guest.runnable().into_iter().map(|c| Action::Step(i, c)));
            if !bus.in_flight.is_empty() {
                out.push(Action::Deliver(i));
            }
        }
        out
    }

    /// Whether every runnable action is a driver spinning on a reply that is not there.
    fn only_spinning(&self, runnable: &[Action]) -> bool {
        runnable.iter().all(|a| match a {
            Action::Step(bus, ctx) => self
                .buses
                .get(*bus)
                .is_some_and(|b| b.guest.spinning().contains(ctx)),
            Action::Deliver(_) => false,
        })
    }

    fn deliver(&mut self, index: usize) {
        let Some(bus) = self.buses.get_mut(index) else {
            return;
        };
        let (from, label) = match bus.in_flight.pop_front() {
            Some(Delivery::Packet(p, from)) => {
                let label = describe(&p);
                bus.guest.receive(p);
                (from, label)
            }
            Some(Delivery::Rescind(from)) => {
                bus.guest.rescind();
                (from, "rescind".to_owned())
            }
            None => return,
        };
        self.note(from, Lane::Guest, label, Mark::None);
    }

    fn next_deadline(&self) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        let mut consider = |t: Option<Duration>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Duration| n.min(t)));
            }
        };
        consider(self.clock.next_deadline());
        for bus in &self.buses {
            consider(bus.host.poll_timeout());
            if bus.guest.failure().is_none() {
                consider(bus.guest.next_deadline());
            }
        }
        next
    }

    fn advance_to(&mut self, t: Duration) {
        self.now = self.now.max(t);
        self.clock.advance_to(self.now);
        for bus in &mut self.buses {
            bus.relay_dirty = true;
            bus.host.handle_timeout(self.now);
            bus.guest.advance_time(self.now);
        }
    }

    fn failed(&self) -> bool {
        self.buses.iter().any(|b| b.guest.failure().is_some())
    }

    /// Runs to the end and reports how it ended.
    pub fn run(mut self) -> RunResult {
        let outcome = self.settle();
        self.finish(outcome)
    }

    /// Runs until nothing can happen any more: no context can run, nothing is in flight and
    /// no deadline is due. Returns early with the outcome that stopped it (a bound) or `None`
    /// (quiescent, or a guest failure: see [`Vm::failure`]). Call it again after
    /// [`Vm::host_act`] to go on.
    pub fn settle(&mut self) -> Option<Outcome> {
        self.pump();
        loop {
            if self.failed() {
                return None;
            }
            let runnable = self.runnable();
            // Drivers busy-polling for a reply nothing will bring are runnable forever, but
            // only time (a host delay, a relay timer) can change anything for them.
            if !runnable.is_empty() && self.only_spinning(&runnable) {
                match self.next_deadline() {
                    Some(t) if t <= self.limits.max_time => {
                        self.advance_to(t);
                        self.pump();
                        continue;
                    }
                    Some(_) => return Some(Outcome::TimeLimit),
                    None => return None,
                }
            }
            if runnable.is_empty() {
                match self.next_deadline() {
                    Some(t) if t <= self.limits.max_time => {
                        self.advance_to(t);
                        self.pump();
                        continue;
                    }
                    Some(_) => return Some(Outcome::TimeLimit),
                    None => return None,
                }
            }
            if self.steps >= self.limits.max_steps {
                return Some(Outcome::StepLimit);
            }
            let index = if runnable.len() == 1 {
                0
            } else {
                let sticky = self
                    .last
                    .and_then(|l| runnable.iter().position(|r| *r == l));
                let index = self.chooser.choose(runnable.len(), sticky);
                self.choices.push(Choice {
                    index,
                    of: runnable.len(),
                });
                index
            };
            let Some(&action) = runnable.get(index) else {
                return Some(Outcome::StepLimit);
            };
            self.last = Some(action);
            self.steps += 1;
            match action {
                Action::Step(bus, ctx) => self.step(bus, ctx),
                Action::Deliver(bus) => self.deliver(bus),
            }
            self.pump();
        }
    }

    /// Has the host of bus `bus` carry out `action` now (a hot-add, an eject...).
    pub fn host_act(
        &mut self,
        bus: usize,
        action: host_sim::HostAction,
    ) -> Result<(), host_sim::ActionError> {
        let now = self.now;
        if let Some(b) = self.buses.get_mut(bus) {
            b.host.act(now, action)?;
            b.relay_dirty = true;
        }
        self.pump();
        Ok(())
    }

    /// The first guest failure so far, as an outcome.
    pub fn failure(&self) -> Option<Outcome> {
        self.buses
            .iter()
            .enumerate()
            .find_map(|(i, b)| b.guest.failure().map(|f| Outcome::from_failure(i, f)))
    }

    /// The current virtual time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The guest's view of bus `bus`'s functions.
    pub fn guest_devices(&self, bus: usize) -> Vec<guest_linux::DeviceView> {
        self.buses
            .get(bus)
            .map(|b| b.guest.devices())
            .unwrap_or_default()
    }

    /// Whether the guest of bus `bus` has finished probing (its root bus exists).
    pub fn guest_installed(&self, bus: usize) -> bool {
        self.buses
            .get(bus)
            .is_some_and(|b| b.guest.bus_state() == guest_linux::BusState::Installed)
    }

    /// When the guest of bus `bus` finished its probe path (`hv_pci_probe` returned success).
    pub fn probed_at(&self, bus: usize) -> Option<Duration> {
        self.buses.get(bus)?.probed_at
    }

    /// The relay's inspect tree for bus `bus` (`None` for a direct run).
    pub fn relay_inspect(&mut self, bus: usize) -> Option<inspect::Node> {
        self.buses.get_mut(bus)?.relay.as_mut()?.inspect()
    }

    /// Forgets the choices made so far (a long run keeps memory flat).
    pub fn forget_choices(&mut self) {
        self.choices.clear();
    }

    fn step(&mut self, index: usize, ctx: ContextId) {
        let now = self.now;
        let Some(bus) = self.buses.get_mut(index) else {
            return;
        };
        let Bus {
            host,
            guest,
            relay,
            outbox,
            probed_at,
            relay_dirty,
            ..
        } = bus;
        let before = guest.trace().len();
        let mut env = Env {
            now,
            bus: index,
            host,
            relay: relay.as_mut(),
            outbox,
            trace: self.trace.as_mut(),
            touched_relay: false,
        };
        guest.step(ctx, &mut env);
        *relay_dirty |= env.touched_relay;
        if probed_at.is_none() && guest.probe_result() == Some(Ok(())) {
            *probed_at = Some(now);
        }
        if let Some(trace) = &mut self.trace {
            for t in guest.trace().iter().skip(before) {
                let label = format!("bus {index} {} {}: {}", t.context, t.function, t.event);
                trace.push(t.at, Lane::Guest, Lane::Guest, label, Mark::None);
            }
        }
    }

    fn finish(mut self, early: Option<Outcome>) -> RunResult {
        // A guest that waits on something nothing will ever bring is hung.
        if early.is_none() {
            for bus in &mut self.buses {
                let stuck = !bus.guest.blocked().is_empty() || !bus.guest.spinning().is_empty();
                if bus.guest.failure().is_none() && stuck {
                    bus.guest.declare_hang();
                }
            }
            for bus in &mut self.buses {
                bus.guest.check_end_state();
            }
        }
        let mut outcome = early.unwrap_or(Outcome::Ok);
        for (i, bus) in self.buses.iter().enumerate() {
            if let Some(f) = bus.guest.failure() {
                outcome = Outcome::from_failure(i, f);
                if let Some(trace) = &mut self.trace {
                    trace.push(f.at, Lane::Guest, Lane::Guest, f.to_string(), Mark::Crash);
                }
                break;
            }
        }
        if outcome == Outcome::Ok {
            outcome = self.host_visible_outcome();
        }
        let guest_trace = self
            .buses
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.guest.trace().iter().map(move |t| format!("bus {i}: {t}")))
            .collect();
        RunResult {
            outcome,
            choices: self.choices,
            steps: self.steps,
            end: self.now,
            trace: self.trace,
            guest_trace,
        }
    }

    /// What the host can see went wrong once the guest survived: an EJECT nobody answered,
    /// or a function the host has that the guest never got.
    fn host_visible_outcome(&mut self) -> Outcome {
        for (i, bus) in self.buses.iter().enumerate() {
            if let Some(slot) = bus.eject_timeouts.first() {
                return Outcome::EjectUnanswered {
                    bus: i,
                    slot: slot.to_string(),
                };
            }
        }
        for (i, bus) in self.buses.iter_mut().enumerate() {
            if bus.host.rescinded() || bus.guest.probe_result() != Some(Ok(())) {
                continue;
            }
            let devices = bus.guest.devices();
            for slot in bus.host.slots() {
                let Some(identity) = bus.host.function(slot) else {
                    continue;
                };
                let vendor = bus.host.config_read(slot, 0, 2).unwrap_or(u32::MAX);
                let held = devices.iter().any(|d| {
                    d.slot == slot
                        && d.child_present
                        && u32::from(d.vendor_id) == vendor
                        && d.serial == identity.serial
                });
                if !held {
                    return Outcome::LostDevice {
                        bus: i,
                        slot: slot.to_string(),
                    };
                }
            }
        }
        Outcome::Ok
    }
}
