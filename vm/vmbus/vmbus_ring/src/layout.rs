//! The ring's memory layout: control page offsets, and wrap-around access to the data area.

use crate::error::RingError;
use shared_mem::SharedMem;
use std::mem::offset_of;
use std::mem::size_of;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

/// The page size the ring is laid out in.
pub const PAGE_SIZE: usize = 4096;
/// The size of the control page that precedes the data area.
pub const CONTROL_PAGE_SIZE: usize = PAGE_SIZE;
/// Offset of `write_index` in the control page: where the writer writes next.
pub const WRITE_INDEX_OFFSET: usize = 0;
/// Offset of `read_index` in the control page: where the reader reads next.
pub const READ_INDEX_OFFSET: usize = 4;
/// Offset of `interrupt_mask` in the control page: non-zero means "reader, do not signal me".
pub const INTERRUPT_MASK_OFFSET: usize = 8;
/// Offset of `pending_send_sz`: bytes a blocked writer waits for (0: not waiting).
pub const PENDING_SEND_SIZE_OFFSET: usize = 12;
/// Offset of the `feature_bits` word.
pub const FEATURE_BITS_OFFSET: usize = 64;
/// Feature bit: the writer sets `pending_send_sz` when blocked and expects a signal.
pub const FEATURE_PENDING_SEND_SIZE: u32 = 1;
/// The largest data area: indices are `u32`, so it is the largest multiple of a page below 4 GiB.
pub const MAX_DATA_SIZE: usize = (u32::MAX as usize + 1) - PAGE_SIZE;

/// The control page as laid out in memory (`struct hv_ring_buffer` without its data).
///
/// Documents and compile-time checks the layout; the ring itself never reads this struct,
/// because each field is accessed as its own atomic.
#[repr(C)]
#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ControlPage {
    /// Byte offset in the data area where the writer writes next.
    pub write_index: u32,
    /// Byte offset in the data area where the reader reads next.
    pub read_index: u32,
    /// Set non-zero by the reader when it does not want to be signalled.
    pub interrupt_mask: u32,
    /// Set by a blocked writer to the bytes it waits for.
    pub pending_send_sz: u32,
    /// Reserved.
    pub reserved1: [u32; 12],
    /// Feature bits; see [`FEATURE_PENDING_SEND_SIZE`].
    pub feature_bits: u32,
    /// Reserved up to the end of the page.
    pub reserved2: [u8; CONTROL_PAGE_SIZE - 68],
}

const _: () = {
    assert!(size_of::<ControlPage>() == CONTROL_PAGE_SIZE);
    assert!(offset_of!(ControlPage, write_index) == WRITE_INDEX_OFFSET);
    assert!(offset_of!(ControlPage, read_index) == READ_INDEX_OFFSET);
    assert!(offset_of!(ControlPage, interrupt_mask) == INTERRUPT_MASK_OFFSET);
    assert!(offset_of!(ControlPage, pending_send_sz) == PENDING_SEND_SIZE_OFFSET);
    assert!(offset_of!(ControlPage, feature_bits) == FEATURE_BITS_OFFSET);
    assert!(MAX_DATA_SIZE <= u32::MAX as usize && MAX_DATA_SIZE % PAGE_SIZE == 0);
};

/// The raw control-page fields at one moment, unvalidated (for diagnostics and dumps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlSnapshot {
    /// `write_index` as read.
    pub write_index: u32,
    /// `read_index` as read.
    pub read_index: u32,
    /// `interrupt_mask` as read.
    pub interrupt_mask: u32,
    /// `pending_send_sz` as read.
    pub pending_send_sz: u32,
    /// `feature_bits` as read.
    pub feature_bits: u32,
}

/// A region checked to hold a control page and a data area of whole pages.
///
/// Gives wrap-around access to the data area and field access to the control page; the
/// ring's rules live in [`crate::RingWriter`] and [`crate::RingReader`].
#[derive(Debug, Clone)]
pub struct Ring<M> {
    mem: M,
    data_size: u32,
}

