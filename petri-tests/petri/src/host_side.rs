//! The host side of one bus, for both kinds of VM run (the guest models and the real
//! drivers): host_sim's bus, the optional relay ([`RelayRig`]), the packets on their way, and
//! the pump that moves packets between them until nothing moves.
//!
//! What differs between the two VMs is only how something in flight reaches the guest: the
//! model VM hands it to its `LinuxGuest`, the real VM's controller writes it into the child
//! process's channel. Both make the moment of arrival a scheduling choice (VMBus's latency);
//! the VM calls [`HostSide::deliver`] with its [`ToGuest`] when the chooser picks it.

use crate::outcome::Outcome;
use crate::trace::{Lane, Mark, Trace};
use host_sim::{HostBus, HostEventKind};
use std::collections::VecDeque;
use std::time::Duration;
use vmbus_channel::{Channel, Packet, PacketKind};
use vpci_protocol::{MessageType, WinSlot};
use vpci_relay::RelayEvent;
use vpci_relay::sim::{Exchange, RelayRig};

/// Something on its way to the guest over the bus's channel.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A packet, from the host (direct) or the relay.
    Packet(Packet, Lane),
    /// The channel's rescind.
    Rescind(Lane),
}

/// How something in flight reaches the guest: the one thing the two VMs do differently.
pub(crate) trait ToGuest {
    /// A packet arrives on the guest's channel.
    fn packet(&mut self, packet: Packet);
    /// The guest's channel is rescinded.
    fn rescind(&mut self);
}

/// The world outside the guest on one bus.
#[derive(Debug)]
pub(crate) struct HostSide {
    pub(crate) host: HostBus,
    pub(crate) relay: Option<RelayRig>,
    /// Packets waiting for room in a relay channel: towards the relay's host side and guest
    /// side.
    to_relay_host: VecDeque<Packet>,
    to_relay_guest: VecDeque<Packet>,
    /// The guest's sends not yet pumped.
    pub(crate) outbox: Vec<Packet>,
    /// What is in flight to the guest, in order; when each arrives is a scheduling choice.
    in_flight: VecDeque<Delivery>,
    host_rescind_sent: bool,
    /// The guest's channel has been (or is being) rescinded.
    guest_rescind_sent: bool,
    /// Slots whose EJECT the host gave up on (Hyper-V's 60 s).
    eject_timeouts: Vec<WinSlot>,
    /// The relay lost its host link for a reason of its own (not the host's rescind).
    relay_lost_host: bool,
    /// The relay may have something to do (time moved, a config access, a host action), so
    /// the next pump polls it even if no packet moved.
    pub(crate) relay_dirty: bool,
    /// The relay is also serviced while host packets wait unread in its channel (see
    /// [`RelayRig::exchange_servicing`]).
    pub(crate) servicing: bool,
    /// Why a servicing during a pump failed, for the run to report as a harness error.
    service_error: Option<String>,
}

