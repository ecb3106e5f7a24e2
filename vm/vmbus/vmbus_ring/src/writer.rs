//! The writing end of a ring.

use crate::error::RingError;
use crate::error::WriteError;
use crate::layout::INTERRUPT_MASK_OFFSET;
use crate::layout::PENDING_SEND_SIZE_OFFSET;
use crate::layout::READ_INDEX_OFFSET;
use crate::layout::Ring;
use crate::layout::WRITE_INDEX_OFFSET;
use crate::packet::PACKET_ALIGN;
use crate::packet::PacketDescriptor;
use crate::packet::PacketMeta;
use crate::packet::TRAILER_SIZE;
use crate::packet::encode_descriptor;
use crate::packet::parse_descriptor;
use shared_mem::SharedMem;
use std::sync::atomic::Ordering;
use std::sync::atomic::fence;
use zerocopy::IntoBytes;

/// Packets up to this size (trailer included) are assembled on the stack and copied into the
/// ring with one call, which halves the cost of small packets.
const STAGE_SIZE: usize = 256;

/// Larger packets carry their last bytes and the trailer in one copy of up to this size.
const TAIL_STAGE: usize = 64;

/// [`STAGE_SIZE`] in words.
const STAGE_WORDS: usize = STAGE_SIZE / PACKET_ALIGN;

/// The descriptor's two words as they lie in the ring (little-endian), built from its fields.
#[inline]
fn descriptor_words(desc: &PacketDescriptor) -> [u64; 2] {
    [
        u64::from(desc.packet_type)
            | u64::from(desc.offset8) << 16
            | u64::from(desc.len8) << 32
            | u64::from(desc.flags) << 48,
        desc.transaction_id,
    ]
}

/// Packs `bytes` into the words at the start of `words` (little-endian, the last partial word
/// zero-padded); bytes past `words`' end are dropped (callers size the stage first).
#[inline]
fn stage_bytes(words: &mut [u64], bytes: &[u8]) {
    let mut chunks = bytes.chunks_exact(PACKET_ALIGN);
    let mut words = words.iter_mut();
    // Chunks first: `zip` stops on the first exhausted iterator without taking from the
    // second, so the word for the remainder is still there after the loop.
    for (chunk, word) in (&mut chunks).zip(&mut words) {
        let mut b = [0u8; PACKET_ALIGN];
        b.copy_from_slice(chunk);
        *word = u64::from_le_bytes(b);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        if let Some(word) = words.next() {
            let mut b = [0u8; PACKET_ALIGN];
            if let Some(dst) = b.get_mut(..rest.len()) {
                dst.copy_from_slice(rest);
            }
            *word = u64::from_le_bytes(b);
        }
    }
}

/// What a successful write asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct WriteOutcome {
    /// The reader must be signalled: it had consumed everything before this packet and has
    /// not masked interrupts.
    pub signal_reader: bool,
}

/// The writing end of a ring.
///
/// Keeps its write index privately (the shared one is only ever published, never read back)
/// and reads the peer's read index, validated, only when the space it last saw is not enough.
#[derive(Debug)]
pub struct RingWriter<M> {
    ring: Ring<M>,
    /// Where the next packet goes; authoritative.
    write_index: u32,
    /// The last validated read index seen; free space computed from it is a lower bound.
    read_index: u32,
    /// Whether we set `pending_send_sz` and have not cleared it yet.
    pending: bool,
}

impl<M: SharedMem> RingWriter<M> {
    /// Opens the writing end of the ring in `mem`, starting at its current write index (zero
    /// on a fresh ring; see [`Ring::initialize`]).
    pub fn new(mem: M) -> Result<Self, RingError> {
        Self::from_ring(Ring::new(mem)?)
    }

    /// Opens the writing end of a checked ring.
    pub fn from_ring(ring: Ring<M>) -> Result<Self, RingError> {
        let write_index = ring.load_write_index()?;
        let read_index = ring.load_read_index()?;
        Ok(Self {
            ring,
            write_index,
            read_index,
            pending: false,
        })
    }

    /// The ring's layout and memory.
    pub fn ring(&self) -> &Ring<M> {
        &self.ring
    }

