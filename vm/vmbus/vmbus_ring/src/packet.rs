//! The VMBus packet descriptor and the framing of one packet.

use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

/// Size of the packet descriptor.
pub const DESCRIPTOR_SIZE: usize = 16;
/// Size of the trailer after each packet (upper 32 bits: the packet's start offset).
pub const TRAILER_SIZE: usize = 8;
/// Packets are padded to this alignment, and every index is a multiple of it.
pub const PACKET_ALIGN: usize = 8;
/// The largest packet a descriptor can describe (`len8` is a `u16` count of 8-byte units).
pub const MAX_PACKET_SIZE: usize = u16::MAX as usize * PACKET_ALIGN;
/// Descriptor flag: the sender wants a completion (a `COMP` packet with the same transaction id).
pub const FLAG_COMPLETION_REQUESTED: u16 = 1;

/// Packet types (`enum vmbus_packet_type` in Linux's `hyperv.h`).
pub mod packet_type {
    /// `VM_PKT_INVALID`: never valid on the wire.
    pub const INVALID: u16 = 0;
    /// `VM_PKT_SYNCH`.
    pub const SYNCH: u16 = 1;
    /// `VM_PKT_ADD_XFER_PAGESET`.
    pub const ADD_XFER_PAGESET: u16 = 2;
    /// `VM_PKT_RM_XFER_PAGESET`.
    pub const RM_XFER_PAGESET: u16 = 3;
    /// `VM_PKT_ESTABLISH_GPADL`.
    pub const ESTABLISH_GPADL: u16 = 4;
    /// `VM_PKT_TEARDOWN_GPADL`.
    pub const TEARDOWN_GPADL: u16 = 5;
    /// `VM_PKT_DATA_INBAND`: data carried in the ring.
    pub const DATA_INBAND: u16 = 6;
    /// `VM_PKT_DATA_USING_XFER_PAGES`.
    pub const DATA_USING_XFER_PAGES: u16 = 7;
    /// `VM_PKT_DATA_USING_GPADL`.
    pub const DATA_USING_GPADL: u16 = 8;
    /// `VM_PKT_DATA_USING_GPA_DIRECT`: data described by guest page ranges (after the
    /// descriptor, before the payload).
    pub const DATA_USING_GPA_DIRECT: u16 = 9;
    /// `VM_PKT_CANCEL_REQUEST`.
    pub const CANCEL_REQUEST: u16 = 10;
    /// `VM_PKT_COMP`: a completion, carrying the request's transaction id.
    pub const COMP: u16 = 11;
    /// `VM_PKT_DATA_USING_ADDITIONAL_PKT`.
    pub const DATA_USING_ADDITIONAL_PKT: u16 = 12;
    /// `VM_PKT_ADDITIONAL_DATA`.
    pub const ADDITIONAL_DATA: u16 = 13;

    /// Whether `ty` is one of the types above other than [`INVALID`].
    pub const fn is_known(ty: u16) -> bool {
        matches!(ty, SYNCH..=ADDITIONAL_DATA)
    }
}

/// The 16-byte packet descriptor as it is in the ring (`struct vmpacket_descriptor`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PacketDescriptor {
    /// The packet type; see [`packet_type`].
    pub packet_type: u16,
    /// Where the payload starts, in 8-byte units from the packet's start (at least 2).
    pub offset8: u16,
    /// The packet's length in 8-byte units, descriptor and padding included, trailer excluded.
    pub len8: u16,
    /// Flags; see [`FLAG_COMPLETION_REQUESTED`].
    pub flags: u16,
    /// Matches a completion to its request.
    pub transaction_id: u64,
}

const _: () = assert!(size_of::<PacketDescriptor>() == DESCRIPTOR_SIZE);

/// What the sender chooses about a packet: everything in the descriptor but its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketMeta {
    /// The packet type; see [`packet_type`].
    pub packet_type: u16,
    /// Flags; see [`FLAG_COMPLETION_REQUESTED`].
    pub flags: u16,
    /// The transaction id.
    pub transaction_id: u64,
}

/// A validated packet descriptor.
///
/// Invariants, checked by [`parse_descriptor`]: the type is known, `offset8 >= 2`,
/// `len8 >= offset8`, and the packet fits in the bytes it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketHeader {
    /// Type, flags and transaction id.
    pub meta: PacketMeta,
    /// Where the payload starts, in 8-byte units.
    pub offset8: u16,
    /// The packet's length in 8-byte units, without trailer.
    pub len8: u16,
}

impl PacketHeader {
    /// Byte offset of the payload from the packet's start.
    #[inline]
    pub fn data_offset(&self) -> usize {
        usize::from(self.offset8) * PACKET_ALIGN
    }

