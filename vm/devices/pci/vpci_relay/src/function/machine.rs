//! A function's state machine: its host state ([`HostState`]) by its guest state
//! ([`GuestState`]), and the transitions the relay's handlers ask of it. Each transition
//! changes only this function and says what the bus must do about it (answer the host, queue
//! an eject, announce, forget the entry); the handlers carry that out.
//!
//! | host \ guest | Hidden | Announced | Ejecting |
//! | --- | --- | --- | --- |
//! | Listed | new, not shown yet | bound | (not reached: an eject makes the host side leave) |
//! | Ejecting | coalescing off only | EJECT held | EJECT delivered |
//! | Ejected | the slot's memory of it | held, host answered at its deadline | delivered, host answered |
//! | Gone | (forgotten) | dropped: the relay's own EJECT held | delivered |
//!
//! An EJECT names the host's last listing in the slot: the successor if there is one, else
//! this function. A repeat is an EJECT of a slot in which no new identity was listed since
//! the previous EJECT.

use super::{Backing, Function, GuestState, HostState, Stage, Successor, same_identity};
use std::time::Duration;
use vpci_protocol::wire::FunctionDescription2;
use vpci_protocol::{Completion, CompletionBody, Message};

/// What a host listing of a function in this slot means for the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listing {
    /// The host's last function in the slot, listed again: nothing new.
    Same,
    /// A listing of a function whose EJECT the host has had answered (sent before the host
    /// saw the EJECTION_COMPLETE): nothing changes.
    Stale,
    /// A new function took the slot (the old one was never shown to the guest).
    Replaced,
    /// The guest holds this function and the host listed a new one in its slot without an
    /// eject: this one now leaves like a dropped one (the relay ejects it), the new one waits.
    Displaced,
    /// A new function waits for this one, already leaving, to be let go.
    Successor,
}

/// A relations message left this slot out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Omitted {
    /// Keep the entry as it is.
    Keep,
    /// Forget the entry: the guest never held it, or it was only the memory of an eject.
    Forget,
    /// The guest holds it and the host dropped it: the relay ejects it.
    Eject,
}

/// How the relay answers a host EJECT of this slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EjectAnswer {
    /// At once: a repeat of an eject already answered.
    Now,
    /// At once: it names a function the guest never saw, which it never will.
    Coalesced,
    /// Once the guest lets go (or at the host's deadline): the eject is owed.
    Owed,
    /// Owed, and the guest's EJECT is to be queued.
    OwedAndEject,
}

/// What a guest request means for its function while the host works on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestKind {
    Requirements,
    Resources,
    Interrupt,
    Other,
}

impl RequestKind {
    pub(crate) fn of(message: &Message) -> Self {
        match message {
            Message::QueryResourceRequirements(_) => Self::Requirements,
            Message::ResourcesAssigned(_)
            | Message::ResourcesAssigned2(_)
            | Message::ResourcesAssigned3(_) => Self::Resources,
            Message::CreateInterruptMessage(_)
            | Message::CreateInterruptMessage2(_)
            | Message::CreateInterruptMessage3(_) => Self::Interrupt,
            _ => Self::Other,
        }
    }
}

/// What the guest's EJECTION_COMPLETE leaves behind.
pub(crate) struct LetGo {
    /// Host EJECTs it answers (the first by the guest's own packet, the rest by the relay).
    pub(crate) owed: u32,
    /// What the slot holds now: the host's newest function, the memory of an ejected one,
    /// or nothing.
    pub(crate) next: Option<Function>,
    /// `next` is a function to announce.
    pub(crate) announce: bool,
}

impl Function {
    // ---- the host's side ----

    /// The host lists `d` in this slot.
    pub(crate) fn relisted(&mut self, d: FunctionDescription2, allowed: bool) -> Listing {
        self.unlisted = false;
        let last_gone = self.successor.is_none() && self.host == HostState::Gone;
        if same_identity(self.last_listed(), &d) && !last_gone {
            // A function the host is ejecting stays in its lists until its
            // EJECTION_COMPLETE; one it has ejected may be listed by relations it sent before
            // it saw the answer. Neither is new.
            let answered = match &self.successor {
                Some(s) => s.ejected,
                None => self.host == HostState::Ejected,
            };
            if answered {
                return Listing::Stale;
            }
            if self.last_listed_ejected() {
                return Listing::Same;
            }
            if !self.guest_visible() && self.host == HostState::Listed {
                // Not shown to the guest yet: the host's newest description is the function.
                self.desc = d;
                self.allowed = allowed;
            }
            return Listing::Same;
        }
        // A new function in the slot: a new identity, or the same one listed again after the
        // host had dropped it.
        let successor = Some(Successor {
            desc: d,
            ejected: false,
        });
        match (self.guest_visible(), self.host) {
            (false, HostState::Listed | HostState::Ejected | HostState::Gone) => {
                *self = Self::new(d, allowed);
                Listing::Replaced
            }
            (true, HostState::Listed) => {
                self.successor = successor;
                self.host = HostState::Gone;
                Listing::Displaced
            }
            _ => {
                self.successor = successor;
                Listing::Successor
            }
        }
    }

