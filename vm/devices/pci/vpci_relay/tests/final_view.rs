//! The guest's final view is the host's, in both directions (issue 12): an EJECT names the
//! function the host listed last in its slot; a host EJECT is answered within the host's
//! budget however slow either side is, while the guest gets its EJECT only at a safe point;
//! a stale listing of an ejected function never brings it back; a conformant host with many
//! functions keeps its bus. Each test of a fix failed on the relay before it; the others pin
//! down the readings the fixes rely on.

mod common;

use common::*;
use std::time::Duration;
use vpci_protocol::wire::FunctionDescription2;
use vpci_protocol::*;
use vpci_relay::*;

/// Every identity the guest was ever announced in `dev`'s slot, in order.
fn announced_in(bus: &Bus, dev: u8) -> Vec<FunctionDescription2> {
    let mut seen: Vec<FunctionDescription2> = Vec::new();
    for m in bus.guest_messages() {
        if let Message::BusRelations2(r) = m {
            for d in r.functions.iter().filter(|d| d.wslot == slot(dev)) {
                if seen.last() != Some(d) {
                    seen.push(*d);
                }
            }
        }
    }
    seen
}

// ---- 1. an EJECT after a re-list names the new function ----

/// The host ejects function A in slot 1, lists slot 1 with a new identity B before A's eject
/// is answered, then sends EJECT(1): that EJECT names B, the host's newest function in the
/// slot. B is never announced, the host gets one EJECTION_COMPLETE per EJECT, and once the
/// guest lets go of A it holds nothing: the host has nothing in the slot either.
#[test]
fn eject_after_relist_names_the_new_function() {
    let mut bus = Bus::installed_with(&[1]);
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    bus.host_sends(relations_of(&[new_identity(1)]));
    bus.host_sends(eject(1));
    assert_eq!(
        ejection_completes_to_host(&bus, 1),
        1,
        "B's eject is answered at once: the guest never saw B"
    );
    bus.guest_sends(ejection_complete(1));
    bus.advance(Duration::from_secs(5));
    assert_eq!(
        ejection_completes_to_host(&bus, 1),
        2,
        "one answer per EJECT"
    );
    assert_eq!(
        announced_in(&bus, 1),
        [desc2(1, 0x1414)],
        "B, ejected by the host, never reaches the guest"
    );
    assert!(
        bus.relay
            .function(slot(1))
            .is_none_or(|f| !f.guest_visible() && f.host() == HostState::Ejected)
    );
    assert_eq!(bus.relay.counters().malformed_host, 0);
}

/// After the EJECT that named B, another EJECT of the slot with no new identity listed since
/// is a repeat of B's, already answered: it is answered at once, and A's own eject is still
/// answered by the guest's EJECTION_COMPLETE.
#[test]
fn repeat_of_an_answered_successor_eject_is_answered_at_once() {
    let mut bus = Bus::installed_with(&[1]);
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    bus.host_sends(relations_of(&[new_identity(1)]));
    bus.host_sends(eject(1));
    bus.host_sends(eject(1));
    assert_eq!(ejection_completes_to_host(&bus, 1), 2);
    bus.guest_sends(ejection_complete(1));
    assert_eq!(ejection_completes_to_host(&bus, 1), 3);
    bus.advance(Duration::from_secs(5));
    assert_eq!(announced_in(&bus, 1), [desc2(1, 0x1414)]);
}

/// A relations message that lists the function being ejected again (the host keeps it in its
/// lists until its EJECTION_COMPLETE) does not make it new: the next EJECT is a repeat, owed
/// its own answer once the guest lets go, and nothing is announced again.
#[test]
fn relisting_the_same_function_does_not_make_it_new() {
    let mut bus = Bus::installed_with(&[1]);
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    bus.host_sends(relations2(&[1]));
    assert_eq!(
        bus.relay.counters().stale_listings,
        0,
        "listed while its EJECT is unanswered: the host's normal lists, not stale ones"
    );
    bus.host_sends(eject(1));
    assert_eq!(ejection_completes_to_host(&bus, 1), 0, "the guest holds it");
    bus.guest_sends(ejection_complete(1));
    assert_eq!(ejection_completes_to_host(&bus, 1), 2);
    bus.advance(Duration::from_secs(5));
    assert_eq!(announced_in(&bus, 1), [desc2(1, 0x1414)]);
}

// ---- stale relations ----

