//! Unit tests for [`RequestTable`]: its limits, the eviction of remembered local answers,
//! the classification of host completions that match no live request, the host request
//! table, transaction ids, and the selection of requests for departed functions.

use super::{Forwarded, Full, RequestTable, Unmatched};
use std::time::Duration;
use vpci_protocol::wire::{Empty, SlotBody};
use vpci_protocol::{Fixed, Message, MessageType, WinSlot};

fn slot(device: u8) -> WinSlot {
    WinSlot::new(device, 0)
}

/// A QUERY_RESOURCE_REQUIREMENTS for `device`, forwarded at `sent_at` ms.
fn query(guest_txid: u64, device: u8, sent_at: u64) -> Forwarded {
    Forwarded {
        guest_txid,
        request: Message::QueryResourceRequirements(Fixed::new(SlotBody {
            wslot: slot(device),
        })),
        slot: Some(slot(device)),
        sent_at: Duration::from_millis(sent_at),
    }
}

/// A QUERY_BUS_RELATIONS (names no function), forwarded at `sent_at` ms.
fn bus_query(guest_txid: u64, sent_at: u64) -> Forwarded {
    Forwarded {
        guest_txid,
        request: Message::QueryBusRelations(Fixed::new(Empty {})),
        slot: None,
        sent_at: Duration::from_millis(sent_at),
    }
}

fn admit(table: &mut RequestTable, fwd: Forwarded) -> u64 {
    match table.admit(fwd) {
        Ok(id) => id,
        Err(Full(limit)) => panic!("table unexpectedly full at {limit}"),
    }
}

fn is_late(r: Result<Forwarded, Unmatched>, expected: MessageType) -> bool {
    matches!(r, Err(Unmatched::Late(ty)) if ty == expected)
}

fn is_stale(r: Result<Forwarded, Unmatched>) -> bool {
    matches!(r, Err(Unmatched::Stale))
}

fn is_unknown(r: Result<Forwarded, Unmatched>) -> bool {
    matches!(r, Err(Unmatched::Unknown))
}

/// Exactly `live_limit` requests are admitted; the next is refused with `Full` naming the
/// limit, and nothing about the table changes by the refusal.
#[test]
fn admits_up_to_the_live_limit_then_full() {
    let mut t = RequestTable::new(3, 8);
    let ids: Vec<u64> = (0..3).map(|i| admit(&mut t, query(i, 1, 0))).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(t.live_len(), 3);
    assert!(matches!(t.admit(query(9, 1, 0)), Err(Full(3))));
    assert_eq!(t.live_len(), 3);
    assert_eq!(t.live_ids(), [1, 2, 3]);
    // A refused request used no id.
    t.complete(2).expect("live request 2");
    assert_eq!(admit(&mut t, query(10, 1, 0)), 4);
}

/// A limit of zero admits nothing.
#[test]
fn live_limit_zero_admits_nothing() {
    let mut t = RequestTable::new(0, 8);
    assert!(matches!(t.admit(query(0, 1, 0)), Err(Full(0))));
    assert!(t.idle());
}

/// An answered request leaves the live table at once, whichever way it was answered (the
/// host's completion, a local answer, or the host channel refusing it), and frees its place
/// under the limit.
#[test]
fn answered_ids_leave_the_live_table() {
    let mut t = RequestTable::new(3, 8);
    let a = admit(&mut t, query(100, 1, 0));
    let b = admit(&mut t, query(101, 2, 0));
    let c = admit(&mut t, bus_query(102, 0));
    assert!(matches!(t.admit(query(103, 1, 0)), Err(Full(3))));

    let fwd = t.complete(b).expect("b is live");
    assert_eq!(fwd.guest_txid, 101);
    assert_eq!(t.live_ids(), [a, c]);

    let fwd = t.answer_locally(a).expect("a is live");
    assert_eq!(fwd.guest_txid, 100);
    assert_eq!(t.live_ids(), [c]);
    assert_eq!(t.remembered(), 1);

    let fwd = t.refused(c).expect("c is live");
    assert_eq!(fwd.guest_txid, 102);
    assert!(t.idle());
    assert_eq!(t.live_len(), 0);
    // A refused request never reached the host: nothing to remember.
    assert_eq!(t.remembered(), 1);

    // None of them can be taken out a second time as live.
    assert!(t.answer_locally(a).is_none());
    assert!(t.refused(b).is_none());
    assert!(t.answer_locally(c).is_none());

    // Their places are free again.
    for i in 0..3 {
        admit(&mut t, query(200 + i, 1, 0));
    }
    assert!(matches!(t.admit(query(203, 1, 0)), Err(Full(3))));
}

