//! Shared memory that another process may write at any time, behind a small bounds-checked trait.
//!
//! [`SharedMem`] is the whole interface: byte copies in and out ([`SharedMem::read_at`],
//! [`SharedMem::write_at`]) and aligned atomic loads and stores of `u32` and `u64`. Every
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

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::os::fd::OwnedFd;
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

/// Why a memfd region could not be created or mapped.
#[derive(Debug, Error)]
pub enum MemfdError {
    /// A zero-length region was requested or received.
    #[error("a shared memory region must not be empty")]
    Empty,
    /// The received fd's size does not fit in the address space.
    #[error("memfd of {0} bytes is too large to map")]
    TooLarge(u64),
    /// The received fd is not sealed against shrinking: its owner could truncate it under our
    /// mapping, and touching the lost pages would kill this process with `SIGBUS`.
    #[error("memfd is not sealed against shrinking (seals {0:#x})")]
    NotSealed(u32),
    /// A system call failed.
    #[error("{call} failed")]
    Sys {
        /// The call that failed.
        call: &'static str,
        /// The error it returned.
        #[source]
        source: io::Error,
    },
}

fn sys(call: &'static str) -> impl FnOnce(rustix::io::Errno) -> MemfdError {
    move |errno| MemfdError::Sys {
        call,
        source: errno.into(),
    }
}

/// A `MAP_SHARED` mapping of a memfd: memory two processes can map at once.
///
/// [`MemfdMem::create`] makes a new memfd of a fixed size, sealed so that nobody can shrink or
/// grow it afterwards; pass [`MemfdMem::fd`] to the peer (over a Unix socket or by
/// inheritance), which maps it with [`MemfdMem::from_fd`]. `from_fd` refuses an fd that is
/// not sealed against shrinking, because a peer that truncates the file under a mapping makes
/// every later access fault with `SIGBUS`.
pub struct MemfdMem {
    raw: Raw,
    /// The mapping `raw` points into; unmapped on drop, after which `raw` is gone too.
    _map: memmap2::MmapRaw,
    fd: OwnedFd,
}

/// The seals a region must carry: the size can change neither way, and the seals are final.
fn required_seals() -> rustix::fs::SealFlags {
    use rustix::fs::SealFlags;
    SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL
}

impl MemfdMem {
    /// Creates a new zero-filled memfd of `len` bytes (`name` shows in `/proc/*/maps`), seals
    /// its size and maps it.
    pub fn create(name: &str, len: usize) -> Result<Self, MemfdError> {
        use rustix::fs::MemfdFlags;
        if len == 0 {
            return Err(MemfdError::Empty);
        }
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(sys("memfd_create"))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(sys("ftruncate"))?;
        rustix::fs::fcntl_add_seals(&fd, required_seals()).map_err(sys("fcntl(F_ADD_SEALS)"))?;
        Self::map(fd, len)
    }

    /// Maps a memfd received from the peer (inherited or passed over a socket). The region is
    /// the whole file; the file must be sealed against shrinking.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, MemfdError> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(sys("fcntl(F_GET_SEALS)"))?;
        if !seals.contains(rustix::fs::SealFlags::SHRINK) {
            return Err(MemfdError::NotSealed(seals.bits()));
        }
        let size = rustix::fs::fstat(&fd).map_err(sys("fstat"))?.st_size;
        let size = u64::try_from(size).map_err(|_| MemfdError::TooLarge(0))?;
        let len = usize::try_from(size).map_err(|_| MemfdError::TooLarge(size))?;
        if len == 0 {
            return Err(MemfdError::Empty);
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Self, MemfdError> {
        let file = File::from(fd);
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|source| MemfdError::Sys {
                call: "mmap",
                source,
            })?;
        let base = NonNull::new(map.as_mut_ptr()).ok_or(MemfdError::Sys {
            call: "mmap",
            source: io::Error::other("null mapping"),
        })?;
        // SAFETY: `map` is a read-write `MAP_SHARED` mapping of `len` bytes of a file that is
        // sealed against shrinking (checked by both constructors), so every page stays backed;
        // the mapping is page-aligned and covers whole pages, so the word holding the last
        // byte is mapped even when `len` is not a multiple of 8 (`Raw`'s requirement). It is
        // unmapped only when `self` drops, together with `raw`. This process never makes a
        // `&[u8]` over it (memmap2's `MmapRaw` gives out only a raw pointer), so all accesses
        // are the atomics of `Raw`.
        let raw = unsafe { Raw::new(base, len) };
        Ok(Self {
            raw,
            _map: map,
            fd: file.into(),
        })
    }

