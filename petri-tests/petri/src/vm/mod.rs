//! One VM run: the simulated host, an optional relay and a guest model per bus, under a
//! deterministic scheduler over virtual time.
//!
//! Everything runs on one thread. Between two scheduling choices the run *pumps*: packets move
//! host -> relay -> guest and back, the relay's driver is polled, and each side handles what
//! reached it, until nothing moves. Then the chooser picks one runnable guest context to step.
//! When no context can run, time jumps to the earliest deadline (a host script step or
//! response delay, a relay timer, a guest timed wait). When there is none, the run is over.
//! The same chooser choices always give the same run.

mod bus;
mod env;
mod history;
mod servicing;
mod spec;
mod stall;

use crate::host_side::{Delivery, HostSide};
use crate::outcome::{Identity, Outcome, RunResult};
use crate::scenario::Servicing;
use crate::sched::{Choice, Chooser};
use crate::trace::{Lane, Mark, Trace};
use bus::Bus;
use env::Env;
use guest_linux::{ContextId, LinuxGuest};
use host_sim::HostBus;
use std::time::Duration;
use vpci_protocol::WinSlot;
use vpci_relay::sim::RelayRig;
use vpci_relay::{RelayConfig, VirtualClock};

pub use crate::host_side::describe;
pub(crate) use host_sim::Chaos;
pub use host_sim::ChaosSpec;
pub use spec::{RunLimits, VmSpec};
pub use stall::GuestStall;
pub(crate) use stall::inspect_checks;