/// Relations the host sent before it saw the EJECTION_COMPLETE still list the ejected
/// function; arriving after the guest let go, they must not announce it again (the host
/// considers it gone). A relations message that leaves the slot out ends the stale window:
/// the same identity listed after it is a new function.
#[test]
fn stale_relations_after_ejection_complete_announce_nothing() {
    let mut bus = Bus::installed_with(&[1, 2]);
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    bus.guest_sends(ejection_complete(1));
    assert_eq!(ejection_completes_to_host(&bus, 1), 1);
    let relations_before = bus.guest_relations().len();
    // In flight before the host saw the EJECTION_COMPLETE.
    bus.host_sends(relations2(&[1, 2]));
    bus.advance(Duration::from_secs(5));
    assert_eq!(
        bus.guest_relations().len(),
        relations_before,
        "no ghost: nothing announced"
    );
    assert!(
        bus.relay
            .function(slot(1))
            .is_none_or(|f| !f.guest_visible())
    );
    assert_eq!(bus.relay.counters().stale_listings, 1);
    // The host's own view: slot 1 empty; then the device comes back.
    bus.host_sends(relations2(&[2]));
    bus.host_sends(relations2(&[1, 2]));
    bus.advance(Duration::from_secs(5));
    assert_eq!(
        bus.guest_relations().last(),
        Some(&vec![slot(1), slot(2)]),
        "re-added after the host showed the slot empty"
    );
}

// ---- 2. a slow host: the EJECT held within the host's budget ----

/// The host ejects a function while the guest's probe waits for BUS_D0ENTRY's answer, and
/// the host takes 40 s to give it (its own budgets allow that). The relay answers the host's
/// EJECT itself at `max_hold`, within the host's 60 s, keeps the function shielded, and
/// delivers the EJECT to the guest only once the probe path is done: never while the guest
/// waits on the host (race C3's window). Relations the slow host sent before it saw the
/// answer list the function again: it is not announced a second time.
#[test]
fn slow_host_never_opens_the_probe_window() {
    let mut bus = Bus::new();
    bus.survey(&[1]);
    let d0 = bus.guest_requests(d0_entry());
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(40));
    assert!(
        bus.guest_ejects().is_empty(),
        "no EJECT while the guest waits for BUS_D0ENTRY"
    );
    assert_eq!(
        ejection_completes_to_host(&bus, 1),
        1,
        "the host's EJECT is answered within its budget"
    );
    assert_eq!(bus.relay.counters().ejects_answered_at_deadline, 1);
    assert_eq!(
        bus.relay.function(slot(1)).map(|f| f.backing()),
        Some(Backing::Shield)
    );
    // The host, still working through D0 entry, lists what it had then, and answers.
    bus.host_sends(relations2(&[1]));
    bus.host_completes(MessageType::BUS_D0ENTRY, status(Status::SUCCESS));
    assert!(bus.guest_completion(d0).is_some());
    bus.guest_requests(resources_assigned2(1));
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)], "delivered at a safe point");
    bus.guest_sends(ejection_complete(1));
    bus.advance(Duration::from_secs(5));
    assert_eq!(
        ejection_completes_to_host(&bus, 1),
        1,
        "the guest's completion is not a second answer"
    );
    assert_eq!(announced_in(&bus, 1), [desc2(1, 0x1414)], "no ghost");
    assert_eq!(bus.relay.host_link(), HostLink::Up);
}

/// A guest that keeps a function busy (config reads every 50 ms, so its EJECT stays held)
/// and then never completes the EJECT leaves the host waiting no longer than `max_hold`
/// after the host's EJECT, not `max_hold` after the guest got it; its late completion is no
/// second answer.
#[test]
fn host_eject_is_answered_by_max_hold_after_it_arrived() {
    let mut bus = Bus::installed_with(&[1]);
    let read = ConfigAccess::Read {
        slot: slot(1),
        offset: 0,
        len: 4,
    };
    bus.relay.handle_config_access(bus.now, read);
    bus.host_sends(eject(1));
    assert!(bus.guest_ejects().is_empty(), "held: the function is busy");
    let sent = bus.now;
    let max_hold = RelayConfig::default().max_hold;
    let mut answered_at = None;
    for _ in 0..1000 {
        bus.advance(Duration::from_millis(50));
        bus.relay.handle_config_access(
            bus.now,
            ConfigAccess::Read {
                slot: slot(1),
                offset: 0,
                len: 4,
            },
        );
        bus.drain();
        if answered_at.is_none() && ejection_completes_to_host(&bus, 1) == 1 {
            answered_at = Some(bus.now);
        }
    }
    let answered_at = answered_at.expect("the host's EJECT is answered");
    assert!(answered_at - sent <= max_hold + Duration::from_millis(50));
    bus.guest_sends(ejection_complete(1));
    assert_eq!(ejection_completes_to_host(&bus, 1), 1);
}

