//! What the relay hands back to its driver: packets and channel actions, backing changes,
//! events and counters. Every event goes through [`Outputs::emit`], which bumps the counter
//! that belongs to it and writes its tracing twin, so neither can be forgotten.

use crate::events::{ChangeKind, Counters, RelayEvent, Side};
use crate::function::Backing;
use std::collections::VecDeque;
use vmbus_channel::Packet;
use vpci_protocol::WinSlot;

/// Something the driver must send, or do to a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// Send this packet to the host.
    ToHost(Packet),
    /// Send this packet to the guest.
    ToGuest(Packet),
    /// Close the guest channel: the host's rescind reaches the guest (at a safe point).
    CloseGuest,
}

/// The relay's output queues and counters.
#[derive(Clone, Debug)]
pub(crate) struct Outputs {
    /// The bus's name, for tracing.
    bus: String,
    tx: VecDeque<Transmit>,
    backing: VecDeque<(WinSlot, Backing)>,
    events: VecDeque<RelayEvent>,
    pub(crate) counters: Counters,
}

impl Outputs {
    pub(crate) fn new(bus: String) -> Self {
        Self {
            bus,
            tx: VecDeque::new(),
            backing: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.tx.pop_front()
    }

    pub(crate) fn poll_backing(&mut self) -> Option<(WinSlot, Backing)> {
        self.backing.pop_front()
    }

    pub(crate) fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// Forwards a packet from the guest to the host.
    pub(crate) fn relay_to_host(&mut self, packet: Packet) {
        self.counters.relayed_to_host += 1;
        self.tx.push_back(Transmit::ToHost(packet));
    }

    /// Forwards a packet from the host to the guest (or delivers a change the host made).
    pub(crate) fn relay_to_guest(&mut self, packet: Packet) {
        self.counters.relayed_to_guest += 1;
        self.tx.push_back(Transmit::ToGuest(packet));
    }

    /// Sends a packet of the relay's own to the host (an answer it owes the host).
    pub(crate) fn own_to_host(&mut self, packet: Packet) {
        self.tx.push_back(Transmit::ToHost(packet));
    }

    /// Sends a packet of the relay's own to the guest (a local answer, a refusal).
    pub(crate) fn own_to_guest(&mut self, packet: Packet) {
        self.tx.push_back(Transmit::ToGuest(packet));
    }

    /// Closes the guest channel.
    pub(crate) fn close_guest(&mut self) {
        self.tx.push_back(Transmit::CloseGuest);
        self.emit(RelayEvent::GuestClosed);
    }

    /// Changes a function's backing.
    pub(crate) fn set_backing(&mut self, slot: WinSlot, backing: Backing) {
        self.backing.push_back((slot, backing));
        self.emit(RelayEvent::Backing { slot, backing });
    }

    /// Records an event: its counter, its tracing twin, and the event itself.
    pub(crate) fn emit(&mut self, event: RelayEvent) {
        self.count(&event);
        trace_event(&self.bus, &event);
        self.events.push_back(event);
    }

    fn count(&mut self, event: &RelayEvent) {
        let c = &mut self.counters;
        match event {
            RelayEvent::EjectHeld { .. } | RelayEvent::RelationsHeld => c.held += 1,
            RelayEvent::ChangeDelivered { released: true, .. } => c.released += 1,
            RelayEvent::ChangeTimedOut(_) => c.timed_out += 1,
            RelayEvent::Coalesced { .. } => c.coalesced += 1,
            RelayEvent::RelationsSuperseded => c.superseded += 1,
            RelayEvent::AnsweredLocally { .. } => c.answered_locally += 1,
            RelayEvent::EjectAnsweredLocally { .. } => c.ejects_answered_locally += 1,
            RelayEvent::EjectAnsweredAtDeadline { .. } => c.ejects_answered_at_deadline += 1,
            RelayEvent::StaleListing { .. } => c.stale_listings += 1,
            RelayEvent::FunctionsOverLimit { .. } => c.over_limit_relations += 1,
            RelayEvent::LateCompletion { .. } => c.late_completions += 1,
            RelayEvent::Malformed {
                side: Side::Host, ..
            } => c.malformed_host += 1,
            RelayEvent::Malformed {
                side: Side::Guest, ..
            } => c.malformed_guest += 1,
            RelayEvent::ProgressStalled => c.progress_stalls += 1,
            RelayEvent::ChangeDelivered {
                released: false, ..
            }
            | RelayEvent::ChangeFinished(_)
            | RelayEvent::HostLost { .. }
            | RelayEvent::Backing { .. }
            | RelayEvent::GuestClosed
            | RelayEvent::Installed
            | RelayEvent::Timer(_) => {}
        }
    }
}

fn change_name(kind: ChangeKind) -> String {
    match kind {
        ChangeKind::Relations => "relations".to_owned(),
        ChangeKind::Eject(slot) => format!("eject {slot}"),
    }
}

/// The tracing twin of each event, with structured fields.
fn trace_event(bus: &str, event: &RelayEvent) {
    match event {
        RelayEvent::ChangeDelivered { kind, released } => {
            let change = change_name(*kind);
            tracing::info!(bus, %change, released, "change delivered to the guest");
        }
        RelayEvent::ChangeFinished(kind) => {
            let change = change_name(*kind);
            tracing::debug!(bus, %change, "guest finished the change");
        }
        RelayEvent::ChangeTimedOut(kind) => {
            let change = change_name(*kind);
            tracing::warn!(bus, %change, "guest did not finish a change in time; moving on");
        }
        RelayEvent::EjectHeld { slot } => {
            tracing::info!(bus, %slot, message = "PCI_EJECT", "eject held: function not settled");
        }
        RelayEvent::RelationsHeld => {
            tracing::info!(
                bus,
                message = "PCI_BUS_RELATIONS",
                "relations held behind an outstanding change or the guest's probe"
            );
        }
        RelayEvent::Coalesced { slot } => {
            tracing::info!(
                bus, %slot, message = "PCI_EJECT",
                "coalesced: function removed before the guest saw it"
            );
        }
        RelayEvent::RelationsSuperseded => {
            tracing::debug!(
                bus,
                message = "PCI_BUS_RELATIONS",
                "relations superseded or changing nothing for the guest"
            );
        }
        RelayEvent::AnsweredLocally { slot, request } => {
            tracing::info!(bus, ?slot, request = %request, "answered locally");
        }
        RelayEvent::EjectAnsweredLocally { slot } => {
            tracing::info!(
                bus, %slot, message = "PCI_EJECT",
                "eject of a function the guest no longer holds answered by the relay"
            );
        }
        RelayEvent::EjectAnsweredAtDeadline { slot } => {
            tracing::warn!(
                bus, %slot, message = "PCI_EJECTION_COMPLETE",
                "host eject answered by the relay at its deadline; the guest still holds the function (shielded)"
            );
        }
        RelayEvent::StaleListing { slot } => {
            tracing::debug!(
                bus, %slot, message = "PCI_BUS_RELATIONS",
                "stale listing of an ejected function ignored"
            );
        }
        RelayEvent::FunctionsOverLimit { listed, kept } => {
            tracing::warn!(
                bus,
                listed,
                kept,
                message = "PCI_BUS_RELATIONS",
                "more functions than the relay's limit; the rest are left out"
            );
        }
        RelayEvent::LateCompletion { request } => {
            tracing::debug!(bus, request = %request, "late host completion dropped");
        }
        RelayEvent::Malformed { side, fault } => {
            tracing::warn!(bus, ?side, %fault, "malformed or refused packet");
        }
        RelayEvent::HostLost { rescinded } => {
            tracing::warn!(bus, rescinded, "host lost: winding the bus down");
        }
        RelayEvent::Backing { slot, backing } => {
            tracing::info!(bus, %slot, ?backing, "backing changed");
        }
        RelayEvent::GuestClosed => {
            tracing::info!(bus, "guest channel closed after the host's rescind");
        }
        RelayEvent::Installed => tracing::info!(bus, "guest probe path done"),
        RelayEvent::ProgressStalled => {
            tracing::error!(bus, "relay progress did not settle within its step bound");
        }
        RelayEvent::Timer(at) => tracing::trace!(bus, ?at, "timer"),
    }
}
