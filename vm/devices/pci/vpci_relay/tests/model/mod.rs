//! The model behind `model_check.rs`: an abstract Hyper-V host and an abstract unfixed
//! (Linux 6.2) guest around one real, unchanged [`BusRelay`]. See that file's documentation for
//! how the model is built and how to read a counterexample.
//!
//! - `wire.rs`: the packets both sides exchange with the relay;
//! - `host.rs`: the host (slots, identities, owed EJECTION_COMPLETEs, forwarded requests);
//! - `guest.rs`: the Linux 6.2 guest and the races it can die of;
//! - `work.rs`: the guest's ordered workqueue (relations and eject work);
//! - `reads.rs`: the guest's config accesses (reads and writes), which the device answers in
//!   an action of its own;
//! - `state.rs`: the state (the relay itself plus both sides) and the actions;
//! - `props.rs`: the properties;
//! - `scenarios.rs`: scripted scenarios, one per counterexample the checker found;
//! - `read_scenarios.rs`: the same for config accesses the device is slow on;
//! - `bounds.rs`: how far the host (and the guest) may go, and the named bounds;
//! - `teeth.rs`: each safeguard switched off, and the counterexample the checker finds;
//! - this file: one step of the model, and helpers for scripted scenarios.

#![allow(dead_code, unreachable_pub)]

mod bounds;
mod guest;
mod host;
mod props;
mod read_scenarios;
mod reads;
mod scenarios;
mod state;
mod teeth;
mod wire;
mod work;

pub use bounds::*;
pub use guest::*;
pub use host::*;
pub use props::*;
pub use reads::Reader;
pub use state::*;
pub use wire::{Acc, Ident, Req};
pub use work::Running;

use stateright::{Model, Property};
use std::time::Duration;
use vpci_relay::*;
use wire::{Input, feed, slot_dev};

/// The model: bounds and the relay's safeguards.
pub struct RelayModel {
    /// How far the host may go.
    pub bounds: Bounds,
    /// The relay's safeguards (all on, or one off for the teeth).
    pub safeguards: Safeguards,
}

/// One step in the making: the state being changed (the relay in it is the next one).
pub struct Step {
    /// The state.
    pub s: State,
    /// The identity of the guest function a request being fed is for (so the host knows which
    /// function it is asked about).
    pub origin: Option<Ident>,
    /// The relay's request limit.
    pub limit: usize,
    /// The bound on the guest's config accesses beyond each context's first read.
    pub accesses: u8,
}

impl Step {
    /// Feeds one input to the relay and delivers what it sends.
    pub fn input(&mut self, input: Input) -> Option<ConfigAction> {
        let now = self.s.now;
        let r = feed(&mut self.s.relay.relay, now, &input);
        self.drain();
        r
    }

    fn drain(&mut self) {
        while let Some((slot, b)) = self.s.relay.relay.poll_backing() {
            let s = slot_dev(slot);
            if (1..=2).contains(&s) {
                self.s.backing[usize::from(s - 1)] = Some(b.into());
            }
        }
        while let Some(e) = self.s.relay.relay.poll_event() {
            match e {
                RelayEvent::EjectHeld { .. } => self.s.seen.eject_held = true,
                RelayEvent::Coalesced { .. } => self.s.seen.coalesced = true,
                RelayEvent::AnsweredLocally { .. } => self.s.seen.answered_locally = true,
                RelayEvent::LateCompletion { .. } => self.s.seen.late_completion = true,
                RelayEvent::ChangeTimedOut(kind) => {
                    self.s.seen.change_timed_out = true;
                    if !self.s.guest.stuck {
                        self.s
                            .seen
                            .gave_up_on_live_guest
                            .get_or_insert(format!("{kind:?}"));
                    }
                }
                RelayEvent::Malformed {
                    side: Side::Host,
                    fault,
                } => {
                    self.s
                        .seen
                        .host_blamed
                        .get_or_insert(format!("counted malformed: {fault}"));
                }
                RelayEvent::HostLost { rescinded: false } => {
                    self.s
                        .seen
                        .host_blamed
                        .get_or_insert("bus dropped for a protocol violation".to_owned());
                }
                _ => {}
            }
        }
        while let Some(t) = self.s.relay.relay.poll_transmit() {
            match t {
                Transmit::ToHost(p) => self.host_receives(p),
                Transmit::ToGuest(p) => self.guest_receives(p),
                Transmit::CloseGuest => self.guest_closes(),
            }
        }
    }

