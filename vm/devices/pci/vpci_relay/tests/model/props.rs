//! The properties: each one a promise the relay makes to the guest or to the host, checked in
//! every state reached.

use super::RelayModel;
use super::state::State;
use stateright::Property;

/// The guest never panics or faults (races C1-C5, C7).
pub const NO_GUEST_FAILURE: &str = "no guest panic or fault (C1-C5, C7)";
/// Guarantee 1.
pub const G1: &str = "G1 one change at a time";
/// Guarantee 2, the function: an EJECT only for a function the guest has linked and whose
/// driver is not setting up its interrupt.
pub const G2: &str = "G2 eject only when settled";
/// Guarantee 2, the bus: no EJECT while the guest's probe path is in progress, whatever it
/// waits for and however long (a host slow past `max_hold` included).
pub const NO_EJECT_DURING_PROBE: &str = "G2 no EJECT while the guest's probe is in progress";
/// Guarantee 3.
pub const G3: &str = "G3 never announce a removed function";
/// Guarantee 5.
pub const G5: &str = "G5 rescind ends with CloseGuest";
/// Guarantee 7, guest requests.
pub const G7: &str = "G7 every request exactly one completion";
/// Guarantee 7, the final view: at quiescence (bus up) the guest holds exactly the functions
/// the host has, with the host's identities: nothing missing, no ghost (a function the host
/// ejected or dropped), no mixed identity.
pub const FINAL_VIEW: &str = "final view: the guest holds exactly the host's functions";
/// Guarantee 7, host ejects.
pub const EJECTS: &str = "every host EJECT answered by exactly one EJECTION_COMPLETE";
/// Guarantee 7, host ejects: each answered within the host's budget
/// ([`HOST_EJECT_BUDGET`](super::HOST_EJECT_BUDGET)), however slow the host or the guest.
pub const EJECT_BUDGET: &str = "every host EJECT answered within the host's 60 s budget";
/// Liveness fallback only for a stuck guest: the relay moves on from a change at `max_hold`
/// only when the guest is stuck in its own work on it (here: its eject work stalled), never
/// while it waits on the host, however slow.
pub const MAX_HOLD_ONLY_FOR_STUCK: &str = "max_hold gives up only on a stuck guest";
/// Guarantee 9, turned round: a host that keeps the protocol is never treated as hostile.
pub const HOST_NOT_BLAMED: &str = "a conformant host is never counted malformed";
/// Guarantees 3 and 9 (memory bounded by functions, not events): no table holds more than
/// what is live.
pub const TABLES: &str = "no relay table outgrows what is live";
/// The request limit counts only live requests.
pub const REFUSALS: &str = "a guest request is refused only at the limit";
/// Guarantee 8, writes: a guest config write to a function the host has removed (ejected,
/// dropped, replaced in its slot, or the host lost) is never forwarded to the host's device
/// (the relay keeps it in its copy instead); a write is never answered as a read, nor a read
/// dropped as a write.
pub const WRITES_SHIELDED: &str = "a write to a removed function never reaches the host";
/// Forwarded accesses: each holds the bus until it is reported done, once; the relay's count
/// of accesses in flight is exactly the one the guest sits in (it may give one up early only
/// when its device is gone), so none is leaked or released twice.
pub const ACCESSES_DONE_ONCE: &str = "every forwarded access is in flight until done, once";
/// Guarantee 8, read-back: after its sizing write of all ones the guest reads BAR0's size
/// mask back, whether the device or the relay's copy answers (all ones only once the guest
/// was told to let go of the function).
pub const BAR_READ_BACK: &str = "a BAR reads back its size mask after the sizing write";

/// Sometimes: the host put a new function in a slot whose old one the guest held.
pub const RELISTED: &str = "a slot was re-listed while the guest held it";
/// Sometimes: a host answer came after the relay's own.
pub const LATE: &str = "a host answered after the relay did";
/// Sometimes: a rescind closed the guest channel.
pub const RESCIND_CLOSED: &str = "a rescind closed the guest";
/// Sometimes: the host answered a request more than `max_hold` after receiving it.
pub const SLOW_PAST_HOLD: &str = "a slow host answer came past max_hold";
/// Sometimes: a stale relations message arrived after an EJECTION_COMPLETE.
pub const STALE_AFTER_COMPLETE: &str =
    "a stale relations message arrived after an EJECTION_COMPLETE";
/// Sometimes: an EJECT after a re-listing ejected the new function.
pub const EJECT_AFTER_RELIST: &str = "an EJECT after a re-list ejected the new function";
/// Sometimes: the guest's eject work stalled while time passed.
pub const GUEST_STALLED: &str = "the guest's eject work stalled";
/// Sometimes: a change ran into the relay's `max_hold`.
pub const MAX_HOLD_REACHED: &str = "a change ran into max_hold";
/// Sometimes: the relay delivered the next change to a guest stuck on its last one.
pub const MOVED_ON: &str = "the relay moved on from a stuck guest";