    /// A relations message leaves this slot out.
    pub(crate) fn omitted(&mut self) -> Omitted {
        // A successor the host takes back before the guest saw it is forgotten.
        self.successor = None;
        self.unlisted = true;
        match (self.host, self.guest_visible()) {
            (HostState::Listed, true) => {
                self.host = HostState::Gone;
                Omitted::Eject
            }
            (HostState::Listed | HostState::Ejected, false) => Omitted::Forget,
            // The host shows it no longer has the ejected function: the same identity
            // listed later is a new function.
            (HostState::Ejected, true) => {
                self.host = HostState::Gone;
                Omitted::Keep
            }
            // Still owed its EJECTION_COMPLETE (a host may stop listing what it ejects before
            // the answer), or already gone.
            (HostState::Ejecting | HostState::Gone, _) => Omitted::Keep,
        }
    }

    /// A host EJECT of this slot at `now`. `repeat_cap` bounds the repeats owed at once;
    /// `coalesce`: a function the guest never saw is answered for at once.
    pub(crate) fn host_ejected(
        &mut self,
        now: Duration,
        repeat_cap: u32,
        coalesce: bool,
    ) -> EjectAnswer {
        if let Some(s) = &mut self.successor {
            if s.ejected {
                return EjectAnswer::Now;
            }
            // The host's newest function in the slot, never shown to the guest: it never will
            // be. This function goes on leaving as before.
            s.ejected = true;
            return EjectAnswer::Coalesced;
        }
        match self.host {
            HostState::Ejecting if self.host_ejects_owed >= repeat_cap => EjectAnswer::Now,
            HostState::Ejecting => {
                // A repeat of an eject still unanswered: owed its own answer, given with the
                // first (an EJECTION_COMPLETE tells the host the guest has let go).
                self.host_ejects_owed += 1;
                EjectAnswer::Owed
            }
            HostState::Ejected => EjectAnswer::Now,
            HostState::Gone => {
                // Dropped earlier; the relay is already ejecting it from the guest.
                self.owe_eject(now);
                EjectAnswer::Owed
            }
            HostState::Listed => {
                self.owe_eject(now);
                if self.guest_visible() {
                    EjectAnswer::OwedAndEject
                } else if coalesce || !self.allowed {
                    // Guarantee 3. The slot remembers it, so a stale listing stays stale.
                    *self = Self::ejected(self.desc, self.allowed);
                    EjectAnswer::Coalesced
                } else {
                    // (Coalescing off: announced, then ejected, as a pass-through would.)
                    EjectAnswer::Owed
                }
            }
        }
    }

    fn owe_eject(&mut self, now: Duration) {
        self.host = HostState::Ejecting;
        self.host_ejects_owed = 1;
        self.host_eject_since = Some(now);
    }

    /// The host's first unanswered EJECT has waited `max_hold` by `now`: the relay answers
    /// every EJECT it owes (returned) itself. The guest keeps the function, shielded, until
    /// it lets go.
    pub(crate) fn host_deadline_passed(&mut self, now: Duration, max_hold: Duration) -> u32 {
        let due = self.host == HostState::Ejecting
            && self
                .host_eject_since
                .is_some_and(|t| now >= t.saturating_add(max_hold));
        if !due {
            return 0;
        }
        self.host = HostState::Ejected;
        self.host_eject_since = None;
        std::mem::take(&mut self.host_ejects_owed).max(1)
    }

    /// The host is gone (rescind, or a protocol violation): nothing is owed any more.
    /// Returns whether the entry is to be kept (the guest holds it).
    pub(crate) fn host_lost(&mut self) -> bool {
        self.host = HostState::Gone;
        self.host_ejects_owed = 0;
        self.host_eject_since = None;
        self.successor = None;
        self.requests_pending = 0;
        self.interrupts_pending = 0;
        self.guest_visible()
    }

    // ---- the guest's side ----

