//! Shared memory that another process may write at any time, behind a small bounds-checked trait.
//!
//! [`SharedMem`] is the whole interface: byte copies in and out ([`SharedMem::read_at`],
//! [`SharedMem::write_at`]), copies of whole aligned words ([`SharedMem::read_words`],
//! [`SharedMem::write_words`], the fast path for word-framed data) and aligned atomic loads
//! and stores of `u32` and `u64`. Every
//! access is checked against the region's length (and, for the atomics, alignment) and
//! returns a [`MemError`] instead of panicking. Two regions implement it:
//!
//! * [`HeapMem`]: process-local memory, for tests and for two threads of one process.
//! * [`MemfdMem`]: a `MAP_SHARED` mapping of a sealed memfd, whose fd can be passed to another
//!   process, which maps the same pages with [`MemfdMem::from_fd`].
//!
//! # The memory model, and why every access is atomic
//!
//! The peer may store into the region at any moment, concurrently with our own accesses. In
//! Rust's memory model a plain (non-atomic) read racing with a write is undefined behaviour,
//! and so is a volatile read (volatile is not a synchronisation primitive). This crate
//! therefore never creates `&[u8]` or `&mut [u8]` over the region and never uses
//! `copy_nonoverlapping` on it: every access is an atomic operation on `AtomicU32` or
//! `AtomicU64`. Byte copies work in whole aligned 8-byte words with relaxed ordering (a
//! partial word at either end of the range is loaded whole, or updated with `fetch_and` then
//! `fetch_or` on just the bytes written), which on x86-64 compiles to ordinary moves for the
//! aligned part. Two copies thus never race as atomics of different sizes, which Rust (and
//! Miri) would treat as UB. A peer in another process is outside Rust's model altogether; to
//! it the region is plain memory, and a torn or changing value is the caller's to validate
//! (which is what `vmbus_ring` does), never UB here.
//!
//! Ordering: `load_*` are `Acquire`, `store_*` are `Release`, byte copies are `Relaxed`. So a
//! writer that copies data and then `store_u32`s an index publishes the data to a reader that
//! `load_u32`s the index and then copies. Store-then-load patterns (Dekker-style signalling
//! decisions) need a full fence between the two, `std::sync::atomic::fence(SeqCst)`, which
//! the caller issues.
//!
//! The `u32` accessors are 4-byte atomics: a caller must not race them against byte copies or
//! `u64` accesses of the same bytes (mixed-size races); a caller that keeps its structures in
//! disjoint fields (as a ring's control page and data area are) never does.
//!
//! The crate is the only one of the workspace with `unsafe`, in nine small blocks: two in the
//! private `Raw` view that turn the region into atomic references (the word slice and one
//! `AtomicU32`), two where [`HeapMem::new`] and the memfd mapping vouch for a pointer when
//! building a `Raw`, the heap region's deallocation, and four `Send`/`Sync` assertions.

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use thiserror::Error;

/// An access that the region refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum MemError {
    /// The accessed range does not lie within the region.
    #[error(
        "access of {len} bytes at offset {offset:#x} is outside the region of {region_len:#x} bytes"
    )]
    OutOfBounds {
        /// The first byte of the access.
        offset: usize,
        /// The number of bytes accessed.
        len: usize,
        /// The region's length.
        region_len: usize,
    },
    /// An atomic access at an offset that is not a multiple of its size.
    #[error("{size}-byte atomic access at offset {offset:#x} is misaligned")]
    Misaligned {
        /// The offset of the access.
        offset: usize,
        /// The access size in bytes (4 or 8).
        size: usize,
    },
}

