//! Packets from the host: relations, ejects, completions of forwarded requests, and the
//! rarer notifications; and what losing the host means for the bus.

use super::changes::HostRelations;
use super::requests::Unmatched;
use super::{BusRelay, HostLink};
use crate::events::{PacketFault, RelayEvent, Side};
use crate::function::{Backing, EjectAnswer, Function, GuestState, Listing, Omitted, Stage};
use crate::local::local_completion;
use vmbus_channel::{Packet, PacketFlags, PacketKind};
use vpci_protocol::wire::{EjectionCompleteBody, FunctionDescription2};
use vpci_protocol::{
    Completion, Fixed, Message, ProtocolVersion, Sender, Status, WinSlot, decode,
    decode_completion, encode,
};
use zerocopy::little_endian::U32;

/// A status-only success completion for the host.
fn success(transaction_id: u64) -> Packet {
    Packet::completion(transaction_id, Status::SUCCESS.0.to_le_bytes().to_vec())
}

impl BusRelay {
    /// A packet from the host ([`BusRelay::handle_host`]).
    pub(super) fn host_packet(&mut self, packet: Packet) {
        if matches!(self.host, HostLink::Lost { .. }) {
            // The host is gone: nothing it sends can matter any more.
            return;
        }
        match packet.kind {
            PacketKind::Completion => self.host_completion(packet),
            PacketKind::InBand => match decode(&packet.payload, Sender::Host, self.version) {
                Ok(message) => self.host_message(packet, message),
                Err(e) => self.host_fault(e.into()),
            },
            other => self.host_fault(PacketFault::PacketKind(other.to_raw())),
        }
    }

    fn host_message(&mut self, packet: Packet, message: Message) {
        match message {
            Message::BusRelations(m) => {
                let descs = m.functions.iter().map(FunctionDescription2::from).collect();
                self.host_relations(packet, descs, false);
            }
            Message::BusRelations2(m) => self.host_relations(packet, m.functions, true),
            Message::Eject(m) => self.host_eject(m.body.wslot),
            other => {
                // INVALIDATE_BLOCK and the rarely used host notifications: pass them on for
                // functions the guest holds, drop them otherwise.
                let visible = other
                    .wslot()
                    .and_then(|s| self.functions.get(s))
                    .is_some_and(Function::guest_visible);
                if visible {
                    self.forward_host_packet(packet);
                } else if packet.completion_requested() {
                    self.out.own_to_host(success(packet.transaction_id));
                }
            }
        }
    }

    fn forward_host_packet(&mut self, mut packet: Packet) {
        if packet.completion_requested() {
            match self.requests.forward_host_request(packet.transaction_id) {
                Some(id) => packet.transaction_id = id,
                None => {
                    // A guest that never completes cannot make the table grow: the relay
                    // answers the host itself and the guest gets the notification without
                    // the request.
                    let limit = self.config.limits.max_outstanding_requests;
                    self.count_fault(Side::Host, PacketFault::TooManyRequests(limit));
                    self.out.own_to_host(success(packet.transaction_id));
                    packet.flags =
                        PacketFlags(packet.flags.0 & !PacketFlags::COMPLETION_REQUESTED.0);
                }
            }
        }
        self.out.relay_to_guest(packet);
    }

    fn host_relations(&mut self, packet: Packet, descs: Vec<FunctionDescription2>, v2: bool) {
        let mut seen = std::collections::BTreeSet::new();
        for d in &descs {
            if !seen.insert(d.wslot.raw()) {
                return self.host_fault(PacketFault::DuplicateSlot(d.wslot));
            }
        }
        if packet.completion_requested() {
            // vPCI relations need no completion; answer one if asked so nothing waits.
            self.out.own_to_host(success(packet.transaction_id));
        }
        let listed_count = descs.len();
        let descs = self.within_limit(descs);
        let listed = |slot: WinSlot| descs.iter().any(|d| d.wslot == slot);
        // Slots the host no longer lists. (Checked before collecting: usually none.)
        if self.functions.values().any(|f| !listed(f.slot)) {
            for slot in self.functions.slots() {
                if !listed(slot) {
                    self.host_omits(slot);
                }
            }
        }
        // Functions listed: new ones, new identities in known slots, and repeats.
        for d in &descs {
            self.host_lists(*d);
        }
        let relations = HostRelations {
            v2,
            raw: packet.payload,
            exact: descs.len() == listed_count,
            functions: descs,
        };
        if self.changes.host_relations.replace(relations).is_some() {
            self.out.emit(RelayEvent::RelationsSuperseded);
        }
    }