impl<M: SharedMem> Ring<M> {
    /// Checks the region's size: a 4 KiB control page then a data area of 1 to
    /// `MAX_DATA_SIZE / 4096` pages.
    pub fn new(mem: M) -> Result<Self, RingError> {
        let len = mem.len();
        let data_size = len.wrapping_sub(CONTROL_PAGE_SIZE);
        if len <= CONTROL_PAGE_SIZE || data_size % PAGE_SIZE != 0 || data_size > MAX_DATA_SIZE {
            return Err(RingError::RegionSize { len });
        }
        let data_size = u32::try_from(data_size).map_err(|_| RingError::RegionSize { len })?;
        Ok(Self { mem, data_size })
    }

    /// Resets the control page of a fresh ring: zero indices, no mask, no pending size, and
    /// the pending-send-size feature advertised. Only the side that creates the ring calls
    /// this, before either end starts using it.
    pub fn initialize(&self) -> Result<(), RingError> {
        // The fields are only ever accessed as `u32` atomics, so they are reset the same way
        // (mixing access sizes on the same bytes is best avoided); the reserved words between
        // them are cleared as bytes.
        for offset in [
            WRITE_INDEX_OFFSET,
            READ_INDEX_OFFSET,
            INTERRUPT_MASK_OFFSET,
            PENDING_SEND_SIZE_OFFSET,
            FEATURE_BITS_OFFSET + 4,
        ] {
            self.store(offset, 0)?;
        }
        self.mem.write_at(16, &[0; FEATURE_BITS_OFFSET - 16])?;
        self.mem.write_at(
            FEATURE_BITS_OFFSET + 8,
            &[0; CONTROL_PAGE_SIZE - FEATURE_BITS_OFFSET - 8],
        )?;
        self.store(FEATURE_BITS_OFFSET, FEATURE_PENDING_SEND_SIZE)?;
        Ok(())
    }

    /// The data area's size in bytes.
    #[inline]
    pub fn data_size(&self) -> usize {
        self.data_size as usize
    }

    /// The underlying memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Reads the control-page fields, unvalidated.
    pub fn snapshot(&self) -> Result<ControlSnapshot, RingError> {
        Ok(ControlSnapshot {
            write_index: self.load(WRITE_INDEX_OFFSET)?,
            read_index: self.load(READ_INDEX_OFFSET)?,
            interrupt_mask: self.load(INTERRUPT_MASK_OFFSET)?,
            pending_send_sz: self.load(PENDING_SEND_SIZE_OFFSET)?,
            feature_bits: self.load(FEATURE_BITS_OFFSET)?,
        })
    }

    /// Copies `buf.len()` bytes of the data area starting at `pos`, wrapping at the end.
    ///
    /// Used by readers and dump tools; `pos` must be `< data_size` and `buf` at most
    /// `data_size` long, else a typed error (never a panic).
    pub fn read_data(&self, pos: u32, buf: &mut [u8]) -> Result<(), RingError> {
        let first = buf.len().min(self.data_size().saturating_sub(pos as usize));
        let (a, b) = buf.split_at_mut(first);
        self.mem.read_at(CONTROL_PAGE_SIZE + pos as usize, a)?;
        if !b.is_empty() {
            self.mem.read_at(CONTROL_PAGE_SIZE, b)?;
        }
        Ok(())
    }

    /// Copies `data` into the data area starting at `pos`, wrapping at the end.
    pub(crate) fn write_data(&self, pos: u32, data: &[u8]) -> Result<(), RingError> {
        let first = data
            .len()
            .min(self.data_size().saturating_sub(pos as usize));
        let (a, b) = data.split_at(first);
        self.mem.write_at(CONTROL_PAGE_SIZE + pos as usize, a)?;
        if !b.is_empty() {
            self.mem.write_at(CONTROL_PAGE_SIZE, b)?;
        }
        Ok(())
    }

    /// Copies `buf.len()` words of the data area starting at `pos` (8-aligned), wrapping at
    /// the end; `buf` at most the data area long, else a typed error.
    #[inline]
    pub(crate) fn read_words(&self, pos: u32, buf: &mut [u64]) -> Result<(), RingError> {
        let first = buf
            .len()
            .min(self.data_size().saturating_sub(pos as usize) / 8);
        let (a, b) = buf.split_at_mut(first);
        self.mem.read_words(CONTROL_PAGE_SIZE + pos as usize, a)?;
        if !b.is_empty() {
            self.mem.read_words(CONTROL_PAGE_SIZE, b)?;
        }
        Ok(())
    }

