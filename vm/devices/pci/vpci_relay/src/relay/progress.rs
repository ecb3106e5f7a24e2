//! Progress: after every input, deliver what the rules allow now (held ejects, relations,
//! the guest channel's close after a rescind), finish changes the guest has finished, and
//! answer requests the host has left too long for functions it removed.

use super::changes::Outstanding;
use super::{BusRelay, HostLink};
use crate::events::{ChangeKind, RelayEvent};
use crate::function::{Backing, Function, GuestState, HostState};
use vmbus_channel::Packet;
use vpci_protocol::wire::SlotBody;
use vpci_protocol::{BusRelations, Fixed, Message, ProtocolVersion, WinSlot, encode};

impl BusRelay {
    /// Delivers whatever the rules allow now, finishes changes the guest has finished, and
    /// closes the guest channel at a safe point after the host is gone.
    pub(super) fn progress(&mut self) {
        // Each step changes state or stops, and a bus holds at most 256 functions, so a
        // correct relay never reaches the bound; it keeps a logic error from becoming a hang.
        for _ in 0..self.config.limits.max_progress_steps {
            if !self.step() {
                return;
            }
        }
        self.out.emit(RelayEvent::ProgressStalled);
    }

    fn step(&mut self) -> bool {
        if self.guest_closed {
            return false;
        }
        self.update_installed();
        if self.answer_stale_requests()
            || self.abandon_stale_accesses()
            || self.answer_overdue_host_ejects()
        {
            return true;
        }
        if let Some(o) = &self.changes.outstanding {
            if self.change_finished(o) {
                self.finish_change();
                return true;
            }
            // A guest that has not finished its change in `max_hold` of its own time, while
            // it waits on nothing from the host, is stuck: move on.
            if !self.host_owes()
                && self.now >= self.guest.hold_ends(o.since(), self.config.max_hold)
            {
                self.change_timed_out();
                return true;
            }
        }
        let gated = self.changes.outstanding.is_some() && self.safeguards.one_change_at_a_time;
        // With a safeguard switched off (tests only), its event goes through at once, as a
        // plain pass-through would let it.
        if !self.safeguards.hold_eject_until_settled && self.try_deliver_eject(false) {
            return true;
        }
        if !self.safeguards.rescind_at_safe_point && self.try_close() {
            return true;
        }
        if self.try_deliver_eject(gated) || (!gated && self.try_deliver_relations()) {
            return true;
        }
        !gated && self.try_close()
    }

    /// The guest did not finish the outstanding change within `max_hold`: move on. (A host
    /// EJECT still owed has its own deadline, [`answer_overdue_host_ejects`](Self::answer_overdue_host_ejects),
    /// so a stuck guest never leaves the host waiting.)
    fn change_timed_out(&mut self) {
        if let Some(o) = self.changes.outstanding.take() {
            self.out.emit(RelayEvent::ChangeTimedOut(o.kind()));
            self.changes.overdue = Some(o);
        }
    }

    /// Answers requests for departed functions that the host has left unanswered for
    /// `departed_request_timeout` (a host that removed the device may never answer).
    fn answer_stale_requests(&mut self) -> bool {
        if !self.safeguards.local_answers || self.requests.idle() {
            return false;
        }
        let timeout = self.config.departed_request_timeout;
        let stale = self.requests.stale(self.now, timeout, |s| self.departed(s));
        for &id in &stale {
            self.answer_forwarded_locally(id);
        }
        !stale.is_empty()
    }

    /// Gives up on config accesses to departed functions that the device has left
    /// unanswered for `departed_request_timeout` since the departure, as for requests: they
    /// stop holding the bus. (Counted from the departure, not from the access: a read the
    /// device was slow on while the function was the host's still holds the bus that long
    /// after the host removes it.)
    fn abandon_stale_accesses(&mut self) -> bool {
        if self.accesses.idle() {
            return false;
        }
        let now = self.now;
        let departed: Vec<WinSlot> = self
            .accesses
            .slots()
            .filter(|&s| self.departed(s))
            .collect();
        self.accesses
            .note_departures(now, |s| departed.contains(&s));
        let timeout = self.config.departed_request_timeout;
        let stale = self.accesses.stale(now, timeout);
        for &id in &stale {
            if let Some(a) = self.accesses.finish(id) {
                self.out
                    .emit(RelayEvent::AccessAbandoned { slot: a.slot() });
            }
        }
        !stale.is_empty()
    }

    /// The guest waits on the host: a request forwarded to it, or a config access forwarded
    /// to its device, is not answered yet.
    fn host_owes(&self) -> bool {
        !self.requests.idle() || self.access_in_flight()
    }

