//! Handing a ring channel end to a successor ([`RingChannel::into_handoff`] /
//! [`RingChannel::from_handoff`]): the peer notices nothing, nothing sent is lost or
//! reordered, the end's latched state and liveness carry over, and bad descriptors are typed
//! errors.

use futures::executor::block_on;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use vmbus_channel::ring::{
    HandoffState, RingChannel, RingChannelConfig, RingHandoff, SetupError, recv_with_fds,
    ring_channel_pair, send_with_fds,
};
use vmbus_channel::{Channel, ChannelError, ChannelExt, ChannelState, Packet, PacketLimits};

fn config() -> RingChannelConfig {
    RingChannelConfig {
        ring_size: 16 * 1024,
        limits: PacketLimits::new(512).unwrap(),
    }
}

fn packet(n: u8) -> Packet {
    Packet::in_band(u64::from(n), vec![n; 8 + usize::from(n)])
}

/// Receives the next packet, failing the test after a few seconds instead of hanging.
fn recv(channel: &mut RingChannel) -> Result<Packet, ChannelError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        if let std::task::Poll::Ready(r) = channel.poll_recv(&mut cx) {
            return r;
        }
        assert!(Instant::now() < deadline, "nothing arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn ids(channel: &mut RingChannel, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| recv(channel).unwrap().transaction_id)
        .collect()
}

/// Passes a handoff through a Unix socket as another process would receive it.
fn through_socket(handoff: RingHandoff) -> RingHandoff {
    let (a, b) = UnixStream::pair().unwrap();
    let (state, fds) = handoff.into_parts();
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    send_with_fds(a.as_fd(), &[fds.len() as u8], &borrowed).unwrap();
    drop(fds);
    let mut count = [0u8; 1];
    let received = recv_with_fds(b.as_fd(), &mut count).unwrap();
    assert_eq!(received.len(), usize::from(count[0]));
    RingHandoff::from_parts(state, received).unwrap()
}

/// Packets queued both ways before and during the handoff arrive once each, in order; the
/// peer sees the channel open throughout; the resumed end sends and ends the channel as
/// before.
#[test]
fn nothing_is_lost_or_reordered_across_a_handoff() {
    for via_socket in [false, true] {
        let (mut creator, mut opener) = ring_channel_pair(config()).unwrap();
        block_on(async {
            for n in 1..=3 {
                creator.send(&packet(n)).await.unwrap();
            }
            opener.send(&packet(10)).await.unwrap();
            opener.send(&packet(11)).await.unwrap();
        });
        assert_eq!(ids(&mut opener, 1), [1]);

        let handoff = opener.into_handoff(None).unwrap();
        assert_eq!(handoff.state().local_end, None);
        assert!(!handoff.state().creator);
        // The predecessor is gone; the peer keeps going and sees an open channel.
        block_on(creator.send(&packet(4))).unwrap();
        assert_eq!(creator.state(), ChannelState::Open);
        assert_eq!(ids(&mut creator, 2), [10, 11]);

        let handoff = if via_socket {
            through_socket(handoff)
        } else {
            handoff
        };
        let mut opener = RingChannel::from_handoff(handoff).unwrap();
        assert_eq!(ids(&mut opener, 3), [2, 3, 4]);
        block_on(opener.send(&packet(12))).unwrap();
        assert_eq!(ids(&mut creator, 1), [12]);

        // After the handoff a packet the peer sends wakes the successor's waiting.
        let waiter = std::thread::spawn(move || {
            let got = block_on(opener.recv()).unwrap().transaction_id;
            (got, opener)
        });
        std::thread::sleep(Duration::from_millis(20));
        block_on(creator.send(&packet(5))).unwrap();
        let (got, mut opener) = waiter.join().unwrap();
        assert_eq!(got, 5);

        creator.close();
        assert!(matches!(recv(&mut opener), Err(ChannelError::Closed)));
    }
}

/// An end the peer had already ended stays ended after the handoff (its latched view is
/// carried), once it has read what was sent before the end.
#[test]
fn a_latched_end_survives_the_handoff() {
    let (mut creator, opener) = ring_channel_pair(config()).unwrap();
    block_on(creator.send(&packet(1))).unwrap();
    creator.revoke();
    assert_eq!(
        opener.state(),
        ChannelState::Ended(vmbus_channel::EndReason::Revoked)
    );
    let handoff = opener.into_handoff(None).unwrap();
    assert_eq!(
        handoff.state().peer_end,
        Some(vmbus_channel::EndReason::Revoked)
    );
    let mut opener = RingChannel::from_handoff(through_socket(handoff)).unwrap();
    assert_eq!(ids(&mut opener, 1), [1]);
    assert!(matches!(recv(&mut opener), Err(ChannelError::Revoked)));
}

