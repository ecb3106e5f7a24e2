//! Handing a ring channel end to a successor: the descriptors and the little state the end
//! keeps outside shared memory, so that another owner (the next image of a serviced process,
//! after `exec`) can resume the end exactly where it stopped.
//!
//! Everything the two ends agree on already lives in shared memory: the rings' indices,
//! every unread packet, the end words. An end's private state is its latched view of how the
//! channel ended, whether the peer broke the ring, and whether the peer process was seen
//! going away. A handoff carries those and the descriptors (memfd, the two doorbells, the
//! liveness socket if the end has one); the peer notices nothing: a handoff does not end the
//! channel, ring a doorbell or touch a ring.

use super::{RingChannel, SetupError, decode_end, encode_end};
use crate::channel::EndReason;
use shared_mem::SharedMem;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

/// The private state of a ring channel end, beyond its descriptors: plain data for a saved
/// state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandoffState {
    /// The end created the channel (it writes ring 0); otherwise it opened it.
    pub creator: bool,
    /// How this end ended the channel, if it did.
    pub local_end: Option<EndReason>,
    /// How the peer ended the channel, as this end had latched it.
    pub peer_end: Option<EndReason>,
    /// The peer had broken the ring's rules; the rings are not touched again.
    pub broken: bool,
    /// The peer process had been seen going away (its liveness socket hung up).
    pub peer_gone: bool,
}

impl HandoffState {
    /// The end state as one byte-sized code each, for encoders: `0` none, `1` closed, `2`
    /// revoked.
    pub fn end_code(end: Option<EndReason>) -> u8 {
        end.map_or(0, encode_end)
    }

    /// The inverse of [`end_code`](Self::end_code); any other value is `None` only for `0`,
    /// and reads as closed otherwise (the conservative reading of an unknown end).
    pub fn end_from_code(code: u8) -> Option<EndReason> {
        decode_end(code)
    }
}

/// A ring channel end taken apart by [`RingChannel::into_handoff`]: its descriptors and
/// [`HandoffState`]. Put it back together with [`RingChannel::from_handoff`], in this process
/// or (after passing [`fds`](Self::fds) and the state on) in another.
#[derive(Debug)]
pub struct RingHandoff {
    state: HandoffState,
    memfd: OwnedFd,
    own_doorbell: OwnedFd,
    peer_doorbell: OwnedFd,
    liveness: Option<OwnedFd>,
}

impl RingHandoff {
    /// The end's private state.
    pub fn state(&self) -> HandoffState {
        self.state
    }

    /// The descriptors, in the order [`from_parts`](Self::from_parts) takes them: the memfd, the
    /// end's own doorbell, the peer's doorbell, then the liveness socket if there is one.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = vec![
            self.memfd.as_fd(),
            self.own_doorbell.as_fd(),
            self.peer_doorbell.as_fd(),
        ];
        if let Some(socket) = &self.liveness {
            fds.push(socket.as_fd());
        }
        fds
    }

    /// Takes the descriptors (in [`fds`](Self::fds) order) and the state.
    pub fn into_parts(self) -> (HandoffState, Vec<OwnedFd>) {
        let Self {
            state,
            memfd,
            own_doorbell,
            peer_doorbell,
            liveness,
        } = self;
        let mut fds = vec![memfd, own_doorbell, peer_doorbell];
        fds.extend(liveness);
        (state, fds)
    }

    /// Rebuilds a handoff from its state and three or four descriptors in
    /// [`fds`](Self::fds) order. The descriptors are validated when the end is resumed (the
    /// memfd's seals, size and header; the doorbells are eventfds).
    pub fn from_parts(state: HandoffState, fds: Vec<OwnedFd>) -> Result<Self, SetupError> {
        let received = fds.len();
        let mut fds = fds.into_iter();
        let (Some(memfd), Some(own_doorbell), Some(peer_doorbell)) =
            (fds.next(), fds.next(), fds.next())
        else {
            return Err(SetupError::BadDescriptors {
                expected: 3,
                received,
            });
        };
        let liveness = fds.next();
        if fds.next().is_some() {
            return Err(SetupError::BadDescriptors {
                expected: 4,
                received,
            });
        }
        Ok(Self {
            state,
            memfd,
            own_doorbell,
            peer_doorbell,
            liveness,
        })
    }
}

impl RingChannel {
    /// Takes this end apart for a successor, without ending the channel: nothing is written
    /// to shared memory and the peer is not signalled. `wait` is the end's
    /// [`WaitSource`](super::WaitSource) if the caller took its waiting over (it holds the
    /// liveness socket); otherwise the end's notifier thread is stopped here.
    ///
    /// Packets the peer sends meanwhile wait in the ring; the doorbell's count is kept by the
    /// eventfd, so the successor misses no signal.
    pub fn into_handoff(
        mut self,
        wait: Option<super::WaitSource>,
    ) -> Result<RingHandoff, SetupError> {
        let wait = match wait {
            Some(wait) => wait,
            None => self.notifier.detach()?,
        };
        let (liveness, gone) = wait.into_parts();
        let state = HandoffState {
            creator: self.side == super::CREATOR,
            local_end: self.local_end,
            peer_end: decode_end(self.peer_end.load(Ordering::Acquire)),
            broken: self.broken,
            peer_gone: gone || self.notifier.state().peer_gone.load(Ordering::Acquire),
        };
        let memfd = self.control.region().try_clone_fd()?;
        let own_doorbell = self.notifier.doorbell().as_fd().try_clone_to_owned()?;
        let peer_doorbell = self.peer_doorbell.as_fd().try_clone_to_owned()?;
        self.handed_off = true;
        Ok(RingHandoff {
            state,
            memfd,
            own_doorbell,
            peer_doorbell,
            liveness,
        })
    }

    /// Resumes an end from a [`RingHandoff`]: the rings are opened at the indices shared
    /// memory holds, so every packet not yet read is read next, and the end's latched state
    /// is restored. Everything is validated as for a freshly received end.
    pub fn from_handoff(handoff: RingHandoff) -> Result<Self, SetupError> {
        let RingHandoff {
            state,
            memfd,
            own_doorbell,
            peer_doorbell,
            liveness,
        } = handoff;
        let mem = std::sync::Arc::new(shared_mem::MemfdMem::from_fd(memfd)?);
        let config =
            super::layout::read_header(&super::window(&mem, 0, super::layout::PAGE)?, mem.len())?;
        let side = if state.creator {
            super::CREATOR
        } else {
            super::OPENER
        };
        let mut channel = Self::new(
            side,
            config,
            mem,
            super::os::Doorbell::from_fd(own_doorbell)?,
            super::os::Doorbell::from_fd(peer_doorbell)?,
            liveness,
        )?;
        channel.local_end = state.local_end;
        channel
            .peer_end
            .store(HandoffState::end_code(state.peer_end), Ordering::Release);
        channel.broken = state.broken;
        if state.peer_gone {
            channel.notifier.mark_peer_gone();
        }
        // The predecessor may have masked interrupts while it read: treat them as masked, so
        // the first wait unmasks and re-checks instead of waiting for a signal that the writer
        // was told not to send.
        channel.masked = true;
        Ok(channel)
    }
}