    /// A config access forwarded to the device is not done: the guest's vCPU is in it.
    fn access_in_flight(&self) -> bool {
        self.safeguards.accesses_hold_the_bus && !self.accesses.idle()
    }

    fn update_installed(&mut self) {
        if !self.guest.may_install(self.now, self.config.settle) || self.host_owes() {
            return;
        }
        let assigned = self
            .functions
            .values()
            .filter(|f| f.guest == GuestState::Announced && f.needs_resources)
            .all(|f| f.resources == crate::Stage::Done && f.requirements == crate::Stage::Done);
        if assigned {
            self.guest.install();
            self.out.emit(RelayEvent::Installed);
        }
    }

    fn change_finished(&self, o: &Outstanding) -> bool {
        match o {
            Outstanding::Eject { .. } => false, // finished by the guest's EJECTION_COMPLETE
            Outstanding::Relations { added, initial, .. } => {
                let queried = added.iter().all(|s| {
                    self.functions.get(*s).is_none_or(|f| {
                        f.requirements == crate::Stage::Done || f.guest != GuestState::Announced
                    })
                });
                // The guest's relations work runs on after its last request completes;
                // quiet for the settle window is what the relay can see of it ending.
                queried && (!initial || self.guest.installed()) && self.bus_quiet()
            }
        }
    }

    /// Whether the bus has had no guest traffic (and relayed no answer) for the settle
    /// window, and the guest is not in the middle of a config access.
    fn bus_quiet(&self) -> bool {
        !self.access_in_flight() && self.guest.quiet(self.now, self.config.settle)
    }

    pub(super) fn finish_change(&mut self) {
        if let Some(o) = self.changes.outstanding.take() {
            self.out.emit(RelayEvent::ChangeFinished(o.kind()));
            // The guest finishes changes again: a relations change it left is no longer an
            // alarm (an overdue EJECT is, until its own EJECTION_COMPLETE).
            if matches!(self.changes.overdue, Some(Outstanding::Relations { .. })) {
                self.changes.overdue = None;
            }
        }
    }

    /// Delivers the first eject the rules allow (none while `gated`: another change is
    /// outstanding), and reports each newly held one.
    fn try_deliver_eject(&mut self, gated: bool) -> bool {
        if self.changes.ejects.is_empty() {
            return false;
        }
        let now = self.now;
        let settle = self.config.settle;
        let max_hold = self.config.max_hold;
        let hold = self.safeguards.hold_eject_until_settled;
        // The guest's last change (an eject's work runs on after EJECTION_COMPLETE) must have
        // gone quiet too.
        let bus_ready = (self.guest.installed() || !self.guest.surveyed()) && self.bus_quiet();
        // A hold that ran out lets an unsettled function's eject go only while the guest
        // waits on nothing from the host, and only after `max_hold` of the guest's own time
        // (since the hold began or the guest last spoke or was answered): a slow host (a
        // probe request unanswered for longer than `max_hold`, which its own budgets allow)
        // never opens C3's window. The host's EJECT has been answered at its deadline
        // meanwhile.
        let host_owes = self.host_owes();
        let functions = &self.functions;
        self.changes
            .ejects
            .retain(|s| functions.get(*s).is_some_and(Function::eject_pending));
        let mut chosen = None;
        let mut newly_held = Vec::new();
        for &slot in &self.changes.ejects {
            let Some(f) = self.functions.get(slot) else {
                continue;
            };
            let expired = !host_owes
                && f.eject_since
                    .is_some_and(|t| now >= self.guest.hold_ends(t, max_hold));
            if !gated && (!hold || expired || (bus_ready && f.settled(now, settle))) {
                chosen = Some(slot);
                break;
            }
            if !f.hold_reported {
                newly_held.push(slot);
            }
        }
        for slot in newly_held {
            if self
                .functions
                .get_mut(slot)
                .is_some_and(Function::hold_noted)
            {
                self.out.emit(RelayEvent::EjectHeld { slot });
            }
        }
        let Some(slot) = chosen else {
            return false;
        };
        let Some(f) = self.functions.get_mut(slot) else {
            return false;
        };
        let released = f.eject_delivered();
        self.changes.ejects.retain(|s| *s != slot);
        let payload = encode(&Message::Eject(Fixed::new(SlotBody { wslot: slot })));
        self.out.relay_to_guest(Packet::in_band(0, payload));
        self.changes.outstanding = Some(Outstanding::Eject { slot, since: now });
        self.out.emit(RelayEvent::ChangeDelivered {
            kind: ChangeKind::Eject(slot),
            released,
        });
        true
    }