/// Remembered local answers are a FIFO bounded by `answered_limit`: past it the oldest is
/// forgotten first, and its late completion is then only `Stale`; the newer ones are still
/// recognised as `Late`.
#[test]
fn remembered_answers_evicted_oldest_first() {
    let mut t = RequestTable::new(8, 2);
    let ids: Vec<u64> = (0..4).map(|i| admit(&mut t, query(i, 1, 0))).collect();
    for &id in &ids {
        t.answer_locally(id).expect("live");
        assert!(t.remembered() <= 2);
    }
    assert_eq!(t.remembered(), 2);
    assert!(is_stale(t.complete(ids[0])));
    assert!(is_stale(t.complete(ids[1])));
    assert!(is_late(
        t.complete(ids[2]),
        MessageType::QUERY_RESOURCE_REQUIREMENTS
    ));
    assert!(is_late(
        t.complete(ids[3]),
        MessageType::QUERY_RESOURCE_REQUIREMENTS
    ));
    assert_eq!(t.remembered(), 0);
}

/// With `answered_limit` 0 the table remembers no local answer: a late completion for one is
/// `Stale`, never `Late`.
#[test]
fn answered_limit_zero_remembers_nothing() {
    let mut t = RequestTable::new(4, 0);
    let id = admit(&mut t, query(1, 1, 0));
    assert!(t.answer_locally(id).is_some());
    assert_eq!(t.remembered(), 0);
    assert!(t.idle());
    assert!(is_stale(t.complete(id)));
}

/// A host completion matching no live request is `Late` (with the request's type) if the
/// relay answered that request itself and still remembers it, and only once; `Stale` if the
/// relay issued the id and is done with it; `Unknown` for 0 and for ids not issued yet.
#[test]
fn late_stale_and_unknown() {
    let mut t = RequestTable::new(4, 4);
    let completed = admit(&mut t, query(1, 1, 0));
    let local_query = admit(&mut t, query(2, 1, 0));
    let local_bus = admit(&mut t, bus_query(3, 0));
    let refused = admit(&mut t, query(4, 2, 0));

    assert!(t.complete(completed).is_ok());
    t.answer_locally(local_query).expect("live");
    t.answer_locally(local_bus).expect("live");
    t.refused(refused).expect("live");

    // Each remembered answer carries its own request's type.
    assert!(is_late(
        t.complete(local_bus),
        MessageType::QUERY_BUS_RELATIONS
    ));
    assert!(is_late(
        t.complete(local_query),
        MessageType::QUERY_RESOURCE_REQUIREMENTS
    ));
    // A late completion is matched once; a second one for the same id is stale.
    assert!(is_stale(t.complete(local_query)));
    assert_eq!(t.remembered(), 0);

    // Completed by the host, or refused by its channel: issued and finished.
    assert!(is_stale(t.complete(completed)));
    assert!(is_stale(t.complete(refused)));

    // Never issued: 0 (the relay never uses it) and anything from the next id on.
    assert!(is_unknown(t.complete(0)));
    assert!(is_unknown(t.complete(refused + 1)));
    assert!(is_unknown(t.complete(u64::MAX)));
}

/// Host requests forwarded to the guest are bounded by the live limit on their own: past it
/// `forward_host_request` gives `None`; taking one back frees its place and gives the host's
/// id once. Guest requests at the host do not count against it, nor it against them.
#[test]
fn host_request_table_limit() {
    let mut t = RequestTable::new(2, 2);
    let a = t.forward_host_request(0xa0).expect("room");
    let b = t.forward_host_request(0xb0).expect("room");
    assert_ne!(a, b);
    assert_eq!(t.host_requests_len(), 2);
    assert!(t.forward_host_request(0xc0).is_none());
    assert_eq!(t.host_requests_len(), 2);

    // The guest side still has all its room.
    let g1 = admit(&mut t, query(1, 1, 0));
    let g2 = admit(&mut t, query(2, 1, 0));
    assert!(matches!(t.admit(query(3, 1, 0)), Err(Full(2))));
    // Ids are unique across both tables.
    assert!(![a, b].contains(&g1) && ![a, b].contains(&g2));
    // A guest request's id is no host request.
    assert_eq!(t.take_host_request(g1), None);

    assert_eq!(t.take_host_request(b), Some(0xb0));
    assert_eq!(t.take_host_request(b), None);
    assert_eq!(t.host_requests_len(), 1);
    let c = t.forward_host_request(0xc0).expect("room again");
    assert_eq!(t.take_host_request(c), Some(0xc0));
    assert_eq!(t.take_host_request(a), Some(0xa0));
    assert_eq!(t.host_requests_len(), 0);
}

