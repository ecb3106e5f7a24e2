//! What the relay reports: events for logs and tests, counters for inspection.

use std::time::Duration;
use vpci_protocol::{DecodeError, MessageType, WinSlot};

/// Which side of the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The host (the VSP the relay is a client of).
    Host,
    /// The guest (the VSC the relay serves).
    Guest,
}

/// What kind of host change is outstanding at the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A relations update (the survey answer or a hot-add).
    Relations,
    /// An eject of one function.
    Eject(WinSlot),
}

/// Why a packet was malformed or refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketFault {
    /// The vPCI payload did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A VMBus packet type vPCI does not use.
    #[error("packet type {0} is not used by vPCI")]
    PacketKind(u16),
    /// A completion for a transaction the relay never started.
    #[error("completion for unknown transaction id {0:#x}")]
    UnknownTransaction(u64),
    /// A host completion for a transaction the relay started and already finished, and no
    /// longer remembers answering itself (a repeated completion, or one later than the
    /// late-completion memory reaches). Dropped; the bus is kept.
    #[error("completion for finished transaction id {0:#x}")]
    StaleTransaction(u64),
    /// A host relations message listing more functions than the relay's limit.
    #[error("{count} functions exceed the limit of {limit}")]
    TooManyFunctions {
        /// Functions listed.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A host relations message listing one slot twice.
    #[error("slot {0} listed twice")]
    DuplicateSlot(WinSlot),
    /// An eject for a function the host never listed.
    #[error("eject for unknown slot {0}")]
    UnknownSlot(WinSlot),
    /// The transport carrying the packets broke its rules (ring corruption, oversized packet).
    #[error("the transport broke its rules")]
    Transport,
    /// The host's channel refused to carry this forwarded guest request; the guest got a
    /// failure.
    #[error("the host channel refused a forwarded {0}")]
    Refused(MessageType),
    /// More guest requests outstanding than the relay's limit.
    #[error("more than {0} requests outstanding")]
    TooManyRequests(usize),
}

