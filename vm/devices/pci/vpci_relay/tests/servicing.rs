//! Servicing: the relay saved, encoded, and restored from the bytes, as a new paravisor
//! would, must carry its state across exactly.
//!
//! - Round trip at every input: the free host and conformant guest of
//!   `tests/fuzzing/promises.rs`, run once as they are and once with the relay saved and
//!   restored after every input, produce exactly the same outputs (packets, backing changes,
//!   events) and end with the same fingerprint; likewise with the bus stopped for a while
//!   (host packets arriving meanwhile queued and delivered first on resuming).
//! - Time spent stopped counts: a host EJECT held before the save is answered by
//!   `max_hold` after its arrival, however long the stop.
//! - Compatibility: a state with fields this version does not know restores (an older
//!   reader skips a newer writer's fields); a state without the fields a newer writer adds
//!   restores with their defaults.
//!
//! Hostile states are in `servicing_hostile.rs`, the golden files in `servicing_golden.rs`.

mod common;
mod fuzzing;

use common::*;
use fuzzing::promises::{Servicing, run_with};
use proptest::prelude::*;
use std::hash::{DefaultHasher, Hasher};
use std::time::Duration;
use vpci_relay::save::SavedRelay;
use vpci_relay::*;

fn fingerprint(relay: &BusRelay) -> u64 {
    let mut h = DefaultHasher::new();
    relay.fingerprint(&mut h);
    h.finish()
}

/// The same run without servicing and with the relay saved and restored after every input.
fn same_with_servicing(data: &[u8]) -> Result<(), TestCaseError> {
    let record = Servicing {
        record: true,
        ..Servicing::default()
    };
    let plain = run_with(data, record);
    let serviced = run_with(
        data,
        Servicing {
            every_input: true,
            ..record
        },
    );
    prop_assert!(!plain.trace.is_empty());
    prop_assert_eq!(plain, serviced);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(150),
        ..ProptestConfig::default()
    })]

    /// Saving and restoring after every input changes nothing the relay does.
    #[test]
    fn a_round_trip_after_every_input_changes_nothing(
        data in proptest::collection::vec(any::<u8>(), 0..240),
    ) {
        same_with_servicing(&data)?;
    }

    /// A bus stopped and serviced (host packets queued meanwhile, delivered first on
    /// resuming) does what a bus that merely waited does, and the promises hold.
    #[test]
    fn a_stop_window_with_servicing_is_a_pause(
        data in proptest::collection::vec(any::<u8>(), 0..240),
        at in 0usize..40,
        window in prop::sample::select(vec![0u64, 50, 2_000, 20_000]),
        every_input in any::<bool>(),
    ) {
        let stop = Some((at, Duration::from_millis(window)));
        let paused = run_with(&data, Servicing { stop, record: true, every_input: false });
        // Servicing on both sides of the window (and, at random, after every input too).
        let serviced = run_with(&data, Servicing { stop, record: true, every_input });
        let serviced_at_stop_only = run_with(&data, Servicing {
            stop,
            record: true,
            every_input: false,
        });
        prop_assert_eq!(&paused, &serviced_at_stop_only);
        prop_assert_eq!(&paused.fingerprint, &serviced.fingerprint);
    }
}

/// The committed promise seeds, serviced after every input.
#[test]
fn the_promise_seeds_survive_servicing_at_every_input() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../../fuzz/corpus/relay_promises");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        same_with_servicing(&data).unwrap();
        n += 1;
    }
    assert!(n > 0);
}

/// An installed bus whose guest got the host's EJECT of function 1 and does not let go: the
/// host's EJECT waits for the guest or for `max_hold`.
fn eject_delivered_not_answered() -> Bus {
    let mut bus = Bus::installed_with(&[1]);
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), vec![slot(1)]);
    assert_eq!(ejection_completes_to_host(&bus, 1), 0);
    bus
}

fn restore_at(bus: &Bus, now: Duration) -> Bus {
    let bytes = bus.relay.to_bytes();
    let mut restored = Bus::new();
    restored.relay = BusRelay::restore_bytes(RelayConfig::default(), &bytes, now).unwrap();
    restored.now = now;
    restored.drain();
    restored
}