/// Transaction ids start at 1, are never 0, and wrap from `u64::MAX` to 1; guest requests
/// and host requests draw from the same sequence.
#[test]
fn txid_never_zero_and_wraps_to_one() {
    let mut t = RequestTable::new(4, 4);
    assert_eq!(admit(&mut t, query(1, 1, 0)), 1);
    assert_eq!(t.forward_host_request(0x10), Some(2));
    assert_eq!(admit(&mut t, query(2, 1, 0)), 3);

    let mut t = RequestTable::new(4, 4);
    t.next_txid = u64::MAX - 1;
    assert_eq!(admit(&mut t, query(1, 1, 0)), u64::MAX - 1);
    assert_eq!(admit(&mut t, query(2, 1, 0)), u64::MAX);
    assert_eq!(admit(&mut t, query(3, 1, 0)), 1);
    assert_eq!(t.forward_host_request(0x10), Some(2));
    // The live table stays sorted by id across the wrap, and every id still matches.
    assert_eq!(t.live_ids(), [1, u64::MAX - 1, u64::MAX]);
    for id in [u64::MAX, 1, u64::MAX - 1] {
        assert!(t.complete(id).is_ok(), "id {id:#x}");
    }
    assert!(t.idle());
}

/// `stale()` names exactly the live requests for departed functions that have waited at
/// least `timeout` (the boundary included); requests for present functions, and requests
/// that name no function, are never stale however old.
#[test]
fn stale_selects_only_departed_slots_past_the_timeout() {
    let mut t = RequestTable::new(8, 8);
    let gone_early = admit(&mut t, query(1, 1, 0));
    let present = admit(&mut t, query(2, 2, 0));
    let no_slot = admit(&mut t, bus_query(3, 0));
    let gone_late = admit(&mut t, query(4, 3, 5));
    let departed = |s: WinSlot| s == slot(1) || s == slot(3);
    let timeout = Duration::from_millis(10);
    let at = Duration::from_millis;

    assert!(t.stale(at(9), timeout, departed).is_empty());
    assert_eq!(t.stale(at(10), timeout, departed), [gone_early]);
    assert_eq!(t.stale(at(14), timeout, departed), [gone_early]);
    assert_eq!(t.stale(at(15), timeout, departed), [gone_early, gone_late]);
    let all = t.stale(at(1_000_000), timeout, departed);
    assert!(!all.contains(&present) && !all.contains(&no_slot));

    // Nothing departed: nothing stale.
    assert!(t.stale(at(1_000_000), timeout, |_| false).is_empty());
    // A timeout too long to add to the send time never comes.
    assert!(t.stale(at(1_000_000), Duration::MAX, departed).is_empty());
    // Answered requests are out of the live table and never stale.
    t.answer_locally(gone_early).expect("live");
    assert_eq!(t.stale(at(15), timeout, departed), [gone_late]);
}

/// `deadline()` is the earliest time a live request for a departed function will have waited
/// `timeout`; older requests for present functions or for no function do not count, and
/// with none departed there is no deadline. A deadline already past does not hide a later
/// one.
#[test]
fn deadline_counts_only_departed_slots() {
    let mut t = RequestTable::new(8, 8);
    assert_eq!(
        t.deadline(Duration::ZERO, Duration::from_millis(10), |_| true),
        None
    );
    admit(&mut t, query(1, 2, 0));
    admit(&mut t, bus_query(2, 0));
    let late = admit(&mut t, query(3, 3, 7));
    let early = admit(&mut t, query(4, 1, 3));
    let departed = |s: WinSlot| s == slot(1) || s == slot(3);
    let timeout = Duration::from_millis(10);

    assert_eq!(
        t.deadline(Duration::ZERO, timeout, departed),
        Some(Duration::from_millis(13))
    );
    assert_eq!(t.deadline(Duration::ZERO, timeout, |_| false), None);
    assert_eq!(
        t.deadline(Duration::from_millis(13), timeout, departed),
        Some(Duration::from_millis(17)),
        "the past deadline does not hide the next"
    );
    t.complete(early).expect("live");
    assert_eq!(
        t.deadline(Duration::ZERO, timeout, departed),
        Some(Duration::from_millis(17))
    );
    // A timeout that overflows saturates instead of panicking.
    assert_eq!(
        t.deadline(Duration::ZERO, Duration::MAX, departed),
        Some(Duration::MAX)
    );
    t.refused(late).expect("live");
    assert_eq!(t.deadline(Duration::ZERO, timeout, departed), None);
}
