//! The reading end of a ring.

use crate::error::RingError;
use crate::layout::FEATURE_BITS_OFFSET;
use crate::layout::FEATURE_PENDING_SEND_SIZE;
use crate::layout::INTERRUPT_MASK_OFFSET;
use crate::layout::PENDING_SEND_SIZE_OFFSET;
use crate::layout::READ_INDEX_OFFSET;
use crate::layout::Ring;
use crate::packet::DESCRIPTOR_SIZE;
use crate::packet::PACKET_ALIGN;
use crate::packet::PacketHeader;
use crate::packet::TRAILER_SIZE;
use crate::packet::parse_descriptor_with_available;
use shared_mem::SharedMem;
use std::sync::atomic::Ordering;
use std::sync::atomic::fence;

/// How many bytes `peek` fetches at once before it knows the packet's length.
const PREFIX_SIZE: usize = 128;

/// A packet copied out of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// Its validated descriptor.
    pub header: PacketHeader,
    /// Where it started in the data area.
    pub offset: u32,
}

impl PacketInfo {
    /// The packet's length in the buffer it was copied to (descriptor included).
    pub fn len(&self) -> usize {
        self.header.packet_len()
    }

    /// Never true: a packet holds at least its descriptor.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The payload within `buf`, the buffer the packet was copied into (empty if `buf` is not
    /// that buffer and too short).
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.header.data_offset()..self.header.packet_len())
            .unwrap_or_default()
    }
}

/// A packet read and consumed by [`RingReader::read_packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct ReadPacket {
    /// The packet.
    pub info: PacketInfo,
    /// A blocked writer must be signalled: freeing this packet gave it the space it waits for.
    pub signal_writer: bool,
}

/// The reading end of a ring.
///
/// Keeps its read position privately: [`RingReader::peek`] copies the next packet out,
/// [`RingReader::consume`] moves past it, [`RingReader::commit`] publishes the position to the
/// writer (several packets may be consumed per commit). [`RingReader::read_packet`] does all
/// three.
#[derive(Debug)]
pub struct RingReader<M> {
    ring: Ring<M>,
    /// Start of the next packet to read; authoritative.
    read_index: u32,
    /// The read index last published in shared memory.
    published: u32,
    /// The last validated write index seen; the bytes up to it are published packets.
    write_index: u32,
    /// The position after the packet last peeked, if not yet consumed.
    peeked: Option<u32>,
    check_trailer: bool,
}

impl<M: SharedMem> RingReader<M> {
    /// Opens the reading end of the ring in `mem`, starting at its current read index (zero
    /// on a fresh ring; see [`Ring::initialize`]).
    pub fn new(mem: M) -> Result<Self, RingError> {
        Self::from_ring(Ring::new(mem)?)
    }

    /// Opens the reading end of a checked ring.
    pub fn from_ring(ring: Ring<M>) -> Result<Self, RingError> {
        let read_index = ring.load_read_index()?;
        let write_index = ring.load_write_index()?;
        Ok(Self {
            ring,
            read_index,
            published: read_index,
            write_index,
            peeked: None,
            check_trailer: true,
        })
    }

    /// Whether to require each trailer to hold its packet's start offset (the default: Linux
    /// and Hyper-V writers do; turn it off only for a peer known to write something else).
    pub fn set_check_trailer(&mut self, check: bool) {
        self.check_trailer = check;
    }

    /// The ring's layout and memory.
    pub fn ring(&self) -> &Ring<M> {
        &self.ring
    }

    /// The largest packet a correct writer can put in this ring: a buffer this long never
    /// gets [`RingError::PacketTooLarge`].
    pub fn max_packet_len(&self) -> usize {
        (self.ring.data_size() - TRAILER_SIZE - PACKET_ALIGN).min(crate::MAX_PACKET_SIZE)
    }

    /// Bytes published by the writer and not yet consumed, re-reading the write index.
    pub fn available_bytes(&mut self) -> Result<usize, RingError> {
        self.write_index = self.ring.load_write_index()?;
        Ok(self.ring.distance(self.read_index, self.write_index) as usize)
    }

    /// Whether a packet is waiting (re-reading the write index if needed).
    pub fn has_data(&mut self) -> Result<bool, RingError> {
        Ok(self.read_index != self.write_index || self.available_bytes()? != 0)
    }

