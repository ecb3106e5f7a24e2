//! Errors: one variant per way the peer (or the region) can be wrong.

use crate::packet::PacketError;
use shared_mem::MemError;
use thiserror::Error;

/// A ring that cannot be used, or a peer that broke the ring's rules.
///
/// Offsets are byte offsets into the data area. Except for [`RingError::RegionSize`] and
/// [`RingError::PacketTooLarge`], every variant means the peer wrote something no correct peer
/// writes; the ring should then be considered dead.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The region is not a control page followed by a data area of whole pages.
    #[error(
        "region of {len:#x} bytes is not a 4 KiB control page plus a data area of 4 KiB pages (at most {max:#x} bytes)",
        max = crate::layout::MAX_DATA_SIZE
    )]
    RegionSize {
        /// The region's length.
        len: usize,
    },
    /// The peer's write index is outside the data area or not 8-byte aligned.
    #[error("write index {value:#x} is invalid for a data area of {data_size:#x} bytes")]
    InvalidWriteIndex {
        /// The value read.
        value: u32,
        /// The data area's size.
        data_size: u32,
    },
    /// The peer's read index is outside the data area or not 8-byte aligned.
    #[error("read index {value:#x} is invalid for a data area of {data_size:#x} bytes")]
    InvalidReadIndex {
        /// The value read.
        value: u32,
        /// The data area's size.
        data_size: u32,
    },
    /// The writer published fewer bytes than a descriptor and a trailer.
    #[error("only {available} bytes published at offset {offset:#x}: too few for a packet")]
    TruncatedPacket {
        /// Where the packet starts.
        offset: u32,
        /// The bytes between the read and write indices.
        available: u32,
    },
    /// The packet descriptor is invalid (bad offset or length, unknown type, or the packet
    /// runs past the bytes the writer published).
    #[error("bad packet at offset {offset:#x}: {error}")]
    BadPacket {
        /// Where the packet starts.
        offset: u32,
        /// What is wrong with its descriptor.
        #[source]
        error: PacketError,
    },
    /// The trailer after a packet does not carry the packet's start offset.
    #[error("trailer of the packet at offset {offset:#x} is {trailer:#x}")]
    BadTrailer {
        /// Where the packet starts.
        offset: u32,
        /// The trailer read.
        trailer: u64,
    },
    /// A valid packet larger than the reader's buffer. It stays in the ring: the caller may
    /// retry with a larger buffer (at most [`crate::RingReader::max_packet_len`]) or give up.
    #[error("packet at offset {offset:#x} is {len} bytes, larger than the buffer of {capacity}")]
    PacketTooLarge {
        /// Where the packet starts.
        offset: u32,
        /// The packet's length without trailer.
        len: usize,
        /// The buffer's length.
        capacity: usize,
    },
    /// A shared-memory access failed; with a region validated by [`crate::Ring::new`] this
    /// does not happen, but it is reported rather than assumed.
    #[error("shared memory access failed")]
    Memory(#[from] MemError),
}

/// Why a packet was not written.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// Not enough free space now. Wait for the reader (see
    /// [`crate::RingWriter::set_pending_send_size`]) and retry.
    #[error("ring full: {needed} bytes needed, {free} free")]
    Full {
        /// Bytes the packet needs, trailer included; the writer needs strictly more free.
        needed: usize,
        /// Bytes free now.
        free: usize,
    },
    /// The packet can never fit: larger than the data area or than a descriptor can describe.
    #[error("a packet of {needed} bytes can never fit a ring of {data_size} bytes")]
    TooLarge {
        /// Bytes the packet needs, trailer included.
        needed: usize,
        /// The data area's size.
        data_size: usize,
    },
    /// The framed bytes given to [`crate::RingWriter::write_framed`] are not one valid packet.
    #[error("invalid framed packet")]
    Packet(#[from] PacketError),
    /// The ring is corrupt (the peer's read index is invalid).
    #[error("ring error")]
    Ring(#[from] RingError),
}
