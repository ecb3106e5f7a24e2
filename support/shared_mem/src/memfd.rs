//! [`MemfdMem`]: a `MAP_SHARED` mapping of a sealed memfd, shareable with another process.

use super::{MemError, Raw, SharedMem};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use thiserror::Error;

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