/// Something the relay did or saw, for logs and tests. Every event is also emitted as a
/// `tracing` event with the same fields, and bumps the counter that belongs to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayEvent {
    /// A host change was delivered to the guest.
    ChangeDelivered {
        /// The change.
        kind: ChangeKind,
        /// It had been held (and reported with [`RelayEvent::EjectHeld`] or
        /// [`RelayEvent::RelationsHeld`]) before.
        released: bool,
    },
    /// The guest finished a change.
    ChangeFinished(ChangeKind),
    /// The guest did not finish a change within `max_hold`; the relay moved on.
    ChangeTimedOut(ChangeKind),
    /// An eject is held because the function is not settled.
    EjectHeld {
        /// The function.
        slot: WinSlot,
    },
    /// A relations update is held behind an outstanding change or the guest's probe.
    RelationsHeld,
    /// A function the guest never saw was added and removed; the relay completed the host's
    /// eject itself.
    Coalesced {
        /// The function.
        slot: WinSlot,
    },
    /// A relations message that changed nothing for the guest was absorbed.
    RelationsSuperseded,
    /// The relay answered a host EJECT itself because the guest no longer holds (or never
    /// held) the function: a repeated EJECT, or one for a function already let go.
    EjectAnsweredLocally {
        /// The function's slot.
        slot: WinSlot,
    },
    /// The relay answered a guest request itself.
    AnsweredLocally {
        /// The function, if the request named one.
        slot: Option<WinSlot>,
        /// The request.
        request: MessageType,
    },
    /// The host's first EJECT of a function the guest still holds waited `max_hold`: the
    /// relay answered it (and each repeat) itself, within the host's budget. The function
    /// stays shielded, and the guest gets its EJECT at a safe point.
    EjectAnsweredAtDeadline {
        /// The function's slot.
        slot: WinSlot,
    },
    /// A relations message listed a function the host has already ejected (sent before the
    /// host saw the EJECTION_COMPLETE): nothing changes.
    StaleListing {
        /// The function's slot.
        slot: WinSlot,
    },
    /// A relations message listed more functions than
    /// [`Limits::max_functions`](crate::Limits): the relay keeps the ones it knows and then
    /// the first new ones, up to the limit, and leaves the rest out. The bus is kept.
    FunctionsOverLimit {
        /// Functions the host listed.
        listed: usize,
        /// Functions the relay took on.
        kept: usize,
    },
    /// A host completion arrived for a request the relay had already answered.
    LateCompletion {
        /// The request.
        request: MessageType,
    },
    /// A malformed packet was dropped.
    Malformed {
        /// Who sent it.
        side: Side,
        /// What was wrong.
        fault: PacketFault,
    },
    /// The host broke the protocol or went away: the bus is being wound down.
    HostLost {
        /// True for a rescind or close, false for a protocol violation.
        rescinded: bool,
    },
    /// A function's BARs and config space changed backing.
    Backing {
        /// The function.
        slot: WinSlot,
        /// The new backing.
        backing: crate::Backing,
    },
    /// The guest channel was closed (the rescind reached the guest).
    GuestClosed,
    /// The guest's probe path is done: D0 entered, resources assigned, the bus quiet.
    Installed,
    /// A guest config access was answered as a master abort: more accesses were in flight
    /// on the bus than [`Limits::max_accesses_in_flight`](crate::Limits).
    AccessRefused {
        /// The function selected in the window.
        slot: WinSlot,
    },
    /// A config access to a departed function stayed unanswered by the device for
    /// `departed_request_timeout` after the function departed: it no longer holds the bus (the
    /// caller still finishes it).
    AccessAbandoned {
        /// The function selected in the window.
        slot: WinSlot,
    },
    /// A forwarded config read came back saying the device is gone (it failed, or an
    /// identity register read all ones) while the relay had not heard of its removal: the
    /// guest was given the removal shield's answer instead.
    DeviceGoneRead {
        /// The function selected in the window.
        slot: WinSlot,
        /// The offset read.
        offset: u16,
    },
    /// The relay's progress loop hit its step bound (a logic error; the relay stays usable
    /// and resumes at the next input).
    ProgressStalled,
    /// A timer armed from `poll_timeout` fired at this time.
    Timer(Duration),
}

/// Counters kept per bus; each one says what happened to a packet or event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, inspect::Inspect)]
pub struct Counters {
    /// Packets forwarded from the guest to the host.
    pub relayed_to_host: u64,
    /// Packets forwarded from the host to the guest.
    pub relayed_to_guest: u64,
    /// Times an eject or relations update was held.
    pub held: u64,
    /// Held changes later delivered.
    pub released: u64,
    /// Functions added and removed before the guest saw them.
    pub coalesced: u64,
    /// Host relations messages absorbed because a newer one or the guest's view covered them.
    pub superseded: u64,
    /// Guest requests the relay answered itself.
    pub answered_locally: u64,
    /// Host completions for requests already answered locally.
    pub late_completions: u64,
    /// Malformed or refused packets from the host.
    pub malformed_host: u64,
    /// Malformed or refused packets from the guest.
    pub malformed_guest: u64,
    /// Changes the guest did not finish within `max_hold`.
    pub timed_out: u64,
    /// Host EJECTs the relay answered itself for a function the guest no longer held.
    pub ejects_answered_locally: u64,
    /// Host EJECTs the relay answered itself at the host's deadline, the guest still holding
    /// the function.
    pub ejects_answered_at_deadline: u64,
    /// Relations listings of functions the host had already ejected (stale, ignored).
    pub stale_listings: u64,
    /// Relations messages that listed more functions than the relay's limit.
    pub over_limit_relations: u64,
    /// Times the progress loop hit its step bound (always 0 for a correct relay).
    pub progress_stalls: u64,
    /// Config accesses answered as a master abort: too many in flight on the bus.
    pub accesses_refused: u64,
    /// Config accesses to departed functions that stopped holding the bus unanswered.
    pub accesses_abandoned: u64,
}
