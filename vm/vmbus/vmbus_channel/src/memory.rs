//! An in-memory channel pair for tests and the deterministic simulator.
//!
//! The two ends share a mutex-protected pair of bounded queues; no runtime, thread or clock is
//! involved, so any executor (futures' `block_on`, a simulator polling by hand) drives it, and
//! the same sequence of polls always gives the same result. Payloads are padded to 8 bytes on
//! delivery and bounded by [`PacketLimits`], exactly as over a ring.

use crate::channel::{Channel, ChannelError, ChannelState, EndReason};
use crate::packet::{Packet, PacketLimits, pad_payload};
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Configuration of an in-memory pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryChannelConfig {
    /// Packet limits, enforced on send.
    pub limits: PacketLimits,
    /// How many packets each direction holds before `poll_send` waits (like a full ring).
    /// At least 1.
    pub capacity: usize,
}

impl Default for MemoryChannelConfig {
    fn default() -> Self {
        Self {
            limits: PacketLimits::default(),
            capacity: 64,
        }
    }
}

/// Creates two connected in-memory ends with the default configuration.
pub fn channel_pair() -> (MemoryChannel, MemoryChannel) {
    channel_pair_with(MemoryChannelConfig::default())
}

/// Creates two connected in-memory ends.
pub fn channel_pair_with(config: MemoryChannelConfig) -> (MemoryChannel, MemoryChannel) {
    let config = MemoryChannelConfig {
        capacity: config.capacity.max(1),
        ..config
    };
    let shared = Arc::new(Mutex::new(Shared::default()));
    let a = MemoryChannel {
        shared: shared.clone(),
        side: 0,
        config,
    };
    let b = MemoryChannel {
        shared,
        side: 1,
        config,
    };
    (a, b)
}

#[derive(Default)]
struct Shared {
    /// `inbox[i]` holds the packets waiting for end `i`.
    inbox: [VecDeque<Packet>; 2],
    /// Set once, by whichever end closes or revokes first.
    end: Option<EndReason>,
    /// The task of end `i` waiting for a packet.
    recv_waker: [Option<Waker>; 2],
    /// The task of end `i` waiting for room in its peer's inbox.
    send_waker: [Option<Waker>; 2],
}

impl Shared {
    fn end(&mut self, reason: EndReason) {
        if self.end.is_none() {
            self.end = Some(reason);
            for waker in self
                .recv_waker
                .iter_mut()
                .chain(self.send_waker.iter_mut())
                .filter_map(Option::take)
            {
                waker.wake();
            }
        }
    }
}

/// One end of an in-memory channel pair; see [`channel_pair`].
pub struct MemoryChannel {
    shared: Arc<Mutex<Shared>>,
    side: usize,
    config: MemoryChannelConfig,
}

impl MemoryChannel {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves the queues consistent (every update is a
        // single push, pop or assignment), so a poisoned lock is still usable.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn peer(&self) -> usize {
        1 - self.side
    }

    /// The number of packets waiting to be received by this end.
    pub fn pending(&self) -> usize {
        self.lock().inbox[self.side].len()
    }
}

impl fmt::Debug for MemoryChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryChannel")
            .field("side", &self.side)
            .field("config", &self.config)
            .field("state", &self.state())
            .finish()
    }
}

impl Channel for MemoryChannel {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Packet, ChannelError>> {
        let (side, peer) = (self.side, self.peer());
        let mut shared = self.lock();
        if let Some(packet) = shared.inbox[side].pop_front() {
            if let Some(waker) = shared.send_waker[peer].take() {
                waker.wake();
            }
            return Poll::Ready(Ok(packet));
        }
        if let Some(reason) = shared.end {
            return Poll::Ready(Err(reason.error()));
        }
        shared.recv_waker[side] = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        packet: &Packet,
    ) -> Poll<Result<(), ChannelError>> {
        let (side, peer) = (self.side, self.peer());
        let capacity = self.config.capacity;
        if let Err(err) = self.config.limits.check(packet) {
            return Poll::Ready(Err(err.into()));
        }
        let mut shared = self.lock();
        if let Some(reason) = shared.end {
            return Poll::Ready(Err(reason.error()));
        }
        if shared.inbox[peer].len() >= capacity {
            shared.send_waker[side] = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut packet = packet.clone();
        pad_payload(&mut packet.payload);
        shared.inbox[peer].push_back(packet);
        if let Some(waker) = shared.recv_waker[peer].take() {
            waker.wake();
        }
        Poll::Ready(Ok(()))
    }

    fn close(&mut self) {
        self.lock().end(EndReason::Closed);
    }

    fn revoke(&mut self) {
        self.lock().end(EndReason::Revoked);
    }

    fn state(&self) -> ChannelState {
        match self.lock().end {
            None => ChannelState::Open,
            Some(reason) => ChannelState::Ended(reason),
        }
    }
}

impl Drop for MemoryChannel {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelExt;
    use crate::packet::PacketError;
    use futures::FutureExt;
    use futures::executor::block_on;

