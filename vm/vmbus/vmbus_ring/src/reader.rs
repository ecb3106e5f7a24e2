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
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::atomic::fence;

/// How many words `peek` fetches at once before it knows the packet's length: one line's
/// worth, which holds a packet of up to 56 bytes with its trailer. A larger stage costs every
/// packet its zeroing (16 words measured 4 ns slower per single-thread round trip than 8).
const PREFIX_WORDS: usize = 8;

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
///
/// # Lazy publishing
///
/// Publishing the read index costs a store to the control line the writer is about to write
/// and a full fence that waits for it, on the reader's critical path. A busy-polling reader
/// can skip both while the writer does not need the index: [`RingReader::set_lazy_publish`]
/// makes [`RingReader::commit`] keep the position private while all of these hold:
///
/// * interrupts are masked by this reader (the writer does not signal, so it never compares
///   against the read index; an unmasked reader that sleeps relies on that comparison);
/// * `pending_send_sz` reads 0 (the writer has not asked for space);
/// * less than a quarter of the data area is consumed and unpublished (so a writer that
///   never advertises a pending size, as Linux's does not, still sees three quarters of the
///   ring once the reader has drained it).
///
/// A lazy reader must call [`RingReader::commit`] each time it finds the ring empty (a writer
/// may have blocked after the last commit looked: that commit publishes and says whether to
/// signal it), and [`RingReader::flush`] before it stops reading (waiting, or handing the
/// ring to someone else). [`RingReader::unmask_interrupts`] publishes too, before it unmasks;
/// if that frees space a blocked writer waits for it returns `true` ("read again") and the
/// next [`RingReader::commit`] or [`RingReader::flush`] says to signal the writer.
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
    /// Whether commits may keep the read position private (see "Lazy publishing").
    lazy: bool,
    /// Whether this reader set `interrupt_mask` and has not cleared it since (an atomic only
    /// so that masking keeps taking `&self`; nobody else sees it).
    masked: AtomicBool,
    /// A publish outside `commit` (in `unmask_interrupts`) freed space a blocked writer waits
    /// for; the next `commit` or `flush` reports it.
    signal_owed: bool,
}

