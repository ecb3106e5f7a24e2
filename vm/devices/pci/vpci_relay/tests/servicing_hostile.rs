//! Saved states that are corrupt or hostile (in a confidential VM the host is the adversary
//! and the guest untrusted; a state read back may be either's work).
//!
//! - Each hostile state is refused with the error that names what is wrong.
//! - Every bit flip, every truncation and random bytes of valid states: restoring returns
//!   the relay or a typed error, never panics; and a relay restored from a mutated state
//!   that still decodes keeps the relay's promises when run on between hostile peers (the
//!   harness of `fuzz/fuzz_targets/restore.rs`).

mod common;
mod fuzzing;

use common::*;
use fuzzing::Source;
use proptest::prelude::*;
use std::time::Duration;
use vpci_relay::save::*;
use vpci_relay::*;

/// An installed bus with functions 1 and 2; the host ejects 1, the guest has its EJECT; the
/// guest asked for an interrupt for 2 that the host has not answered.
fn busy_bus() -> Bus {
    let mut bus = Bus::installed_with(&[1, 2]);
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    bus.guest_requests(create_interrupt2(2, 3));
    bus.guest_requests(create_interrupt2(2, 4));
    bus
}

fn state() -> (SavedRelay, Duration) {
    let bus = busy_bus();
    let saved = bus.relay.save();
    assert_eq!(saved.requests.as_ref().unwrap().live.len(), 2);
    assert!(saved.changes.as_ref().unwrap().outstanding.is_some());
    (saved, bus.now)
}

fn restore(saved: &SavedRelay) -> Result<BusRelay, RestoreError> {
    BusRelay::restore(RelayConfig::default(), saved, Duration::ZERO)
}

fn function(saved: &mut SavedRelay, dev: u8) -> &mut SavedFunction {
    let raw = slot(dev).raw();
    saved
        .functions
        .as_mut()
        .unwrap()
        .functions
        .iter_mut()
        .find(|f| f.slot == raw)
        .unwrap()
}

/// The unchanged state restores: every refusal below is the change's doing.
#[test]
fn the_base_state_restores() {
    let (saved, _) = state();
    restore(&saved).unwrap();
}

#[test]
fn an_unknown_format_is_refused() {
    let (mut saved, _) = state();
    saved.format = 2;
    assert_eq!(
        restore(&saved).unwrap_err(),
        RestoreError::UnknownFormat { found: 2, known: 1 }
    );
    saved.format = 0;
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::UnknownFormat { found: 0, .. })
    ));
}

#[test]
fn an_unknown_protocol_version_is_refused() {
    let (mut saved, _) = state();
    saved.version = 0x0001_0009;
    assert_eq!(
        restore(&saved).unwrap_err(),
        RestoreError::UnknownVersion(0x0001_0009)
    );
}

#[test]
fn a_duplicate_slot_is_refused() {
    let (mut saved, _) = state();
    let dup = function(&mut saved, 2).clone();
    saved.functions.as_mut().unwrap().functions.push(dup);
    assert_eq!(
        restore(&saved).unwrap_err(),
        RestoreError::DuplicateSlot {
            field: "functions".into(),
            slot: slot(2).raw()
        }
    );
}

#[test]
fn more_functions_than_slots_are_refused() {
    let (mut saved, _) = state();
    let f = function(&mut saved, 2).clone();
    saved.functions.as_mut().unwrap().functions = vec![f; 257];
    assert_eq!(
        restore(&saved).unwrap_err(),
        RestoreError::TooManyFunctions {
            count: 257,
            limit: 256
        }
    );
}

/// The new version's limits bound what it takes on: a request table over its bound is
/// refused, not grown.
#[test]
fn a_request_table_over_its_bound_is_refused() {
    let (saved, _) = state();
    let mut config = RelayConfig::default();
    config.limits.max_outstanding_requests = 1;
    assert_eq!(
        BusRelay::restore(config, &saved, Duration::ZERO).unwrap_err(),
        RestoreError::OverLimit {
            field: "requests.live".into(),
            count: 2,
            limit: 1
        }
    );
}

