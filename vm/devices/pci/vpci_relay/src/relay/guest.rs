//! Packets from the guest: requests (forwarded, or answered by the relay), completions of
//! host requests, and EJECTION_COMPLETE.

use super::requests::{Forwarded, Full};
use super::{BusRelay, HostLink};
use crate::events::{PacketFault, RelayEvent, Side};
use crate::function::{Backing, GuestState, LetGo, RequestKind, Stage};
use crate::local::local_completion;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::{Completion, Message, Sender, Status, WinSlot, decode, gets_completion};

impl BusRelay {
    /// A packet from the guest ([`BusRelay::handle_guest`]).
    pub(super) fn guest_packet(&mut self, packet: Packet) {
        if self.guest_closed {
            return;
        }
        match packet.kind {
            PacketKind::Completion => self.guest_completion(packet),
            PacketKind::InBand => match decode(&packet.payload, Sender::Guest, self.version) {
                Ok(message) => self.guest_message(packet, message),
                Err(e) => self.guest_fault(&packet, e.into()),
            },
            other => self.guest_fault(&packet, PacketFault::PacketKind(other.to_raw())),
        }
    }

    fn guest_message(&mut self, packet: Packet, message: Message) {
        let now = self.now;
        self.guest.touch(now);
        let slot = message.wslot();
        if let Some(f) = slot.and_then(|s| self.functions.get_mut(s)) {
            f.touched(now);
        }
        match &message {
            Message::EjectionComplete(m) => {
                return self.guest_ejection_complete(packet, m.body.wslot);
            }
            Message::QueryBusRelations(_) => self.guest.query_relations(),
            _ => {}
        }
        let local = self.host != HostLink::Up
            || slot.is_some_and(|s| self.safeguards.local_answers && self.departed(s));
        if local {
            if matches!(message, Message::QueryBusRelations(_)) {
                // No host to answer the survey: the relay answers it with what it has.
                self.changes.relations_dirty = true;
                return;
            }
            return self.answer_locally(&packet, &message);
        }
        self.forward_guest_request(packet, message);
    }

    /// Forwards a request to the host. A request that asks for a completion is admitted to
    /// the request table first, and only an admitted request changes the function's state.
    fn forward_guest_request(&mut self, mut packet: Packet, message: Message) {
        let tracked = packet.completion_requested() && gets_completion(message.message_type());
        if tracked {
            let kind = RequestKind::of(&message);
            let d0 = matches!(message, Message::BusD0Entry(_));
            let slot = message.wslot();
            let fwd = Forwarded {
                guest_txid: packet.transaction_id,
                request: message,
                slot,
                sent_at: self.now,
            };
            match self.requests.admit(fwd) {
                Ok(id) => packet.transaction_id = id,
                Err(Full(limit)) => {
                    return self.guest_fault(&packet, PacketFault::TooManyRequests(limit));
                }
            }
            if d0 {
                self.guest.set_d0(Stage::Pending);
            }
            if let Some(f) = slot.and_then(|s| self.functions.get_mut(s)) {
                f.request_admitted(kind);
            }
        }
        self.out.relay_to_host(packet);
    }

    /// Answers a request the relay does not forward (guarantee 4).
    fn answer_locally(&mut self, packet: &Packet, message: &Message) {
        let slot = message.wslot();
        let local = local_completion(message, slot.and_then(|s| self.function(s)));
        self.apply_completion(message, &local, false);
        if packet.completion_requested() {
            self.answer_guest(packet.transaction_id, slot, &local);
        } else {
            self.out.emit(RelayEvent::AnsweredLocally {
                slot,
                request: message.message_type(),
            });
        }
    }

    /// Sends the guest the relay's own completion of one of its requests.
    pub(super) fn answer_guest(
        &mut self,
        guest_txid: u64,
        slot: Option<WinSlot>,
        completion: &Completion,
    ) {
        self.out.emit(RelayEvent::AnsweredLocally {
            slot,
            request: completion.request,
        });
        self.out
            .own_to_guest(Packet::completion(guest_txid, completion.encode()));
    }