    /// Copies `data`'s words into the data area starting at `pos` (8-aligned), wrapping at
    /// the end.
    #[inline]
    pub(crate) fn write_words(&self, pos: u32, data: &[u64]) -> Result<(), RingError> {
        let first = data
            .len()
            .min(self.data_size().saturating_sub(pos as usize) / 8);
        let (a, b) = data.split_at(first);
        self.mem.write_words(CONTROL_PAGE_SIZE + pos as usize, a)?;
        if !b.is_empty() {
            self.mem.write_words(CONTROL_PAGE_SIZE, b)?;
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn load(&self, offset: usize) -> Result<u32, RingError> {
        Ok(self.mem.load_u32(offset)?)
    }

    #[inline]
    pub(crate) fn store(&self, offset: usize, value: u32) -> Result<(), RingError> {
        Ok(self.mem.store_u32(offset, value)?)
    }

    /// Whether `index` is a valid position in the data area.
    #[inline]
    pub(crate) fn index_ok(&self, index: u32) -> bool {
        index < self.data_size && index % 8 == 0
    }

    /// Loads and validates the write index.
    #[inline]
    pub(crate) fn load_write_index(&self) -> Result<u32, RingError> {
        let value = self.load(WRITE_INDEX_OFFSET)?;
        if self.index_ok(value) {
            Ok(value)
        } else {
            Err(RingError::InvalidWriteIndex {
                value,
                data_size: self.data_size,
            })
        }
    }

    /// Loads and validates the read index.
    #[inline]
    pub(crate) fn load_read_index(&self) -> Result<u32, RingError> {
        let value = self.load(READ_INDEX_OFFSET)?;
        if self.index_ok(value) {
            Ok(value)
        } else {
            Err(RingError::InvalidReadIndex {
                value,
                data_size: self.data_size,
            })
        }
    }

    /// Bytes from `from` forward to `to`, modulo the data size (both valid indices).
    #[inline]
    pub(crate) fn distance(&self, from: u32, to: u32) -> u32 {
        if to >= from {
            to - from
        } else {
            // Wrapping only so that a misuse can never panic; valid indices never wrap.
            self.data_size.wrapping_sub(from).wrapping_add(to)
        }
    }

    /// `pos + n` modulo the data size.
    ///
    /// Both are below the data size on every path a packet takes, so this is an add and a
    /// conditional subtract; the division (tens of cycles, twice per packet) is left for
    /// arguments out of that range.
    #[inline]
    pub(crate) fn advance(&self, pos: u32, n: usize) -> u32 {
        let size = u64::from(self.data_size);
        let reduce = |x: u64| if x < size { x } else { x % size };
        let sum = reduce(u64::from(pos)) + reduce(n as u64);
        (if sum < size { sum } else { sum - size }) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mem::HeapMem;

    /// The division-free `advance` agrees with plain modular arithmetic, at the edges and
    /// for arguments past the data size.
    #[test]
    fn advance_is_addition_modulo_the_data_size() {
        let ring = Ring::new(HeapMem::new(CONTROL_PAGE_SIZE + 2 * PAGE_SIZE)).unwrap();
        let size = 2 * PAGE_SIZE as u64;
        let values = [
            0u64, 1, 8, 4088, 4096, 8184, 8191, 8192, 8200, 16384, 100_000,
        ];
        for &pos in values.iter().filter(|&&p| p <= u64::from(u32::MAX)) {
            for &n in &values {
                let expected = ((pos + n) % size) as u32;
                assert_eq!(
                    ring.advance(pos as u32, n as usize),
                    expected,
                    "{pos} + {n}"
                );
            }
        }
        assert_eq!(
            ring.advance(u32::MAX, usize::MAX),
            ((u64::from(u32::MAX) % size + (usize::MAX as u64) % size) % size) as u32
        );
    }
}
