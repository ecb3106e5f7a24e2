//! [`HostBus`]: one simulated vPCI bus, host side, as a sans-IO state machine.
//!
//! The caller feeds it what the guest side sends ([`HostBus::handle_packet`]), the passing of
//! virtual time ([`HostBus::handle_timeout`]) and host actions ([`HostBus::act`]), and drains
//! what it produces: packets for the guest ([`HostBus::poll_transmit`]), its next deadline
//! ([`HostBus::poll_timeout`]) and events ([`HostBus::poll_event`]). It never reads a clock,
//! blocks or spawns.
//!
//! The state is split by what owns it: `function` (one function's device and protocol
//! state), `guest` (answers to guest messages), `host` (host actions, relations, ejects,
//! hostile packets). This file holds the bus's own state, the timers and the output queues.

mod access;
mod function;
mod guest;
mod host;

pub use access::{CONFIG_WINDOW_SIZE, CONFIG_WINDOW_SPACE, MmioTarget};
pub use function::{FunctionIdentity, Interrupt};

use crate::action::{ActionError, HostAction};
use crate::config::{BusConfig, ConfigError, HostPolicy};
use crate::device::{Device, SimpleDevice};
use crate::event::{HostEvent, HostEventKind};
use crate::script::{Observation, Response, ScriptRunner};
use function::Function;
use inspect::{Inspect, Node};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::{MessageType, ProtocolVersion, Status, WinSlot};

/// Counters of what the bus has handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Inspect)]
pub struct Counters {
    /// Packets received from the guest side.
    pub packets_received: u64,
    /// Packets sent to the guest side.
    pub packets_sent: u64,
    /// Guest packets that broke the protocol.
    pub guest_errors: u64,
    /// Requests for a slot the host does not have.
    pub unknown_slot: u64,
    /// Answers a response rule delayed, withheld or tampered with.
    pub tampered_responses: u64,
    /// Events dropped because nobody drained them.
    pub events_dropped: u64,
}

/// An outgoing packet, and the request it answers (for events and milestones).
#[derive(Clone, Debug)]
pub(crate) struct Out {
    pub(crate) packet: Packet,
    pub(crate) answers: Option<(MessageType, Option<WinSlot>)>,
}

#[derive(Debug)]
struct Delayed {
    due: Duration,
    seq: u64,
    out: Out,
    /// Held by the host's latency (not by a response rule): the channel is FIFO, so what the
    /// host sends later leaves after it.
    fifo: bool,
}

#[derive(Clone, Copy, Debug, Inspect)]
struct PendingEject {
    incarnation: u64,
    sent_at: Duration,
    deadline: Duration,
}

/// One simulated vPCI bus, host side, as a sans-IO state machine.
///
/// Feed it guest packets ([`HostBus::handle_packet`]), time ([`HostBus::handle_timeout`])
/// and host actions ([`HostBus::act`]); drain [`HostBus::poll_transmit`],
/// [`HostBus::poll_timeout`] and [`HostBus::poll_event`]. Every input takes the current
/// virtual time, which must not go backwards; the bus never reads a clock.
pub struct HostBus {
    name: String,
    versions: Vec<ProtocolVersion>,
    policy: HostPolicy,
    /// The agreed protocol version.
    version: Option<ProtocolVersion>,
    /// The config window's MMIO base while the bus is in D0.
    d0: Option<u64>,
    /// The slot the config window's selector register names.
    window_slot: u32,
    functions: BTreeMap<u32, Function>,
    /// Outstanding ejects by slot, oldest first: an EJECT names the function the host listed
    /// last in its slot, so a slot re-listed with a new identity while an eject of it is
    /// unanswered can have one outstanding eject per incarnation.
    ejects: BTreeMap<u32, Vec<PendingEject>>,
    /// Slots that have ever held a function (an EJECT of any other slot breaks the protocol).
    ever_held: BTreeSet<u32>,
    /// The host sent something that breaks the protocol (a hostile packet, a tampered answer).
    broke_protocol: bool,
    next_incarnation: u64,
    transmit: VecDeque<Packet>,
    delayed: Vec<Delayed>,
    events: VecDeque<HostEvent>,
    observations: VecDeque<Observation>,
    script: ScriptRunner,
    last_completion: Option<Packet>,
    counters: Counters,
    rescinded: bool,
    now: Duration,
    seq: u64,
}

