//! The relay's saved state, for servicing (the paravisor replaced by a new version while the
//! VM runs).
//!
//! The state is protobuf with numbered fields, derived with `prost` on the hand-written
//! structs of this module: a newer reader takes an older state (a field the older writer did
//! not know reads as its default, which always means "not present"), an older reader skips
//! fields it does not know, and the bytes are compact. Each sub-state of the relay saves
//! itself in the module that owns it (destructuring itself, so that a new field is a compile
//! error until it is saved or deliberately left out) and restores itself there, validating
//! everything it reads: a saved state may come back corrupt or hostile.
//!
//! Time: every instant in the state is on the relay's own time base, in nanoseconds. A
//! restored relay continues that time base (see [`BusRelay::restore`](crate::BusRelay::restore)),
//! so the time the bus spent stopped counts toward every deadline (the host's EJECT budget,
//! `max_hold`) as if the relay had been running.

mod accesses;
mod bus;
mod changes;
mod error;
mod function;
mod outputs;
mod requests;

pub use accesses::{SavedAccess, SavedAccessTable};
pub use bus::SavedBus;
pub use changes::{SavedChange, SavedChangeQueue, SavedHostRelations};
pub use error::RestoreError;
pub use function::{SavedConfigDword, SavedFunction, SavedFunctionTable, SavedSuccessor};
pub use outputs::{SavedBacking, SavedCounters, SavedOutputs, SavedPacket, SavedTransmit};
pub use requests::{SavedAnsweredLocally, SavedHostRequest, SavedRequest, SavedRequestTable};

use std::time::Duration;

/// The saved-state format this version writes, and the only major format it reads.
pub const FORMAT: u32 = 1;

/// The minor revision of [`FORMAT`] this version writes: fields added since the first, which
/// an older reader of the same format skips. Minor 1 added `accesses` (config accesses in
/// flight).
pub const FORMAT_MINOR: u32 = 1;

/// The latest time a saved state may name (about 146 years of the relay's time): anything
/// later is not a time the relay could have reached.
pub const MAX_SAVED_TIME: Duration = Duration::from_nanos(1 << 62);

/// The most queued outputs (packets and backing changes) a saved state may hold. The relay
/// queues a bounded handful per input and its driver drains them after each one.
pub const MAX_SAVED_OUTPUTS: usize = 4096;

/// The largest packet payload a saved state may hold (the host relations it keeps, a queued
/// packet, a forwarded request): 64 KiB, four times the channels' default limit.
pub const MAX_SAVED_PAYLOAD: usize = 64 * 1024;

/// One bus relay's saved state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedRelay {
    /// The major format ([`FORMAT`]); a reader refuses a format it does not know. Zero (the
    /// field absent) is no format.
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// The minor revision ([`FORMAT_MINOR`]): informational, since a reader skips fields it
    /// does not know.
    #[prost(uint32, tag = "2")]
    pub format_minor: u32,
    /// The relay's time when it was saved, in nanoseconds of its time base.
    #[prost(uint64, tag = "3")]
    pub now_ns: u64,
    /// The protocol version in use (one of `ProtocolVersion::ALL`).
    #[prost(uint32, tag = "4")]
    pub version: u32,
    /// The host link, if it was lost (absent: up).
    #[prost(message, optional, tag = "5")]
    pub host_lost: Option<SavedHostLost>,
    /// The guest channel was closed.
    #[prost(bool, tag = "6")]
    pub guest_closed: bool,
    /// The guest's bus-wide state.
    #[prost(message, optional, tag = "7")]
    pub guest: Option<SavedGuestBus>,
    /// The function table.
    #[prost(message, optional, tag = "8")]
    pub functions: Option<SavedFunctionTable>,
    /// The change queue.
    #[prost(message, optional, tag = "9")]
    pub changes: Option<SavedChangeQueue>,
    /// The request table.
    #[prost(message, optional, tag = "10")]
    pub requests: Option<SavedRequestTable>,
    /// Outputs not yet taken by the driver, and the counters.
    #[prost(message, optional, tag = "11")]
    pub outputs: Option<SavedOutputs>,
    /// Config accesses forwarded to the device and not yet done (minor 1; absent: none).
    #[prost(message, optional, tag = "12")]
    pub accesses: Option<SavedAccessTable>,
}