/// A creator end over a socket pair whose other half stands for the peer process: the
/// peer's descriptors are received by hand, so dropping `theirs` is the peer process dying.
fn creator_with_liveness() -> (RingChannel, RingChannel, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let creator = RingChannel::create_over(OwnedFd::from(ours), config()).unwrap();
    let mut magic = [0u8; 8];
    let fds = recv_with_fds(theirs.as_fd(), &mut magic).unwrap();
    let fds: [OwnedFd; 3] = fds.try_into().unwrap();
    let peer = vmbus_channel::RingChannelPeer::from_fds(fds)
        .open()
        .unwrap();
    (creator, peer, theirs)
}

fn wait_for_end(channel: &RingChannel) -> ChannelState {
    let deadline = Instant::now() + Duration::from_secs(10);
    while channel.state() == ChannelState::Open {
        assert!(Instant::now() < deadline, "the end was never noticed");
        std::thread::sleep(Duration::from_millis(1));
    }
    channel.state()
}

/// The liveness socket goes with the end, whether the end waited through its notifier or
/// the caller had taken its waiting over: the successor notices the peer process going away.
#[test]
fn the_liveness_socket_goes_with_the_end() {
    for taken_over in [false, true] {
        let (mut creator, mut peer, theirs) = creator_with_liveness();
        let wait = taken_over.then(|| creator.wait_source().unwrap());
        let handoff = creator.into_handoff(wait).unwrap();
        assert_eq!(handoff.fds().len(), 4, "memfd, two doorbells, liveness");
        let mut creator = RingChannel::from_handoff(through_socket(handoff)).unwrap();
        block_on(creator.send(&packet(7))).unwrap();
        assert_eq!(ids(&mut peer, 1), [7]);
        // The peer process dies without closing its end.
        std::mem::forget(peer);
        drop(theirs);
        assert_eq!(
            wait_for_end(&creator),
            ChannelState::Ended(vmbus_channel::EndReason::Closed)
        );
        assert!(matches!(recv(&mut creator), Err(ChannelError::Closed)));
    }
}

/// A peer process seen gone before the handoff is still gone after it.
#[test]
fn a_peer_seen_gone_stays_gone() {
    let (creator, peer, theirs) = creator_with_liveness();
    std::mem::forget(peer);
    drop(theirs);
    wait_for_end(&creator);
    let handoff = creator.into_handoff(None).unwrap();
    assert!(handoff.state().peer_gone || handoff.state().peer_end.is_some());
    let creator = RingChannel::from_handoff(through_socket(handoff)).unwrap();
    assert_eq!(
        creator.state(),
        ChannelState::Ended(vmbus_channel::EndReason::Closed)
    );
}

/// Too few or too many descriptors, or descriptors of the wrong kind, are typed errors.
#[test]
fn bad_descriptors_are_refused() {
    let state = HandoffState {
        creator: true,
        local_end: None,
        peer_end: None,
        broken: false,
        peer_gone: false,
    };
    let file = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    assert!(matches!(
        RingHandoff::from_parts(state, vec![file(), file()]),
        Err(SetupError::BadDescriptors { received: 2, .. })
    ));
    assert!(matches!(
        RingHandoff::from_parts(state, (0..5).map(|_| file()).collect()),
        Err(SetupError::BadDescriptors { received: 5, .. })
    ));
    let wrong = RingHandoff::from_parts(state, vec![file(), file(), file()]).unwrap();
    assert!(RingChannel::from_handoff(wrong).is_err());
}

/// The end codes used by encoders round-trip.
#[test]
fn end_codes_round_trip() {
    use vmbus_channel::EndReason;
    for end in [None, Some(EndReason::Closed), Some(EndReason::Revoked)] {
        assert_eq!(
            HandoffState::end_from_code(HandoffState::end_code(end)),
            end
        );
    }
}

/// The predecessor read with interrupts masked (as a reading end does); the successor's first
/// wait must unmask, or the writer would never signal it.
#[test]
fn a_resumed_end_waits_for_a_signal_it_will_get() {
    let (mut creator, mut opener) = ring_channel_pair(config()).unwrap();
    block_on(creator.send(&packet(1))).unwrap();
    assert_eq!(ids(&mut opener, 1), [1]);
    let opener = RingChannel::from_handoff(opener.into_handoff(None).unwrap()).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut opener = opener;
        let got = block_on(opener.recv()).map(|p| p.transaction_id);
        let _ = done_tx.send(got);
    });
    std::thread::sleep(Duration::from_millis(50));
    block_on(creator.send(&packet(2))).unwrap();
    let got = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the resumed end was never woken");
    assert_eq!(got.unwrap(), 2);
}