    /// Packets arrive in order, whole, with payloads padded to 8 bytes.
    #[test]
    fn send_then_receive_in_order() {
        let (mut a, mut b) = channel_pair();
        block_on(async {
            a.send(&Packet::request(1, vec![1, 2, 3])).await.unwrap();
            a.send(&Packet::in_band(2, vec![9; 8])).await.unwrap();
            b.send(&Packet::completion(1, vec![])).await.unwrap();
            let p = b.recv().await.unwrap();
            assert_eq!(p, Packet::request(1, vec![1, 2, 3, 0, 0, 0, 0, 0]));
            assert_eq!(b.recv().await.unwrap(), Packet::in_band(2, vec![9; 8]));
            assert_eq!(a.recv().await.unwrap(), Packet::completion(1, vec![]));
        });
    }

    /// Receiving on an empty channel waits; a send wakes the receiver.
    #[test]
    fn receive_waits_for_send() {
        let (mut a, mut b) = channel_pair();
        let mut recv = b.recv();
        assert!((&mut recv).now_or_never().is_none());
        block_on(a.send(&Packet::in_band(7, vec![]))).unwrap();
        assert_eq!(block_on(recv).unwrap().transaction_id, 7);
    }

    /// A revoke by one end is observed by the other after the packets sent before it.
    #[test]
    fn revoke_is_observed_after_queued_packets() {
        let (mut a, mut b) = channel_pair();
        block_on(a.send(&Packet::in_band(1, vec![]))).unwrap();
        a.revoke();
        assert_eq!(a.state(), ChannelState::Ended(EndReason::Revoked));
        assert_eq!(b.state(), ChannelState::Ended(EndReason::Revoked));
        assert_eq!(block_on(b.recv()).unwrap().transaction_id, 1);
        assert!(matches!(block_on(b.recv()), Err(ChannelError::Revoked)));
        assert!(matches!(
            block_on(b.send(&Packet::in_band(2, vec![]))),
            Err(ChannelError::Revoked)
        ));
        assert!(matches!(
            block_on(a.send(&Packet::in_band(2, vec![]))),
            Err(ChannelError::Revoked)
        ));
    }

    /// A receiver already waiting is woken by the peer's revoke.
    #[test]
    fn revoke_wakes_waiting_receiver() {
        let (mut a, mut b) = channel_pair();
        let handle = std::thread::spawn(move || block_on(b.recv()).map(|_| ()));
        std::thread::sleep(std::time::Duration::from_millis(10));
        a.revoke();
        assert!(matches!(handle.join().unwrap(), Err(ChannelError::Revoked)));
    }

    /// Close and drop read as `Closed`, and the first end reason wins.
    #[test]
    fn close_and_drop_read_as_closed() {
        let (mut a, mut b) = channel_pair();
        b.close();
        a.revoke();
        assert_eq!(a.state(), ChannelState::Ended(EndReason::Closed));
        assert!(matches!(block_on(a.recv()), Err(ChannelError::Closed)));

        let (mut a, b) = channel_pair();
        drop(b);
        assert!(matches!(
            block_on(a.send(&Packet::in_band(0, vec![]))),
            Err(ChannelError::Closed)
        ));
    }

    /// A full direction makes the sender wait until the receiver takes a packet.
    #[test]
    fn full_direction_applies_backpressure() {
        let (mut a, mut b) = channel_pair_with(MemoryChannelConfig {
            capacity: 1,
            ..Default::default()
        });
        let p = Packet::in_band(0, vec![]);
        block_on(a.send(&p)).unwrap();
        assert!(a.send(&p).now_or_never().is_none());
        block_on(b.recv()).unwrap();
        assert!(a.send(&p).now_or_never().is_some());
    }

    /// Oversized packets are refused with a typed error and nothing is sent.
    #[test]
    fn oversized_packet_is_refused() {
        let (mut a, b) = channel_pair_with(MemoryChannelConfig {
            limits: PacketLimits::new(8).unwrap(),
            ..Default::default()
        });
        let err = block_on(a.send(&Packet::in_band(0, vec![0; 9]))).unwrap_err();
        assert!(matches!(
            err,
            ChannelError::Packet(PacketError::PayloadTooLarge { len: 9, max: 8 })
        ));
        assert_eq!(b.pending(), 0);
    }

    /// Ends work behind `Box<dyn Channel + Send>`.
    #[test]
    fn boxed_dyn_channel() {
        let (a, b) = channel_pair();
        let mut a: Box<dyn Channel + Send> = Box::new(a);
        let mut b: Box<dyn Channel + Send> = Box::new(b);
        block_on(a.send(&Packet::in_band(3, vec![]))).unwrap();
        assert_eq!(block_on(b.recv()).unwrap().transaction_id, 3);
    }
}
