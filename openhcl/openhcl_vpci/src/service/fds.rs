//! The handover's descriptors: collected and named by index when saving, taken back (each
//! once, every index checked) when restoring.

use super::saved::{SavedError, SavedRing};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use vmbus_channel::ring::{HandoffState, RingHandoff};

/// Collects descriptors for the handover and names each by its index.
#[derive(Default)]
pub(super) struct FdList {
    pub(super) fds: Vec<OwnedFd>,
}

impl FdList {
    pub(super) fn push(&mut self, fd: BorrowedFd<'_>) -> std::io::Result<u32> {
        self.fds.push(fd.try_clone_to_owned()?);
        Ok((self.fds.len() - 1) as u32)
    }

    pub(super) fn push_owned(&mut self, fds: Vec<OwnedFd>) -> (u32, u32) {
        let first = self.fds.len() as u32;
        let count = fds.len() as u32;
        self.fds.extend(fds);
        (first, count)
    }
}

pub(super) fn saved_ring(handoff: RingHandoff, fds: &mut FdList) -> SavedRing {
    let (state, owned) = handoff.into_parts();
    let (first_fd, fd_count) = fds.push_owned(owned);
    SavedRing {
        creator: state.creator,
        local_end: u32::from(HandoffState::end_code(state.local_end)),
        peer_end: u32::from(HandoffState::end_code(state.peer_end)),
        broken: state.broken,
        peer_gone: state.peer_gone,
        first_fd,
        fd_count,
    }
}

/// Takes a ring end's descriptors out of the received list (each only once).
pub(super) fn take_ring(
    saved: &SavedRing,
    fds: &mut [Option<OwnedFd>],
) -> Result<RingHandoff, SavedError> {
    let count = fds.len();
    if !(3..=4).contains(&saved.fd_count) {
        return Err(SavedError::Invalid(format!(
            "a ring end with {} descriptors",
            saved.fd_count
        )));
    }
    let mut owned = Vec::new();
    for i in 0..saved.fd_count {
        let index = saved.first_fd.saturating_add(i);
        owned.push(take_fd(index, fds).ok_or(SavedError::Descriptor { index, count })?);
    }
    let code = |c: u32| HandoffState::end_from_code(u8::try_from(c).unwrap_or(u8::MAX));
    let state = HandoffState {
        creator: saved.creator,
        local_end: code(saved.local_end),
        peer_end: code(saved.peer_end),
        broken: saved.broken,
        peer_gone: saved.peer_gone,
    };
    RingHandoff::from_parts(state, owned).map_err(|e| SavedError::Invalid(e.to_string()))
}

fn take_fd(index: u32, fds: &mut [Option<OwnedFd>]) -> Option<OwnedFd> {
    fds.get_mut(index as usize).and_then(Option::take)
}

pub(super) fn take_stream(
    index: u32,
    fds: &mut [Option<OwnedFd>],
) -> Result<UnixStream, SavedError> {
    let count = fds.len();
    take_fd(index, fds)
        .map(UnixStream::from)
        .ok_or(SavedError::Descriptor { index, count })
}

pub(super) fn take_listener(
    index: u32,
    fds: &mut [Option<OwnedFd>],
) -> Result<UnixListener, SavedError> {
    let count = fds.len();
    take_fd(index, fds)
        .map(UnixListener::from)
        .ok_or(SavedError::Descriptor { index, count })
}