#[test]
fn a_config_copy_over_its_bound_is_refused() {
    let (mut saved, _) = state();
    function(&mut saved, 2).config = (0..8)
        .map(|i| SavedConfigDword {
            offset: i * 4,
            value: i,
        })
        .collect();
    let mut config = RelayConfig::default();
    config.limits.max_config_cache = 4;
    assert!(matches!(
        BusRelay::restore(config, &saved, Duration::ZERO),
        Err(RestoreError::OverLimit { field, count: 8, limit: 4 }) if field == "functions[1].config"
    ));
}

#[test]
fn an_illegal_state_combination_is_refused() {
    let (mut saved, _) = state();
    // Listed by the host, yet ejected from the guest: the machine never gets there.
    function(&mut saved, 2).guest = 3;
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::IllegalState { field, .. }) if field == "functions[1]"
    ));
    // Owed an EJECTION_COMPLETE while the host lists it.
    let (mut saved, _) = state();
    function(&mut saved, 2).host_ejects_owed = 1;
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::IllegalState { .. })
    ));
}

#[test]
fn an_enum_out_of_range_is_refused() {
    let (mut saved, _) = state();
    function(&mut saved, 2).host = 9;
    assert_eq!(
        restore(&saved).unwrap_err(),
        RestoreError::BadValue {
            field: "functions[1].host".into(),
            value: 9
        }
    );
}

#[test]
fn an_outstanding_change_naming_no_function_is_refused() {
    let (mut saved, _) = state();
    let o = saved
        .changes
        .as_mut()
        .unwrap()
        .outstanding
        .as_mut()
        .unwrap();
    assert_eq!(o.kind, 2, "the guest works on the EJECT");
    o.slot = slot(7).raw();
    assert_eq!(
        restore(&saved).unwrap_err(),
        RestoreError::NoSuchFunction {
            field: "changes.outstanding.slot".into(),
            slot: slot(7).raw()
        }
    );
}

#[test]
fn a_held_eject_naming_no_pending_eject_is_refused() {
    let (mut saved, _) = state();
    saved.changes.as_mut().unwrap().ejects.push(slot(2).raw());
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::NoSuchFunction { .. })
    ));
}

#[test]
fn request_ids_used_twice_or_never_issued_are_refused() {
    let (mut saved, _) = state();
    let requests = saved.requests.as_mut().unwrap();
    let id = requests.live[0].id;
    requests.live[1].id = id;
    assert_eq!(
        restore(&saved).unwrap_err(),
        RestoreError::BadTransaction {
            field: "requests.live[1]".into(),
            id,
            why: "is used twice"
        }
    );
    let (mut saved, _) = state();
    let requests = saved.requests.as_mut().unwrap();
    requests.host_requests.push(SavedHostRequest {
        id: requests.next_txid,
        host_txid: 5,
    });
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::BadTransaction {
            why: "was never issued",
            ..
        })
    ));
}

#[test]
fn a_request_that_is_not_one_is_refused() {
    let (mut saved, _) = state();
    saved.requests.as_mut().unwrap().live[0].request = vec![1, 2, 3];
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::BadRequest { .. })
    ));
    // A request naming another slot than it is saved with.
    let (mut saved, _) = state();
    saved.requests.as_mut().unwrap().live[0].slot = Some(slot(1).raw());
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::BadRequest { .. })
    ));
}

#[test]
fn an_instant_after_the_saved_time_is_refused() {
    let (mut saved, now) = state();
    let later = u64::try_from((now + Duration::from_secs(1)).as_nanos()).unwrap();
    function(&mut saved, 2).last_activity_ns = Some(later);
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::TimeAhead { field, .. }) if field == "functions[1].last_activity_ns"
    ));
    let (mut saved, _) = state();
    saved.now_ns = u64::MAX;
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::TimeAhead { .. })
    ));
}

