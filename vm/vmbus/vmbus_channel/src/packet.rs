//! The packet model: what a channel carries, independent of how it is carried.
//!
//! A [`Packet`] is the part of a VMBus packet a protocol sees: its type, its flags, its
//! transaction id and its payload (the bytes after the descriptor). Framing into ring bytes is
//! the ring backend's business; limits ([`PacketLimits`]) are checked by every backend on both
//! send and receive, so an oversized packet is a typed error wherever it comes from.

use thiserror::Error;

/// Packet types as numbered in the VMBus packet descriptor.
pub mod raw_kind {
    /// `VM_PKT_DATA_INBAND`: data carried in the ring.
    pub const DATA_INBAND: u16 = 6;
    /// `VM_PKT_DATA_USING_GPA_DIRECT`: data described by guest physical page ranges.
    pub const DATA_USING_GPA_DIRECT: u16 = 9;
    /// `VM_PKT_COMP`: a completion for an earlier request, carrying its transaction id.
    pub const COMPLETION: u16 = 11;
}

/// The type of a packet.
///
/// Known types have their own variant; any other raw value is kept in [`PacketKind::Other`] so
/// a relay can forward or reject it without losing information. Equality and hashing compare
/// the raw values, so `Other(6)` equals `InBand`; [`PacketKind::from_raw`] never builds such an
/// alias.
#[derive(Debug, Clone, Copy)]
pub enum PacketKind {
    /// In-band data (type 6).
    InBand,
    /// A completion for an earlier request (type 11).
    Completion,
    /// Data using GPA direct ranges (type 9). The range list is not modelled: only the bytes
    /// after the descriptor are carried.
    GpaDirect,
    /// Any other raw packet type.
    Other(u16),
}

impl PacketKind {
    /// Converts a raw descriptor type into a kind.
    pub const fn from_raw(raw: u16) -> Self {
        match raw {
            raw_kind::DATA_INBAND => Self::InBand,
            raw_kind::COMPLETION => Self::Completion,
            raw_kind::DATA_USING_GPA_DIRECT => Self::GpaDirect,
            other => Self::Other(other),
        }
    }

    /// The raw descriptor type of this kind.
    pub const fn to_raw(self) -> u16 {
        match self {
            Self::InBand => raw_kind::DATA_INBAND,
            Self::Completion => raw_kind::COMPLETION,
            Self::GpaDirect => raw_kind::DATA_USING_GPA_DIRECT,
            Self::Other(raw) => raw,
        }
    }
}

impl PartialEq for PacketKind {
    fn eq(&self, other: &Self) -> bool {
        self.to_raw() == other.to_raw()
    }
}

impl Eq for PacketKind {}

impl std::hash::Hash for PacketKind {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.to_raw().hash(state);
    }
}

/// The flags word of a packet descriptor.
///
/// Unknown bits are preserved so that a relay forwards what it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PacketFlags(pub u16);

impl PacketFlags {
    /// No flags.
    pub const NONE: Self = Self(0);
    /// Bit 0: the sender asks for a completion carrying the same transaction id.
    pub const COMPLETION_REQUESTED: Self = Self(1);

    /// Whether the completion-requested bit is set.
    pub const fn completion_requested(self) -> bool {
        self.0 & Self::COMPLETION_REQUESTED.0 != 0
    }
}

/// One packet as a protocol sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The packet type.
    pub kind: PacketKind,
    /// The descriptor flags.
    pub flags: PacketFlags,
    /// The transaction id: chosen by the requester, echoed by the completion.
    pub transaction_id: u64,
    /// The bytes after the descriptor.
    ///
    /// On receive, the length is the sent length rounded up to a multiple of 8 (VMBus counts
    /// packet lengths in 8-byte units), the extra bytes being zero. Every backend behaves so,
    /// the in-memory one included, so that tests see what production sees.
    pub payload: Vec<u8>,
}

impl Packet {
    /// An in-band packet that does not ask for a completion.
    pub fn in_band(transaction_id: u64, payload: Vec<u8>) -> Self {
        Self {
            kind: PacketKind::InBand,
            flags: PacketFlags::NONE,
            transaction_id,
            payload,
        }
    }

    /// An in-band request: it asks for a completion carrying `transaction_id`.
    pub fn request(transaction_id: u64, payload: Vec<u8>) -> Self {
        Self {
            kind: PacketKind::InBand,
            flags: PacketFlags::COMPLETION_REQUESTED,
            transaction_id,
            payload,
        }
    }

    /// A completion for the request with `transaction_id`.
    pub fn completion(transaction_id: u64, payload: Vec<u8>) -> Self {
        Self {
            kind: PacketKind::Completion,
            flags: PacketFlags::NONE,
            transaction_id,
            payload,
        }
    }

    /// Whether the sender asks for a completion.
    pub fn completion_requested(&self) -> bool {
        self.flags.completion_requested()
    }
}