/// `max_hold` is checked against the host's EJECT budget: beyond the limit the configuration
/// is refused by `validate`, and a relay built with it anyway answers within the limit.
#[test]
fn max_hold_is_validated_against_the_host_budget() {
    let too_long = RelayConfig {
        max_hold: Duration::from_secs(90),
        ..RelayConfig::default()
    };
    assert_eq!(
        too_long.validate(),
        Err(ConfigError::MaxHoldBeyondHostBudget(Duration::from_secs(
            90
        )))
    );
    assert_eq!(RelayConfig::default().validate(), Ok(()));
    let mut bus = Bus::with(too_long, Safeguards::ALL_ON);
    bus.survey(&[1]);
    bus.finish_probe(&[1]);
    bus.host_sends(eject(1));
    bus.advance(MAX_HOLD_LIMIT);
    assert_eq!(ejection_completes_to_host(&bus, 1), 1);
    assert!(MAX_HOLD_LIMIT < HOST_EJECT_TIMEOUT);
}

// ---- 3. many functions ----

/// A conformant host with 40 functions on one bus (32 devices, the first 8 with a second
/// function) keeps its bus, and the guest gets all 40.
#[test]
fn forty_functions_reach_the_guest() {
    let descs: Vec<FunctionDescription2> = (0u8..40)
        .map(|i| {
            let mut d = desc2(0, 0x1414);
            d.wslot = WinSlot::new(i % 32, i / 32);
            d.ser = u32::from(i).into();
            d
        })
        .collect();
    let mut bus = Bus::new();
    let v = bus.guest_requests(query_version(ProtocolVersion::V1_4));
    bus.host_completes(MessageType::QUERY_PROTOCOL_VERSION, status(Status::SUCCESS));
    assert!(bus.guest_completion(v).is_some());
    bus.guest_sends(query_relations());
    bus.host_sends(relations_of(&descs));
    assert_eq!(bus.relay.host_link(), HostLink::Up);
    assert_eq!(bus.relay.counters().malformed_host, 0);
    let announced = bus.guest_messages().into_iter().find_map(|m| match m {
        Message::BusRelations2(r) => Some(r.functions),
        _ => None,
    });
    assert_eq!(announced, Some(descs));
}

/// A configured lower limit keeps what fits: the functions the relay already has, then the
/// first new ones; the rest are left out and counted, and the bus is kept.
#[test]
fn a_lower_limit_keeps_what_fits() {
    let config = RelayConfig {
        limits: Limits {
            max_functions: 4,
            ..Limits::default()
        },
        ..RelayConfig::default()
    };
    let mut bus = Bus::with(config, Safeguards::ALL_ON);
    bus.survey(&[5]);
    bus.finish_probe(&[5]);
    bus.host_sends(relations2(&[1, 2, 3, 4, 5, 6]));
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.relay.host_link(), HostLink::Up);
    assert_eq!(bus.relay.counters().over_limit_relations, 1);
    assert_eq!(
        bus.guest_relations().last(),
        Some(&vec![slot(1), slot(2), slot(3), slot(5)]),
        "slot 5, which the guest holds, is kept; then the first new ones"
    );
    // An EJECT of a slot left out is within the host's rights.
    bus.host_sends(eject(6));
    assert_eq!(ejection_completes_to_host(&bus, 6), 1);
    assert_eq!(bus.relay.counters().malformed_host, 0);
}

// ---- a stray EJECTION_COMPLETE from the guest ----

/// An EJECTION_COMPLETE from the guest for a function it was never told to eject is counted
/// and changes nothing: the function stays in the table, announced and backed.
#[test]
fn stray_guest_ejection_complete_keeps_the_function() {
    let mut bus = Bus::installed_with(&[1]);
    bus.guest_sends(ejection_complete(1));
    assert_eq!(bus.relay.counters().malformed_guest, 1);
    let f = bus.relay.function(slot(1)).expect("still there");
    assert_eq!(f.guest(), GuestState::Announced);
    // And a later host EJECT goes through the guest as usual.
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
}

// ---- a guest that stops responding ----

/// A guest that never completes an EJECT: after `max_hold` of its own time the relay raises
/// an alarm (`overdue_change`, `changes/overdue` in inspect) and moves on, and the host's
/// EJECT has been answered; the alarm ends when the guest lets go after all.
#[test]
fn a_stuck_guest_raises_an_alarm_until_it_lets_go() {
    use inspect::Inspect;
    let mut bus = Bus::installed_with(&[1]);
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    assert_eq!(bus.relay.overdue_change(), None);
    bus.advance(RelayConfig::default().max_hold);
    assert_eq!(bus.relay.overdue_change(), Some(ChangeKind::Eject(slot(1))));
    let tree = bus.relay.inspect();
    let overdue = tree.query("changes/overdue/change").map(|n| n.to_json());
    assert_eq!(
        overdue.ok().as_ref().and_then(|v| v.as_str()),
        Some("eject 01.0")
    );
    assert_eq!(
        ejection_completes_to_host(&bus, 1),
        1,
        "the host is answered"
    );
    bus.guest_sends(ejection_complete(1));
    assert_eq!(bus.relay.overdue_change(), None);
    assert_eq!(ejection_completes_to_host(&bus, 1), 1, "no second answer");
}
