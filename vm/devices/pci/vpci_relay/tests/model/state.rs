//! The model's state (the relay itself, the abstract host and guest, the clock and what was
//! observed on the way) and its actions.

use super::guest::{Guest, GuestStep};
use super::host::Host;
use super::wire::Req;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;
use vpci_relay::{Backing, BusRelay};

/// The real relay, with a 64-bit hash of its [`BusRelay::fingerprint`] standing for it in the
/// state's identity (taken after its outputs were drained).
#[derive(Clone)]
pub struct RelayCell {
    /// The relay.
    pub relay: BusRelay,
    fp: u64,
}

impl RelayCell {
    /// Wraps a relay whose outputs have been drained.
    pub fn new(relay: BusRelay) -> Self {
        let mut cell = Self { relay, fp: 0 };
        cell.refresh();
        cell
    }

    /// Recomputes the fingerprint after the relay changed (and was drained).
    pub fn refresh(&mut self) {
        let mut h = DefaultHasher::new();
        self.relay.fingerprint(&mut h);
        self.fp = h.finish();
    }
}

impl PartialEq for RelayCell {
    fn eq(&self, o: &Self) -> bool {
        self.fp == o.fp
    }
}
impl Eq for RelayCell {}
impl Hash for RelayCell {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.fp.hash(h)
    }
}

/// [`Backing`] as the model keeps it (the relay's type derives no `Hash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Back {
    /// [`Backing::Device`].
    Device,
    /// [`Backing::Shield`].
    Shield,
    /// [`Backing::Released`].
    Released,
}

impl From<Backing> for Back {
    fn from(b: Backing) -> Self {
        match b {
            Backing::Device => Back::Device,
            Backing::Shield => Back::Shield,
            Backing::Released => Back::Released,
        }
    }
}

/// What was seen on the way (monotone flags) and property violations found in transitions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Seen {
    /// The relay reported a held eject.
    pub eject_held: bool,
    /// The relay coalesced a function.
    pub coalesced: bool,
    /// The relay answered a guest request itself.
    pub answered_locally: bool,
    /// A host completion arrived for a request the relay had already answered.
    pub late_completion: bool,
    /// The host put a new function in a slot whose old one the guest still held.
    pub relisted_while_held: bool,
    /// A change ran into the relay's `max_hold` fallback.
    pub change_timed_out: bool,
    /// The host answered a request more than `max_hold` after it received it.
    pub slow_past_hold: bool,
    /// A stale relations message (built before the host processed an EJECTION_COMPLETE)
    /// reached the relay after that EJECTION_COMPLETE.
    pub stale_relations: bool,
    /// An EJECT named a function listed in its slot after an earlier, still unanswered EJECT
    /// of that slot (so it ejected the new function).
    pub eject_after_relist: bool,
    /// The guest's eject work stalled while time passed.
    pub guest_stalled: bool,
    /// The relay delivered a change while the guest was stuck on its last one (its
    /// `max_hold` fallback).
    pub moved_on_from_stuck: bool,
    /// The relay gave up on a change (ran into `max_hold`) while the guest was not stuck in
    /// its own work on it (it was waiting on the host, however slow, or had finished).
    pub gave_up_on_live_guest: Option<String>,
    /// Time passed while the guest sat in a config read (the device was slow).
    pub slow_read: bool,
    /// The device answered a config read after the host had removed it.
    pub read_outlived_device: bool,
    /// A change reached the guest while it sat in a config read the relay no longer counted
    /// (it forgets accesses when the host is lost).
    pub change_in_forgotten_read: bool,
    /// A guest config write reached the device the relay forwards to.
    pub write_forwarded: bool,
    /// A guest config write to a function the host had removed was kept by the relay.
    pub write_shielded: bool,
    /// A BAR read of a function the host had removed was answered by the relay.
    pub shielded_read: bool,
    /// A guest config write forwarded while the host no longer had the function the guest
    /// wrote to (the slot): it would reach the host's device as if the function were there.
    pub write_to_removed: Option<u8>,
    /// The relay's count of forwarded accesses in flight disagreed with what the guest sits
    /// in (an access not released by its one report, or given up while its device is there).
    pub access_count: Option<String>,
    /// A write answered as a read, or a read dropped as a write (slot and access).
    pub access_misanswered: Option<(u8, super::wire::Acc)>,
    /// The guest read back from BAR0 after its sizing write something other than what the
    /// device would answer (the size mask; all ones once it was told to let go).
    pub bar_read_back: Option<String>,
    /// The guest channel was closed after the host's rescind.
    pub guest_closed_after_rescind: bool,
    /// An eject work removed a driver.
    pub driver_removed: bool,
    /// G1 broken: a change delivered while the guest was on another.
    pub g1: Option<String>,
    /// G2 broken: an EJECT for a function not settled at the guest.
    pub g2: Option<u8>,
    /// An EJECT reached the guest while its probe path was in progress (the slot).
    pub eject_during_probe: Option<u8>,
    /// A host EJECT went unanswered past the host's budget (the slot).
    pub eject_overdue: Option<u8>,
    /// G3 broken: a function announced that the host had already taken back.
    pub g3: Option<u8>,
    /// G7 broken: a completion for a request the guest is not waiting for.
    pub stray_completion: Option<u64>,
    /// The relay counted a packet of the (conformant) host as malformed, or dropped the bus
    /// for a protocol violation.
    pub host_blamed: Option<String>,
    /// A relay table held more than what is live.
    pub overgrown: Option<String>,
    /// A guest request refused with BAD_DATA while fewer than the limit were outstanding.
    pub unjust_refusal: Option<Req>,
}