impl std::fmt::Debug for HostBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBus")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .field("rescinded", &self.rescinded)
            .finish_non_exhaustive()
    }
}

impl HostBus {
    /// A bus with the configuration's boot functions, waiting for the guest.
    pub fn new(config: BusConfig) -> Result<Self, ConfigError> {
        let BusConfig {
            name,
            versions,
            functions,
            policy,
            script,
        } = config;
        if versions.is_empty() {
            return Err(ConfigError::NoVersions(name));
        }
        let mut bus = Self {
            name,
            versions,
            policy,
            version: None,
            d0: None,
            window_slot: 0,
            functions: BTreeMap::new(),
            ejects: BTreeMap::new(),
            ever_held: BTreeSet::new(),
            broke_protocol: false,
            next_incarnation: 1,
            transmit: VecDeque::new(),
            delayed: Vec::new(),
            events: VecDeque::new(),
            observations: VecDeque::new(),
            script: ScriptRunner::new(script),
            last_completion: None,
            counters: Counters::default(),
            rescinded: false,
            now: Duration::ZERO,
            seq: 0,
        };
        for spec in functions {
            let slot = spec.slot;
            if bus.functions.contains_key(&slot) {
                return Err(ConfigError::DuplicateSlot {
                    bus: bus.name.clone(),
                    slot,
                });
            }
            let device = SimpleDevice::new(&spec).map_err(|error| ConfigError::Function {
                bus: bus.name.clone(),
                slot,
                error,
            })?;
            bus.insert(identity_of(&spec), Some(spec), Box::new(device));
        }
        Ok(bus)
    }

    /// The bus's instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Handles a packet from the guest side (a guest or a relay) at virtual time `now`.
    pub fn handle_packet(&mut self, now: Duration, packet: Packet) {
        self.advance(now);
        if self.rescinded {
            self.emit(HostEventKind::IgnoredAfterRescind);
            return;
        }
        self.counters.packets_received += 1;
        let (message, outs) = self.on_guest_packet(&packet);
        match message {
            Some((message, slot)) => {
                let obs = self.script.received(message, slot);
                let rule = self.script.rule_for(&obs);
                self.queue_answers(message, outs, rule);
                self.observations.push_back(obs);
            }
            None => outs.into_iter().for_each(|o| self.release(o)),
        }
        self.run_observations();
    }