/// Rounds a payload length up to the 8-byte unit VMBus counts lengths in.
///
/// Returns `None` on overflow.
pub const fn padded_len(len: usize) -> Option<usize> {
    match len.checked_add(7) {
        Some(n) => Some(n & !7),
        None => None,
    }
}

/// Pads a payload with zeros to its 8-byte unit, as a ring delivers it.
pub fn pad_payload(payload: &mut Vec<u8>) {
    let len = payload.len();
    // `len` is the length of an existing allocation, so adding 7 cannot overflow in practice;
    // fall back to no padding rather than panicking.
    let padded = padded_len(len).unwrap_or(len);
    payload.resize(padded, 0);
}

/// `payload` padded with zeros to its 8-byte unit, as a ring delivers it: what the peer
/// receives when `payload` is sent.
pub fn padded(mut payload: Vec<u8>) -> Vec<u8> {
    pad_payload(&mut payload);
    payload
}

/// Bounds every backend enforces on packets, in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketLimits {
    /// The largest payload a packet may carry, in bytes; a multiple of 8.
    pub max_payload: usize,
}

impl PacketLimits {
    /// The default payload limit: 16 KiB, well above any vPCI message.
    pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024;

    /// Limits with the given maximum payload, which must be a non-zero multiple of 8.
    pub const fn new(max_payload: usize) -> Result<Self, PacketError> {
        if max_payload == 0 || max_payload % 8 != 0 {
            return Err(PacketError::BadLimit { max_payload });
        }
        Ok(Self { max_payload })
    }

    /// Checks a payload length against the limit.
    pub const fn check_len(&self, len: usize) -> Result<(), PacketError> {
        if len > self.max_payload {
            return Err(PacketError::PayloadTooLarge {
                len,
                max: self.max_payload,
            });
        }
        Ok(())
    }

    /// Checks a packet against the limits.
    pub fn check(&self, packet: &Packet) -> Result<(), PacketError> {
        self.check_len(packet.payload.len())
    }
}

impl Default for PacketLimits {
    fn default() -> Self {
        Self {
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// What can be wrong with a packet or a packet limit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacketError {
    /// The payload is larger than the configured limit.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// The payload length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The transport cannot carry packets of this raw type (a ring carries only the types
    /// VMBus defines).
    #[error("packet type {raw} cannot be carried")]
    UnsupportedKind {
        /// The raw packet type.
        raw: u16,
    },
    /// A payload limit that is zero or not a multiple of 8.
    #[error("payload limit {max_payload} is not a non-zero multiple of 8")]
    BadLimit {
        /// The rejected limit.
        max_payload: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw types round-trip, and known types never come back as `Other`.
    #[test]
    fn kind_round_trips_raw_values() {
        for raw in 0..=u16::MAX {
            let kind = PacketKind::from_raw(raw);
            assert_eq!(kind.to_raw(), raw);
            if matches!(raw, 6 | 9 | 11) {
                assert!(!matches!(kind, PacketKind::Other(_)));
            }
        }
        assert_eq!(PacketKind::Other(6), PacketKind::InBand);
        assert_ne!(PacketKind::Other(7), PacketKind::InBand);
    }

    /// The completion-requested flag is bit 0 and other bits are kept.
    #[test]
    fn flags_keep_unknown_bits() {
        let flags = PacketFlags(0x8001);
        assert!(flags.completion_requested());
        assert!(!PacketFlags(0x8000).completion_requested());
        assert!(Packet::request(1, vec![]).completion_requested());
        assert!(!Packet::in_band(1, vec![]).completion_requested());
        assert!(!Packet::completion(1, vec![]).completion_requested());
    }

    /// Lengths pad to 8-byte units, and padding adds zeros only.
    #[test]
    fn padding_rounds_up_to_eight() {
        assert_eq!(padded_len(0), Some(0));
        assert_eq!(padded_len(1), Some(8));
        assert_eq!(padded_len(8), Some(8));
        assert_eq!(padded_len(9), Some(16));
        assert_eq!(padded_len(usize::MAX), None);
        let mut payload = vec![0xff; 5];
        pad_payload(&mut payload);
        assert_eq!(payload, [0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0]);
    }

    /// Limits must be multiples of 8 and reject larger payloads with a typed error.
    #[test]
    fn limits_are_checked() {
        assert_eq!(
            PacketLimits::new(12),
            Err(PacketError::BadLimit { max_payload: 12 })
        );
        assert!(PacketLimits::new(0).is_err());
        let limits = PacketLimits::new(16).unwrap();
        assert!(limits.check(&Packet::in_band(0, vec![0; 16])).is_ok());
        assert_eq!(
            limits.check(&Packet::in_band(0, vec![0; 17])),
            Err(PacketError::PayloadTooLarge { len: 17, max: 16 })
        );
    }
}