    /// Answers a forwarded request the host has not answered (it is gone, or slow for a
    /// departed function); the host's completion, if it comes, is recognised as late.
    pub(super) fn answer_forwarded_locally(&mut self, id: u64) {
        let Some(fwd) = self.requests.answer_locally(id) else {
            return;
        };
        if let Some(f) = fwd.slot.and_then(|s| self.functions.get_mut(s)) {
            f.request_answered();
        }
        let local = local_completion(&fwd.request, fwd.slot.and_then(|s| self.function(s)));
        self.apply_completion(&fwd.request, &local, true);
        self.answer_guest(fwd.guest_txid, fwd.slot, &local);
    }

    /// A forwarded packet the host's channel refused ([`BusRelay::handle_host_send_refused`]).
    pub(super) fn host_send_refused(&mut self, packet: &Packet) {
        if packet.kind != PacketKind::InBand || !packet.completion_requested() {
            return;
        }
        let Some(fwd) = self.requests.refused(packet.transaction_id) else {
            return;
        };
        if let Some(f) = fwd.slot.and_then(|s| self.functions.get_mut(s)) {
            // The host never saw it: nothing of it is pending any more.
            f.request_refused(RequestKind::of(&fwd.request));
        }
        if matches!(fwd.request, Message::BusD0Entry(_)) {
            self.guest.set_d0(Stage::NotStarted);
        }
        self.count_fault(
            Side::Guest,
            PacketFault::Refused(fwd.request.message_type()),
        );
        self.out.own_to_guest(Packet::completion(
            fwd.guest_txid,
            Status::BAD_DATA.0.to_le_bytes().to_vec(),
        ));
    }

    fn guest_ejection_complete(&mut self, packet: Packet, slot: WinSlot) {
        let ejecting = self
            .functions
            .get(slot)
            .is_some_and(|f| f.guest == GuestState::Ejecting);
        // (Only a function the guest was told to eject leaves the table: a stray completion
        // from the guest changes nothing.)
        let Some(f) = ejecting.then(|| self.functions.remove(slot)).flatten() else {
            return self.guest_fault(&packet, PacketFault::UnknownSlot(slot));
        };
        // The host's EJECT (if it sent one, and the relay has not answered it yet) is
        // answered by the guest's own completion, and each repeat of it by one of the
        // relay's. The slot keeps the host's newest function, or the memory of an ejected one
        // (so that a stale listing of it stays stale).
        let config = &self.config;
        let LetGo {
            owed,
            next,
            announce,
        } = f.let_go(|d| config.allows(d));
        if let Some(next) = next {
            self.functions.insert(next);
        }
        if announce {
            self.changes.relations_dirty = true;
        }
        self.out.set_backing(slot, Backing::Released);
        if owed > 0 && self.host == HostLink::Up {
            self.out.relay_to_host(packet);
            for _ in 1..owed {
                self.complete_host_eject(slot);
            }
        }
        if self
            .changes
            .outstanding
            .as_ref()
            .is_some_and(|o| o.kind() == crate::ChangeKind::Eject(slot))
        {
            self.finish_change();
        }
        // A stuck guest that lets go after all ends the alarm.
        if self
            .changes
            .overdue
            .as_ref()
            .is_some_and(|o| o.kind() == crate::ChangeKind::Eject(slot))
        {
            self.changes.overdue = None;
        }
    }

    fn guest_completion(&mut self, packet: Packet) {
        match self.requests.take_host_request(packet.transaction_id) {
            Some(host_id) if self.host == HostLink::Up => {
                self.out
                    .relay_to_host(Packet::completion(host_id, packet.payload));
            }
            Some(_) => {}
            None => {
                let id = packet.transaction_id;
                self.count_fault(Side::Guest, PacketFault::UnknownTransaction(id));
            }
        }
    }

    fn guest_fault(&mut self, packet: &Packet, fault: PacketFault) {
        self.count_fault(Side::Guest, fault);
        if packet.kind == PacketKind::InBand && packet.completion_requested() {
            // The guest waits for an answer to whatever it sent: give it a failure.
            self.out.own_to_guest(Packet::completion(
                packet.transaction_id,
                Status::BAD_DATA.0.to_le_bytes().to_vec(),
            ));
        }
    }
}