    /// The relay begins ejecting it from the guest at `now`: returns whether the eject is
    /// newly pending (to be queued) and whether the shield was installed now.
    pub(crate) fn eject_begun(&mut self, now: Duration, shield: bool) -> (bool, bool) {
        let queue = self.eject_since.is_none();
        if queue {
            self.eject_since = Some(now);
            self.hold_reported = false;
        }
        let shielded = shield && self.backing == Backing::Device;
        if shielded {
            self.backing = Backing::Shield;
        }
        (queue, shielded)
    }

    /// Its held eject is reported (once per hold); false if it already was.
    pub(crate) fn hold_noted(&mut self) -> bool {
        !std::mem::replace(&mut self.hold_reported, true)
    }

    /// Its EJECT reaches the guest; returns whether it had been held (and reported).
    pub(crate) fn eject_delivered(&mut self) -> bool {
        self.guest = GuestState::Ejecting;
        self.hold_reported
    }

    /// A relations message announces it to the guest; `initial`: the guest's probe path will
    /// assign it resources.
    pub(crate) fn announced(&mut self, initial: bool) {
        self.guest = GuestState::Announced;
        self.needs_resources = initial;
        self.backing = Backing::Device;
    }

    /// The guest's EJECTION_COMPLETE: it lets go. `allows` is the allow-list.
    pub(crate) fn let_go(self, allows: impl Fn(&FunctionDescription2) -> bool) -> LetGo {
        let owed = if self.host == HostState::Ejecting {
            self.host_ejects_owed.max(1)
        } else {
            0
        };
        let (next, announce) = match self.successor {
            Some(s) if !s.ejected => (Some(Self::new(s.desc, allows(&s.desc))), true),
            Some(s) => (Some(Self::ejected(s.desc, allows(&s.desc))), false),
            None if !self.unlisted
                && matches!(self.host, HostState::Ejecting | HostState::Ejected) =>
            {
                (Some(Self::ejected(self.desc, self.allowed)), false)
            }
            None => (None, false),
        };
        LetGo {
            owed,
            next,
            announce,
        }
    }

    /// Guest traffic for it (a request, a config access) at `now`.
    pub(crate) fn touched(&mut self, now: Duration) {
        self.last_activity = Some(now);
    }

    // ---- requests ----

    /// A request for it of `kind` was admitted and forwarded to the host.
    pub(crate) fn request_admitted(&mut self, kind: RequestKind) {
        self.requests_pending += 1;
        match kind {
            RequestKind::Requirements => self.requirements = Stage::Pending,
            RequestKind::Resources => self.resources = Stage::Pending,
            RequestKind::Interrupt => self.interrupts_pending += 1,
            RequestKind::Other => {}
        }
    }

    /// A forwarded request left the host's hands (answered by it, or by the relay).
    pub(crate) fn request_answered(&mut self) {
        self.requests_pending = self.requests_pending.saturating_sub(1);
    }

    /// A forwarded request of `kind` never reached the host (its channel refused it): undo
    /// what admitting it did.
    pub(crate) fn request_refused(&mut self, kind: RequestKind) {
        self.request_answered();
        match kind {
            RequestKind::Requirements if self.requirements == Stage::Pending => {
                self.requirements = Stage::NotStarted;
            }
            RequestKind::Resources if self.resources == Stage::Pending => {
                self.resources = Stage::NotStarted;
            }
            RequestKind::Interrupt => {
                self.interrupts_pending = self.interrupts_pending.saturating_sub(1);
            }
            _ => {}
        }
    }

    /// The answer to `request` (the host's or the relay's own) at `now`; `was_pending`: the
    /// request had been admitted (and counted as pending).
    pub(crate) fn completed(
        &mut self,
        request: &Message,
        completion: &Completion,
        was_pending: bool,
        now: Duration,
    ) {
        self.last_activity = Some(now);
        match RequestKind::of(request) {
            RequestKind::Requirements => {
                // A failed query still ends the guest's wait for it; the guest drops the
                // function, so it counts as done for settling.
                self.requirements = Stage::Done;
                if let CompletionBody::ResourceRequirements(r) = &completion.body {
                    self.probed_bars = Some(r.body.probed_bar.map(|b| b.get()));
                }
            }
            RequestKind::Resources => self.resources = Stage::Done,
            RequestKind::Interrupt if was_pending => {
                self.interrupts_pending = self.interrupts_pending.saturating_sub(1);
            }
            RequestKind::Interrupt | RequestKind::Other => {}
        }
    }
}