    /// Adds to the step's trace.
    pub fn note(&mut self, what: String) {
        if !self.s.last.is_empty() {
            self.s.last.push_str("; ");
        }
        self.s.last.push_str(&what);
    }

    /// Ends the step: bookkeeping, the tables check, and the relay's new fingerprint.
    fn finish(mut self, bounds: &Bounds) -> State {
        self.s.guest.update_change();
        if self.s.host.late_answers >= bounds.late_answers {
            // It will answer none of them: forget them, so states merge.
            self.s.host.late.clear();
        }
        let relay = &self.s.relay.relay;
        let outstanding = relay.requests_outstanding();
        let live = self.s.guest.waiting.len();
        if outstanding > live {
            self.s.seen.overgrown.get_or_insert(format!(
                "{outstanding} requests outstanding, the guest waits for {live}"
            ));
        }
        let remembered = relay.remembered_local_answers();
        if remembered > bounds.remembered_answers {
            self.s.seen.overgrown.get_or_insert(format!(
                "{remembered} local answers remembered, the limit is {}",
                bounds.remembered_answers
            ));
        }
        let host_requests = relay.host_requests_outstanding();
        if host_requests > 0 {
            // The model's host sends the guest no requests.
            self.s.seen.overgrown.get_or_insert(format!(
                "{host_requests} host requests outstanding, none sent"
            ));
        }
        // Every forwarded access counts as in flight until it is reported done, once: the
        // relay holds exactly the one the guest sits in (if any), and lets it go early only
        // when its device is gone (the departed-access timeout, or the host's loss).
        let in_flight = relay.accesses_in_flight();
        let sits_in = usize::from(self.s.guest.read.is_some());
        let gone = self
            .s
            .guest
            .read
            .is_some_and(|r| !r.device_present(&self.s.host));
        if in_flight > sits_in || (in_flight < sits_in && !gone) {
            self.s.seen.access_count.get_or_insert(format!(
                "the relay counts {in_flight} accesses in flight, the guest sits in {sits_in}"
            ));
        }
        let functions = relay.functions().count();
        if functions > 2 {
            self.s
                .seen
                .overgrown
                .get_or_insert(format!("{functions} functions on a bus of 2 slots"));
        }
        self.s.relay.refresh();
        self.s.timeout = self.s.relay.relay.poll_timeout();
        self.s
    }
}

impl RelayModel {
    /// A model with these bounds and safeguards.
    pub fn new(bounds: Bounds, safeguards: Safeguards) -> Self {
        Self { bounds, safeguards }
    }

    /// The relay's `max_hold` in the model (its default).
    pub fn max_hold(&self) -> Duration {
        RelayConfig::default().max_hold
    }

    fn relay(&self) -> BusRelay {
        let mut config = RelayConfig::default();
        config.limits.max_outstanding_requests = self.bounds.request_limit;
        config.limits.max_remembered_answers = self.bounds.remembered_answers;
        BusRelay::with_safeguards(config, self.safeguards)
    }

    /// Takes one action, which must be enabled (for scripted scenarios), and prints it with
    /// what it made the relay deliver (shown by `--nocapture`).
    pub fn step(&self, s: &State, a: Action) -> State {
        let mut enabled = Vec::new();
        self.actions(s, &mut enabled);
        assert!(enabled.contains(&a), "{a:?} is not enabled in {s:?}");
        let next = self.next_state(s, a).expect("enabled action");
        println!("  {:>8?}  {a:?}  => {}", next.now, next.last);
        next
    }

    /// Lets the guest run until every context waits (the device answering its config reads
    /// at once).
    pub fn run_guest(&self, mut s: State) -> State {
        loop {
            if let Some(&g) = s.guest.runnable().first() {
                s = self.step(&s, Action::Guest(g));
            } else if s.guest.read.is_some() {
                s = self.step(&s, Action::DeviceAnswer);
            } else {
                return s;
            }
        }
    }