/// What the scheduler can pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// A guest context takes a step.
    Step(usize, ContextId),
    /// The next packet (or the rescind) in flight to a bus's guest arrives.
    Deliver(usize),
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
    chaos: Option<Chaos>,
    /// The guest of one bus stalls for a while, or from some time on.
    stall: Option<GuestStall>,
    /// What the guests did with devices.
    history: history::DeviceHistory,
    /// Inspect checks for the end of a run through the relay: (bus, path, value).
    checks: Vec<(usize, String, serde_json::Value)>,
    /// When each bus's relay is serviced.
    servicing: Servicing,
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
                let relay = vpci_relay::BusRelay::with_safeguards(config.clone(), spec.safeguards);
                #[cfg(not(feature = "safeguard-switches"))]
                let relay = vpci_relay::BusRelay::new(config.clone());
                RelayRig::new(relay, clock.clone(), spec.record).serviceable(config)
            });
            buses.push(Bus {
                side: HostSide::new(HostBus::new(config.clone())?, relay),
                guest: LinuxGuest::new(spec.guest.clone()),
                probed_at: None,
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
            chaos: spec.chaos.map(Chaos::new),
            stall: spec.stall,
            history: history::DeviceHistory::default(),
            checks: spec.checks.clone(),
            servicing: Servicing::Off,
        })
    }

    /// Whether the guest of `bus` has stalled (it runs nothing and receives nothing).
    fn stalled(&self, bus: usize) -> bool {
        self.stall.is_some_and(|s| s.holds(bus, self.now))
    }

    /// The bus whose guest is stalled now, if any.
    fn stalled_bus(&self) -> Option<usize> {
        self.stall
            .filter(|s| s.holds(s.bus, self.now))
            .map(|s| s.bus)
    }

    fn note(&mut self, from: Lane, to: Lane, label: String, mark: Mark) {
        if let Some(trace) = &mut self.trace {
            trace.push(self.now, from, to, label, mark);
        }
    }

    /// Moves packets between the host, the relay and the guest of every bus until nothing
    /// moves.
    fn pump(&mut self) {
        let now = self.now;
        for bus in &mut self.buses {
            bus.side.pump(now, self.trace.as_mut());
        }
    }

    /// What can happen next on every bus, in a stable order: each runnable guest context,
    /// and the arrival of what is in flight to the guest.
    ///
    /// A driver spinning on a reply that is not there changes nothing by stepping, so it is
    /// offered only when nothing else can happen (then only time can help it): otherwise a
    /// scheduler that kept picking it would starve the delivery of that very reply, which
    /// real hardware never does.
    fn runnable(&self) -> Vec<Action> {
        let mut out = Vec::new();
        let mut spinning = Vec::new();
        for (i, bus) in self.buses.iter().enumerate() {
            if bus.guest.failure().is_some() || self.stalled(i) {
                continue;
            }
            let spins = bus.guest.spinning();
            for c in bus.guest.runnable() {
                if spins.contains(&c) {
                    spinning.push(Action::Step(i, c));
                } else {
                    out.push(Action::Step(i, c));
                }
            }
            if bus.side.has_in_flight() {
                out.push(Action::Deliver(i));
            }
        }
        if out.is_empty() { spinning } else { out }
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
        // What arrives is what the guest's ring would have carried.
        if let (Some(trace), Some(Delivery::Packet(p, _))) =
            (&mut self.trace, bus.side.next_in_flight())
        {
            trace.wire.push(index, true, p.clone());
        }
        bus.side
            .deliver(self.now, &mut bus.guest, self.trace.as_mut());
    }

    fn next_deadline(&self) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        let mut consider = |t: Option<Duration>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Duration| n.min(t)));
            }
        };
        consider(self.clock.next_deadline());
        for (i, bus) in self.buses.iter().enumerate() {
            consider(bus.side.host.poll_timeout());
            if bus.guest.failure().is_none() && !self.stalled(i) {
                consider(bus.guest.next_deadline());
            }
        }
        // The moments a guest stalls and resumes are moments of their own.
        consider(self.stall.and_then(|s| s.next_change(self.now)));
        next
    }

    fn advance_to(&mut self, t: Duration) {
        self.now = self.now.max(t);
        self.clock.advance_to(self.now);
        for bus in &mut self.buses {
            bus.side.relay_dirty = true;
            bus.side.host.handle_timeout(self.now);
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
        self.settle_within(None)
    }

    /// As [`Vm::settle`], but stops after at most `steps` scheduling choices (guest steps or
    /// deliveries) with the run still in motion, so that a host action can land at any point
    /// of the guest's work (a soak with random timing). Returns what `settle` returns, or
    /// `None` when the steps ran out.
    pub fn run_for(&mut self, steps: u64) -> Option<Outcome> {
        self.settle_within(Some(steps))
    }

    fn settle_within(&mut self, mut budget: Option<u64>) -> Option<Outcome> {
        self.pump();
        loop {
            if budget == Some(0) {
                return None;
            }
            if self.failed() {
                return None;
            }
            if let Some(outcome) = self.service_relays() {
                return Some(outcome);
            }
            let runnable = self.runnable();
            let stuck = runnable.is_empty() || self.only_spinning(&runnable);
            if self.chaos_acts(stuck) {
                continue;
            }
            // With nothing to run, or only drivers busy-polling for a reply nothing will
            // bring (runnable forever), only time (a host delay, a relay timer) can help.
            if stuck {
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
            if let Some(trace) = &mut self.trace {
                trace.begin_step(self.steps + 1);
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
                if self.trace.is_some() {
                    let options: Vec<String> =
                        runnable.iter().map(|a| self.action_name(*a)).collect();
                    let now = self.now;
                    if let Some(trace) = &mut self.trace {
                        trace.choice(now, index, &options);
                    }
                }
                index
            };
            let Some(&action) = runnable.get(index) else {
                return Some(Outcome::StepLimit);
            };
            self.last = Some(action);
            self.steps += 1;
            budget = budget.map(|b| b.saturating_sub(1));
            match action {
                Action::Step(bus, ctx) => self.step(bus, ctx),
                Action::Deliver(bus) => self.deliver(bus),
            }
            self.pump();
        }
    }

    /// An action in a replay's words: `bus 0 workqueue`, `delivery of PCI_EJECT(1) to bus 0`.
    fn action_name(&self, action: Action) -> String {
        match action {
            Action::Step(bus, ctx) => format!("bus {bus} {ctx}"),
            Action::Deliver(bus) => {
                let what = match self.buses.get(bus).and_then(|b| b.side.next_in_flight()) {
                    Some(Delivery::Packet(p, _)) => crate::labels::packet(p),
                    Some(Delivery::Rescind(_)) => "the rescind".to_owned(),
                    None => "nothing".to_owned(),
                };
                format!("delivery of {what} to bus {bus}'s guest")
            }
        }
    }

    /// Lets the chaotic host act, if it does now; returns whether it did.
    fn chaos_acts(&mut self, stuck: bool) -> bool {
        let Some(chaos) = self.chaos.as_mut() else {
            return false;
        };
        if !chaos.acts_now(stuck) {
            return false;
        }
        let index = chaos.bus(self.buses.len());
        let Some(bus) = self.buses.get_mut(index) else {
            return false;
        };
        let action = chaos.action(&bus.side.host);
        let label = format!("bus {index}: chaos: {}", crate::labels::action(&action));
        // An action the host refuses (a slot it does not have) is just not taken.
        bus.side.act(self.now, action);
        self.note(Lane::Host, Lane::Host, label, Mark::None);
        self.pump();
        true
    }

    /// Has the host of bus `bus` carry out `action` now (a hot-add, an eject...).
    pub fn host_act(
        &mut self,
        bus: usize,
        action: host_sim::HostAction,
    ) -> Result<(), host_sim::ActionError> {
        let now = self.now;
        if let Some(b) = self.buses.get_mut(bus) {
            b.side.host.act(now, action)?;
            b.side.relay_dirty = true;
        }
        self.pump();
        Ok(())
    }

    /// Cuts the link between the relay of bus `bus` and its host, as a failure on the relay's
    /// side of the transport would: the host did not rescind and did nothing wrong (fault
    /// injection, for the verdict's tests). Returns whether there was a relay to cut.
    pub fn cut_host_link(&mut self, bus: usize) -> bool {
        let cut = self
            .buses
            .get_mut(bus)
            .and_then(|b| {
                b.side.relay_dirty = true;
                b.side.relay.as_mut()
            })
            .map(|r| vmbus_channel::Channel::revoke(&mut r.host_end))
            .is_some();
        self.pump();
        cut
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

    /// The bytes the guest model of `bus` keeps in its object arenas (see
    /// `guest_linux::LinuxGuest::retained_bytes`).
    pub fn guest_retained_bytes(&self, bus: usize) -> usize {
        self.buses.get(bus).map_or(0, |b| b.guest.retained_bytes())
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
        self.buses.get_mut(bus)?.side.relay.as_mut()?.inspect()
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
            side,
            guest,
            probed_at,
        } = bus;
        let HostSide {
            host,
            relay,
            outbox,
            relay_dirty,
            ..
        } = side;
        let before = guest.trace().len();
        let sent_before = outbox.len();
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
        for d in guest.take_scanned() {
            self.history.found(index, d);
        }
        for p in outbox.iter().skip(sent_before) {
            self.history.sent(index, &p.payload);
            if let Some(trace) = &mut self.trace {
                trace.wire.push(index, false, p.clone());
            }
        }
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
            // A stalled guest is neither hung nor judged on what it holds: it was stopped.
            let stall = self.stalled_bus();
            for (i, bus) in self.buses.iter_mut().enumerate() {
                let stuck = !bus.guest.blocked().is_empty() || !bus.guest.spinning().is_empty();
                if bus.guest.failure().is_none() && stuck && stall != Some(i) {
                    bus.guest.declare_hang();
                }
            }
            for (i, bus) in self.buses.iter_mut().enumerate() {
                if stall != Some(i) {
                    bus.guest.check_end_state();
                }
            }
        }
        let views = self.views();
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
        if outcome == Outcome::Ok {
            outcome = self.inspect_checks();
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
            unfired_steps: self
                .buses
                .iter()
                .enumerate()
                .flat_map(|(i, b)| crate::outcome::unfired_steps(i, &b.side.host))
                .collect(),
            device_history: self.history.take(),
            servicings: self.buses.iter().map(|b| b.side.servicings()).sum(),
            views,
        }
    }

    /// What the host can see went wrong so far once the guest survived, looking both ways:
    /// an EJECT nobody answered; a conformant host's bus the relay closed (`lost_bus`); a
    /// function the guest holds that the host no longer has, or holds with an old identity
    /// (`ghost_device`); a function the host has that the guest (probed and quiet) never got
    /// (`lost_device`).
    pub fn host_visible_outcome(&mut self) -> Outcome {
        for (i, bus) in self.buses.iter().enumerate() {
            if let Some(outcome) = bus.side.eject_unanswered(i) {
                return outcome;
            }
        }
        for (i, bus) in self.buses.iter().enumerate() {
            // The relay may drop the bus of a host that rescinded it or broke the protocol;
            // not a conformant host's.
            if let Some(outcome) = bus.side.lost_bus(i) {
                return outcome;
            }
        }
        let stall = self.stalled_bus();
        for (i, bus) in self.buses.iter_mut().enumerate() {
            // A stalled guest holds what it held when it stopped; the host-visible checks
            // above still apply to it.
            if stall == Some(i) {
                continue;
            }
            // A guest whose channel ended (the host rescinded it, or the relay closed it after
            // the host broke the protocol) holds nothing, rightly: its removal is the guest's
            // own end-state check.
            if bus.side.channel_ended() {
                continue;
            }
            let probed = bus.guest.probe_result() == Some(Ok(()));
            let host = host_functions(&mut bus.side.host);
            let guest = guest_functions(&bus.guest.devices());
            let outcome = crate::outcome::compare_functions(i, &host, &guest, probed);
            if outcome != Outcome::Ok {
                return outcome;
            }
        }
        Outcome::Ok
    }
}