/// The packet as VMBus delivers it: the payload padded with zeros to a multiple of 8 bytes
/// (the ring stores whole 8-byte units, and the reader gets them all).
pub(crate) fn on_the_wire(mut packet: Packet) -> Packet {
    vmbus_channel::pad_payload(&mut packet.payload);
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

/// A relay event as a trace note, for the events a chart shows.
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

impl HostSide {
    /// The host of one bus, behind `relay` if there is one.
    pub(crate) fn new(host: HostBus, relay: Option<RelayRig>) -> Self {
        Self {
            host,
            relay,
            to_relay_host: VecDeque::new(),
            to_relay_guest: VecDeque::new(),
            outbox: Vec::new(),
            in_flight: VecDeque::new(),
            host_rescind_sent: false,
            guest_rescind_sent: false,
            eject_timeouts: Vec::new(),
            relay_lost_host: false,
            relay_dirty: true,
            servicing: false,
            service_error: None,
        }
    }

    /// Services the relay, if there is one (see [`RelayRig::service`]): the servicing is
    /// noted in `trace` (replays show it in verbose mode, charts leave it out). Returns
    /// whether it was serviced; an error says why it could not be (a harness error).
    pub(crate) fn service(
        &mut self,
        bus: usize,
        now: Duration,
        trace: Option<&mut Trace>,
    ) -> Result<bool, String> {
        if let Some(e) = self.service_error.take() {
            return Err(format!("bus {bus}: {e}"));
        }
        let Some(relay) = self.relay.as_mut() else {
            return Ok(false);
        };
        match relay.service() {
            Ok(Some(bytes)) => {
                self.relay_dirty = true;
                if let Some(trace) = trace {
                    trace.push(
                        now,
                        Lane::Relay,
                        Lane::Relay,
                        format!(
                            "bus {bus}: relay serviced ({bytes} bytes saved; servicing {})",
                            relay.servicings()
                        ),
                        Mark::Serviced,
                    );
                }
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(format!("bus {bus}: servicing the relay failed: {e}")),
        }
    }

    /// How many times the relay was serviced (0 without one).
    pub(crate) fn servicings(&self) -> u64 {
        self.relay.as_ref().map_or(0, RelayRig::servicings)
    }

    /// Whether something is in flight to the guest (its arrival is a choice to offer).
    pub(crate) fn has_in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// What arrives next if the chooser delivers now.
    pub(crate) fn next_in_flight(&self) -> Option<&Delivery> {
        self.in_flight.front()
    }

    /// The next thing in flight arrives at the guest through `guest`; noted in `trace`.
    /// Returns whether there was something.
    pub(crate) fn deliver(
        &mut self,
        now: Duration,
        guest: &mut impl ToGuest,
        trace: Option<&mut Trace>,
    ) -> bool {
        let (from, label) = match self.in_flight.pop_front() {
            Some(Delivery::Packet(p, from)) => {
                let label = trace.is_some().then(|| describe(&p));
                guest.packet(p);
                (from, label)
            }
            Some(Delivery::Rescind(from)) => {
                guest.rescind();
                (from, Some("rescind".to_owned()))
            }
            None => return false,
        };
        if let (Some(trace), Some(label)) = (trace, label) {
            trace.push(now, from, Lane::Guest, label, Mark::None);
        }
        true
    }

    /// The host acts now outside its script (chaos, a hot-plug cycle), whether or not the
    /// action succeeds; the relay gets to look at what follows.
    pub(crate) fn act(&mut self, now: Duration, action: host_sim::HostAction) {
        let _ = self.host.act(now, action);
        self.relay_dirty = true;
    }

    /// Whether the channel to the guest ended (the host rescinded it, or the relay closed it).
    pub(crate) fn channel_ended(&self) -> bool {
        self.host.rescinded() || self.guest_rescind_sent
    }

    /// Whether the host gave up on an EJECT.
    pub(crate) fn eject_timed_out(&self) -> bool {
        !self.eject_timeouts.is_empty()
    }

    /// An EJECT the host gave up on, as bus `bus`'s outcome.
    pub(crate) fn eject_unanswered(&self, bus: usize) -> Option<Outcome> {
        self.eject_timeouts
            .first()
            .map(|slot| Outcome::EjectUnanswered {
                bus,
                slot: slot.to_string(),
            })
    }

    /// The relay dropped the bus (closed the guest's channel, or lost its host link) though
    /// the host neither rescinded it nor broke the protocol: bus `bus`'s `lost_bus`. (Direct,
    /// the guest's channel ends only by the host's rescind.)
    pub(crate) fn lost_bus(&self, bus: usize) -> Option<Outcome> {
        let dropped = self.guest_rescind_sent || self.relay_lost_host;
        (dropped && !self.host.rescinded() && !self.host.broke_protocol())
            .then_some(Outcome::LostBus { bus })
    }

    /// Moves packets host <-> relay <-> guest until nothing moves, noting each in `trace`
    /// when recording. Packets for the guest wait in flight for [`HostSide::deliver`].
    pub(crate) fn pump(&mut self, now: Duration, mut trace: Option<&mut Trace>) {
        let recording = trace.is_some();
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
            let relayed = self.relay.is_some();
            // The guest's sends. Once the host rescinded the channel, nothing the guest
            // sends reaches it (Linux's ring write refuses a rescinded channel).
            for p in self.outbox.drain(..) {
                let p = on_the_wire(p);
                moved = true;
                let to = if relayed { Lane::Relay } else { Lane::Host };
                note(Lane::Guest, to, &|| describe(&p), Mark::None);
                if relayed {
                    self.to_relay_guest.push_back(p);
                } else if !self.host.rescinded() {
                    self.host.handle_packet(now, p);
                }
            }
            // The host's sends, and its rescind once they are out.
            while let Some(p) = self.host.poll_transmit() {
                let p = on_the_wire(p);
                moved = true;
                if relayed {
                    note(Lane::Host, Lane::Relay, &|| describe(&p), Mark::None);
                    self.to_relay_host.push_back(p);
                } else {
                    self.in_flight.push_back(Delivery::Packet(p, Lane::Host));
                }
            }
            while let Some(e) = self.host.poll_event() {
                match e.kind {
                    HostEventKind::EjectTimedOut { slot } => {
                        self.eject_timeouts.push(slot);
                        note(
                            Lane::Host,
                            Lane::Host,
                            &|| format!("EJECT({slot}) timed out: removed by force"),
                            Mark::None,
                        );
                    }
                    HostEventKind::BarsTornDown { slot } => note(
                        Lane::Host,
                        Lane::Host,
                        &|| format!("{slot} device memory torn down"),
                        Mark::None,
                    ),
                    HostEventKind::ScriptStepFired { step } => note(
                        Lane::Host,
                        Lane::Host,
                        &|| format!("script step {step}"),
                        Mark::None,
                    ),
                    _ => {}
                }
            }
            if self.host.rescinded() && !self.host_rescind_sent && self.to_relay_host.is_empty() {
                self.host_rescind_sent = true;
                moved = true;
                note(Lane::Host, Lane::Host, &|| "rescind".to_owned(), Mark::None);
                match &mut self.relay {
                    Some(relay) => relay.host_end.revoke(),
                    None => {
                        self.guest_rescind_sent = true;
                        self.in_flight.push_back(Delivery::Rescind(Lane::Host));
                    }
                }
            }
            let poll_relay = moved
                || self.relay_dirty
                || !self.to_relay_host.is_empty()
                || !self.to_relay_guest.is_empty();
            self.relay_dirty = false;
            if let Some(relay) = self.relay.as_mut().filter(|_| poll_relay) {
                let out = if self.servicing && self.service_error.is_none() {
                    let before = relay.servicings();
                    let out = relay
                        .exchange_servicing(&mut self.to_relay_host, &mut self.to_relay_guest)
                        .unwrap_or_else(|e| {
                            self.service_error = Some(format!(
                                "servicing the relay with host packets unread failed: {e}"
                            ));
                            Exchange::default()
                        });
                    if relay.servicings() > before {
                        note(
                            Lane::Relay,
                            Lane::Relay,
                            &|| {
                                format!(
                                    "relay serviced with host packets unread (servicing {})",
                                    relay.servicings()
                                )
                            },
                            Mark::Serviced,
                        );
                    }
                    out
                } else {
                    relay.exchange(&mut self.to_relay_host, &mut self.to_relay_guest)
                };
                moved |= out.moved;
                for p in out.to_host {
                    let p = on_the_wire(p);
                    note(Lane::Relay, Lane::Host, &|| describe(&p), Mark::None);
                    if !self.host.rescinded() {
                        self.host.handle_packet(now, p);
                    }
                }
                for p in out.to_guest {
                    self.in_flight
                        .push_back(Delivery::Packet(on_the_wire(p), Lane::Relay));
                }
                if out.guest_ended && !self.guest_rescind_sent {
                    self.guest_rescind_sent = true;
                    moved = true;
                    self.in_flight.push_back(Delivery::Rescind(Lane::Relay));
                }
                for e in relay.take_events() {
                    if matches!(e, RelayEvent::HostLost { rescinded: false }) {
                        self.relay_lost_host = true;
                    }
                    if let Some((label, mark)) = relay_note(&e) {
                        note(Lane::Relay, Lane::Relay, &|| label.clone(), mark);
                    }
                }
            }
            if let Some(trace) = trace.as_deref_mut() {
                for (from, to, label, mark) in notes {
                    trace.push(now, from, to, label, mark);
                }
            }
            if !moved {
                return;
            }
        }
    }
}