    /// The largest framed packet this ring can ever take (the writer needs strictly more free
    /// bytes than packet plus trailer).
    pub fn max_packet_len(&self) -> usize {
        (self.ring.data_size() - TRAILER_SIZE - PACKET_ALIGN).min(crate::MAX_PACKET_SIZE)
    }

    /// Writes a packet made of a standard 16-byte descriptor built from `meta` and `payload`
    /// (zero-padded to 8 bytes).
    #[inline]
    pub fn write_packet(
        &mut self,
        meta: &PacketMeta,
        payload: &[u8],
    ) -> Result<WriteOutcome, WriteError> {
        let Some(desc) = encode_descriptor(meta, payload.len()) else {
            return Err(WriteError::TooLarge {
                needed: payload
                    .len()
                    .saturating_add(crate::DESCRIPTOR_SIZE + TRAILER_SIZE),
                data_size: self.ring.data_size(),
            });
        };
        let len = usize::from(desc.len8) * PACKET_ALIGN;
        if len + TRAILER_SIZE <= STAGE_SIZE {
            // Small packet: descriptor, payload and trailer staged as the words they are in
            // the ring and stored with one word copy. The descriptor's words are built from
            // its fields (not copied as bytes), and the payload's last partial word goes out
            // zero-padded, so every store is a whole aligned word.
            let mut stage = [0u64; STAGE_WORDS];
            let (head, rest) = stage.split_at_mut(2);
            head.copy_from_slice(&descriptor_words(&desc));
            stage_bytes(rest, payload);
            return self.write_staged(len, &mut stage);
        }
        // The payload's last partial word and the padding go out as one whole word, so every
        // store into the ring is a full aligned word (no read-modify-write of shared memory).
        let whole = payload.len() - payload.len() % PACKET_ALIGN;
        let (body, rest) = payload.split_at(whole);
        let mut last = [0u8; PACKET_ALIGN];
        let last = match rest.len() {
            0 => &[][..],
            n => {
                last[..n].copy_from_slice(rest);
                &last[..]
            }
        };
        self.write_parts(len, &[desc.as_bytes(), body, last])
    }

    /// Writes one already framed packet (descriptor, payload and padding; no trailer), for
    /// example one received from another ring. It is validated first ([`crate::split_packet`]'s
    /// rules), and its length must be exactly the descriptor's `len8 * 8`.
    pub fn write_framed(&mut self, framed: &[u8]) -> Result<WriteOutcome, WriteError> {
        let header = parse_descriptor(framed)?;
        if header.packet_len() != framed.len() {
            return Err(WriteError::Packet(crate::PacketError::LengthMismatch {
                len8: header.len8,
                len: framed.len(),
            }));
        }
        if framed.len() + TRAILER_SIZE <= STAGE_SIZE {
            let mut stage = [0u64; STAGE_WORDS];
            stage_bytes(&mut stage, framed);
            return self.write_staged(framed.len(), &mut stage);
        }
        self.write_parts(framed.len(), &[framed])
    }

    /// Writes a small packet of `len` bytes whose words are at the start of `stage`, followed
    /// by its trailer (put into `stage` here).
    #[inline]
    fn write_staged(
        &mut self,
        len: usize,
        stage: &mut [u64; STAGE_WORDS],
    ) -> Result<WriteOutcome, WriteError> {
        let needed = len + TRAILER_SIZE;
        self.reserve(needed)?;
        let start = self.write_index;
        let words = needed / PACKET_ALIGN;
        let Some(trailer) = stage.get_mut(words - 1) else {
            return Err(WriteError::TooLarge {
                needed,
                data_size: self.ring.data_size(),
            });
        };
        *trailer = u64::from(start) << 32;
        self.ring
            .write_words(start, stage.get(..words).unwrap_or_default())?;
        self.publish(start, needed)
    }

    /// Checks that `needed` bytes (packet and trailer) fit, re-reading the read index only
    /// when the cached one does not leave enough.
    #[inline]
    fn reserve(&mut self, needed: usize) -> Result<(), WriteError> {
        let data_size = self.ring.data_size();
        if needed >= data_size || needed > crate::MAX_PACKET_SIZE + TRAILER_SIZE {
            return Err(WriteError::TooLarge { needed, data_size });
        }
        if self.free_from_cache() <= needed {
            let free = self.free_bytes()?;
            if free <= needed {
                return Err(WriteError::Full { needed, free });
            }
        }
        Ok(())
    }