    /// Lets the guest run and time pass (while the host owes nothing) until the guest waits
    /// for the host or nothing more happens.
    pub fn run(&self, mut s: State) -> State {
        loop {
            let mut enabled = Vec::new();
            self.actions(&s, &mut enabled);
            let next = enabled.into_iter().find(|a| {
                matches!(
                    a,
                    Action::Guest(_) | Action::DeviceAnswer | Action::AdvanceTime
                )
            });
            match next {
                Some(a) => s = self.step(&s, a),
                None => return s,
            }
        }
    }

    /// The host ends the forwarded request `req` this way.
    pub fn complete(&self, s: &State, req: Req, outcome: Outcome) -> State {
        let txid = s
            .host
            .pending
            .iter()
            .find(|(_, (r, _))| *r == req)
            .map(|(&t, _)| t)
            .unwrap_or_else(|| panic!("{req:?} is not pending at the host: {s:?}"));
        self.step(s, Action::HostComplete { txid, outcome })
    }

    /// Lets the guest run, the host answer everything successfully and time pass, until
    /// nothing more happens by itself.
    pub fn settle(&self, mut s: State) -> State {
        loop {
            let mut enabled = Vec::new();
            self.actions(&s, &mut enabled);
            let next = enabled.into_iter().find(|a| match a {
                Action::Guest(_)
                | Action::DeviceAnswer
                | Action::AdvanceTime
                | Action::HostSlowAnswer { .. } => true,
                Action::HostComplete { outcome, .. } => *outcome == Outcome::Success,
                _ => false,
            });
            match next {
                Some(a) => s = self.step(&s, a),
                None => return s,
            }
        }
    }

    /// The state after the guest's probe path ran with the host answering everything.
    pub fn booted(&self) -> State {
        let s = self.settle(self.init_states().remove(0));
        let s = self.step(&s, Action::HostRelations);
        self.settle(s)
    }

    /// The relay as it is in `s`, for inspection in scripted tests.
    pub fn relay_of<'a>(&self, s: &'a State) -> &'a BusRelay {
        &s.relay.relay
    }
}

