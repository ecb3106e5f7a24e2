//! What the relay hands back to its driver: packets and channel actions, backing changes,
//! events and counters. Every event goes through [`Outputs::emit`], which bumps the counter
//! that belongs to it and writes its tracing twin, so neither can be forgotten.

use crate::events::{ChangeKind, Counters, RelayEvent, Side};
use crate::function::Backing;
use crate::function::{BACKINGS, index_of, required};
use crate::save::{
    MAX_SAVED_OUTPUTS, MAX_SAVED_PAYLOAD, RestoreError, SavedBacking, SavedCounters, SavedOutputs,
    SavedPacket, SavedTransmit,
};
use std::collections::VecDeque;
use vmbus_channel::{Packet, PacketFlags, PacketKind};
use vpci_protocol::{ProtocolVersion, Sender, WinSlot};

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
            RelayEvent::AccessRefused { .. } => c.accesses_refused += 1,
            RelayEvent::AccessAbandoned { .. } => c.accesses_abandoned += 1,
            RelayEvent::ChangeDelivered {
                released: false, ..
            }
            | RelayEvent::ChangeFinished(_)
            | RelayEvent::HostLost { .. }
            | RelayEvent::DeviceGoneRead { .. }
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
        RelayEvent::AccessRefused { slot } => {
            tracing::warn!(bus, %slot, "config access refused: too many in flight");
        }
        RelayEvent::AccessAbandoned { slot } => {
            tracing::warn!(
                bus,
                %slot,
                "config access to a departed function unanswered; no longer waited for"
            );
        }
        RelayEvent::DeviceGoneRead { slot, offset } => {
            tracing::warn!(
                bus,
                %slot,
                offset,
                "config read says the device is gone before the host said so: answered from the shield"
            );
        }
        RelayEvent::Timer(at) => tracing::trace!(bus, ?at, "timer"),
    }
}

const TO_HOST: u32 = 1;
const TO_GUEST: u32 = 2;
const CLOSE_GUEST: u32 = 3;

pub(crate) fn save_packet(p: &Packet) -> SavedPacket {
    let Packet {
        kind,
        flags,
        transaction_id,
        payload,
    } = p;
    SavedPacket {
        kind: kind.to_raw().into(),
        flags: flags.0.into(),
        transaction_id: *transaction_id,
        payload: payload.clone(),
    }
}

/// A queued packet, checked: in-band or a completion (all the relay sends), no flag but
/// completion-requested, a payload within bounds, and an in-band one a message `from` may
/// send at `version` (what the relay sends each side is a message it decoded or built).
pub(crate) fn restore_packet(
    saved: Option<&SavedPacket>,
    field: &str,
    from: Sender,
    version: ProtocolVersion,
) -> Result<Packet, RestoreError> {
    let bad = |value: u64| RestoreError::BadValue {
        field: field.to_owned(),
        value,
    };
    let Some(SavedPacket {
        kind,
        flags,
        transaction_id,
        payload,
    }) = saved
    else {
        return Err(bad(0));
    };
    let kind = u16::try_from(*kind)
        .ok()
        .map(PacketKind::from_raw)
        .filter(|k| matches!(k, PacketKind::InBand | PacketKind::Completion))
        .ok_or(bad(u64::from(*kind)))?;
    let flags = u16::try_from(*flags)
        .ok()
        .filter(|f| *f & !PacketFlags::COMPLETION_REQUESTED.0 == 0)
        .ok_or(bad(u64::from(*flags)))?;
    if payload.len() > MAX_SAVED_PAYLOAD {
        return Err(RestoreError::PayloadTooLarge {
            field: field.to_owned(),
            len: payload.len(),
        });
    }
    if kind == PacketKind::InBand && vpci_protocol::decode(payload, from, version).is_err() {
        return Err(RestoreError::BadRequest {
            field: format!("{field}.payload"),
        });
    }
    Ok(Packet {
        kind,
        flags: PacketFlags(flags),
        transaction_id: *transaction_id,
        payload: payload.clone(),
    })
}

impl Outputs {
    pub(crate) fn save(&self) -> SavedOutputs {
        let Self {
            // The bus's name is the configuration's.
            bus: _,
            tx,
            backing,
            // Reports, not state: the counters they bumped are saved (see `SavedOutputs`).
            events: _,
            counters,
        } = self;
        SavedOutputs {
            tx: tx
                .iter()
                .map(|t| match t {
                    Transmit::ToHost(p) => SavedTransmit {
                        to: TO_HOST,
                        packet: Some(save_packet(p)),
                    },
                    Transmit::ToGuest(p) => SavedTransmit {
                        to: TO_GUEST,
                        packet: Some(save_packet(p)),
                    },
                    Transmit::CloseGuest => SavedTransmit {
                        to: CLOSE_GUEST,
                        packet: None,
                    },
                })
                .collect(),
            backing: backing
                .iter()
                .map(|(slot, b)| SavedBacking {
                    slot: slot.raw(),
                    backing: index_of(&BACKINGS, &Some(*b)),
                })
                .collect(),
            counters: Some(save_counters(counters)),
        }
    }