    /// The functions of a relations message the relay takes on: all of them, unless they
    /// exceed [`Limits::max_functions`](crate::Limits). Then the functions the relay already
    /// knows come first, then new ones in the host's order, up to the limit; the rest are
    /// left out and counted (guarantee 9: a message the protocol allows never costs a bus).
    fn within_limit(&mut self, descs: Vec<FunctionDescription2>) -> Vec<FunctionDescription2> {
        let limit = self.config.limits.max_functions;
        if descs.len() <= limit {
            return descs;
        }
        for d in &descs {
            // An EJECT of a slot left out is the host's right, not a mistake.
            self.functions.mark_listed(d.wslot);
        }
        let listed = descs.len();
        let (known, new): (Vec<_>, Vec<_>) = descs
            .into_iter()
            .partition(|d| self.functions.get(d.wslot).is_some());
        let mut kept: Vec<FunctionDescription2> =
            known.into_iter().chain(new).take(limit).collect();
        kept.sort_by_key(|d| d.wslot.raw());
        self.out.emit(RelayEvent::FunctionsOverLimit {
            listed,
            kept: kept.len(),
        });
        kept
    }

    /// A relations message leaves `slot` out.
    fn host_omits(&mut self, slot: WinSlot) {
        match self.functions.get_mut(slot).map(Function::omitted) {
            Some(Omitted::Forget) => {
                self.functions.remove(slot);
            }
            // The guest still holds it: the relay ejects it through the same serialization
            // as a host eject. The host waits for no answer.
            Some(Omitted::Eject) => self.begin_eject(slot),
            Some(Omitted::Keep) | None => {}
        }
    }

    /// The host lists `d` in its relations.
    fn host_lists(&mut self, d: FunctionDescription2) {
        let allowed = self.config.allows(&d);
        let slot = d.wslot;
        self.functions.mark_listed(slot);
        let Some(f) = self.functions.get_mut(slot) else {
            self.functions.insert(Function::new(d, allowed));
            return;
        };
        match f.relisted(d, allowed) {
            Listing::Stale => self.out.emit(RelayEvent::StaleListing { slot }),
            // A device replaced without an eject: the old function leaves like a dropped
            // one, the new one waits for it.
            Listing::Displaced => self.begin_eject(slot),
            Listing::Same | Listing::Replaced | Listing::Successor => {}
        }
    }

    /// An EJECT names the function the host listed last in the slot (the host's own view of
    /// it). An EJECT of a slot in which no new identity was listed since the previous EJECT
    /// is a repeat of that one, owed an answer of its own.
    fn host_eject(&mut self, slot: WinSlot) {
        let now = self.now;
        // A host that repeats without end cannot make the relay queue without end: past the
        // request limit, a repeat is answered at once.
        let cap = u32::try_from(self.config.limits.max_outstanding_requests).unwrap_or(u32::MAX);
        let coalesce = self.safeguards.coalesce;
        let Some(f) = self.functions.get_mut(slot) else {
            // Nothing the guest holds: answer so the host does not wait 60 seconds. A slot
            // the host never listed is its mistake; one it listed before is a late or repeated
            // eject, within its rights.
            if !self.functions.ever_listed(slot) {
                self.count_fault(Side::Host, PacketFault::UnknownSlot(slot));
            }
            return self.answer_host_eject(slot);
        };
        match f.host_ejected(now, cap, coalesce) {
            EjectAnswer::Now => self.answer_host_eject(slot),
            EjectAnswer::Coalesced => {
                self.complete_host_eject(slot);
                self.out.emit(RelayEvent::Coalesced { slot });
            }
            EjectAnswer::Owed => {}
            EjectAnswer::OwedAndEject => self.begin_eject(slot),
        }
    }