/// The host's EJECT arrived at `t0`; the bus is saved a second later and stopped for 39 s:
/// on resuming, 40 s after the EJECT (beyond `max_hold`, 30 s), the relay answers it at
/// once. Had the stop not counted, the host would wait 30 s more, 70 s in all, past its 60 s
/// budget.
#[test]
fn time_spent_stopped_counts_toward_the_hosts_eject_budget() {
    let bus = eject_delivered_not_answered();
    let arrived = bus.now - Duration::from_secs(1);
    let max_hold = RelayConfig::default().max_hold;
    let resumed = restore_at(&bus, arrived + Duration::from_secs(40));
    assert_eq!(ejection_completes_to_host(&resumed, 1), 1);
    assert!(
        resumed
            .events
            .contains(&RelayEvent::EjectAnsweredAtDeadline { slot: slot(1) })
    );
    // A short stop: the answer is still ahead, at the EJECT's own deadline.
    let mut short = restore_at(&bus, arrived + Duration::from_secs(10));
    assert_eq!(ejection_completes_to_host(&short, 1), 0);
    assert_eq!(short.relay.poll_timeout(), Some(arrived + max_hold));
    short.advance(max_hold);
    assert_eq!(ejection_completes_to_host(&short, 1), 1);
}

/// A clock that reads before the saved time does not take the relay back in time.
#[test]
fn a_restore_before_the_saved_time_resumes_at_the_saved_time() {
    let bus = eject_delivered_not_answered();
    let resumed = restore_at(&bus, Duration::ZERO);
    let restored = resumed.relay.restored().unwrap();
    assert_eq!(restored.at, bus.now);
    assert_eq!(restored.from_format, vpci_relay::save::FORMAT);
    assert_eq!(fingerprint(&resumed.relay), fingerprint(&bus.relay));
}

/// Unknown fields appended to an encoded state, as a newer writer would add them: this
/// version skips them and restores the same relay.
#[test]
fn an_older_reader_skips_fields_it_does_not_know() {
    let bus = eject_delivered_not_answered();
    let mut bytes = bus.relay.to_bytes();
    // Field 100, varint 7; field 101, bytes "new"; field 102, fixed64.
    bytes.extend_from_slice(&[0xa0, 0x06, 0x07]);
    bytes.extend_from_slice(&[0xaa, 0x06, 0x03, b'n', b'e', b'w']);
    bytes.extend_from_slice(&[0xb1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]);
    let restored = BusRelay::restore_bytes(RelayConfig::default(), &bytes, bus.now).unwrap();
    assert_eq!(fingerprint(&restored), fingerprint(&bus.relay));
    // And the same unknown fields inside a function's entry.
    let mut saved = bus.relay.save();
    let table = saved.functions.as_mut().unwrap();
    let mut entry = prost::Message::encode_to_vec(&table.functions[0]);
    entry.extend_from_slice(&[0xa0, 0x06, 0x07]);
    table.functions[0] = prost::Message::decode(entry.as_slice()).unwrap();
    let restored = BusRelay::restore(RelayConfig::default(), &saved, bus.now).unwrap();
    assert_eq!(fingerprint(&restored), fingerprint(&bus.relay));
}

/// A state without fields a newer writer added (here: the outputs and counters) restores,
/// the missing fields taking their defaults ("not present").
#[test]
fn a_newer_reader_takes_an_older_state() {
    let bus = eject_delivered_not_answered();
    let mut saved: SavedRelay = bus.relay.save();
    saved.outputs = None;
    let restored = BusRelay::restore(RelayConfig::default(), &saved, bus.now).unwrap();
    assert_eq!(fingerprint(&restored), fingerprint(&bus.relay));
    assert_eq!(restored.counters(), &Counters::default());
    assert_ne!(bus.relay.counters(), &Counters::default());
}

/// Packets the driver had not taken yet are saved and come out of the restored relay, in
/// order.
#[test]
fn queued_packets_are_carried_across() {
    let mut bus = Bus::installed_with(&[1]);
    bus.relay
        .handle_host(bus.now, vmbus_channel::Packet::in_band(0, padded(eject(1))));
    let before = bus.relay.save();
    let mut restored = restore_at(&bus, bus.now);
    let (guest, host, backing) = (bus.to_guest.len(), bus.to_host.len(), bus.backing.len());
    bus.drain();
    assert!(!before.outputs.unwrap().tx.is_empty());
    assert!(!restored.to_guest.is_empty());
    assert_eq!(restored.to_guest, bus.to_guest[guest..]);
    assert_eq!(restored.to_host, bus.to_host[host..]);
    assert_eq!(restored.backing, bus.backing[backing..]);
    // And the restored relay goes on as the original does.
    restored.guest_sends(ejection_complete(1));
    bus.guest_sends(ejection_complete(1));
    assert_eq!(ejection_completes_to_host(&restored, 1), 1);
    assert_eq!(fingerprint(&restored.relay), fingerprint(&bus.relay));
}