impl Model for RelayModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let relay = RelayCell::new(self.relay());
        let timeout = relay.relay.poll_timeout();
        let slot2 = if self.bounds.two_at_boot {
            HostSlot::AT_BOOT
        } else {
            HostSlot::EMPTY
        };
        vec![State {
            relay,
            now: Duration::ZERO,
            timeout,
            host: Host::new([HostSlot::AT_BOOT, slot2]),
            guest: Guest::new(),
            backing: [None, None],
            seen: Seen::default(),
            last: String::new(),
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.guest.failure.is_some() || s.guest.beyond {
            return; // the guest is dead (or past the bound); the path ends here
        }
        if s.seen.eject_overdue.is_some() {
            return; // the host gave up on an EJECT; the path ends here
        }
        let guest_steps = s.guest.runnable();
        let idle = guest_steps.is_empty();
        actions.extend(guest_steps.into_iter().map(Action::Guest));
        let h = &s.host;
        let b = &self.bounds;
        if !h.rescinded {
            let can_send = h.survey_seen && h.relations_sent < b.relations;
            if can_send {
                actions.push(Action::HostRelations);
            }
            for sl in 1..=2u8 {
                let slot = h.slot(sl);
                if can_send
                    && h.drops < b.drops
                    && matches!(
                        slot.state,
                        HostFn::Listed { announced: true } | HostFn::Ejecting
                    )
                {
                    actions.push(Action::HostDrop(sl));
                }
                let may_add = match slot.state {
                    HostFn::Absent | HostFn::Removed => true,
                    HostFn::Ejecting => b.relist,
                    // Replacing a listed function tears it down: the host says so at once.
                    HostFn::Listed { announced } => b.relist && announced && can_send,
                };
                if may_add && h.adds < b.adds {
                    actions.push(Action::HostAdd(sl));
                }
                let may_eject = if b.free_ejects {
                    slot.ever_listed
                } else {
                    slot.state == HostFn::Listed { announced: true }
                };
                if may_eject && h.ejects < b.ejects {
                    actions.push(Action::HostEject(sl));
                }
            }
            if b.rescinds > 0 {
                actions.push(Action::HostRescind);
            }
            if h.stale.is_some() && h.stales < b.stales {
                actions.push(Action::HostStaleRelations);
            }
            for (&txid, &(req, ident)) in &h.pending {
                actions.push(Action::HostComplete {
                    txid,
                    outcome: Outcome::Success,
                });
                if h.slows < b.slows && matches!(req, Req::D0Entry | Req::Requirements(_)) {
                    actions.push(Action::HostComplete {
                        txid,
                        outcome: Outcome::Slow,
                    });
                }
                let gone = match (req.slot(), ident) {
                    (Some(sl), Some(i)) => !h.mapped(sl, i),
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if gone {
                    if matches!(req, Req::Interrupt(_)) {
                        actions.push(Action::HostComplete {
                            txid,
                            outcome: Outcome::Fail,
                        });
                    }
                    if h.ignored < b.ignores {
                        actions.push(Action::HostComplete {
                            txid,
                            outcome: Outcome::Ignore,
                        });
                    }
                }
            }
            if h.late_answers < b.late_answers {
                actions.extend(h.late.keys().map(|&txid| Action::HostLate { txid }));
            }
            actions.extend(h.slow.keys().map(|&txid| Action::HostSlowAnswer { txid }));
        }
        // A config read in flight: the device answers it at any time (the service finishes
        // every forwarded access, after a rescind too), or takes its time.
        if let Some(r) = &s.guest.read {
            actions.push(Action::DeviceAnswer);
            if !r.slow && h.slow_reads < b.slow_reads && r.device_present(h) {
                actions.push(Action::DeviceSlow);
            }
        }
        // Time passes only while the guest waits and the host owes no prompt answer: guest
        // steps, host answers and config reads are quick next to the settle window. (A
        // request the host answers slowly, or ignores, and a read the device is slow on, do
        // not stop the clock.) With `guest_stalls`, the guest's eject work may also be slow
        // to finish.
        let stall = !idle && s.guest.may_stall() && s.guest.stalls < b.guest_stalls;
        let read_owed = s.guest.read.is_some_and(|r| r.owed_promptly(h));
        if (idle || stall)
            && (h.pending.is_empty() || h.rescinded)
            && !read_owed
            && s.next_time().is_some()
        {
            actions.push(Action::AdvanceTime);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let b = &self.bounds;
        let mut st = Step {
            s: last.clone(),
            origin: None,
            limit: b.request_limit,
            accesses: b.accesses,
        };
        st.s.last.clear();
        let can_send = last.host.survey_seen && last.host.relations_sent < b.relations;
        // A stale relations message in flight reaches the relay before any later packet of
        // the host, or never.
        let sends = match action {
            Action::HostAdd(_) => can_send,
            Action::HostComplete { outcome, .. } => {
                outcome != Outcome::Ignore && outcome != Outcome::Slow
            }
            Action::Guest(_)
            | Action::AdvanceTime
            | Action::HostStaleRelations
            | Action::DeviceAnswer
            | Action::DeviceSlow => false,
            _ => true,
        };
        if sends {
            st.s.host.stale = None;
        }
        match action {
            Action::Guest(g) => st.guest_step(g),
            Action::HostRelations => st.host_relations(),
            Action::HostDrop(sl) => {
                st.s.host.drops += 1;
                st.s.host.slot_mut(sl).state = HostFn::Removed;
                st.note(format!("host drops {sl}"));
                st.host_relations();
            }
            Action::HostAdd(sl) => {
                st.s.host.adds += 1;
                let slot = st.s.host.slot_mut(sl);
                slot.ident += 1;
                slot.state = HostFn::Listed { announced: false };
                let ident = slot.ident;
                if st.s.guest.children.contains_key(&sl) {
                    st.s.seen.relisted_while_held = true;
                }
                st.note(format!("host adds {sl}#{ident}"));
                if can_send {
                    st.host_relations();
                }
            }
            Action::HostEject(sl) => {
                st.s.host.ejects += 1;
                let now = st.s.now;
                let slot = st.s.host.slot_mut(sl);
                // An EJECT names the function the host listed last in the slot. If that is
                // one it listed since its previous EJECT of the slot (a new identity: listing
                // the same function again makes nothing new), it ejects that function, which
                // the host tears down at once, even while the previous EJECT is unanswered.
                // Otherwise it repeats the previous one. Each is owed its own answer.
                let relisted =
                    !slot.owed.is_empty() && slot.state == (HostFn::Listed { announced: true });
                slot.owed.push(now);
                if slot.state == (HostFn::Listed { announced: true }) {
                    slot.state = HostFn::Ejecting;
                }
                if relisted {
                    st.s.seen.eject_after_relist = true;
                }
                st.note(format!("host->EJECT({sl})"));
                st.input(Input::HostEject(sl));
            }
            Action::HostStaleRelations => {
                let list = st.s.host.stale.take()?;
                st.s.host.stales += 1;
                // It lists what the host had then, including a function it had added but not
                // yet announced: that one is announced now.
                for &(sl, i) in &list {
                    let slot = st.s.host.slot_mut(sl);
                    if slot.ident == i && matches!(slot.state, HostFn::Listed { .. }) {
                        slot.state = HostFn::Listed { announced: true };
                        slot.ever_listed = true;
                    }
                }
                st.s.seen.stale_relations = true;
                st.s.host.last_listed = list.iter().map(|&(s, _)| s).collect();
                st.note(format!("host->stale RELATIONS{list:?}"));
                st.input(Input::HostRelations(list));
            }
            Action::HostRescind => {
                let h = &mut st.s.host;
                h.rescinded = true;
                h.pending.clear();
                h.late.clear();
                h.slow.clear();
                h.stale = None;
                st.note("host rescinds".to_owned());
                st.input(Input::HostClosed);
            }
            Action::HostComplete { txid, outcome } => {
                let (req, _) = st.s.host.pending.remove(&txid)?;
                if outcome == Outcome::Slow {
                    let h = &mut st.s.host;
                    h.slows += 1;
                    h.slow.insert(txid, (req, last.now));
                    st.note(format!("host is slow on {req:?}"));
                } else if outcome == Outcome::Ignore {
                    let h = &mut st.s.host;
                    h.ignored += 1;
                    h.late.insert(txid, req);
                    st.note(format!("host ignores {req:?}"));
                } else {
                    st.input(Input::HostComplete {
                        txid,
                        req,
                        ok: outcome == Outcome::Success,
                    });
                }
            }
            Action::HostLate { txid } => {
                let req = st.s.host.late.remove(&txid)?;
                st.s.host.late_answers += 1;
                st.note(format!("host answers {req:?} late"));
                st.input(Input::HostComplete {
                    txid,
                    req,
                    ok: true,
                });
            }
            Action::HostSlowAnswer { txid } => {
                let (req, since) = st.s.host.slow.remove(&txid)?;
                if st.s.now >= since + self.max_hold() {
                    st.s.seen.slow_past_hold = true;
                }
                st.note(format!(
                    "host answers {req:?} after {:?}",
                    st.s.now.saturating_sub(since)
                ));
                st.input(Input::HostComplete {
                    txid,
                    req,
                    ok: true,
                });
            }
            Action::DeviceAnswer => st.device_answers(),
            Action::DeviceSlow => {
                let r = st.s.guest.read.as_mut()?;
                r.slow = true;
                let slot = r.slot;
                st.s.host.slow_reads += 1;
                st.note(format!("the device is slow on the read of {slot}"));
            }
            Action::AdvanceTime => {
                let t = last.next_time()?;
                if last.guest.read.is_some() {
                    st.s.seen.slow_read = true;
                }
                if !last.guest.runnable().is_empty() {
                    st.s.guest.stalls += 1;
                    st.s.guest.stuck = true;
                    st.s.seen.guest_stalled = true;
                    st.note("the guest's eject work stalls".to_owned());
                }
                st.s.now = t;
                // The host gives up on an EJECT when its budget runs out; a relay that would
                // answer at that very moment is too late (the host's timer wins the tie).
                if !st.s.host.rescinded {
                    st.s.seen.eject_overdue = (1..=2u8).find(|&sl| {
                        st.s.host
                            .slot(sl)
                            .owed
                            .first()
                            .is_some_and(|&e| e + HOST_EJECT_BUDGET <= t)
                    });
                }
                if last.timeout.is_some_and(|r| r <= t) {
                    st.input(Input::Timeout);
                }
            }
        }
        Some(st.finish(b))
    }

    fn properties(&self) -> Vec<Property<Self>> {
        props::properties()
    }
}
