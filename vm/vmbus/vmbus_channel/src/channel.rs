//! The [`Channel`] trait: send and receive packets, close or revoke, whatever the transport.
//!
//! # Why a poll-based trait
//!
//! The trait is poll-based (`poll_recv`, `poll_send`, in the manner of `futures::Stream` and
//! `AsyncWrite`), with `async` conveniences in [`ChannelExt`]. This was chosen over a trait
//! with `async fn`s and over an enum of backends because:
//!
//! - it is object safe: the relay driver can hold a `Box<dyn Channel + Send>` and petri can
//!   swap in-memory and ring-backed ends without generics leaking everywhere;
//! - `Send` follows the implementing type: the futures returned by [`ChannelExt::recv`] and
//!   [`ChannelExt::send`] are `Send` exactly when the channel is, without the
//!   return-type-notation bounds that `async fn` in traits would need;
//! - it needs no runtime: any executor (futures' own, a deterministic simulator, tokio in a
//!   binary) can drive it, and a simulator can poll it once to see whether a packet is ready;
//! - new backends (a VMBus device in a real paravisor) can be added outside this crate, which
//!   an enum would not allow.
//!
//! # Ending a channel
//!
//! Either end may [`close`](Channel::close) the channel (an orderly end: "I am done") or
//! [`revoke`](Channel::revoke) it (the offer is withdrawn: VMBus's rescind). Packets sent before
//! the end are still delivered; after them, [`Channel::poll_recv`] returns
//! [`ChannelError::Closed`] or [`ChannelError::Revoked`]. Sending after the end fails at once
//! with the same error. Dropping an end closes it. Both ends can tell which way the channel
//! ended with [`Channel::state`].

use crate::packet::{Packet, PacketError};
use crate::transactions::TransactionError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use thiserror::Error;

/// Why a channel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// One end closed the channel, or went away.
    Closed,
    /// One end revoked (rescinded) the channel.
    Revoked,
}

impl EndReason {
    /// The error that operations on a channel ended this way return.
    pub const fn error(self) -> ChannelError {
        match self {
            Self::Closed => ChannelError::Closed,
            Self::Revoked => ChannelError::Revoked,
        }
    }
}

/// The state of a channel as one end sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelState {
    /// Both ends may send and receive.
    Open,
    /// The channel has ended, for this reason. Packets sent before the end may still be
    /// waiting to be received.
    Ended(EndReason),
}

/// Errors of channel operations.
#[derive(Debug, Error)]
pub enum ChannelError {
    /// The channel was closed by either end (or the peer went away).
    #[error("channel closed")]
    Closed,
    /// The channel was revoked by either end.
    #[error("channel revoked")]
    Revoked,
    /// The packet breaks the configured limits. On send nothing was sent; on receive the
    /// offending packet was consumed and dropped, and the channel remains usable.
    #[error("packet rejected")]
    Packet(#[from] PacketError),
    /// The peer broke the transport's rules (for a ring: a bad index or length). The channel
    /// can no longer be trusted and this end has closed it. The source is the transport's own
    /// typed error (for the ring backend, `vmbus_ring::RingError`).
    #[error("peer broke the transport protocol")]
    Protocol(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Request bookkeeping refused the operation.
    #[error("transaction error")]
    Transaction(#[from] TransactionError),
    /// An operating-system call failed.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
}

impl ChannelError {
    /// The end reason, if this error reports the end of the channel.
    pub fn end_reason(&self) -> Option<EndReason> {
        match self {
            Self::Closed => Some(EndReason::Closed),
            Self::Revoked => Some(EndReason::Revoked),
            _ => None,
        }
    }
}

/// One end of a bidirectional packet channel.
///
/// See the [module documentation](self) for why the trait is poll-based and how ends are
/// observed. Implementations must be fair in one respect: a `Pending` result always registers
/// the waker of the given context, so the task is woken when progress is possible.
pub trait Channel {
    /// Receives the next packet.
    ///
    /// Returns `Ready(Err(Closed | Revoked))` once the channel has ended and every packet sent
    /// before the end has been received.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Packet, ChannelError>>;

    /// Sends `packet` whole, or returns `Pending` (waker registered) when there is no room
    /// for it yet; call again with the same packet.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        packet: &Packet,
    ) -> Poll<Result<(), ChannelError>>;

    /// Closes the channel: the peer receives what was already sent, then `Closed`.
    /// Idempotent; has no effect on a channel that has already ended.
    fn close(&mut self);

    /// Revokes the channel: the peer receives what was already sent, then `Revoked`.
    /// Idempotent; has no effect on a channel that has already ended.
    fn revoke(&mut self);

    /// The channel's state as this end sees it.
    fn state(&self) -> ChannelState;
}

impl<C: Channel + ?Sized> Channel for Box<C> {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Packet, ChannelError>> {
        (**self).poll_recv(cx)
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        packet: &Packet,
    ) -> Poll<Result<(), ChannelError>> {
        (**self).poll_send(cx, packet)
    }

    fn close(&mut self) {
        (**self).close()
    }

    fn revoke(&mut self) {
        (**self).revoke()
    }

    fn state(&self) -> ChannelState {
        (**self).state()
    }
}

impl<C: Channel + ?Sized> Channel for &mut C {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Packet, ChannelError>> {
        (**self).poll_recv(cx)
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        packet: &Packet,
    ) -> Poll<Result<(), ChannelError>> {
        (**self).poll_send(cx, packet)
    }

    fn close(&mut self) {
        (**self).close()
    }

    fn revoke(&mut self) {
        (**self).revoke()
    }

    fn state(&self) -> ChannelState {
        (**self).state()
    }
}

/// `async` conveniences over [`Channel`].
pub trait ChannelExt: Channel {
    /// Receives the next packet; see [`Channel::poll_recv`].
    fn recv(&mut self) -> RecvFuture<'_, Self> {
        RecvFuture { channel: self }
    }

    /// Sends a packet, waiting for room; see [`Channel::poll_send`].
    fn send<'a>(&'a mut self, packet: &'a Packet) -> SendFuture<'a, Self> {
        SendFuture {
            channel: self,
            packet,
        }
    }
}

impl<C: Channel + ?Sized> ChannelExt for C {}

/// The future of [`ChannelExt::recv`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct RecvFuture<'a, C: ?Sized> {
    channel: &'a mut C,
}

impl<C: Channel + ?Sized> Future for RecvFuture<'_, C> {
    type Output = Result<Packet, ChannelError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().channel.poll_recv(cx)
    }
}

/// The future of [`ChannelExt::send`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct SendFuture<'a, C: ?Sized> {
    channel: &'a mut C,
    packet: &'a Packet,
}

impl<C: Channel + ?Sized> Future for SendFuture<'_, C> {
    type Output = Result<(), ChannelError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.channel.poll_send(cx, this.packet)
    }
}
