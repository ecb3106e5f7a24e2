//! A channel the service can end from outside its bus's thread: the host's rescind (or the
//! host process going away) reaches a running relay as the end of its host channel, whatever
//! the host does with its ring.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use vmbus_channel::{Channel, ChannelError, ChannelState, EndReason, Packet};

#[derive(Debug, Default)]
struct Flag {
    revoked: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// Revokes a [`Revocable`] channel from another thread.
#[derive(Clone, Debug, Default)]
pub struct RevokeHandle(Arc<Flag>);

impl RevokeHandle {
    /// Ends the channel: its next receive or send reports [`ChannelError::Revoked`].
    pub fn revoke(&self) {
        self.0.revoked.store(true, Ordering::SeqCst);
        let waker = self
            .0
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A channel that a [`RevokeHandle`] can end.
#[derive(Debug)]
pub struct Revocable<C> {
    inner: C,
    flag: Arc<Flag>,
    ended: bool,
}

impl<C: Channel> Revocable<C> {
    /// The inner channel and whether it was revoked (for a handover: the successor wraps it
    /// again and revokes it at once if it was).
    pub fn into_inner(self) -> (C, bool) {
        let revoked = self.flag.revoked.load(Ordering::SeqCst);
        (self.inner, revoked)
    }

    /// Wraps `inner`; the handle revokes it.
    pub fn new(inner: C) -> (Self, RevokeHandle) {
        let handle = RevokeHandle::default();
        let channel = Self {
            inner,
            flag: handle.0.clone(),
            ended: false,
        };
        (channel, handle)
    }

    fn check(&mut self, cx: &mut Context<'_>) -> bool {
        *self
            .flag
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        if self.flag.revoked.load(Ordering::SeqCst) {
            if !self.ended {
                self.ended = true;
                self.inner.close();
            }
            return true;
        }
        false
    }
}

impl<C: Channel> Channel for Revocable<C> {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Packet, ChannelError>> {
        if self.check(cx) {
            return Poll::Ready(Err(ChannelError::Revoked));
        }
        self.inner.poll_recv(cx)
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        packet: &Packet,
    ) -> Poll<Result<(), ChannelError>> {
        if self.check(cx) {
            return Poll::Ready(Err(ChannelError::Revoked));
        }
        self.inner.poll_send(cx, packet)
    }

    fn close(&mut self) {
        self.inner.close();
    }

    fn revoke(&mut self) {
        self.inner.revoke();
    }

    fn state(&self) -> ChannelState {
        if self.flag.revoked.load(Ordering::SeqCst) {
            ChannelState::Ended(EndReason::Revoked)
        } else {
            self.inner.state()
        }
    }
}