    /// Bytes free for writing now (re-reading the peer's read index), trailer space included.
    /// The writer can write `n` bytes plus trailer only if this is strictly greater.
    pub fn free_bytes(&mut self) -> Result<usize, RingError> {
        self.read_index = self.ring.load_read_index()?;
        Ok(self.free_from_cache())
    }

    fn free_from_cache(&self) -> usize {
        self.ring.data_size() - self.ring.distance(self.read_index, self.write_index) as usize
    }

    /// Asks the reader to signal once more than `needed` bytes are free (as reported by
    /// [`WriteError::Full`]), then checks again. Returns `true` if the space is already there:
    /// the reader may have freed it before seeing the request, so the caller must retry rather
    /// than wait. Successful writes clear the request.
    pub fn set_pending_send_size(&mut self, needed: usize) -> Result<bool, RingError> {
        let value = u32::try_from(needed).unwrap_or(u32::MAX);
        self.ring.store(PENDING_SEND_SIZE_OFFSET, value)?;
        self.pending = true;
        // Order the store before the re-read of the read index: pairs with the reader's
        // fence between publishing its read index and reading pending_send_sz.
        fence(Ordering::SeqCst);
        Ok(self.free_bytes()? > needed)
    }

    /// Withdraws a pending-send-size request (for example when giving up on a write).
    pub fn clear_pending_send_size(&mut self) -> Result<(), RingError> {
        self.ring.store(PENDING_SEND_SIZE_OFFSET, 0)?;
        self.pending = false;
        Ok(())
    }

    /// Writes a packet too large for the stage, from its parts.
    fn write_parts(&mut self, len: usize, parts: &[&[u8]]) -> Result<WriteOutcome, WriteError> {
        let needed = len + TRAILER_SIZE;
        self.reserve(needed)?;
        let start = self.write_index;
        let trailer = (u64::from(start) << 32).to_le_bytes();
        {
            // Large packet (small ones are staged as words by the callers): the parts go out as they are, except that the last few bytes of
            // the last part travel with the trailer in one store (same line, one copy).
            let mut pos = start;
            let (last, init): (&[u8], &[&[u8]]) = match parts.split_last() {
                Some((last, init)) => (last, init),
                None => (&[], &[]),
            };
            let keep = last.len() - last.len().min(TAIL_STAGE - TRAILER_SIZE);
            let (body, tail) = last.split_at(keep);
            for part in init.iter().chain([&body]) {
                if !part.is_empty() {
                    self.ring.write_data(pos, part)?;
                    pos = self.ring.advance(pos, part.len());
                }
            }
            let mut stage = [0u8; TAIL_STAGE];
            let staged = tail.len() + TRAILER_SIZE;
            if let Some(dst) = stage.get_mut(..tail.len()) {
                dst.copy_from_slice(tail);
            }
            if let Some(dst) = stage.get_mut(tail.len()..staged) {
                dst.copy_from_slice(&trailer);
            }
            self.ring
                .write_data(pos, stage.get(..staged).unwrap_or_default())?;
        }
        self.publish(start, needed)
    }

    /// Publishes the packet of `needed` bytes (trailer included) written at `start`, and
    /// decides whether the reader must be signalled.
    #[inline]
    fn publish(&mut self, start: u32, needed: usize) -> Result<WriteOutcome, WriteError> {
        let end = self.ring.advance(start, needed);
        // Release: the packet bytes are visible before the index that publishes them.
        self.ring.store(WRITE_INDEX_OFFSET, end)?;
        self.write_index = end;
        if self.pending {
            self.clear_pending_send_size()?;
        }
        // The signalling decision reads the mask and read index after publishing; the fence
        // keeps those loads from moving before the store (the reader unmasks, fences, then
        // re-checks the write index, so one of us sees the other).
        fence(Ordering::SeqCst);
        if self.ring.load(INTERRUPT_MASK_OFFSET)? != 0 {
            return Ok(WriteOutcome {
                signal_reader: false,
            });
        }
        // Compared only, never used as an index: an invalid value just means "no signal".
        let read_index = self.ring.load(READ_INDEX_OFFSET)?;
        if self.ring.index_ok(read_index) {
            self.read_index = read_index;
        }
        Ok(WriteOutcome {
            signal_reader: read_index == start,
        })
    }
}