/// Sometimes: time passed while the guest sat in a config read.
pub const SLOW_READ: &str = "a device was slow on a config read";
/// Sometimes: the device answered a config read after the host had removed it.
pub const READ_OUTLIVED_DEVICE: &str = "a config read was answered after its device left";
/// Sometimes: a guest config write was forwarded to the device.
pub const WRITE_FORWARDED: &str = "a config write was forwarded to the device";
/// Sometimes: a guest config write to a function the host had removed was kept by the relay.
pub const WRITE_SHIELDED: &str = "a config write to a removed function was kept by the relay";

/// Every property of the model.
pub fn properties() -> Vec<Property<RelayModel>> {
    vec![
        Property::always(NO_GUEST_FAILURE, |_, s: &State| s.guest.failure.is_none()),
        Property::always(G1, |_, s: &State| s.seen.g1.is_none()),
        Property::always(G2, |_, s: &State| s.seen.g2.is_none()),
        Property::always(NO_EJECT_DURING_PROBE, |_, s: &State| {
            s.seen.eject_during_probe.is_none()
        }),
        Property::always(G3, |_, s: &State| s.seen.g3.is_none()),
        Property::always(G7, |_, s: &State| {
            s.seen.stray_completion.is_none() && (!s.quiescent() || s.guest.waiting.is_empty())
        }),
        Property::always(G5, |_, s: &State| {
            !s.quiescent() || !s.host.rescinded || s.guest.closed
        }),
        Property::always(FINAL_VIEW, |_, s: &State| {
            !s.quiescent() || s.host.rescinded || s.guest.closed || s.final_view_agrees()
        }),
        Property::always(EJECTS, |_, s: &State| {
            s.host.stray_ejection_complete.is_none()
                && (!s.quiescent() || s.host.rescinded || !s.host.ejects_owed())
        }),
        Property::always(EJECT_BUDGET, |_, s: &State| s.seen.eject_overdue.is_none()),
        Property::always(MAX_HOLD_ONLY_FOR_STUCK, |_, s: &State| {
            s.seen.gave_up_on_live_guest.is_none()
        }),
        Property::always(HOST_NOT_BLAMED, |_, s: &State| s.seen.host_blamed.is_none()),
        Property::always(TABLES, |_, s: &State| {
            s.seen.overgrown.is_none() && (!s.quiescent() || s.host.rescinded || tables_live(s))
        }),
        Property::always(REFUSALS, |_, s: &State| s.seen.unjust_refusal.is_none()),
        Property::always(WRITES_SHIELDED, |_, s: &State| {
            s.seen.write_to_removed.is_none() && s.seen.access_misanswered.is_none()
        }),
        Property::always(ACCESSES_DONE_ONCE, |_, s: &State| {
            s.seen.access_count.is_none()
                && (!s.quiescent() || s.relay.relay.accesses_in_flight() == 0)
        }),
        Property::always(BAR_READ_BACK, |_, s: &State| s.seen.bar_read_back.is_none()),
        Property::sometimes("an eject was held", |_, s: &State| s.seen.eject_held),
        Property::sometimes("a function was coalesced", |_, s: &State| s.seen.coalesced),
        Property::sometimes("a request was answered locally", |_, s: &State| {
            s.seen.answered_locally
        }),
        Property::sometimes("an eject removed a bound driver", |_, s: &State| {
            s.seen.driver_removed
        }),
        Property::sometimes(RESCIND_CLOSED, |_, s: &State| {
            s.seen.guest_closed_after_rescind
        }),
        Property::sometimes(RELISTED, |_, s: &State| s.seen.relisted_while_held),
        Property::sometimes(LATE, |_, s: &State| s.seen.late_completion),
        Property::sometimes(SLOW_PAST_HOLD, |_, s: &State| s.seen.slow_past_hold),
        Property::sometimes(STALE_AFTER_COMPLETE, |_, s: &State| s.seen.stale_relations),
        Property::sometimes(EJECT_AFTER_RELIST, |_, s: &State| s.seen.eject_after_relist),
        Property::sometimes(GUEST_STALLED, |_, s: &State| s.seen.guest_stalled),
        Property::sometimes(MAX_HOLD_REACHED, |_, s: &State| s.seen.change_timed_out),
        Property::sometimes(MOVED_ON, |_, s: &State| s.seen.moved_on_from_stuck),
        Property::sometimes(SLOW_READ, |_, s: &State| s.seen.slow_read),
        Property::sometimes(READ_OUTLIVED_DEVICE, |_, s: &State| {
            s.seen.read_outlived_device
        }),
        Property::sometimes(WRITE_FORWARDED, |_, s: &State| s.seen.write_forwarded),
        Property::sometimes(WRITE_SHIELDED, |_, s: &State| s.seen.write_shielded),
    ]
}

/// At quiescence the relay keeps a function only for a slot the host lists, the guest holds,
/// or the host's last relations message listed (the relay cannot know the host removed it
/// until a message leaves it out, and keeps an ejected function's identity so as to
/// recognise a stale listing of it: one entry per slot, not per cycle), and has no request
/// outstanding.
pub fn tables_live(s: &State) -> bool {
    let relay = &s.relay.relay;
    let host = s.host.relations();
    relay.requests_outstanding() == 0
        && relay.functions().all(|f| {
            let slot = super::wire::slot_dev(f.slot());
            host.iter().any(|&(h, _)| h == slot)
                || s.host.last_listed.contains(&slot)
                || s.guest.children.contains_key(&slot)
        })
}
