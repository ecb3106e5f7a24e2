//! The `openhcl-vpci` service's own saved state (what it hands its successor on an update),
//! decoded and checked by `openhcl_vpci::service::saved::validate`, the code the successor
//! runs before it takes any descriptor.
//!
//! The input (structured with `arbitrary`) describes a valid saved service: buses in every
//! table state, the running ones with their ring ends, mapped slots and relay state, guest
//! accesses outstanding at the host, the connections and listeners, and the descriptors the
//! handover carries. Then it picks corruptions: some each make the state invalid (a wrong
//! format, a table state, generation or bus id out of range, a bus twice, a running bus the
//! table does not run, a ring end missing, with a wrong descriptor count or end code, a
//! backing code out of range, an access that does not decode, is too wide or has an id not
//! issued or used twice, too many accesses, a descriptor index beyond the handover or named
//! twice, fewer descriptors handed over than named); some touch only the bytes (truncation,
//! a byte flipped, a field length that lies) and may or may not; an unknown field appended
//! must be skipped. Or the input is taken as the state's bytes as they are.
//!
//! Promises: never a panic; a valid state validates to exactly what was written (decode of
//! the encoding is the state itself, the restored table saves back to the saved one, each
//! access's operation is the one written); a state with a corruption that invalidates it is
//! a typed error, of the kind the corruption calls for when there is one corruption; any state
//! that validates re-encodes to one that validates the same. Each running bus's relay state
//! is restored as the bus would restore it (`vpci_relay`), without a panic.

#![no_main]

#[path = "service_restore/build.rs"]
mod build;
#[path = "service_restore/corrupt.rs"]
mod corrupt;

use arbitrary::{Arbitrary, Unstructured};
use build::{Layout, Parts, build};
use corrupt::{Corruption, corrupt, corrupt_bytes};
use openhcl_vpci::control::MmioOp;
use openhcl_vpci::service::saved::{SavedError, SavedService, validate};
use prost::Message as _;
use std::time::Duration;
use vpci_relay::{BusRelay, RelayConfig, SavedBus};

const MAX_CORRUPTIONS: usize = 3;

#[derive(Debug, Arbitrary)]
enum Input {
    /// A state built from parts, then corrupted.
    Built(Parts),
    /// Bytes as they are, with this many descriptors.
    Raw(u8, Vec<u8>),
}

/// What kind of error a corruption calls for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Expect {
    Format,
    Invalid,
    Descriptor,
    /// Bytes changed: valid or a typed error.
    Either,
    /// Still valid.
    Valid,
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    match Input::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(Input::Built(parts)) => built(parts),
        Ok(Input::Raw(descriptors, bytes)) => {
            if let Ok(v) = validate(&bytes, usize::from(descriptors)) {
                revalidates(&v.saved, usize::from(descriptors));
            }
        }
        Err(_) => {}
    }
}

fn built(parts: Parts) {
    let (mut state, mut layout, ops) = build(&parts);
    if parts.corruptions.is_empty() {
        valid(&state, layout, &ops);
        return;
    }
    let mut expects = Vec::new();
    let mut bytes_stage = Vec::new();
    for c in parts.corruptions.iter().take(MAX_CORRUPTIONS) {
        match c {
            Corruption::Truncate(_)
            | Corruption::FlipByte(..)
            | Corruption::LyingLength(..)
            | Corruption::UnknownField(..) => bytes_stage.push(c),
            c => {
                if let Some(e) = corrupt(&mut state, &mut layout, c) {
                    expects.push(e);
                }
            }
        }
    }
    let mut bytes = state.encode_to_vec();
    for c in bytes_stage {
        if let Some(e) = corrupt_bytes(&mut bytes, c) {
            expects.push(e);
        }
    }
    let descriptors = layout.descriptors;
    let result = validate(&bytes, descriptors);
    if expects.iter().all(|e| *e == Expect::Valid) {
        match result {
            Ok(v) => {
                assert_eq!(v.saved, state, "unknown fields must be skipped");
                revalidates(&v.saved, descriptors);
            }
            Err(e) => panic!("a valid state with unknown fields refused: {e}"),
        }
        return;
    }
    if expects.contains(&Expect::Either) {
        if let Ok(v) = result {
            revalidates(&v.saved, descriptors);
        }
        return;
    }
    let err = match result {
        Ok(v) => panic!("corrupted by {expects:?}, yet valid: {v:?}"),
        Err(e) => e,
    };
    assert!(!err.to_string().is_empty());
    let invalidating: Vec<Expect> = expects
        .iter()
        .copied()
        .filter(|e| *e != Expect::Valid)
        .collect();
    if let [one] = invalidating[..] {
        let kind = match err {
            SavedError::Decode(_) => None,
            SavedError::Format(_) => Some(Expect::Format),
            SavedError::Invalid(_) => Some(Expect::Invalid),
            SavedError::Descriptor { .. } => Some(Expect::Descriptor),
        };
        assert_eq!(kind, Some(one), "{err}");
    }
}

/// The promises of a valid state.
fn valid(state: &SavedService, layout: Layout, ops: &[MmioOp]) {
    let descriptors = layout.descriptors;
    let bytes = state.encode_to_vec();
    let v = match validate(&bytes, descriptors) {
        Ok(v) => v,
        Err(e) => panic!("a valid state refused: {e}\n{state:?}"),
    };
    assert_eq!(&v.saved, state);
    assert_eq!(Some(v.table.save()), state.table);
    assert_eq!(v.ops, ops);
    for bus in &v.saved.buses {
        assert_eq!(v.table.running(&bus.bus), Some(bus.generation));
        // The bus's own restore: a typed error or a relay, never a panic.
        if let Ok(SavedBus {
            relay: Some(relay), ..
        }) = SavedBus::from_bytes(&bus.driver)
        {
            let now = Duration::from_nanos(bus.relay_now_ns);
            let _ = BusRelay::restore(RelayConfig::default(), &relay, now);
        }
    }
    // Spare descriptors are fine; with none, one fewer never is.
    if layout.named == descriptors {
        assert!(matches!(
            validate(&bytes, descriptors - 1),
            Err(SavedError::Descriptor { .. })
        ));
    }
    revalidates(&v.saved, descriptors);
}

/// A state that validated re-encodes to one that validates to the same.
fn revalidates(saved: &SavedService, descriptors: usize) {
    match validate(&saved.encode_to_vec(), descriptors) {
        Ok(again) => assert_eq!(&again.saved, saved),
        Err(e) => panic!("a validated state, re-encoded, refused: {e}"),
    }
}