    /// The packet's length in bytes, descriptor and padding included, trailer excluded.
    #[inline]
    pub fn packet_len(&self) -> usize {
        usize::from(self.len8) * PACKET_ALIGN
    }

    /// The payload's length in bytes. VMBus does not record the unpadded length, so this
    /// includes up to 7 bytes of padding; protocols above know their own message sizes.
    #[inline]
    pub fn payload_len(&self) -> usize {
        self.packet_len() - self.data_offset()
    }

    /// Whether the sender asked for a completion.
    #[inline]
    pub fn completion_requested(&self) -> bool {
        self.meta.flags & FLAG_COMPLETION_REQUESTED != 0
    }
}

/// A packet descriptor that breaks the framing rules.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// Fewer bytes than a descriptor.
    #[error("{len} bytes are too few for a packet descriptor")]
    TooShort {
        /// The bytes available.
        len: usize,
    },
    /// The payload would start inside the descriptor (`offset8 < 2`).
    #[error("data offset {offset8} (x8) lies inside the descriptor")]
    OffsetInsideDescriptor {
        /// The descriptor's `offset8`.
        offset8: u16,
    },
    /// The packet ends before its payload starts (`len8 < offset8`).
    #[error("packet length {len8} (x8) is less than its data offset {offset8} (x8)")]
    LengthBeforeOffset {
        /// The descriptor's `offset8`.
        offset8: u16,
        /// The descriptor's `len8`.
        len8: u16,
    },
    /// The packet is longer than the bytes available.
    #[error("packet length {len8} (x8) exceeds the {available} bytes available")]
    Truncated {
        /// The descriptor's `len8`.
        len8: u16,
        /// The bytes available.
        available: usize,
    },
    /// Bytes meant to hold exactly one framed packet are not `len8 * 8` long.
    #[error("packet length {len8} (x8) does not match the {len} bytes given")]
    LengthMismatch {
        /// The descriptor's `len8`.
        len8: u16,
        /// The bytes given.
        len: usize,
    },
    /// The packet type is not one VMBus defines.
    #[error("unknown packet type {0}")]
    UnknownType(u16),
}

/// Parses and validates the descriptor at the start of `bytes`, where `bytes` holds all
/// the bytes available to this packet (the packet must fit in them).
#[inline]
pub fn parse_descriptor(bytes: &[u8]) -> Result<PacketHeader, PacketError> {
    parse_descriptor_with_available(bytes, bytes.len())
}

/// Parses the descriptor at the start of `bytes` for a packet that may span `available`
/// bytes (which may be more than `bytes` holds: the reader parses its 16-byte copy of the
/// descriptor against the bytes the writer published).
#[inline]
pub(crate) fn parse_descriptor_with_available(
    bytes: &[u8],
    available: usize,
) -> Result<PacketHeader, PacketError> {
    let (desc, _) = PacketDescriptor::read_from_prefix(bytes)
        .map_err(|_| PacketError::TooShort { len: bytes.len() })?;
    let PacketDescriptor {
        packet_type,
        offset8,
        len8,
        flags,
        transaction_id,
    } = desc;
    if !packet_type::is_known(packet_type) {
        return Err(PacketError::UnknownType(packet_type));
    }
    if usize::from(offset8) * PACKET_ALIGN < DESCRIPTOR_SIZE {
        return Err(PacketError::OffsetInsideDescriptor { offset8 });
    }
    if len8 < offset8 {
        return Err(PacketError::LengthBeforeOffset { offset8, len8 });
    }
    if usize::from(len8) * PACKET_ALIGN > available {
        return Err(PacketError::Truncated { len8, available });
    }
    Ok(PacketHeader {
        meta: PacketMeta {
            packet_type,
            flags,
            transaction_id,
        },
        offset8,
        len8,
    })
}

/// Validates one raw packet (descriptor first, trailer excluded) and splits it into its
/// header and payload. The payload runs from the data offset to `len8 * 8` and includes
/// the padding; bytes past `len8 * 8` are ignored; bytes between the descriptor and the
/// data offset (GPA ranges, for example) are at `&bytes[16..header.data_offset()]`.
#[inline]
pub fn split_packet(bytes: &[u8]) -> Result<(PacketHeader, &[u8]), PacketError> {
    let header = parse_descriptor(bytes)?;
    let payload =
        bytes
            .get(header.data_offset()..header.packet_len())
            .ok_or(PacketError::Truncated {
                len8: header.len8,
                available: bytes.len(),
            })?;
    Ok((header, payload))
}

