//! The ring-backed channel between threads of one process: traffic, backpressure, ends, and a
//! peer that breaks the rules.

use futures::FutureExt;
use futures::executor::block_on;
use shared_mem::{MemfdMem, SharedMem};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;
use vmbus_channel::ring::{
    RingChannel, RingChannelConfig, RingChannelPeer, SetupError, ring_channel_pair,
};
use vmbus_channel::{
    Channel, ChannelError, ChannelExt, ChannelState, EndReason, Packet, PacketError, PacketKind,
    PacketLimits, TransactionConfig, Transactions,
};

fn config(ring_size: usize, max_payload: usize) -> RingChannelConfig {
    RingChannelConfig {
        ring_size,
        limits: PacketLimits::new(max_payload).unwrap(),
    }
}

fn bytes(id: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (id as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

/// Requests sent from one thread are completed by another, each exactly once, intact.
#[test]
fn threads_exchange_requests_and_completions() {
    let (mut client, mut server) = ring_channel_pair(config(64 * 1024, 1024)).unwrap();
    let server = std::thread::spawn(move || {
        block_on(async {
            let mut served = 0u32;
            loop {
                match server.recv().await {
                    Ok(request) => {
                        assert!(request.completion_requested());
                        let mut reply = request.payload.clone();
                        reply.reverse();
                        server
                            .send(&Packet::completion(request.transaction_id, reply))
                            .await
                            .unwrap();
                        served += 1;
                    }
                    Err(ChannelError::Closed) => return served,
                    Err(err) => panic!("{err}"),
                }
            }
        })
    });
    let mut table = Transactions::new(TransactionConfig {
        max_outstanding: 16,
        first_id: 1,
    });
    block_on(async {
        let (mut sent, mut done) = (0, 0);
        while done < 5_000 {
            while sent < 5_000 && table.len() < 16 {
                let len = (sent * 7) % 1025;
                let id = table.begin(len).unwrap();
                client
                    .send(&Packet::request(id, bytes(id, len)))
                    .await
                    .unwrap();
                sent += 1;
            }
            let completion = client.recv().await.unwrap();
            assert_eq!(completion.kind, PacketKind::Completion);
            let len = table.complete(completion.transaction_id).unwrap();
            let mut expected = bytes(completion.transaction_id, len);
            expected.resize(len.div_ceil(8) * 8, 0);
            expected.reverse();
            assert_eq!(completion.payload, expected);
            done += 1;
        }
    });
    assert!(table.is_empty());
    client.close();
    assert_eq!(server.join().unwrap(), 5_000);
}

/// A writer facing a full ring waits (pending send size) and is woken as the reader drains.
#[test]
fn full_ring_makes_the_writer_wait() {
    let (mut tx, mut rx) = ring_channel_pair(config(8192, 2048)).unwrap();
    let big = Packet::in_band(0, vec![0xa5; 2048]);
    // Fill the ring until a send would have to wait.
    let mut queued = 0;
    while tx.send(&big).now_or_never().is_some() {
        queued += 1;
    }
    assert!(queued >= 2, "ring took {queued} packets");
    let reader = std::thread::spawn(move || {
        block_on(async {
            let mut count = 0;
            while let Ok(packet) = rx.recv().await {
                assert_eq!(packet.payload, vec![0xa5; 2048]);
                count += 1;
                if count % 3 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            count
        })
    });
    block_on(async {
        for _ in 0..200 {
            tx.send(&big).await.unwrap();
        }
    });
    drop(tx);
    assert_eq!(reader.join().unwrap(), 200 + queued);
}

/// A revoke is seen by the peer after the packets sent before it; sends then fail.
#[test]
fn revoke_is_observed_after_queued_packets() {
    let (mut a, mut b) = ring_channel_pair(RingChannelConfig::default()).unwrap();
    block_on(async {
        for id in 0..3 {
            a.send(&Packet::in_band(id, vec![id as u8])).await.unwrap();
        }
    });
    a.revoke();
    assert_eq!(a.state(), ChannelState::Ended(EndReason::Revoked));
    assert_eq!(b.state(), ChannelState::Ended(EndReason::Revoked));
    block_on(async {
        for id in 0..3 {
            assert_eq!(b.recv().await.unwrap().transaction_id, id);
        }
        assert!(matches!(b.recv().await, Err(ChannelError::Revoked)));
        assert!(matches!(
            b.send(&Packet::in_band(9, vec![])).await,
            Err(ChannelError::Revoked)
        ));
        assert!(matches!(a.recv().await, Err(ChannelError::Revoked)));
    });
}

/// A receiver blocked in another thread is woken by the peer's revoke.
#[test]
fn revoke_wakes_a_waiting_receiver() {
    let (mut a, mut b) = ring_channel_pair(RingChannelConfig::default()).unwrap();
    let waiter = std::thread::spawn(move || block_on(b.recv()).map(|_| ()));
    std::thread::sleep(Duration::from_millis(20));
    a.revoke();
    assert!(matches!(waiter.join().unwrap(), Err(ChannelError::Revoked)));
}

/// Dropping an end closes the channel; the first end reason wins.
#[test]
fn drop_reads_as_closed() {
    let (a, mut b) = ring_channel_pair(RingChannelConfig::default()).unwrap();
    drop(a);
    b.revoke();
    assert_eq!(b.state(), ChannelState::Ended(EndReason::Closed));
    assert!(matches!(block_on(b.recv()), Err(ChannelError::Closed)));
}

/// Oversized payloads and types a ring cannot carry are refused; the channel stays usable.
#[test]
fn bad_packets_are_refused_and_channel_survives() {
    let (mut a, mut b) = ring_channel_pair(config(16 * 1024, 64)).unwrap();
    block_on(async {
        let err = a.send(&Packet::in_band(1, vec![0; 65])).await.unwrap_err();
        assert!(matches!(
            err,
            ChannelError::Packet(PacketError::PayloadTooLarge { len: 65, max: 64 })
        ));
        let mut odd = Packet::in_band(2, vec![]);
        odd.kind = PacketKind::Other(200);
        let err = a.send(&odd).await.unwrap_err();
        assert!(matches!(
            err,
            ChannelError::Packet(PacketError::UnsupportedKind { raw: 200 })
        ));
        a.send(&Packet::in_band(3, vec![1; 64])).await.unwrap();
        assert_eq!(b.recv().await.unwrap().transaction_id, 3);
    });
}

/// Configurations that cannot work are refused before anything is created.
#[test]
fn bad_configurations_are_refused() {
    for bad in [config(4095, 8), config(4096, 4096), config(128 << 20, 8)] {
        assert!(matches!(
            RingChannel::create(bad),
            Err(SetupError::BadConfig(_))
        ));
    }
}

/// A peer that scribbles an invalid write index gets a protocol error, not a panic, and the
/// reading end closes the channel.
#[test]
fn corrupt_write_index_is_a_protocol_error() {
    let (mut a, peer) = RingChannel::create(RingChannelConfig::default()).unwrap();
    let [memfd, opener_bell, creator_bell] = peer.into_fds();
    let scribbler = MemfdMem::from_fd(memfd.try_clone().unwrap()).unwrap();
    let mut b = RingChannelPeer::from_fds([memfd, opener_bell, creator_bell])
        .open()
        .unwrap();
    block_on(a.send(&Packet::in_band(1, vec![1; 8]))).unwrap();
    // Ring 0 (written by the creator) starts after the channel page; its write index is the
    // first word of its control page. An unaligned value is invalid.
    scribbler.store_u32(4096, 3).unwrap();
    let err = block_on(b.recv()).unwrap_err();
    assert!(matches!(err, ChannelError::Protocol(_)), "{err:?}");
    assert_eq!(b.state(), ChannelState::Ended(EndReason::Closed));
    assert!(matches!(block_on(b.recv()), Err(ChannelError::Closed)));
    assert_eq!(a.state(), ChannelState::Ended(EndReason::Closed));
}

/// A hostile channel header is refused when the peer end is opened.
#[test]
fn corrupt_header_is_refused_at_open() {
    let (_a, peer) = RingChannel::create(RingChannelConfig::default()).unwrap();
    let [memfd, opener_bell, creator_bell] = peer.into_fds();
    let scribbler = MemfdMem::from_fd(memfd.try_clone().unwrap()).unwrap();
    // The ring size field of the header.
    scribbler.store_u32(12, 128 * 1024).unwrap();
    let err = RingChannelPeer::from_fds([memfd, opener_bell, creator_bell])
        .open()
        .unwrap_err();
    assert!(matches!(err, SetupError::BadRegion(_)), "{err:?}");
}

/// A handoff message without descriptors, or of another format, is refused.
#[test]
fn bad_handoff_messages_are_refused() {
    let (mine, theirs) = UnixStream::pair().unwrap();
    rustix::io::write(mine.as_fd(), b"VMBCHFD1").unwrap();
    let err = RingChannel::open_from(theirs.into()).unwrap_err();
    assert!(
        matches!(
            err,
            SetupError::BadDescriptors {
                expected: 3,
                received: 0
            }
        ),
        "{err:?}"
    );
    let (mine, theirs) = UnixStream::pair().unwrap();
    rustix::io::write(mine.as_fd(), b"NOTACHAN").unwrap();
    let err = RingChannel::open_from(theirs.into()).unwrap_err();
    assert!(matches!(err, SetupError::BadRegion(_)), "{err:?}");
    let (mine, theirs) = UnixStream::pair().unwrap();
    drop(mine);
    assert!(RingChannel::open_from(theirs.into()).is_err());
}

/// Over a socket in one process: the handoff works and the socket's hang-up reads as closed.
#[test]
fn socket_handoff_and_liveness() {
    let (mine, theirs) = UnixStream::pair().unwrap();
    let mut a = RingChannel::create_over(mine.into(), RingChannelConfig::default()).unwrap();
    let mut b = RingChannel::open_from(theirs.into()).unwrap();
    assert_eq!(a.config(), b.config());
    block_on(a.send(&Packet::in_band(5, vec![]))).unwrap();
    assert_eq!(block_on(b.recv()).unwrap().transaction_id, 5);
    drop(b);
    assert!(matches!(block_on(a.recv()), Err(ChannelError::Closed)));
}

/// A peer that sends more than the creator's payload limit has its packet dropped with a
/// typed error; the channel stays usable. (The peer is made to believe in a larger limit by
/// editing the header before it opens.)
#[test]
fn oversized_packet_from_peer_is_dropped() {
    let (mut a, peer) = RingChannel::create(config(16 * 1024, 64)).unwrap();
    let [memfd, opener_bell, creator_bell] = peer.into_fds();
    let scribbler = MemfdMem::from_fd(memfd.try_clone().unwrap()).unwrap();
    // The payload limit field of the header.
    scribbler.store_u32(16, 1024).unwrap();
    let mut b = RingChannelPeer::from_fds([memfd, opener_bell, creator_bell])
        .open()
        .unwrap();
    block_on(async {
        b.send(&Packet::in_band(1, vec![1; 512])).await.unwrap();
        b.send(&Packet::in_band(2, vec![2; 64])).await.unwrap();
        let err = a.recv().await.unwrap_err();
        assert!(matches!(
            err,
            ChannelError::Packet(PacketError::PayloadTooLarge { len: 512, max: 64 })
        ));
        assert_eq!(a.recv().await.unwrap().transaction_id, 2);
    });
}

/// A peer end, once seen, stays: a peer rewriting its end word cannot reopen the channel.
#[test]
fn observed_end_cannot_be_undone() {
    let (mut a, peer) = RingChannel::create(RingChannelConfig::default()).unwrap();
    let [memfd, opener_bell, creator_bell] = peer.into_fds();
    let scribbler = MemfdMem::from_fd(memfd.try_clone().unwrap()).unwrap();
    let b = RingChannelPeer::from_fds([memfd, opener_bell, creator_bell])
        .open()
        .unwrap();
    // The opener's end word is at offset 128 of the channel page.
    scribbler.store_u32(128, 2).unwrap();
    assert_eq!(a.state(), ChannelState::Ended(EndReason::Revoked));
    scribbler.store_u32(128, 0).unwrap();
    assert_eq!(a.state(), ChannelState::Ended(EndReason::Revoked));
    assert!(matches!(
        block_on(a.send(&Packet::in_band(1, vec![]))),
        Err(ChannelError::Revoked)
    ));
    drop(b);
}

/// Both backends and the futures of `ChannelExt` can move between threads, so a multi-threaded
/// executor can run the relay's tasks.
#[test]
fn channels_and_their_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let (mut ring, _peer) = ring_channel_pair(RingChannelConfig::default()).unwrap();
    let (mut memory, _other) = vmbus_channel::channel_pair();
    assert_send(&ring);
    assert_send(&memory);
    let packet = Packet::in_band(0, vec![]);
    assert_send(&ring.recv());
    assert_send(&ring.send(&packet));
    assert_send(&memory.recv());
    let boxed: Box<dyn Channel + Send> = Box::new(memory);
    assert_send(&boxed);
}

/// Packets larger than the receive buffer a channel starts with arrive intact (the buffer
/// grows to them), between small ones, up to the largest payload the limits allow (lengths
/// are multiples of 8: VMBus pads payloads).
#[test]
fn large_packets_grow_the_receive_buffer() {
    let (mut a, mut b) = ring_channel_pair(config(64 * 1024, 16 * 1024)).unwrap();
    block_on(async {
        for (id, len) in [(1u64, 8usize), (2, 3000), (3, 16), (4, 16 * 1024), (5, 104)] {
            a.send(&Packet::in_band(id, bytes(id, len))).await.unwrap();
            let p = b.recv().await.unwrap();
            assert_eq!(p.transaction_id, id);
            assert_eq!(p.payload, bytes(id, len));
        }
    });
}

/// An end whose waiting was taken over by the caller ([`RingChannel::wait_source`]): its
/// doorbell becomes readable when the peer sends, `ready` lets the receive complete, and the
/// peer closing is seen the same way.
#[test]
fn wait_source_replaces_the_notifier() {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let (mut a, mut b) = ring_channel_pair(config(64 * 1024, 1024)).unwrap();
    let mut source = b.wait_source().unwrap();
    assert!(b.wait_source().is_err(), "detached twice");
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        block_on(a.send(&Packet::in_band(7, bytes(7, 64)))).unwrap();
        a
    });
    let mut recv = Box::pin(async { b.recv().await });
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let limit = Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    let packet = loop {
        if let std::task::Poll::Ready(p) = recv.as_mut().poll(&mut cx) {
            break p.unwrap();
        }
        let fds = source.fds();
        let mut polled: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        assert!(poll(&mut polled, Some(&limit)).unwrap() > 0, "nothing woke");
        drop(polled);
        source.ready();
    };
    assert_eq!(packet.transaction_id, 7);
    drop(recv);
    drop(sender.join().unwrap());
    source.ready();
    assert!(block_on(b.recv()).is_err());
}