    /// The memfd, to pass to the peer (for example with `SCM_RIGHTS`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A duplicate of the memfd, for handing to a child process or another owner.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

impl std::fmt::Debug for MemfdMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemfdMem")
            .field("len", &self.raw.len)
            .field("fd", &self.fd)
            .finish()
    }
}

impl_shared_mem_for_raw!(MemfdMem);

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(mem: &dyn SharedMem) {
        // Every offset/length combination around word boundaries.
        for offset in 0..17 {
            for len in 0..25 {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + offset + 1) as u8).collect();
                mem.write_at(offset, &data).unwrap();
                let mut back = vec![0; len];
                mem.read_at(offset, &mut back).unwrap();
                assert_eq!(back, data, "offset {offset} len {len}");
            }
        }
    }

    /// Byte copies round-trip at every alignment of offset and length.
    #[test]
    fn heap_copy_roundtrip() {
        roundtrip(&HeapMem::new(64));
    }

    /// Atomics see the bytes the copies wrote, little-endian on this host.
    #[test]
    fn heap_atomics_and_bytes_agree() {
        let mem = HeapMem::new(16);
        mem.store_u32(4, 0x1122_3344).unwrap();
        let mut b = [0; 4];
        mem.read_at(4, &mut b).unwrap();
        assert_eq!(u32::from_ne_bytes(b), 0x1122_3344);
        mem.write_at(8, &0xdead_beef_0bad_f00du64.to_ne_bytes())
            .unwrap();
        assert_eq!(mem.load_u64(8).unwrap(), 0xdead_beef_0bad_f00d);
        assert_eq!(mem.load_u32(0).unwrap(), 0);
    }

    /// Out-of-range and misaligned accesses are typed errors, including offset overflow.
    #[test]
    fn heap_rejects_bad_accesses() {
        let mem = HeapMem::new(16);
        let oob = |offset, len| MemError::OutOfBounds {
            offset,
            len,
            region_len: 16,
        };
        assert_eq!(mem.read_at(10, &mut [0; 7]), Err(oob(10, 7)));
        assert_eq!(mem.write_at(17, &[]), Err(oob(17, 0)));
        assert_eq!(mem.write_at(usize::MAX, &[1]), Err(oob(usize::MAX, 1)));
        assert_eq!(mem.load_u32(14), Err(oob(14, 4)));
        assert_eq!(mem.load_u64(16), Err(oob(16, 8)));
        assert_eq!(
            mem.load_u32(2),
            Err(MemError::Misaligned { offset: 2, size: 4 })
        );
        assert_eq!(
            mem.store_u64(4, 1),
            Err(MemError::Misaligned { offset: 4, size: 8 })
        );
        // Exactly at the end is fine.
        mem.read_at(16, &mut []).unwrap();
        mem.write_at(8, &[0; 8]).unwrap();
        assert_eq!(mem.len(), 16);
        assert!(HeapMem::new(0).is_empty());
    }

    /// A copy covering part of a word leaves the word's other bytes as they were.
    #[test]
    fn partial_word_writes_keep_neighbours() {
        let mem = HeapMem::new(24);
        mem.write_at(0, &[0xee; 24]).unwrap();
        mem.write_at(3, &[1, 2]).unwrap();
        mem.write_at(6, &[3, 4, 5, 6, 7]).unwrap();
        mem.write_at(21, &[8]).unwrap();
        let mut all = [0; 24];
        mem.read_at(0, &mut all).unwrap();
        let mut want = [0xee; 24];
        want[3..5].copy_from_slice(&[1, 2]);
        want[6..11].copy_from_slice(&[3, 4, 5, 6, 7]);
        want[21] = 8;
        assert_eq!(all, want);
    }

    /// A length that is not a multiple of 8 is honoured exactly.
    #[test]
    fn heap_odd_length() {
        let mem = HeapMem::new(13);
        mem.write_at(5, &[1; 8]).unwrap();
        assert!(mem.write_at(6, &[1; 8]).is_err());
        assert!(mem.load_u64(8).is_err());
    }

    /// Two threads hammer the same bytes through the trait, with unaligned and overlapping
    /// copies: no UB (Miri checks this), and the release/acquire pair publishes data copied
    /// before the flag store. (The flag lives in its own word: `u32` accessors must not race
    /// with copies of the same bytes.)
    #[test]
    fn heap_concurrent_writers_and_publication() {
        let mem = Arc::new(HeapMem::new(64));
        let rounds = if cfg!(miri) { 20 } else { 2000 };
        let peer = {
            let mem = mem.clone();
            std::thread::spawn(move || {
                for i in 0..rounds {
                    let byte = (i % 251) as u8;
                    mem.write_at(8, &[byte; 24]).unwrap();
                    mem.write_at(3, &[byte; 5]).unwrap();
                    mem.store_u32(60, i + 1).unwrap();
                }
            })
        };
        let mut seen = 0;
        let mut buf = [0; 24];
        while seen < rounds {
            let now = mem.load_u32(60).unwrap();
            // Racing copy: any mix of bytes is allowed, it just must not be UB.
            mem.read_at(3, &mut buf).unwrap();
            seen = now;
            std::hint::spin_loop();
        }
        peer.join().unwrap();
        let mut last = [0; 24];
        mem.read_at(8, &mut last).unwrap();
        assert_eq!(last, [((rounds - 1) % 251) as u8; 24]);
    }

    /// A memfd whose size is not a multiple of 8 is usable up to its last byte.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn memfd_odd_size() {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create("odd", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .unwrap();
        rustix::fs::ftruncate(&fd, 13).unwrap();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
        let mem = MemfdMem::from_fd(fd).unwrap();
        assert_eq!(mem.len(), 13);
        mem.write_at(9, &[1, 2, 3, 4]).unwrap();
        let mut back = [0; 5];
        mem.read_at(8, &mut back).unwrap();
        assert_eq!(back, [0, 1, 2, 3, 4]);
        assert!(mem.write_at(10, &[0; 4]).is_err());
    }

    /// A memfd region maps, round-trips and is shared with a second mapping of its fd.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn memfd_two_mappings_share_pages() {
        let a = MemfdMem::create("shared_mem-test", 8192).unwrap();
        roundtrip(&a);
        let b = MemfdMem::from_fd(a.try_clone_fd().unwrap()).unwrap();
        assert_eq!(b.len(), 8192);
        a.store_u64(4096, 0x0123_4567_89ab_cdef).unwrap();
        assert_eq!(b.load_u64(4096).unwrap(), 0x0123_4567_89ab_cdef);
        b.write_at(8190, &[9, 8]).unwrap();
        let mut back = [0; 2];
        a.read_at(8190, &mut back).unwrap();
        assert_eq!(back, [9, 8]);
        assert!(a.read_at(8191, &mut [0; 2]).is_err());
    }

    /// An unsealed memfd is refused: its owner could shrink it under the mapping.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn memfd_unsealed_is_refused() {
        let fd = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert!(matches!(
            MemfdMem::from_fd(fd),
            Err(MemfdError::NotSealed(_))
        ));
        assert!(matches!(
            MemfdMem::create("empty", 0),
            Err(MemfdError::Empty)
        ));
    }

    /// The region can be used as a trait object behind an `Arc`.
    #[test]
    fn trait_objects_forward() {
        let mem: Arc<dyn SharedMem> = Arc::new(HeapMem::new(8));
        mem.store_u32(4, 7).unwrap();
        fn generic<M: SharedMem>(m: M) -> u32 {
            m.load_u32(4).unwrap()
        }
        assert_eq!(generic(&mem), 7);
        assert_eq!(generic(mem.clone()), 7);
        assert_eq!(mem.len(), 8);
    }
}