    /// The functions the guest should see, in slot order.
    /// A function the guest was told to eject is not in it: the guest lets go of it, and a
    /// relations message that still listed it (one delivered after a stuck guest's change
    /// ran out of time) would have the guest add it again once its eject work finishes.
    fn guest_view(&self) -> impl Iterator<Item = &Function> + Clone {
        let coalesce = self.safeguards.coalesce;
        self.functions.values().filter(move |f| {
            f.guest == GuestState::Announced
                || (!f.guest_visible()
                    && f.allowed
                    && (f.host == HostState::Listed
                        || (!coalesce && f.host == HostState::Ejecting)))
        })
    }

    fn try_deliver_relations(&mut self) -> bool {
        let survey = self.guest.survey_requested();
        if !survey && !self.changes.relations_wanted() {
            return false;
        }
        let host_up = self.host == HostLink::Up;
        if host_up && !self.changes.relations_wanted() {
            return false; // the survey waits for the host's answer
        }
        // After the first survey, further relations wait for the guest's probe path (C1, C4),
        // unless the guest asked again.
        let may = self.guest.surveyed()
            && (survey
                || (self.guest.installed() && self.bus_quiet())
                || !self.safeguards.one_change_at_a_time);
        let added: Vec<WinSlot> = self
            .guest_view()
            .filter(|f| !f.guest_visible())
            .map(|f| f.slot)
            .collect();
        if added.is_empty() && !survey {
            // Nothing new for the guest (a repeat of what it has, or only removals that ejects
            // carry): absorb it. Pass it on byte for byte when idle and identical, as the
            // host meant it.
            let identical = self
                .changes
                .host_relations
                .as_ref()
                .is_some_and(|h| h.says(self.version, self.guest_view().map(|f| &f.desc)));
            let idle = self.changes.outstanding.is_none();
            self.changes.relations_dirty = false;
            match self.changes.host_relations.take() {
                Some(h) if identical && idle && may => {
                    self.out.relay_to_guest(Packet::in_band(0, h.raw));
                }
                Some(_) => self.out.emit(RelayEvent::RelationsSuperseded),
                None => {}
            }
            return false;
        }
        if !may {
            if !self.changes.relations_held_reported {
                self.changes.relations_held_reported = true;
                self.out.emit(RelayEvent::RelationsHeld);
            }
            return false;
        }
        let view: Vec<&Function> = self.guest_view().collect();
        let payload = self.relations_payload(&view);
        let initial = !self.guest.installed();
        let now = self.now;
        for &slot in &added {
            if let Some(f) = self.functions.get_mut(slot) {
                f.announced(initial);
                self.out.set_backing(slot, Backing::Device);
            }
        }
        for &slot in &added {
            if self
                .functions
                .get(slot)
                .is_some_and(|f| f.host == HostState::Ejecting)
            {
                self.begin_eject(slot);
            }
        }
        let released = std::mem::take(&mut self.changes.relations_held_reported);
        self.guest.relations_delivered();
        self.changes.relations_dirty = false;
        self.changes.host_relations = None;
        self.out.relay_to_guest(Packet::in_band(0, payload));
        self.changes.outstanding = Some(Outstanding::Relations {
            since: now,
            added,
            initial,
        });
        self.out.emit(RelayEvent::ChangeDelivered {
            kind: ChangeKind::Relations,
            released,
        });
        true
    }

    /// The relations message for `view`: the host's own bytes when they say exactly that,
    /// else a new message in the host's dialect.
    fn relations_payload(&self, view: &[&Function]) -> Vec<u8> {
        match &self.changes.host_relations {
            Some(h) if h.says(self.version, view.iter().map(|f| &f.desc)) => h.raw.clone(),
            host => {
                // The host's dialect, as far as the version in use allows it.
                let v2 =
                    self.version >= ProtocolVersion::V1_3 && host.as_ref().is_none_or(|h| h.v2);
                let message = if v2 {
                    Message::BusRelations2(BusRelations {
                        functions: view.iter().map(|f| f.desc).collect(),
                        trailing: Vec::new(),
                    })
                } else {
                    Message::BusRelations(BusRelations {
                        functions: view.iter().map(|f| f.desc.narrow()).collect(),
                        trailing: Vec::new(),
                    })
                };
                encode(&message)
            }
        }
    }

    fn try_close(&mut self) -> bool {
        let HostLink::Lost { since, .. } = self.host else {
            return false;
        };
        let safe = !self.safeguards.rescind_at_safe_point
            || self.now >= since.saturating_add(self.config.max_hold)
            || (self.changes.outstanding.is_none()
                && !self.guest.survey_requested()
                && self.functions.values().all(|f| !f.guest_visible())
                // A guest that has not spoken yet may be just starting its probe: wait for
                // its probe path too (or for max_hold, if it never speaks).
                && self.guest.installed());
        if !safe {
            return false;
        }
        self.guest_closed = true;
        self.out.close_guest();
        true
    }
}