/// A region of memory that a peer (another thread or process) may write at any time.
///
/// Offsets are bytes from the start of the region. Every method checks its range and returns
/// [`MemError`] rather than panicking. Loads are `Acquire`, stores are `Release`, byte copies
/// are relaxed and atomic per aligned 8-byte word (see the crate documentation); a copy
/// racing with a peer's write may see any mix of old and new words, never UB.
pub trait SharedMem: Send + Sync {
    /// The region's length in bytes.
    fn len(&self) -> usize;

    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf`.
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError>;

    /// Copies `data` into the region starting at `offset`.
    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), MemError>;

    /// Loads the 4-byte-aligned `u32` at `offset` with `Acquire` ordering.
    fn load_u32(&self, offset: usize) -> Result<u32, MemError>;

    /// Stores `value` at the 4-byte-aligned `offset` with `Release` ordering.
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError>;

    /// Loads the 8-byte-aligned `u64` at `offset` with `Acquire` ordering.
    fn load_u64(&self, offset: usize) -> Result<u64, MemError>;

    /// Stores `value` at the 8-byte-aligned `offset` with `Release` ordering.
    fn store_u64(&self, offset: usize, value: u64) -> Result<(), MemError>;

    /// Copies `buf.len()` little-endian 8-byte words starting at the 8-byte-aligned `offset`
    /// into `buf`, relaxed and atomic per word, like [`SharedMem::read_at`] without the
    /// partial words and byte shuffling (the fast path for word-framed data such as ring
    /// packets). The default goes through [`SharedMem::read_at`].
    fn read_words(&self, offset: usize, buf: &mut [u64]) -> Result<(), MemError> {
        if offset % 8 != 0 {
            return Err(MemError::Misaligned { offset, size: 8 });
        }
        let mut bytes = [0u8; 8];
        for (i, word) in buf.iter_mut().enumerate() {
            self.read_at(offset.saturating_add(i.saturating_mul(8)), &mut bytes)?;
            *word = u64::from_le_bytes(bytes);
        }
        Ok(())
    }

    /// Copies the words of `data` (little-endian) into the region starting at the
    /// 8-byte-aligned `offset`, relaxed and atomic per word. The default goes through
    /// [`SharedMem::write_at`].
    fn write_words(&self, offset: usize, data: &[u64]) -> Result<(), MemError> {
        if offset % 8 != 0 {
            return Err(MemError::Misaligned { offset, size: 8 });
        }
        for (i, word) in data.iter().enumerate() {
            self.write_at(
                offset.saturating_add(i.saturating_mul(8)),
                &word.to_le_bytes(),
            )?;
        }
        Ok(())
    }
}

macro_rules! forward_shared_mem {
    ($($ty:ty),*) => {$(
        impl<T: SharedMem + ?Sized> SharedMem for $ty {
            #[inline]
            fn len(&self) -> usize {
                (**self).len()
            }
            #[inline]
            fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
                (**self).read_at(offset, buf)
            }
            #[inline]
            fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
                (**self).write_at(offset, data)
            }
            #[inline]
            fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
                (**self).load_u32(offset)
            }
            #[inline]
            fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
                (**self).store_u32(offset, value)
            }
            #[inline]
            fn load_u64(&self, offset: usize) -> Result<u64, MemError> {
                (**self).load_u64(offset)
            }
            #[inline]
            fn store_u64(&self, offset: usize, value: u64) -> Result<(), MemError> {
                (**self).store_u64(offset, value)
            }
            #[inline]
            fn read_words(&self, offset: usize, buf: &mut [u64]) -> Result<(), MemError> {
                (**self).read_words(offset, buf)
            }
            #[inline]
            fn write_words(&self, offset: usize, data: &[u64]) -> Result<(), MemError> {
                (**self).write_words(offset, data)
            }
        }
    )*};
}

forward_shared_mem!(&T, Box<T>, Arc<T>);

/// A checked view of `len` bytes at `base`, accessed only through atomics.
///
/// Invariant (established by [`Raw::new`]'s caller): `base` is 8-aligned; the whole 8-byte
/// words covering `base..base + len` (that is, `len` rounded up to 8) are valid for reads and
/// writes for as long as the `Raw` exists; and nothing in this process accesses those bytes
/// other than through atomics.
///
/// Byte copies are done in whole aligned words: a word fully inside the range is loaded or
/// stored with one relaxed `AtomicU64` operation; a partial word at either end is loaded whole
/// (and the wanted bytes picked out) or updated with `fetch_and` + `fetch_or` on exactly the
/// bytes written, which leaves the neighbours untouched and never loops. Keeping every copy at
/// 8-byte granularity means two copies never race as atomics of different sizes (which Rust,
/// and Miri, treat as undefined).
struct Raw {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: `Raw` only hands out shared references to atomics, which are `Sync`; the memory it
// points to is owned by the containing region type, which keeps it alive while `Raw` lives.
unsafe impl Send for Raw {}
// SAFETY: as above: all access through `&Raw` is atomic.
unsafe impl Sync for Raw {}

impl Raw {
    /// # Safety
    ///
    /// `base` must be 8-aligned, the `len.div_ceil(8)` words at `base` must be valid for reads
    /// and writes for the whole life of the returned value, and the bytes must only be
    /// accessed through atomics while it lives (no `&[u8]`/`&mut [u8]` over them anywhere in
    /// the process).
    unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        debug_assert!(base.as_ptr() as usize % 8 == 0);
        Self { base, len }
    }

    /// Checks that `offset..offset + len` is within the region.
    #[inline]
    fn check(&self, offset: usize, len: usize) -> Result<(), MemError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(MemError::OutOfBounds {
                offset,
                len,
                region_len: self.len,
            }),
        }
    }

    /// Every word of the region, the last one possibly extending past `len`.
    #[inline]
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: by the type invariant, `base` is 8-aligned and the `len.div_ceil(8)` words
        // there are valid for the life of `self` and only ever accessed atomically, so shared
        // references to `AtomicU64`s over them are sound even while another thread or process
        // writes them (the atomics' `UnsafeCell` permits the mutation).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast(), self.len.div_ceil(8)) }
    }

    /// The 4-byte word at `offset` as an atomic; `offset` must be 4-aligned.
    #[inline]
    fn word32(&self, offset: usize) -> Result<&AtomicU32, MemError> {
        self.check(offset, 4)?;
        if offset % 4 != 0 {
            return Err(MemError::Misaligned { offset, size: 4 });
        }
        let ptr = self.base.as_ptr().wrapping_add(offset).cast::<u32>();
        // SAFETY: in bounds and 4-aligned (checked above, `base` being 8-aligned), valid for the
        // life of `self` and only accessed atomically (type invariant).
        Ok(unsafe { AtomicU32::from_ptr(ptr) })
    }

    /// The 8-byte word at `offset` as an atomic; `offset` must be 8-aligned.
    #[inline]
    fn word64(&self, offset: usize) -> Result<&AtomicU64, MemError> {
        self.check(offset, 8)?;
        if offset % 8 != 0 {
            return Err(MemError::Misaligned { offset, size: 8 });
        }
        self.words().get(offset / 8).ok_or(MemError::OutOfBounds {
            offset,
            len: 8,
            region_len: self.len,
        })
    }

    /// The `count` whole words starting at the 8-aligned `offset`.
    #[inline]
    fn word_range(&self, offset: usize, count: usize) -> Result<&[AtomicU64], MemError> {
        let oob = || MemError::OutOfBounds {
            offset,
            len: count.saturating_mul(8),
            region_len: self.len,
        };
        self.check(offset, count.checked_mul(8).ok_or_else(oob)?)?;
        if offset % 8 != 0 {
            return Err(MemError::Misaligned { offset, size: 8 });
        }
        let first = offset / 8;
        self.words().get(first..first + count).ok_or_else(oob)
    }

    /// Splits the checked range `offset..offset + len` into (head word, first byte in it,
    /// byte count), the whole words, and (tail word, byte count); partial words are `None`
    /// when the range starts or ends on a word boundary.
    #[inline]
    fn split(&self, offset: usize, len: usize) -> Result<Split<'_>, MemError> {
        self.check(offset, len)?;
        let words = self.words();
        let oob = MemError::OutOfBounds {
            offset,
            len,
            region_len: self.len,
        };
        let skip = offset % 8;
        let head_len = if skip == 0 { 0 } else { (8 - skip).min(len) };
        let first_whole = offset.div_ceil(8);
        let whole = (len - head_len) / 8;
        let tail_len = len - head_len - whole * 8;
        let head = match head_len {
            0 => None,
            n => Some((words.get(offset / 8).ok_or(oob)?, skip, n)),
        };
        let middle = words.get(first_whole..first_whole + whole).ok_or(oob)?;
        let tail = match tail_len {
            0 => None,
            n => Some((words.get(first_whole + whole).ok_or(oob)?, n)),
        };
        Ok((head, middle, tail))
    }

    #[inline]
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
        let (head, middle, tail) = self.split(offset, buf.len())?;
        let mut buf = buf;
        if let Some((word, skip, n)) = head {
            let bytes = word.load(Ordering::Relaxed).to_ne_bytes();
            let (dst, rest) = buf.split_at_mut(n);
            dst.copy_from_slice(&bytes[skip..skip + n]);
            buf = rest;
        }
        let (dst_middle, dst_tail) = buf.split_at_mut(middle.len() * 8);
        for (dst, src) in dst_middle.chunks_exact_mut(8).zip(middle) {
            dst.copy_from_slice(&src.load(Ordering::Relaxed).to_ne_bytes());
        }
        if let Some((word, n)) = tail {
            let bytes = word.load(Ordering::Relaxed).to_ne_bytes();
            dst_tail.copy_from_slice(&bytes[..n]);
        }
        Ok(())
    }

    #[inline]
    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
        let (head, middle, tail) = self.split(offset, data.len())?;
        let mut data = data;
        if let Some((word, skip, n)) = head {
            let (src, rest) = data.split_at(n);
            store_bytes(word, skip, src);
            data = rest;
        }
        let (src_middle, src_tail) = data.split_at(middle.len() * 8);
        for (src, dst) in src_middle.chunks_exact(8).zip(middle) {
            let mut word = [0; 8];
            word.copy_from_slice(src);
            dst.store(u64::from_ne_bytes(word), Ordering::Relaxed);
        }
        if let Some((word, _)) = tail {
            store_bytes(word, 0, src_tail);
        }
        Ok(())
    }
}

/// Stores `src` into bytes `at..at + src.len()` of `word` (at most 8 bytes in all), leaving the
/// other bytes as they are, with two atomic read-modify-writes and no loop.
#[inline]
fn store_bytes(word: &AtomicU64, at: usize, src: &[u8]) {
    let mut mask = [0u8; 8];
    let mut value = [0u8; 8];
    for ((m, v), s) in mask.iter_mut().zip(&mut value).skip(at).zip(src) {
        *m = 0xff;
        *v = *s;
    }
    word.fetch_and(!u64::from_ne_bytes(mask), Ordering::Relaxed);
    word.fetch_or(u64::from_ne_bytes(value), Ordering::Relaxed);
}

/// A range split into its partial head word (word, first byte, count), whole words, and
/// partial tail word (word, count).
type Split<'a> = (
    Option<(&'a AtomicU64, usize, usize)>,
    &'a [AtomicU64],
    Option<(&'a AtomicU64, usize)>,
);

/// Implements [`SharedMem`] for a type with a `raw: Raw` field.
macro_rules! impl_shared_mem_for_raw {
    ($ty:ty) => {
        impl SharedMem for $ty {
            #[inline]
            fn len(&self) -> usize {
                self.raw.len
            }
            #[inline]
            fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
                self.raw.read_at(offset, buf)
            }
            #[inline]
            fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
                self.raw.write_at(offset, data)
            }
            #[inline]
            fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
                Ok(self.raw.word32(offset)?.load(Ordering::Acquire))
            }
            #[inline]
            fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
                self.raw.word32(offset)?.store(value, Ordering::Release);
                Ok(())
            }
            #[inline]
            fn load_u64(&self, offset: usize) -> Result<u64, MemError> {
                Ok(self.raw.word64(offset)?.load(Ordering::Acquire))
            }
            #[inline]
            fn store_u64(&self, offset: usize, value: u64) -> Result<(), MemError> {
                self.raw.word64(offset)?.store(value, Ordering::Release);
                Ok(())
            }
            #[inline]
            fn read_words(&self, offset: usize, buf: &mut [u64]) -> Result<(), MemError> {
                let src = self.raw.word_range(offset, buf.len())?;
                for (dst, src) in buf.iter_mut().zip(src) {
                    *dst = u64::from_le(src.load(Ordering::Relaxed));
                }
                Ok(())
            }
            #[inline]
            fn write_words(&self, offset: usize, data: &[u64]) -> Result<(), MemError> {
                for (src, dst) in data.iter().zip(self.raw.word_range(offset, data.len())?) {
                    dst.store(src.to_le(), Ordering::Relaxed);
                }
                Ok(())
            }
        }
    };
}

/// A zero-filled region on the heap, 8-byte aligned, shareable between threads (for example
/// through an `Arc`). Used by tests and by in-process ring pairs.
pub struct HeapMem {
    raw: Raw,
    /// The allocation, leaked from a `Box<[AtomicU64]>` so that moving a `HeapMem` never
    /// asserts unique ownership of the bytes (which would invalidate `raw`'s pointer); freed
    /// in `drop`.
    words: NonNull<[AtomicU64]>,
}

impl HeapMem {
    /// Allocates a zero-filled region of `len` bytes.
    pub fn new(len: usize) -> Self {
        let words: Box<[AtomicU64]> = (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect();
        let words = NonNull::from(Box::leak(words));
        // SAFETY: the leaked slice holds at least `len` bytes (rounded up to whole words) and
        // is freed only in `drop`, after which `raw` is gone too; it is only ever accessed
        // through `raw`'s atomics. Its interior mutability (the `UnsafeCell` inside each
        // atomic) makes mutating through this pointer sound.
        let raw = unsafe { Raw::new(words.cast::<u8>(), len) };
        Self { raw, words }
    }
}

// SAFETY: `HeapMem` owns its allocation (like a `Box<[AtomicU64]>`, which is `Send` and
// `Sync`) and only accesses it through atomics.
unsafe impl Send for HeapMem {}
// SAFETY: as above.
unsafe impl Sync for HeapMem {}

impl Drop for HeapMem {
    fn drop(&mut self) {
        // SAFETY: `words` came from `Box::leak` in `new` and is reclaimed exactly once, here;
        // `&mut self` proves no reference handed out by `raw` is still alive.
        drop(unsafe { Box::from_raw(self.words.as_ptr()) });
    }
}

impl std::fmt::Debug for HeapMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapMem")
            .field("len", &self.raw.len)
            .finish()
    }
}

impl_shared_mem_for_raw!(HeapMem);

mod memfd;
#[cfg(test)]
mod tests;

pub use memfd::{MemfdError, MemfdMem};