    /// Copies the next packet (descriptor, payload and padding; no trailer) into the start of
    /// `buf` without consuming it. `Ok(None)` if the ring is empty.
    ///
    /// The descriptor is read once, validated, and that same copy is what lands in `buf`, so
    /// the header returned always matches the bytes in `buf` even if the peer rewrites the
    /// ring meanwhile. A packet longer than `buf` is [`RingError::PacketTooLarge`] and stays
    /// in the ring.
    pub fn peek(&mut self, buf: &mut [u8]) -> Result<Option<PacketInfo>, RingError> {
        let start = self.read_index;
        let mut available = self.ring.distance(start, self.write_index);
        if available == 0 {
            available = self.available_bytes()? as u32;
            if available == 0 {
                return Ok(None);
            }
        }
        if (available as usize) < DESCRIPTOR_SIZE + TRAILER_SIZE {
            return Err(RingError::TruncatedPacket {
                offset: start,
                available,
            });
        }
        // Fetch a prefix of the published bytes once: the descriptor is parsed from this copy
        // and the same copy lands in `buf`, so what we validated is what the caller gets.
        // Small packets (and their trailers) are entirely in the prefix: one copy in all.
        let mut prefix = [0u8; PREFIX_SIZE];
        let prefix = prefix
            .get_mut(..PREFIX_SIZE.min(available as usize))
            .unwrap_or_default();
        self.ring.read_data(start, prefix)?;
        // The packet and its trailer must fit in what the writer published.
        let header = parse_descriptor_with_available(prefix, available as usize - TRAILER_SIZE)
            .map_err(|error| RingError::BadPacket {
                offset: start,
                error,
            })?;
        let len = header.packet_len();
        let Some(out) = buf.get_mut(..len) else {
            return Err(RingError::PacketTooLarge {
                offset: start,
                len,
                capacity: buf.len(),
            });
        };
        let from_prefix = len.min(prefix.len());
        let (out_head, out_rest) = out.split_at_mut(from_prefix);
        out_head.copy_from_slice(prefix.get(..from_prefix).unwrap_or_default());
        if !out_rest.is_empty() {
            self.ring
                .read_data(self.ring.advance(start, from_prefix), out_rest)?;
        }
        let mut trailer = [0u8; TRAILER_SIZE];
        match prefix.get(len..len + TRAILER_SIZE) {
            Some(t) => trailer.copy_from_slice(t),
            None => self
                .ring
                .read_data(self.ring.advance(start, len), &mut trailer)?,
        }
        let trailer = u64::from_le_bytes(trailer);
        if self.check_trailer && (trailer >> 32) as u32 != start {
            return Err(RingError::BadTrailer {
                offset: start,
                trailer,
            });
        }
        self.peeked = Some(self.ring.advance(start, len + TRAILER_SIZE));
        Ok(Some(PacketInfo {
            header,
            offset: start,
        }))
    }

    /// Moves past the packet last returned by [`RingReader::peek`] (no-op if none). The
    /// space is handed back to the writer only by [`RingReader::commit`].
    pub fn consume(&mut self) {
        if let Some(next) = self.peeked.take() {
            self.read_index = next;
        }
    }

    /// Publishes the read position, freeing the consumed packets' space, and returns whether
    /// the writer must be signalled: it advertised a pending send size that the free space has
    /// now grown past, and had not enough before this commit.
    pub fn commit(&mut self) -> Result<bool, RingError> {
        self.peeked = None;
        let old = self.published;
        let new = self.read_index;
        if old == new {
            return Ok(false);
        }
        // Release: our copies out of the freed bytes happen before the writer may reuse them.
        self.ring.store(READ_INDEX_OFFSET, new)?;
        self.published = new;
        // Publish the index before sampling pending_send_sz, else a writer that sets it just
        // after our sample and re-checks just before our store would wait forever.
        fence(Ordering::SeqCst);
        let pending = self.ring.load(PENDING_SEND_SIZE_OFFSET)?;
        if pending == 0 {
            return Ok(false);
        }
        if self.ring.load(FEATURE_BITS_OFFSET)? & FEATURE_PENDING_SEND_SIZE == 0 {
            return Ok(false);
        }
        let write_index = self.ring.load_write_index()?;
        self.write_index = write_index;
        let data_size = self.ring.data_size() as u64;
        let free_now = data_size - u64::from(self.ring.distance(new, write_index));
        let freed = u64::from(self.ring.distance(old, new));
        let free_before = free_now.saturating_sub(freed);
        let pending = u64::from(pending);
        Ok(free_before <= pending && free_now > pending)
    }

    /// Reads the next packet into `buf`, consumes it and publishes the new read position.
    /// `Ok(None)` if the ring is empty.
    pub fn read_packet(&mut self, buf: &mut [u8]) -> Result<Option<ReadPacket>, RingError> {
        let Some(info) = self.peek(buf)? else {
            return Ok(None);
        };
        self.consume();
        let signal_writer = self.commit()?;
        Ok(Some(ReadPacket {
            info,
            signal_writer,
        }))
    }

    /// Asks the writer not to signal (while this reader is polling anyway).
    pub fn mask_interrupts(&self) -> Result<(), RingError> {
        self.ring.store(INTERRUPT_MASK_OFFSET, 1)
    }

    /// Asks the writer to signal again, then re-checks for data. Returns `true` if data
    /// arrived meanwhile: the writer may have seen the mask still set and skipped the signal,
    /// so the caller must read again instead of waiting.
    pub fn unmask_interrupts(&mut self) -> Result<bool, RingError> {
        self.ring.store(INTERRUPT_MASK_OFFSET, 0)?;
        // Pairs with the writer's fence between publishing its index and reading the mask.
        fence(Ordering::SeqCst);
        self.has_data()
    }
}
