//! The properties: each one a promise the relay makes to the guest or to the host, checked in
//! every state reached.

use super::RelayModel;
use super::state::State;
use stateright::Property;

/// The guest never panics or faults (races C1-C5, C7).
pub const NO_GUEST_FAILURE: &str = "no guest panic or fault (C1-C5, C7)";
/// Guarantee 1.
pub const G1: &str = "G1 one change at a time";
/// Guarantee 2.
pub const G2: &str = "G2 eject only when settled";
/// Guarantee 3.
pub const G3: &str = "G3 never announce a removed function";
/// Guarantee 5.
pub const G5: &str = "G5 rescind ends with CloseGuest";
/// Guarantee 7, guest requests.
pub const G7: &str = "G7 every request exactly one completion";
/// Guarantee 7, delivery: the host's functions, with their identity.
pub const DELIVERY: &str = "G7 every function the host lists reaches the guest as listed";
/// Guarantee 7, host ejects.
pub const EJECTS: &str = "every host EJECT answered by exactly one EJECTION_COMPLETE";
/// Liveness within the bound: no change needs the relay's `max_hold` fallback.
pub const NO_MAX_HOLD: &str = "no change runs into max_hold";
/// Guarantee 9, turned round: a host that keeps the protocol is never treated as hostile.
pub const HOST_NOT_BLAMED: &str = "a conformant host is never counted malformed";
/// Guarantees 3 and 9 (memory bounded by functions, not events): no table holds more than
/// what is live.
pub const TABLES: &str = "no relay table outgrows what is live";
/// The request limit counts only live requests.
pub const REFUSALS: &str = "a guest request is refused only at the limit";

/// Sometimes: the host put a new function in a slot whose old one the guest held.
pub const RELISTED: &str = "a slot was re-listed while the guest held it";
/// Sometimes: a host answer came after the relay's own.
pub const LATE: &str = "a host answered after the relay did";
/// Sometimes: a rescind closed the guest channel.
pub const RESCIND_CLOSED: &str = "a rescind closed the guest";

/// Every property of the model.
pub fn properties() -> Vec<Property<RelayModel>> {
    vec![
        Property::always(NO_GUEST_FAILURE, |_, s: &State| s.guest.failure.is_none()),
        Property::always(G1, |_, s: &State| s.seen.g1.is_none()),
        Property::always(G2, |_, s: &State| s.seen.g2.is_none()),
        Property::always(G3, |_, s: &State| s.seen.g3.is_none()),
        Property::always(G7, |_, s: &State| {
            s.seen.stray_completion.is_none() && (!s.quiescent() || s.guest.waiting.is_empty())
        }),
        Property::always(G5, |_, s: &State| {
            !s.quiescent() || !s.host.rescinded || s.guest.closed
        }),
        Property::always(DELIVERY, |_, s: &State| {
            !s.quiescent() || s.host.rescinded || s.guest.closed || s.views_agree()
        }),
        Property::always(EJECTS, |_, s: &State| {
            s.host.stray_ejection_complete.is_none()
                && (!s.quiescent() || s.host.rescinded || !s.host.ejects_owed())
        }),
        Property::always(NO_MAX_HOLD, |_, s: &State| !s.seen.change_timed_out),
        Property::always(HOST_NOT_BLAMED, |_, s: &State| s.seen.host_blamed.is_none()),
        Property::always(TABLES, |_, s: &State| {
            s.seen.overgrown.is_none() && (!s.quiescent() || s.host.rescinded || tables_live(s))
        }),
        Property::always(REFUSALS, |_, s: &State| s.seen.unjust_refusal.is_none()),
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
    ]
}

/// At quiescence the relay keeps a function only for a slot the host lists or the guest
/// holds, and has no request outstanding.
pub fn tables_live(s: &State) -> bool {
    let relay = &s.relay.relay;
    let host = s.host.relations();
    relay.requests_outstanding() == 0
        && relay.functions().all(|f| {
            let slot = super::wire::slot_dev(f.slot());
            host.iter().any(|&(h, _)| h == slot) || s.guest.children.contains_key(&slot)
        })
}