#[test]
fn a_bad_description_or_slot_is_refused() {
    let (mut saved, _) = state();
    function(&mut saved, 2).desc.pop();
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::BadDescription { len: 27, .. })
    ));
    let (mut saved, _) = state();
    saved.changes.as_mut().unwrap().ejects.push(0x100);
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::BadSlot { raw: 0x100, .. })
    ));
}

#[test]
fn a_lost_host_with_listed_functions_is_refused() {
    let (mut saved, _) = state();
    saved.host_lost = Some(SavedHostLost {
        since_ns: 0,
        rescinded: true,
    });
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::IllegalState { .. })
    ));
    let (mut saved, _) = state();
    saved.guest_closed = true;
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::IllegalState { field, .. }) if field == "guest_closed"
    ));
}

#[test]
fn a_queued_packet_the_guest_could_not_get_is_refused() {
    let (mut saved, _) = state();
    saved.outputs.as_mut().unwrap().tx.push(SavedTransmit {
        to: 2,
        packet: Some(SavedPacket {
            kind: 6,
            flags: 0,
            transaction_id: 0,
            payload: vec![0xff; 8],
        }),
    });
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::BadRequest { .. })
    ));
}

#[test]
fn bytes_that_are_no_state_are_refused() {
    assert!(matches!(
        BusRelay::restore_bytes(RelayConfig::default(), &[0xff, 0xff, 0xff], Duration::ZERO),
        Err(RestoreError::Decode(_))
    ));
    // No bytes at all: every field absent, so no format.
    assert!(matches!(
        BusRelay::restore_bytes(RelayConfig::default(), &[], Duration::ZERO),
        Err(RestoreError::UnknownFormat { found: 0, .. })
    ));
}

/// Valid states at interesting points, as bytes.
fn valid_states() -> Vec<Vec<u8>> {
    let mut probing = Bus::new();
    probing.survey(&[1, 2]);
    let mut rescinded = busy_bus();
    rescinded.relay.handle_host_closed(rescinded.now);
    rescinded.drain();
    vec![
        busy_bus().relay.to_bytes(),
        probing.relay.to_bytes(),
        rescinded.relay.to_bytes(),
    ]
}

/// Runs the restore harness on `bytes`, as taken: no panic, and a relay it restores keeps
/// its promises when run on.
fn restore_and_run(bytes: &[u8]) {
    let program = [7u8, 4, 1, 0, 9, 2, 5, 0, 3, 8, 6, 1];
    fuzzing::restore::restore_and_drive(bytes, &mut Source::new(&program));
}

/// Every single-bit flip and every truncation of valid states.
#[test]
fn every_bit_flip_and_truncation_restores_or_is_refused() {
    let mut restored = 0;
    let mut refused = 0;
    for state in valid_states() {
        for at in 0..state.len() {
            for bit in 0..8 {
                let mut s = state.clone();
                s[at] ^= 1 << bit;
                match BusRelay::restore_bytes(fuzzing::relay::config(), &s, Duration::ZERO) {
                    Ok(_) => restored += 1,
                    Err(_) => refused += 1,
                }
                restore_and_run(&s);
            }
            restore_and_run(&state[..at]);
        }
    }
    // Both outcomes occur: the checks refuse some flips, and many flips (a time, a counter,
    // a txid) still make a state.
    assert!(
        restored > 0 && refused > 0,
        "{restored} restored, {refused} refused"
    );
}

proptest! {
    /// Random bytes, and random structured mutations of valid states (the fuzz target's
    /// input): never a panic; a restored relay keeps its promises.
    #[test]
    fn random_and_mutated_states_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        which in 0usize..3,
    ) {
        restore_and_run(&data);
        let state = &valid_states()[which];
        let mut input = vec![1u8];
        input.extend_from_slice(&u16::try_from(state.len()).unwrap().to_le_bytes());
        input.extend_from_slice(state);
        input.extend_from_slice(&data);
        fuzzing::restore::run(&input);
        input[0] = 2;
        fuzzing::restore::run(&input);
    }
}

