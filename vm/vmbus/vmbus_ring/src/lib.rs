//! Hardened Hyper-V VMBus ring buffer over an untrusted shared-memory region.
//!
//! A VMBus channel is two rings, one per direction. Each ring is a 4 KiB control page
//! ([`ControlPage`]: write index, read index, interrupt mask, pending send size, feature bits)
//! followed by a data area whose size is a multiple of 4 KiB. Packets ([`PacketDescriptor`]
//! then payload, padded to 8 bytes) are followed by an 8-byte trailer carrying the packet's
//! start offset in its upper 32 bits; indices wrap modulo the data size, and so may packets.
//!
//! * [`RingWriter`] appends packets, either from a [`PacketMeta`] and a payload
//!   ([`RingWriter::write_packet`]) or already framed ([`RingWriter::write_framed`]), and says
//!   whether the reader must be signalled.
//! * [`RingReader`] copies packets out into a caller-supplied buffer (peek / consume / commit,
//!   or [`RingReader::read_packet`] for all three), and says whether a blocked writer must be
//!   signalled.
//! * [`split_packet`] validates one raw packet and splits it into header and payload, for
//!   anything that holds packet bytes (the channel layer, a ring dump tool).
//!
//! The peer may write any value into the control page and the data area at any moment. Every
//! index read from shared memory is checked (< data size, 8-byte aligned) and every length
//! (fits in the bytes the writer has published) before use, each peer-written field is read
//! once into a local, and a ring that breaks the rules yields a [`RingError`] naming what was
//! wrong. Nothing here panics, loops or allocates on the peer's say-so. Each side keeps its own
//! index privately and only publishes it: a peer overwriting *our* index cannot move us.
//!
//! # Signalling
//!
//! The ring never signals anyone itself; it tells the caller when to ring the peer's doorbell
//! (an eventfd, a hypercall), following Linux's `ring_buffer.c`:
//!
//! * Writer: signal when [`WriteOutcome::signal_reader`] says so (the reader had consumed
//!   everything before this packet and has not masked interrupts). On
//!   [`WriteError::Full`], call [`RingWriter::set_pending_send_size`] with the bytes needed;
//!   if it returns `false`, sleep until the reader signals, then retry.
//! * Reader: [`ReadPacket::signal_writer`] (or [`RingReader::commit`]'s result) says a
//!   blocked writer now has the space it asked for. A reader that polls may
//!   [`RingReader::mask_interrupts`]; before sleeping it must call
//!   [`RingReader::unmask_interrupts`] and read again if that returns `true`.
//! * A busy-polling reader may also publish its read index lazily
//!   ([`RingReader::set_lazy_publish`]): while masked and unasked it keeps the position
//!   private, saving a store and a full fence per packet; it must then commit whenever it
//!   finds the ring empty and flush before it stops reading.
//!
//! The crate is `forbid(unsafe_code)`: all access to shared memory goes through
//! [`shared_mem::SharedMem`].

#![forbid(unsafe_code)]

#[cfg(target_endian = "big")]
compile_error!("the VMBus ring is little-endian and its indices are accessed as native atomics");

mod error;
mod layout;
mod packet;
mod reader;
mod writer;

pub use error::RingError;
pub use error::WriteError;
pub use layout::CONTROL_PAGE_SIZE;
pub use layout::ControlPage;
pub use layout::ControlSnapshot;
pub use layout::FEATURE_BITS_OFFSET;
pub use layout::FEATURE_PENDING_SEND_SIZE;
pub use layout::INTERRUPT_MASK_OFFSET;
pub use layout::MAX_DATA_SIZE;
pub use layout::PAGE_SIZE;
pub use layout::PENDING_SEND_SIZE_OFFSET;
pub use layout::READ_INDEX_OFFSET;
pub use layout::Ring;
pub use layout::WRITE_INDEX_OFFSET;
pub use packet::DESCRIPTOR_SIZE;
pub use packet::FLAG_COMPLETION_REQUESTED;
pub use packet::MAX_PACKET_SIZE;
pub use packet::PACKET_ALIGN;
pub use packet::PacketDescriptor;
pub use packet::PacketError;
pub use packet::PacketHeader;
pub use packet::PacketMeta;
pub use packet::TRAILER_SIZE;
pub use packet::encode_descriptor;
pub use packet::frame_packet;
pub use packet::framed_len;
pub use packet::packet_type;
pub use packet::parse_descriptor;
pub use packet::split_packet;
pub use reader::PacketInfo;
pub use reader::ReadPacket;
pub use reader::RingReader;
pub use writer::RingWriter;
pub use writer::WriteOutcome;