impl Vm {
    /// The scenario's checks of the relay's inspect trees (runs through the relay only).
    fn inspect_checks(&mut self) -> Outcome {
        let checks = std::mem::take(&mut self.checks);
        stall::inspect_checks(&checks, |bus| self.relay_inspect(bus))
    }
}

/// What the host lists on a bus: each slot's function and its identity.
pub(crate) fn host_functions(host: &mut HostBus) -> Vec<(WinSlot, Identity)> {
    let mut out = Vec::new();
    for slot in host.slots() {
        let (Some(f), Some((vendor_id, device_id))) = (host.function(slot), host.ids(slot)) else {
            continue;
        };
        out.push((
            slot,
            Identity {
                vendor_id,
                device_id,
                serial: f.serial,
            },
        ));
    }
    out
}

/// What a guest model holds on a bus: each slot with a child on the bus's list (its
/// identity as the relations described it) or a `pci_dev` (the ids the scan read, the serial
/// of the child it was made for).
pub(crate) fn guest_functions(devices: &[guest_linux::DeviceView]) -> Vec<(WinSlot, Identity)> {
    let mut out = Vec::new();
    for d in devices {
        if d.child_present {
            out.push((
                d.slot,
                Identity {
                    vendor_id: d.vendor_id,
                    device_id: d.device_id,
                    serial: d.serial,
                },
            ));
        }
        if let Some((vendor_id, device_id, serial)) = d.pci_dev_identity {
            let id = Identity {
                vendor_id,
                device_id,
                serial,
            };
            if !out.contains(&(d.slot, id)) {
                out.push((d.slot, id));
            }
        }
    }
    out
}