    /// Lets virtual time pass to `now`: delayed answers leave, eject waits run out, timed
    /// script steps fire.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.advance(now);
    }

    /// Carries out a host action at `now` (scripts use the same path).
    pub fn act(&mut self, now: Duration, action: HostAction) -> Result<(), ActionError> {
        self.advance(now);
        let result = self.do_action(action);
        self.run_observations();
        result
    }

    /// Hot-adds a custom device (not built from a spec) at `now`; relations are sent once
    /// a version is agreed. Before the guest connects, this puts it on the bus at boot.
    pub fn hot_add_device(
        &mut self,
        now: Duration,
        identity: FunctionIdentity,
        device: Box<dyn Device>,
    ) -> Result<(), ActionError> {
        self.advance(now);
        let result = self.add_function(identity, None, device);
        self.run_observations();
        result
    }

    /// The next packet for the guest side.
    pub fn poll_transmit(&mut self) -> Option<Packet> {
        let p = self.transmit.pop_front()?;
        self.counters.packets_sent += 1;
        Some(p)
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has something to do.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let delayed = self.delayed.iter().map(|d| d.due).min();
        let ejects = self.ejects.values().flatten().map(|e| e.deadline).min();
        [delayed, ejects, self.script.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the host has something of its own still to do: an answer it holds back (a
    /// policy latency or a response rule's delay) or a script step waiting on its time. An
    /// EJECT waiting for its answer is not counted: the guest owes that, not the host. A
    /// verdict taken while this holds would judge a run the host has not finished playing.
    pub fn has_scheduled(&self) -> bool {
        !self.delayed.is_empty() || self.script.next_deadline().is_some()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }

    /// Whether each script step has fired (its trigger was met and its action ran, whether
    /// or not the action succeeded), in script order. A step whose trigger never happened, or
    /// whose `after` had not passed when the bus ended, has not.
    pub fn script_steps_fired(&self) -> &[bool] {
        self.script.steps_fired()
    }

    /// Whether the channel has been rescinded (the bus has ended; once the transmit queue is
    /// drained, the driver revokes the channel).
    pub fn rescinded(&self) -> bool {
        self.rescinded
    }

    /// The agreed protocol version.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// The config window's MMIO base, while the bus is in D0.
    pub fn d0_mmio_base(&self) -> Option<u64> {
        self.d0
    }

    /// The slots that hold a function, in order.
    pub fn slots(&self) -> Vec<WinSlot> {
        self.functions.values().map(|f| f.identity.slot).collect()
    }

    /// The identity of the function in `slot`.
    pub fn function(&self, slot: WinSlot) -> Option<FunctionIdentity> {
        self.functions.get(&slot.raw()).map(|f| f.identity)
    }

    /// The interrupts the function in `slot` holds.
    pub fn interrupts(&self, slot: WinSlot) -> &[Interrupt] {
        self.functions
            .get(&slot.raw())
            .map_or(&[], |f| f.interrupts.as_slice())
    }

    /// Whether an eject of `slot` is outstanding (of the function in it now, or of one it
    /// held before the host listed a new identity there).
    pub fn eject_outstanding(&self, slot: WinSlot) -> bool {
        self.ejects.get(&slot.raw()).is_some_and(|e| !e.is_empty())
    }

    /// Whether the function the host lists in `slot` now (the one an EJECT of the slot
    /// names) has an eject outstanding.
    pub fn ejecting(&self, slot: WinSlot) -> bool {
        let Some(f) = self.functions.get(&slot.raw()) else {
            return false;
        };
        self.ejects
            .get(&slot.raw())
            .is_some_and(|e| e.iter().any(|e| e.incarnation == f.incarnation))
    }

    /// The vendor and device ids of the function in `slot`, from its config space (what the
    /// host's relations describe), whatever the state of the guest's config window.
    pub fn ids(&mut self, slot: WinSlot) -> Option<(u16, u16)> {
        let f = self.functions.get_mut(&slot.raw())?;
        let id = f.device.config_read(crate::device::cfg::ID);
        Some((id as u16, (id >> 16) as u16))
    }

    /// Whether the host has sent anything that breaks the protocol: a hostile packet (except
    /// an EJECT of a slot it once had, a late or repeated eject within its rights) or an
    /// answer a response rule duplicated, cut, extended or gave a transaction id nobody used.
    /// A relay may drop the bus of such a host; a conformant host's bus it must keep.
    pub fn broke_protocol(&self) -> bool {
        self.broke_protocol
    }

    /// Whether the BARs of the function in `slot` have been torn down.
    pub fn torn_down(&self, slot: WinSlot) -> bool {
        self.functions.get(&slot.raw()).is_some_and(|f| f.torn_down)
    }

    /// What the bus has counted.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn emit(&mut self, kind: HostEventKind) {
        tracing::trace!(bus = %self.name, at = ?self.now, event = ?kind, "host event");
        if self.events.len() >= self.policy.max_events.max(1) {
            self.events.pop_front();
            self.counters.events_dropped += 1;
        }
        self.events.push_back(HostEvent { at: self.now, kind });
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Runs every timer due at or before `now`, in time order.
    fn advance(&mut self, now: Duration) {
        loop {
            let delayed = self
                .delayed
                .iter()
                .enumerate()
                .min_by_key(|(_, d)| (d.due, d.seq))
                .map(|(i, d)| (d.due, i));
            let eject = self
                .ejects
                .iter()
                .flat_map(|(s, e)| e.iter().map(move |e| (e.deadline, *s)))
                .min_by_key(|(deadline, _)| *deadline);
            let script = self.script.next_deadline();
            let next = [delayed.map(|d| d.0), eject.map(|e| e.0), script]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|n| *n <= now) else {
                break;
            };
            self.now = self.now.max(next);
            if let Some((_, i)) = delayed.filter(|d| d.0 == next) {
                let d = self.delayed.swap_remove(i);
                self.release(d.out);
            } else if let Some((_, slot)) = eject.filter(|e| e.0 == next) {
                self.eject_timed_out(slot);
            } else if let Some((_, step)) = self.script.take_due(next) {
                self.run_step(step);
            }
            self.run_observations();
        }
        self.now = self.now.max(now);
    }

    fn run_step(&mut self, step: usize) {
        let Some(action) = self.script.action(step) else {
            return;
        };
        match self.do_action(action) {
            Ok(()) => self.emit(HostEventKind::ScriptStepFired { step }),
            Err(error) => self.emit(HostEventKind::ScriptStepFailed { step, error }),
        }
    }

    fn run_observations(&mut self) {
        while let Some(obs) = self.observations.pop_front() {
            for step in self.script.observe(&obs, self.now) {
                self.run_step(step);
            }
        }
    }

    /// Sends a packet now.
    pub(crate) fn release(&mut self, out: Out) {
        if out.packet.kind == PacketKind::Completion {
            self.last_completion = Some(out.packet.clone());
        }
        if let Some((message, slot)) = out.answers {
            let status = out
                .packet
                .payload
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(|b| Status(u32::from_le_bytes(b)));
            self.emit(HostEventKind::Answered {
                message,
                slot,
                status,
            });
            let obs = self.script.answered(message, slot);
            self.observations.push_back(obs);
        }
        self.transmit.push_back(out.packet);
    }

    /// Sends a host-originated packet: now, or, while answers held by the host's latency are
    /// still to leave, right after them (a VMBus channel delivers in the order written, and a
    /// relations message queued earlier must not overtake a newer one).
    pub(crate) fn send(&mut self, packet: Packet) {
        self.send_out(Out {
            packet,
            answers: None,
        });
    }

    /// [`HostBus::send`] for an output that may answer a message.
    pub(crate) fn send_out(&mut self, out: Out) {
        let behind = self
            .delayed
            .iter()
            .filter(|d| d.fifo)
            .map(|d| d.due)
            .max()
            .filter(|due| *due > self.now);
        match behind {
            Some(due) if self.delayed.len() < self.policy.max_delayed_responses => {
                let seq = self.next_seq();
                self.delayed.push(Delayed {
                    due,
                    seq,
                    out,
                    fifo: true,
                });
            }
            _ => self.release(out),
        }
    }

    /// Queues the answers to a message as its response rule says.
    fn queue_answers(&mut self, message: MessageType, mut outs: Vec<Out>, rule: Option<Response>) {
        let latency = self.policy.latency.0;
        let Some(rule) = rule else {
            self.hold(message, outs, latency, true);
            return;
        };
        self.counters.tampered_responses += 1;
        let target = outs
            .iter()
            .position(|o| o.packet.kind == PacketKind::Completion)
            .unwrap_or(0);
        match rule {
            Response::Delay(d) => {
                let until = self.now.saturating_add(d.0);
                self.emit(HostEventKind::ResponseDelayed { message, until });
                self.hold(message, outs, d.0, false);
                return;
            }
            Response::Never => {
                self.emit(HostEventKind::ResponseWithheld { message });
                return;
            }
            Response::Duplicate => {
                self.broke_protocol = true;
                if let Some(out) = outs.get(target).cloned() {
                    outs.insert(
                        target + 1,
                        Out {
                            packet: out.packet,
                            answers: None,
                        },
                    );
                }
            }
            Response::Truncate(len) => {
                self.broke_protocol = true;
                if let Some(o) = outs.get_mut(target) {
                    o.packet.payload.truncate(len);
                }
            }
            Response::Extend(by) => {
                self.broke_protocol = true;
                if let Some(o) = outs.get_mut(target) {
                    let len = o.packet.payload.len().saturating_add(by.min(1 << 16));
                    o.packet.payload.resize(len, 0);
                }
            }
            Response::Status(status) => {
                if let Some(o) = outs.get_mut(target) {
                    o.packet.payload = status.to_le_bytes().to_vec();
                }
            }
            Response::UnknownTransactionId => {
                self.broke_protocol = true;
                if let Some(o) = outs.get_mut(target) {
                    o.packet.transaction_id ^= 1 << 63;
                }
            }
        }
        self.emit(HostEventKind::ResponseTampered { message });
        self.hold(message, outs, latency, true);
    }

    /// Sends answers after `delay` (at once if it is zero), within the delayed bound. `fifo`:
    /// the host's own latency, which later sends queue behind.
    fn hold(&mut self, message: MessageType, outs: Vec<Out>, delay: Duration, fifo: bool) {
        if delay.is_zero() {
            outs.into_iter().for_each(|o| self.release(o));
            return;
        }
        let due = self.now.saturating_add(delay);
        for out in outs {
            if self.delayed.len() >= self.policy.max_delayed_responses {
                self.emit(HostEventKind::DelayedResponseDropped { message });
                continue;
            }
            let seq = self.next_seq();
            self.delayed.push(Delayed {
                due,
                seq,
                out,
                fifo,
            });
        }
    }

    fn insert(
        &mut self,
        identity: FunctionIdentity,
        spec: Option<crate::spec::FunctionSpec>,
        device: Box<dyn Device>,
    ) {
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        self.ever_held.insert(identity.slot.raw());
        self.functions.insert(
            identity.slot.raw(),
            Function::new(identity, incarnation, spec, device),
        );
        self.emit(HostEventKind::FunctionAdded {
            slot: identity.slot,
            serial: identity.serial,
        });
    }
}

pub(crate) fn identity_of(spec: &crate::spec::FunctionSpec) -> FunctionIdentity {
    FunctionIdentity {
        slot: WinSlot::from_raw(spec.slot),
        serial: spec.serial,
        numa_node: spec.numa_node,
    }
}

impl Inspect for HostBus {
    fn inspect(&self) -> Node {
        let ejects: BTreeMap<String, PendingEject> = self
            .ejects
            .iter()
            .flat_map(|(s, e)| {
                // The oldest under the slot's name, later incarnations' as `slot+1`, ...
                e.iter().enumerate().map(move |(i, e)| {
                    let slot = WinSlot::from_raw(*s);
                    let key = if i == 0 {
                        slot.to_string()
                    } else {
                        format!("{slot}+{i}")
                    };
                    (key, *e)
                })
            })
            .collect();
        let functions: BTreeMap<String, &Function> = self
            .functions
            .iter()
            .map(|(s, f)| (WinSlot::from_raw(*s).to_string(), f))
            .collect();
        Node::dir()
            .display("name", &self.name)
            .child(
                "version",
                self.version.map_or(Node::none(), |v| Node::display(&v)),
            )
            .field("d0_mmio_base", &self.d0.map(Node::hex_value))
            .field("functions", &functions)
            .field("ejects", &ejects)
            .field("delayed_responses", &self.delayed.len())
            .field("queued_transmits", &self.transmit.len())
            .field("rescinded", &self.rescinded)
            .field("counters", &self.counters)
            .build()
    }
}
