//! The handover channel between a service and its successor: the saved state and every
//! descriptor the successor takes over, written into a Unix socket pair before `exec` and read
//! by the new image from its standard input.
//!
//! The old image writes everything before it execs and never reads; the new image reads it
//! all at start. So that the writer can never block on a full socket buffer (nobody reads it
//! until the exec), the state itself travels in a sealed memfd; the socket carries only small
//! fixed-size headers, each with up to [`MAX_FDS`] descriptors attached (`SCM_RIGHTS`). The
//! kernel keeps descriptors in flight alive after the writer's end is closed by the exec.
//!
//! Layout: a header (magic, state length, descriptor count) with the state's memfd, then the
//! descriptors in chunks, each chunk's header naming its first index, so a successor that
//! reads a different layout fails with a typed error instead of taking one descriptor for
//! another.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use thiserror::Error;
use vmbus_channel::ring::{MAX_FDS, recv_with_fds, send_with_fds};

/// The magic of a handover's first header.
const MAGIC: [u8; 8] = *b"OHCLVPH1";
/// The magic of each descriptor chunk's header.
const CHUNK_MAGIC: [u8; 4] = *b"FDS1";
/// The largest saved state a successor reads.
pub const MAX_STATE: u64 = 64 << 20;
/// The most descriptors one handover carries.
pub const MAX_HANDOVER_FDS: usize = 4096;

/// Why a handover could not be read (or written).
#[derive(Debug, Error)]
pub enum HandoverError {
    /// A socket or memfd operation failed.
    #[error("handover i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The first header is not a handover's.
    #[error("not a handover (magic {0:02x?})")]
    BadMagic([u8; 8]),
    /// The state is larger than [`MAX_STATE`].
    #[error("saved state of {0} bytes exceeds the limit")]
    StateTooLarge(u64),
    /// More descriptors than [`MAX_HANDOVER_FDS`].
    #[error("{0} descriptors exceed the limit")]
    TooManyFds(u64),
    /// A chunk arrived out of order or with the wrong number of descriptors.
    #[error("descriptor chunk at {at}: expected {expected} descriptors from index {index}")]
    BadChunk {
        /// The index the chunk's header names.
        at: u64,
        /// The index expected next.
        index: u64,
        /// How many descriptors were expected in it.
        expected: usize,
    },
}

/// What a successor receives: the saved state and the descriptors, in the order they were
/// sent.
#[derive(Debug)]
pub struct Received {
    /// The saved state.
    pub state: Vec<u8>,
    /// The descriptors.
    pub fds: Vec<OwnedFd>,
}

/// Writes `state` and `fds` into `socket` (one end of a socket pair whose other end the
/// successor reads). Never blocks on the reader: the state travels in a memfd.
pub fn send(socket: &UnixStream, state: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let memfd = rustix::fs::memfd_create("openhcl-vpci-state", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut file = std::fs::File::from(memfd);
    file.write_all(state)?;
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&(state.len() as u64).to_le_bytes());
    header.extend_from_slice(&(fds.len() as u64).to_le_bytes());
    send_with_fds(socket.as_fd(), &header, &[file.as_fd()])?;
    for (i, chunk) in fds.chunks(MAX_FDS).enumerate() {
        let mut header = [0u8; 12];
        header[..4].copy_from_slice(&CHUNK_MAGIC);
        header[4..].copy_from_slice(&((i * MAX_FDS) as u64).to_le_bytes());
        send_with_fds(socket.as_fd(), &header, chunk)?;
    }
    Ok(())
}