/// A lazy reader publishes once the unpublished bytes reach `data_size / LAZY_LIMIT_DIVISOR`.
const LAZY_LIMIT_DIVISOR: usize = 4;

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
            lazy: false,
            masked: AtomicBool::new(false),
            signal_owed: false,
        })
    }

    /// Whether to require each trailer to hold its packet's start offset (the default: Linux
    /// and Hyper-V writers do; turn it off only for a peer known to write something else).
    pub fn set_check_trailer(&mut self, check: bool) {
        self.check_trailer = check;
    }

    /// Whether [`RingReader::commit`] may keep the read position private while the writer
    /// does not need it (off by default; see "Lazy publishing" in the type's documentation
    /// for the rules a lazy reader must follow). Turning it off publishes at the next commit.
    pub fn set_lazy_publish(&mut self, lazy: bool) {
        self.lazy = lazy;
    }

    /// Consumed bytes not yet published to the writer.
    pub fn unpublished_bytes(&self) -> usize {
        self.ring.distance(self.published, self.read_index) as usize
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
        // Fetch a prefix of the published words once: the descriptor is parsed from this copy
        // and the same copy lands in `buf`, so what we validated is what the caller gets.
        // Small packets (and their trailers) are entirely in the prefix: one copy in all.
        let mut prefix = [0u64; PREFIX_WORDS];
        let prefix = prefix
            .get_mut(..PREFIX_WORDS.min(available as usize / PACKET_ALIGN))
            .unwrap_or_default();
        self.ring.read_words(start, prefix)?;
        let mut desc = [0u8; DESCRIPTOR_SIZE];
        for (dst, word) in desc.chunks_exact_mut(PACKET_ALIGN).zip(&*prefix) {
            dst.copy_from_slice(&word.to_le_bytes());
        }
        // The packet and its trailer must fit in what the writer published.
        let header = parse_descriptor_with_available(&desc, available as usize - TRAILER_SIZE)
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
        let from_prefix = len.min(prefix.len() * PACKET_ALIGN);
        let (out_head, out_rest) = out.split_at_mut(from_prefix);
        for (dst, word) in out_head.chunks_exact_mut(PACKET_ALIGN).zip(&*prefix) {
            dst.copy_from_slice(&word.to_le_bytes());
        }
        if !out_rest.is_empty() {
            self.ring
                .read_data(self.ring.advance(start, from_prefix), out_rest)?;
        }
        let trailer = match prefix.get(len / PACKET_ALIGN) {
            Some(&t) => t,
            None => {
                let mut t = [0u64];
                self.ring
                    .read_words(self.ring.advance(start, len), &mut t)?;
                let [t] = t;
                t
            }
        };

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
    ///
    /// A lazy reader (see [`RingReader::set_lazy_publish`]) may keep the position private
    /// instead, when the writer does not need it; calling this on an empty ring is how such a
    /// reader notices a writer that blocked meanwhile.
    pub fn commit(&mut self) -> Result<bool, RingError> {
        self.peeked = None;
        if self.may_defer()? {
            return Ok(std::mem::take(&mut self.signal_owed));
        }
        self.flush()
    }

    /// Publishes the read position now, lazy or not, and returns whether the writer must be
    /// signalled (as [`RingReader::commit`]). A lazy reader calls this before it stops
    /// reading.
    pub fn flush(&mut self) -> Result<bool, RingError> {
        self.peeked = None;
        let owed = std::mem::take(&mut self.signal_owed);
        let old = self.published;
        if old == self.read_index {
            return Ok(owed);
        }
        self.publish_index()?;
        // Publish the index before sampling pending_send_sz, else a writer that sets it just
        // after our sample and re-checks just before our store would wait forever.
        fence(Ordering::SeqCst);
        Ok(self.writer_needs_signal(old)? || owed)
    }

    /// Whether a lazy commit may leave the read position unpublished. Reads only
    /// `pending_send_sz`, on the control line the reader has just read `write_index` from.
    fn may_defer(&self) -> Result<bool, RingError> {
        if !(self.lazy && self.masked.load(Ordering::Relaxed)) {
            return Ok(false);
        }
        let unpublished = self.unpublished_bytes();
        if unpublished == 0 {
            return Ok(true);
        }
        if unpublished >= self.ring.data_size() / LAZY_LIMIT_DIVISOR {
            return Ok(false);
        }
        // No fence before this load: a writer that sets pending_send_sz after it is seen here
        // as 0 re-reads the (stale) read index and waits; our next commit (on the next packet
        // or on finding the ring empty), flush or unmask sees its request and publishes.
        Ok(self.ring.load(PENDING_SEND_SIZE_OFFSET)? == 0)
    }

    /// Stores the private read position into the control page (release: our copies out of
    /// the freed bytes happen before the writer may reuse them).
    fn publish_index(&mut self) -> Result<(), RingError> {
        self.ring.store(READ_INDEX_OFFSET, self.read_index)?;
        self.published = self.read_index;
        Ok(())
    }

    /// After publishing (and a full fence), whether the writer waits for space that moving
    /// the read index from `old` to the published position has given it.
    fn writer_needs_signal(&mut self, old: u32) -> Result<bool, RingError> {
        let new = self.published;
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
        self.ring.store(INTERRUPT_MASK_OFFSET, 1)?;
        self.masked.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Asks the writer to signal again, then re-checks for data. Returns `true` if data
    /// arrived meanwhile: the writer may have seen the mask still set and skipped the signal,
    /// so the caller must read again instead of waiting.
    ///
    /// A lazy reader's unpublished position is published first (the writer's signalling
    /// decision compares against it once the mask is clear); if that gives a blocked writer
    /// its space, this returns `true` as well and the next [`RingReader::commit`] or
    /// [`RingReader::flush`] says to signal it.
    pub fn unmask_interrupts(&mut self) -> Result<bool, RingError> {
        let old = self.published;
        let unpublished = old != self.read_index;
        if unpublished {
            self.publish_index()?;
        }
        self.ring.store(INTERRUPT_MASK_OFFSET, 0)?;
        self.masked.store(false, Ordering::Relaxed);
        // Pairs with the writer's fence between publishing its index and reading the mask
        // (and with the one between setting pending_send_sz and re-reading the read index).
        fence(Ordering::SeqCst);
        if unpublished && self.writer_needs_signal(old)? {
            self.signal_owed = true;
        }
        Ok(self.signal_owed || self.has_data()?)
    }
}