    /// The outputs from their saved state, checked (`version`: the protocol version in use;
    /// `guest_closed`: the guest channel is closed, which a queued close must say, and
    /// nothing follows a close).
    pub(crate) fn restore(
        saved: &SavedOutputs,
        bus: String,
        version: ProtocolVersion,
        guest_closed: bool,
    ) -> Result<Self, RestoreError> {
        let SavedOutputs {
            tx,
            backing,
            counters,
        } = saved;
        if tx.len() > MAX_SAVED_OUTPUTS || backing.len() > MAX_SAVED_OUTPUTS {
            return Err(RestoreError::OverLimit {
                field: "outputs".into(),
                count: tx.len().max(backing.len()),
                limit: MAX_SAVED_OUTPUTS,
            });
        }
        let mut out = Self::new(bus);
        for (i, t) in tx.iter().enumerate() {
            let field = format!("outputs.tx[{i}]");
            out.tx.push_back(match t.to {
                TO_HOST => Transmit::ToHost(restore_packet(
                    t.packet.as_ref(),
                    &field,
                    Sender::Guest,
                    version,
                )?),
                TO_GUEST => Transmit::ToGuest(restore_packet(
                    t.packet.as_ref(),
                    &field,
                    Sender::Host,
                    version,
                )?),
                CLOSE_GUEST if guest_closed && i + 1 == tx.len() => Transmit::CloseGuest,
                CLOSE_GUEST => {
                    return Err(RestoreError::IllegalState {
                        field,
                        why: "a close of the guest channel is the last thing the relay sends, once closed",
                    });
                }
                other => {
                    return Err(RestoreError::BadValue {
                        field: format!("{field}.to"),
                        value: other.into(),
                    });
                }
            });
        }
        for (i, b) in backing.iter().enumerate() {
            let field = format!("outputs.backing[{i}]");
            let slot = crate::save::slot(format!("{field}.slot"), b.slot)?;
            let backing = required(format!("{field}.backing"), b.backing, &BACKINGS)?;
            out.backing.push_back((slot, backing));
        }
        out.counters = counters.as_ref().map(restore_counters).unwrap_or_default();
        Ok(out)
    }
}

fn save_counters(counters: &Counters) -> SavedCounters {
    let Counters {
        relayed_to_host,
        relayed_to_guest,
        held,
        released,
        coalesced,
        superseded,
        answered_locally,
        late_completions,
        malformed_host,
        malformed_guest,
        timed_out,
        ejects_answered_locally,
        ejects_answered_at_deadline,
        stale_listings,
        over_limit_relations,
        progress_stalls,
        accesses_refused,
        accesses_abandoned,
    } = counters;
    SavedCounters {
        relayed_to_host: *relayed_to_host,
        relayed_to_guest: *relayed_to_guest,
        held: *held,
        released: *released,
        coalesced: *coalesced,
        superseded: *superseded,
        answered_locally: *answered_locally,
        late_completions: *late_completions,
        malformed_host: *malformed_host,
        malformed_guest: *malformed_guest,
        timed_out: *timed_out,
        ejects_answered_locally: *ejects_answered_locally,
        ejects_answered_at_deadline: *ejects_answered_at_deadline,
        stale_listings: *stale_listings,
        over_limit_relations: *over_limit_relations,
        progress_stalls: *progress_stalls,
        accesses_refused: *accesses_refused,
        accesses_abandoned: *accesses_abandoned,
    }
}

fn restore_counters(saved: &SavedCounters) -> Counters {
    let SavedCounters {
        relayed_to_host,
        relayed_to_guest,
        held,
        released,
        coalesced,
        superseded,
        answered_locally,
        late_completions,
        malformed_host,
        malformed_guest,
        timed_out,
        ejects_answered_locally,
        ejects_answered_at_deadline,
        stale_listings,
        over_limit_relations,
        progress_stalls,
        accesses_refused,
        accesses_abandoned,
    } = saved;
    Counters {
        relayed_to_host: *relayed_to_host,
        relayed_to_guest: *relayed_to_guest,
        held: *held,
        released: *released,
        coalesced: *coalesced,
        superseded: *superseded,
        answered_locally: *answered_locally,
        late_completions: *late_completions,
        malformed_host: *malformed_host,
        malformed_guest: *malformed_guest,
        timed_out: *timed_out,
        ejects_answered_locally: *ejects_answered_locally,
        ejects_answered_at_deadline: *ejects_answered_at_deadline,
        stale_listings: *stale_listings,
        over_limit_relations: *over_limit_relations,
        progress_stalls: *progress_stalls,
        accesses_refused: *accesses_refused,
        accesses_abandoned: *accesses_abandoned,
    }
}