/// Reads a whole handover from `socket`. Everything is checked: the magic, the sizes, each
/// chunk's place and count.
pub fn recv(socket: &UnixStream) -> Result<Received, HandoverError> {
    let mut header = [0u8; 24];
    let memfd = recv_with_fds(socket.as_fd(), &mut header)?;
    let (magic, rest) = header.split_at(8);
    let (len, count) = rest.split_at(8);
    let magic: [u8; 8] = magic.try_into().unwrap_or_default();
    if magic != MAGIC {
        return Err(HandoverError::BadMagic(magic));
    }
    let len = u64::from_le_bytes(len.try_into().unwrap_or_default());
    let count = u64::from_le_bytes(count.try_into().unwrap_or_default());
    if len > MAX_STATE {
        return Err(HandoverError::StateTooLarge(len));
    }
    if count > MAX_HANDOVER_FDS as u64 {
        return Err(HandoverError::TooManyFds(count));
    }
    let [memfd]: [OwnedFd; 1] = memfd.try_into().map_err(|_| HandoverError::BadChunk {
        at: 0,
        index: 0,
        expected: 1,
    })?;
    // Read at offset 0, whatever the shared file offset is.
    let mut state = vec![0u8; len as usize];
    std::fs::File::from(memfd).read_exact_at(&mut state, 0)?;
    let count = count as usize;
    let mut fds = Vec::with_capacity(count);
    while fds.len() < count {
        let expected = (count - fds.len()).min(MAX_FDS);
        let mut header = [0u8; 12];
        let chunk = recv_with_fds(socket.as_fd(), &mut header)?;
        let (magic, at) = header.split_at(4);
        let at = u64::from_le_bytes(at.try_into().unwrap_or_default());
        if magic != CHUNK_MAGIC || at != fds.len() as u64 || chunk.len() != expected {
            return Err(HandoverError::BadChunk {
                at,
                index: fds.len() as u64,
                expected,
            });
        }
        fds.extend(chunk);
    }
    Ok(Received { state, fds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_many_descriptors_cross_without_a_reader() {
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<OwnedFd> = (0..20)
            .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
            .collect();
        let borrowed: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        // Larger than any socket buffer: must not block with nobody reading.
        let state = vec![0x5a; 4 << 20];
        send(&a, &state, &borrowed).unwrap();
        drop(a);
        let got = recv(&b).unwrap();
        assert_eq!(got.state, state);
        assert_eq!(got.fds.len(), 20);
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&[7u8; 24]).unwrap();
        drop(a);
        assert!(recv(&b).is_err());

        // A chunk naming the wrong index.
        let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let (a2, b2) = UnixStream::pair().unwrap();
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&5u64.to_le_bytes());
        header.extend_from_slice(&2u64.to_le_bytes());
        let memfd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        std::fs::File::from(memfd.try_clone().unwrap())
            .write_all(b"state")
            .unwrap();
        send_with_fds(a2.as_fd(), &header, &[memfd.as_fd()]).unwrap();
        let mut chunk = [0u8; 12];
        chunk[..4].copy_from_slice(&CHUNK_MAGIC);
        chunk[4..].copy_from_slice(&1u64.to_le_bytes());
        send_with_fds(a2.as_fd(), &chunk, &[null.as_fd(), null.as_fd()]).unwrap();
        assert!(matches!(
            recv(&b2),
            Err(HandoverError::BadChunk {
                at: 1,
                index: 0,
                ..
            })
        ));

        // Too large a state.
        let (a3, b3) = UnixStream::pair().unwrap();
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&(MAX_STATE + 1).to_le_bytes());
        header.extend_from_slice(&0u64.to_le_bytes());
        send_with_fds(a3.as_fd(), &header, &[memfd.as_fd()]).unwrap();
        assert!(matches!(recv(&b3), Err(HandoverError::StateTooLarge(_))));

        // A state shorter than its header says.
        let (a4, b4) = UnixStream::pair().unwrap();
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&100u64.to_le_bytes());
        header.extend_from_slice(&0u64.to_le_bytes());
        send_with_fds(a4.as_fd(), &header, &[memfd.as_fd()]).unwrap();
        assert!(matches!(recv(&b4), Err(HandoverError::Io(_))));
    }
}
