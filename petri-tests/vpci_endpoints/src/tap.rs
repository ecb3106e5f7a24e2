//! A hostile ring peer for fault tests: a [`RingTap`] keeps a second handle on a ring
//! channel end's shared memory and on the peer's doorbell, so an endpoint can write what a
//! well-behaved writer never would (an invalid write index in its own ring) and wake the peer
//! to read it. The end itself keeps working as before: it is taken apart and resumed with
//! the channel's handoff, which neither touches the rings nor signals the peer.
//!
//! The offsets follow the ring channel's documented layout: a 4 KiB channel page, then ring
//! 0 (written by the creator), then ring 1 (written by the opener), each a 4 KiB control page
//! (write index first) and the data area.

use std::os::fd::OwnedFd;
use vmbus_channel::ring::SetupError;
use vmbus_channel::{RingChannel, RingHandoff};

/// The channel page, and each ring's control page.
const PAGE: u64 = 4096;

/// A second handle on one ring channel end's shared memory and its peer's doorbell.
#[derive(Debug)]
pub struct RingTap {
    memfd: OwnedFd,
    peer_doorbell: OwnedFd,
    /// Where this end's own ring (the one it writes) keeps its write index.
    write_index_at: u64,
    /// The data area of each ring, in bytes.
    data_size: u64,
}

impl RingTap {
    /// Takes `ring` apart and resumes it, keeping copies of its memfd and its peer's
    /// doorbell; returns the resumed end and the tap.
    pub fn split(ring: RingChannel) -> Result<(RingChannel, Self), SetupError> {
        let data_size = ring.config().ring_size as u64;
        let handoff = ring.into_handoff(None)?;
        let side = if handoff.state().creator { 0 } else { 1 };
        let (state, fds) = handoff.into_parts();
        let copy = |i: usize| -> Result<OwnedFd, SetupError> {
            let fd = fds.get(i).ok_or(SetupError::BadDescriptors {
                expected: 3,
                received: fds.len(),
            })?;
            Ok(fd.try_clone()?)
        };
        let (memfd, peer_doorbell) = (copy(0)?, copy(2)?);
        let ring = RingChannel::from_handoff(RingHandoff::from_parts(state, fds)?)?;
        let tap = Self {
            memfd,
            peer_doorbell,
            write_index_at: PAGE + side * (PAGE + data_size),
            data_size,
        };
        Ok((ring, tap))
    }

    /// Writes a write index past the end of the data area into this end's own ring and rings
    /// the peer's doorbell; returns the value written. The end must not send again (its next
    /// send would write a valid index over it).
    pub fn corrupt_write_index(&self) -> std::io::Result<u32> {
        let bad = u32::try_from(self.data_size + 8).unwrap_or(u32::MAX);
        let written = rustix::io::pwrite(&self.memfd, &bad.to_le_bytes(), self.write_index_at)?;
        if written != 4 {
            return Err(std::io::Error::other("short write to the ring"));
        }
        rustix::io::write(&self.peer_doorbell, &1u64.to_ne_bytes())?;
        Ok(bad)
    }
}