/// The host link, lost.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedHostLost {
    /// When, in nanoseconds.
    #[prost(uint64, tag = "1")]
    pub since_ns: u64,
    /// A rescind or close (else a protocol violation).
    #[prost(bool, tag = "2")]
    pub rescinded: bool,
}

/// The guest's bus-wide state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedGuestBus {
    /// The probe phase: 1 silent, 2 surveying, 3 probing, 4 installed.
    #[prost(uint32, tag = "1")]
    pub phase: u32,
    /// Surveying: the probe path was done before the query.
    #[prost(bool, tag = "2")]
    pub installed: bool,
    /// Surveying or probing: BUS_D0ENTRY progress (0 not started, 1 pending, 2 done).
    #[prost(uint32, tag = "3")]
    pub d0: u32,
    /// The last guest traffic on the bus, in nanoseconds.
    #[prost(uint64, optional, tag = "4")]
    pub activity_ns: Option<u64>,
}

impl SavedRelay {
    /// The state as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }

    /// A state from bytes. Only the encoding is checked here; everything the state says is
    /// checked by [`BusRelay::restore`](crate::BusRelay::restore).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RestoreError> {
        <Self as prost::Message>::decode(bytes).map_err(RestoreError::Decode)
    }
}

/// A time as saved: nanoseconds, saturating (a relay never runs for 584 years).
pub(crate) fn ns(t: Duration) -> u64 {
    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
}

/// An optional time as saved.
pub(crate) fn opt_ns(t: Option<Duration>) -> Option<u64> {
    t.map(ns)
}

/// What restoring checks everything against: the configuration's limits and the saved
/// relay's time.
pub(crate) struct Check<'a> {
    pub(crate) config: &'a crate::RelayConfig,
    /// The saved relay's time: no instant in the state may be later.
    pub(crate) now: Duration,
}

impl Check<'_> {
    /// A saved instant: not later than the saved relay's time.
    pub(crate) fn time(
        &self,
        field: impl Into<String>,
        at_ns: u64,
    ) -> Result<Duration, RestoreError> {
        let at = Duration::from_nanos(at_ns);
        if at > self.now {
            return Err(RestoreError::TimeAhead {
                field: field.into(),
                at_ns,
                now_ns: ns(self.now),
            });
        }
        Ok(at)
    }

    /// An optional saved instant.
    pub(crate) fn opt_time(
        &self,
        field: impl Into<String>,
        at_ns: Option<u64>,
    ) -> Result<Option<Duration>, RestoreError> {
        at_ns.map(|t| self.time(field, t)).transpose()
    }

    /// A count within `limit`.
    pub(crate) fn count(
        &self,
        field: impl Into<String>,
        count: usize,
        limit: usize,
    ) -> Result<(), RestoreError> {
        if count > limit {
            return Err(RestoreError::OverLimit {
                field: field.into(),
                count,
                limit,
            });
        }
        Ok(())
    }
}

/// A saved slot: the wire names 256 (device 0-31, function 0-7); the reserved bits are zero.
pub(crate) fn slot(
    field: impl Into<String>,
    raw: u32,
) -> Result<vpci_protocol::WinSlot, RestoreError> {
    let slot = vpci_protocol::WinSlot::from_raw(raw);
    if slot.reserved() != 0 {
        return Err(RestoreError::BadSlot {
            field: field.into(),
            raw,
        });
    }
    Ok(slot)
}

/// A saved enumeration value: `values[value]`, or the error naming the field.
pub(crate) fn enumeration<T: Copy>(
    field: impl Into<String>,
    value: u32,
    values: &[T],
) -> Result<T, RestoreError> {
    usize::try_from(value)
        .ok()
        .and_then(|i| values.get(i))
        .copied()
        .ok_or_else(|| RestoreError::BadValue {
            field: field.into(),
            value: u64::from(value),
        })
}

/// A saved function description: exactly the wire's 28 bytes.
pub(crate) fn description(
    field: impl Into<String>,
    bytes: &[u8],
) -> Result<vpci_protocol::wire::FunctionDescription2, RestoreError> {
    use zerocopy::FromBytes;
    vpci_protocol::wire::FunctionDescription2::read_from_bytes(bytes).map_err(|_| {
        RestoreError::BadDescription {
            field: field.into(),
            len: bytes.len(),
        }
    })
}

/// A description as saved.
pub(crate) fn description_bytes(d: &vpci_protocol::wire::FunctionDescription2) -> Vec<u8> {
    zerocopy::IntoBytes::as_bytes(d).to_vec()
}