    /// Answers every EJECT the host is owed for a function whose first EJECT has waited
    /// `max_hold`: the host's budget is the host's (Hyper-V waits 60 s, then removes the
    /// device by force). The function stays shielded, and the guest still gets its EJECT
    /// only at a safe point.
    pub(super) fn answer_overdue_host_ejects(&mut self) -> bool {
        let (now, max_hold) = (self.now, self.config.max_hold);
        // Every step of the progress loop asks: answer without allocating when nothing is due.
        let due = |f: &crate::Function| {
            f.host_eject_since()
                .is_some_and(|t| now >= t.saturating_add(max_hold))
        };
        if !self.functions.values().any(due) {
            return false;
        }
        let mut any = false;
        for slot in self.functions.slots() {
            let owed = self
                .functions
                .get_mut(slot)
                .map_or(0, |f| f.host_deadline_passed(now, max_hold));
            for _ in 0..owed {
                self.complete_host_eject(slot);
                self.out.emit(RelayEvent::EjectAnsweredAtDeadline { slot });
            }
            any |= owed > 0;
        }
        any
    }

    /// The guest is gone for good: answers every host EJECT still owed now, since no guest
    /// will ever answer it (guarantee 10). Each counts as answered locally.
    pub(super) fn answer_owed_host_ejects(&mut self) {
        let now = self.now;
        for slot in self.functions.slots() {
            // Every EJECT owed is due at once: a deadline of no time at all.
            let owed = self.functions.get_mut(slot).map_or(0, |f| {
                f.host_deadline_passed(now, std::time::Duration::ZERO)
            });
            for _ in 0..owed {
                self.answer_host_eject(slot);
            }
        }
    }

    /// Answers a host EJECT for a function the guest does not hold.
    fn answer_host_eject(&mut self, slot: WinSlot) {
        self.complete_host_eject(slot);
        self.out.emit(RelayEvent::EjectAnsweredLocally { slot });
    }

    /// Starts the relay's eject of a function the guest holds: queue it for delivery, and
    /// shield its BARs and config space from now on (the host may tear the device down).
    pub(super) fn begin_eject(&mut self, slot: WinSlot) {
        let (now, shield) = (self.now, self.safeguards.removal_shield);
        let Some((queue, shielded)) = self
            .functions
            .get_mut(slot)
            .map(|f| f.eject_begun(now, shield))
        else {
            return;
        };
        if queue {
            self.changes.queue_eject(slot);
        }
        if shielded {
            self.out.set_backing(slot, Backing::Shield);
        }
    }

    /// Sends the host an EJECTION_COMPLETE of the relay's own.
    pub(super) fn complete_host_eject(&mut self, slot: WinSlot) {
        if self.host != HostLink::Up {
            return;
        }
        let body = EjectionCompleteBody {
            wslot: slot,
            status: U32::ZERO,
        };
        let payload = encode(&Message::EjectionComplete(Fixed::new(body)));
        self.out.own_to_host(Packet::in_band(0, payload));
    }