/// The model's state. Two states are one when the relay's fingerprint, the host, the guest,
/// the backings, the clock and the observations are equal, whatever the history.
#[derive(Clone)]
pub struct State {
    /// The relay.
    pub relay: RelayCell,
    /// The virtual clock.
    pub now: Duration,
    /// The relay's next timer.
    pub timeout: Option<Duration>,
    /// The abstract host.
    pub host: Host,
    /// The abstract guest.
    pub guest: Guest,
    /// The last backing the relay emitted per slot.
    pub backing: [Option<Back>; 2],
    /// Observations.
    pub seen: Seen,
    /// A short trace of what reached the guest and host (for reading counterexamples).
    pub last: String,
}

impl PartialEq for State {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for State {}
impl Hash for State {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key().hash(h)
    }
}

#[allow(clippy::type_complexity)]
impl State {
    fn key(
        &self,
    ) -> (
        &RelayCell,
        Duration,
        Option<Duration>,
        &Host,
        &Guest,
        &[Option<Back>; 2],
        &Seen,
    ) {
        (
            &self.relay,
            self.now,
            self.timeout,
            &self.host,
            &self.guest,
            &self.backing,
            &self.seen,
        )
    }

    /// Nothing more happens unless the host starts something new: the guest has no step, the
    /// host owes no prompt answer, and the relay wants no timer. (Requests the host chose to
    /// answer late, if at all, do not count: nothing forces it to.)
    pub fn quiescent(&self) -> bool {
        self.guest.failure.is_none()
            && !self.guest.beyond
            && self.guest.runnable().is_empty()
            && self.host.pending.is_empty()
            && self.host.slow.is_empty()
            && self.guest.read.is_none()
            && self.timeout.is_none()
    }

    /// When time next moves: the relay's next timer, or the host's deadline for an EJECT it
    /// still waits for (when the host gives up on the guest), whichever comes first.
    pub fn next_time(&self) -> Option<Duration> {
        let host = (!self.host.rescinded)
            .then(|| self.host.eject_deadline())
            .flatten()
            .filter(|&d| d > self.now);
        match (self.timeout, host) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The final view: whether the guest holds exactly the functions the host has listed
    /// and still has, each with the identity the host listed (nothing missing, no ghost, no
    /// mixed identity).
    pub fn final_view_agrees(&self) -> bool {
        self.host.announced() == self.guest.held()
    }

    /// How the guest's view differs from the host's: functions missing at the guest, ghosts
    /// (held by the guest, gone at the host), each as (slot, identity).
    pub fn final_view_diff(&self) -> String {
        let host = self.host.announced();
        let guest = self.guest.held();
        let missing: Vec<_> = host.iter().filter(|f| !guest.contains(f)).collect();
        let ghosts: Vec<_> = guest.iter().filter(|f| !host.contains(f)).collect();
        format!("host has {host:?}, guest holds {guest:?}: missing {missing:?}, ghosts {ghosts:?}")
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("now", &self.now)
            .field("last", &self.last)
            .field("host", &self.host)
            .field("guest", &self.guest)
            .field("backing", &self.backing)
            .field("seen", &self.seen)
            .finish()
    }
}

/// How the host ends a request it was forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Success with a well-formed body.
    Success,
    /// STATUS_UNSUCCESSFUL (what a host that removed the device may say to an interrupt
    /// request).
    Fail,
    /// Not now: never, or late (a host that removed the device may ignore it).
    Ignore,
    /// Slowly: the host owes the answer, but time may pass first (any request).
    Slow,
}

/// One step of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// An internal step of the guest.
    Guest(GuestStep),
    /// The host sends BUS_RELATIONS2 with what it has (an answer, a repeat, a duplicate).
    HostRelations,
    /// The host leaves a function out of its relations (a surprise removal) and sends them.
    HostDrop(u8),
    /// The host puts a new function (the slot's next identity) in a slot and announces it:
    /// a hot-add, a re-add, or a re-listing while the old one is ejecting or still held by
    /// the guest.
    HostAdd(u8),
    /// The host sends EJECT for a slot it has listed before.
    HostEject(u8),
    /// The host rescinds the channel.
    HostRescind,
    /// The host answers (or ignores) a forwarded request.
    HostComplete { txid: u64, outcome: Outcome },
    /// The host answers a request it ignored, late (successfully).
    HostLate { txid: u64 },
    /// The host answers a request it was slow on (successfully).
    HostSlowAnswer { txid: u64 },
    /// A relations message the host built before it processed the latest EJECTION_COMPLETE
    /// reaches the relay (it still lists the function that EJECTION_COMPLETE removed).
    HostStaleRelations,
    /// The device answers the guest's config access in flight.
    DeviceAnswer,
    /// The device takes its time over the guest's config access in flight: time may pass
    /// before it answers (if it ever does within the bound).
    DeviceSlow,
    /// The clock moves to the relay's next timer (or the host's EJECT deadline, if sooner).
    AdvanceTime,
}