/// A table of config accesses in flight that the relay could not have written is refused by
/// field: an id never issued or used twice, a width or offset the window cannot carry, more
/// than the limit, an instant after the saved time, and an access whose function did not depart
/// with a lost host.
#[test]
fn a_bad_access_table_is_refused() {
    let access = |id| SavedAccess {
        id,
        write: false,
        slot: slot(2).raw(),
        offset: 0,
        len: 4,
        value: 0,
        since_ns: 0,
        departed_ns: None,
    };
    let with = |table: SavedAccessTable| {
        let (mut saved, _) = state();
        saved.accesses = Some(table);
        restore(&saved)
    };
    let table = |accesses: Vec<SavedAccess>| SavedAccessTable {
        next_id: 10,
        in_flight: accesses,
    };
    assert_eq!(
        with(table(vec![access(3)])).map(|r| r.accesses_in_flight()),
        Ok(1)
    );
    let field = |r: Result<BusRelay, RestoreError>| match r {
        Err(RestoreError::BadValue { field, .. }) => field,
        other => panic!("expected a bad value, got {other:?}"),
    };
    assert_eq!(
        field(with(table(vec![access(10)]))),
        "accesses.in_flight[0].id"
    );
    assert_eq!(
        field(with(table(vec![access(0)]))),
        "accesses.in_flight[0].id"
    );
    assert_eq!(
        field(with(table(vec![access(3), access(3)]))),
        "accesses.in_flight[1].id"
    );
    assert_eq!(
        field(with(table(vec![SavedAccess {
            len: 3,
            ..access(3)
        }]))),
        "accesses.in_flight[0].len"
    );
    assert_eq!(
        field(with(table(vec![SavedAccess {
            offset: 4096,
            ..access(3)
        }]))),
        "accesses.in_flight[0].offset"
    );
    assert!(matches!(
        with(table(vec![SavedAccess {
            slot: 0x100,
            ..access(3)
        }])),
        Err(RestoreError::BadSlot { .. })
    ));
    assert!(matches!(
        with(table(vec![SavedAccess {
            since_ns: u64::MAX >> 2,
            ..access(3)
        }])),
        Err(RestoreError::TimeAhead { .. })
    ));
    // A departure noted after the saved time, or before the access began.
    assert!(matches!(
        with(table(vec![SavedAccess {
            departed_ns: Some(u64::MAX >> 2),
            ..access(3)
        }])),
        Err(RestoreError::TimeAhead { .. })
    ));
    assert_eq!(
        field(with(table(vec![SavedAccess {
            since_ns: 2,
            departed_ns: Some(1),
            ..access(3)
        }]))),
        "accesses.in_flight[0].departed_ns"
    );
    let many = (1..=65).map(access).collect();
    assert!(matches!(
        with(SavedAccessTable {
            next_id: 100,
            in_flight: many,
        }),
        Err(RestoreError::OverLimit { .. })
    ));
    // With the host lost, every access's function departed with it: the relay's own state
    // restores, one whose access has no departure is refused.
    let mut bus = Bus::installed_with(&[1]);
    let _ = bus.relay.handle_config_access(
        bus.now,
        ConfigAccess::Read {
            slot: slot(1),
            offset: 0,
            len: 4,
        },
    );
    bus.relay.handle_host_closed(bus.now);
    let mut saved = bus.relay.save();
    assert_eq!(restore(&saved).map(|r| r.accesses_in_flight()), Ok(1));
    let mut table = saved.accesses.clone().unwrap_or_default();
    for a in &mut table.in_flight {
        a.departed_ns = None;
    }
    saved.accesses = Some(table);
    assert!(matches!(
        restore(&saved),
        Err(RestoreError::IllegalState { .. })
    ));
}