    fn host_completion(&mut self, packet: Packet) {
        let id = packet.transaction_id;
        let fwd = match self.requests.complete(id) {
            Ok(fwd) => fwd,
            Err(Unmatched::Late(request)) => {
                // The guest already has its answer; whatever the host says now is moot.
                return self.out.emit(RelayEvent::LateCompletion { request });
            }
            Err(Unmatched::Stale) => {
                // Finished before: a repeat, or later than the relay remembers. Nobody waits.
                return self.count_fault(Side::Host, PacketFault::StaleTransaction(id));
            }
            Err(Unmatched::Unknown) => return self.host_fault(PacketFault::UnknownTransaction(id)),
        };
        if let Some(f) = fwd.slot.and_then(|s| self.functions.get_mut(s)) {
            f.request_answered();
        }
        let request_type = fwd.request.message_type();
        let completion = match decode_completion(&packet.payload, request_type, self.version) {
            Ok(c) => c,
            Err(e) => {
                // The guest still gets an answer: a host that breaks the protocol loses its
                // bus, and the relay answers the request itself.
                let local = local_completion(&fwd.request, fwd.slot.and_then(|s| self.function(s)));
                self.apply_completion(&fwd.request, &local, true);
                self.answer_guest(fwd.guest_txid, fwd.slot, &local);
                return self.host_fault(e.into());
            }
        };
        self.apply_completion(&fwd.request, &completion, true);
        let departed = fwd.slot.is_some_and(|s| self.departed(s));
        let is_interrupt = matches!(
            fwd.request,
            Message::CreateInterruptMessage(_)
                | Message::CreateInterruptMessage2(_)
                | Message::CreateInterruptMessage3(_)
        );
        if departed
            && is_interrupt
            && !completion.status.is_success()
            && self.safeguards.local_answers
        {
            // The host refused an interrupt for a function it is removing: a failure here is
            // Linux 6.2's NULL chip_data (race C2), so the guest gets a plausible success.
            let local = local_completion(&fwd.request, fwd.slot.and_then(|s| self.function(s)));
            self.answer_guest(fwd.guest_txid, fwd.slot, &local);
            return;
        }
        self.out
            .relay_to_guest(Packet::completion(fwd.guest_txid, packet.payload));
    }

    /// Records what a completed request means for the bus and its functions. `was_pending`:
    /// the request had been admitted to the request table (and so counted as pending).
    pub(super) fn apply_completion(
        &mut self,
        request: &Message,
        completion: &Completion,
        was_pending: bool,
    ) {
        // The guest acts on what it is answered: that starts its next step, so the quiet
        // window runs from here.
        self.guest.touch(self.now);
        let ok = completion.status.is_success();
        match request {
            Message::QueryProtocolVersion(m) if ok => {
                self.version = ProtocolVersion(m.body.protocol_version.get());
            }
            Message::BusD0Entry(_) => {
                self.guest
                    .set_d0(if ok { Stage::Done } else { Stage::NotStarted })
            }
            Message::BusD0Exit(_) if ok => self.guest.d0_exit(),
            _ => {}
        }
        if let Some(f) = request.wslot().and_then(|s| self.functions.get_mut(s)) {
            f.completed(request, completion, was_pending, self.now);
        }
    }

    pub(super) fn host_fault(&mut self, fault: PacketFault) {
        self.count_fault(Side::Host, fault);
        // Guarantee 9: a host that breaks the protocol loses its bus, not the VM.
        self.lose_host(false);
    }

    pub(super) fn lose_host(&mut self, rescinded: bool) {
        if matches!(self.host, HostLink::Lost { .. }) {
            return;
        }
        self.host = HostLink::Lost {
            since: self.now,
            rescinded,
        };
        self.out.emit(RelayEvent::HostLost { rescinded });
        // Nobody will answer what is outstanding: answer it now. (Config accesses in flight
        // are the caller's to finish: the guest still sits in each, so each holds the bus
        // until it is done or, its function departed with the host, given up after
        // `departed_request_timeout`.)
        for id in self.requests.live_ids() {
            self.answer_forwarded_locally(id);
        }
        self.changes.host_relations = None;
        for slot in self.functions.slots() {
            let Some(f) = self.functions.get_mut(slot) else {
                continue;
            };
            let held = f.host_lost();
            if !held {
                self.functions.remove(slot);
            } else if f.guest == GuestState::Announced {
                self.begin_eject(slot);
            }
        }
    }

    pub(super) fn count_fault(&mut self, side: Side, fault: PacketFault) {
        self.out.emit(RelayEvent::Malformed { side, fault });
    }
}