/// The framed length (descriptor plus payload padded to 8, trailer excluded) of a packet with
/// a `payload_len`-byte payload, or `None` if no descriptor can describe it.
#[inline]
pub fn framed_len(payload_len: usize) -> Option<usize> {
    let len = DESCRIPTOR_SIZE
        .checked_add(payload_len)?
        .checked_next_multiple_of(PACKET_ALIGN)?;
    (len <= MAX_PACKET_SIZE).then_some(len)
}

/// The descriptor for a packet with `meta` and a `payload_len`-byte payload right after the
/// descriptor, or `None` if the payload is too large for a descriptor.
#[inline]
pub fn encode_descriptor(meta: &PacketMeta, payload_len: usize) -> Option<PacketDescriptor> {
    let len8 = u16::try_from(framed_len(payload_len)? / PACKET_ALIGN).ok()?;
    Some(PacketDescriptor {
        packet_type: meta.packet_type,
        offset8: (DESCRIPTOR_SIZE / PACKET_ALIGN) as u16,
        len8,
        flags: meta.flags,
        transaction_id: meta.transaction_id,
    })
}

/// Appends one framed packet (descriptor, payload, zero padding; no trailer) to `out`.
/// Returns `None`, leaving `out` unchanged, if the payload is too large for a descriptor.
pub fn frame_packet(meta: &PacketMeta, payload: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let desc = encode_descriptor(meta, payload.len())?;
    let start = out.len();
    out.extend_from_slice(desc.as_bytes());
    out.extend_from_slice(payload);
    out.resize(start + usize::from(desc.len8) * PACKET_ALIGN, 0);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(packet_type: u16, offset8: u16, len8: u16, extra: usize) -> Vec<u8> {
        let desc = PacketDescriptor {
            packet_type,
            offset8,
            len8,
            flags: 1,
            transaction_id: 0x1234,
        };
        let mut v = desc.as_bytes().to_vec();
        v.resize(DESCRIPTOR_SIZE + extra, 0xaa);
        v
    }

    /// A well-formed packet splits into its header and the bytes from the data offset.
    #[test]
    fn split_valid() {
        let bytes = raw(packet_type::DATA_INBAND, 3, 5, 24);
        let (h, payload) = split_packet(&bytes).unwrap();
        assert_eq!(h.data_offset(), 24);
        assert_eq!(h.packet_len(), 40);
        assert_eq!(payload.len(), 16);
        assert!(h.completion_requested());
        assert_eq!(h.meta.transaction_id, 0x1234);
        // Empty payload is fine.
        let bytes = raw(packet_type::COMP, 2, 2, 0);
        let (h, payload) = split_packet(&bytes).unwrap();
        assert_eq!((h.payload_len(), payload.len()), (0, 0));
    }

    /// Each framing rule has its own error.
    #[test]
    fn split_rejects() {
        use PacketError::*;
        assert_eq!(split_packet(&[0; 15]), Err(TooShort { len: 15 }));
        assert_eq!(split_packet(&raw(0, 2, 2, 0)), Err(UnknownType(0)));
        assert_eq!(split_packet(&raw(14, 2, 2, 0)), Err(UnknownType(14)));
        assert_eq!(
            split_packet(&raw(6, 1, 2, 0)),
            Err(OffsetInsideDescriptor { offset8: 1 })
        );
        assert_eq!(
            split_packet(&raw(6, 4, 3, 16)),
            Err(LengthBeforeOffset {
                offset8: 4,
                len8: 3
            })
        );
        assert_eq!(
            split_packet(&raw(6, 2, 4, 8)),
            Err(Truncated {
                len8: 4,
                available: 24
            })
        );
    }

    /// Framing pads to 8 bytes and round-trips through split.
    #[test]
    fn frame_roundtrip() {
        let meta = PacketMeta {
            packet_type: packet_type::DATA_INBAND,
            flags: 0,
            transaction_id: 7,
        };
        for n in 0..20 {
            let payload: Vec<u8> = (0..n as u8).collect();
            let mut out = vec![];
            frame_packet(&meta, &payload, &mut out).unwrap();
            assert_eq!(out.len(), framed_len(n).unwrap());
            assert_eq!(out.len() % 8, 0);
            let (h, p) = split_packet(&out).unwrap();
            assert_eq!(h.meta, meta);
            assert_eq!(&p[..n], &payload[..]);
            assert!(p[n..].iter().all(|&b| b == 0));
        }
        assert_eq!(framed_len(MAX_PACKET_SIZE - 16), Some(MAX_PACKET_SIZE));
        assert_eq!(framed_len(MAX_PACKET_SIZE - 15), None);
        assert!(encode_descriptor(&meta, usize::MAX).is_none());
    }
}
