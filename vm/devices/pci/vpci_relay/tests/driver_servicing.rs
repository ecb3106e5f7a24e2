//! Servicing a running bus through its driver: stopped at a packet boundary, host packets
//! queued while stopped (bounded, the rest left in the channel), saved with the driver's
//! queues, encoded, and restored into a new driver whose relay gets the queued packets
//! first; a state that is refused closes the bus cleanly.

mod common;

use common::*;
use futures::task::noop_waker_ref;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;
use vmbus_channel::{
    Channel, ChannelState, EndReason, MemoryChannel, MemoryChannelConfig, Packet, channel_pair_with,
};
use vpci_protocol::{ProtocolVersion, Status};
use vpci_relay::driver::MAX_HOST_QUEUE;
use vpci_relay::*;

type Driver = BusDriver<MemoryChannel, MemoryChannel, VirtualClock, RecordedBacking>;

fn cx() -> Context<'static> {
    Context::from_waker(noop_waker_ref())
}

/// Polls the driver until it has nothing more to do.
fn poll(driver: &mut Driver) -> Option<DriverExit> {
    match pin!(driver.run()).poll(&mut cx()) {
        Poll::Ready(exit) => Some(exit),
        Poll::Pending => None,
    }
}

fn recv_all(end: &mut MemoryChannel) -> Vec<Packet> {
    let mut out = Vec::new();
    while let Poll::Ready(Ok(p)) = end.poll_recv(&mut cx()) {
        out.push(p);
    }
    out
}

fn send(end: &mut MemoryChannel, p: Packet) {
    assert!(matches!(end.poll_send(&mut cx(), &p), Poll::Ready(Ok(()))));
}

struct Ends {
    host: MemoryChannel,
    guest: MemoryChannel,
}

/// A running bus whose guest asked the host for a protocol version: the host has the
/// request, the guest waits for its answer.
fn running() -> (Driver, Ends, VirtualClock, u64) {
    let (driver, ends, clock, id, _port) = running_with_port(256);
    (driver, ends, clock, id)
}

/// As [`running`], with room for `guest_capacity` packets in the guest's channel.
fn running_with(guest_capacity: usize) -> (Driver, Ends, VirtualClock, u64) {
    let (driver, ends, clock, id, _port) = running_with_port(guest_capacity);
    (driver, ends, clock, id)
}

/// As [`running_with`], with the bus's port.
fn running_with_port(guest_capacity: usize) -> (Driver, Ends, VirtualClock, u64, BusPort) {
    let config = MemoryChannelConfig {
        capacity: 256,
        ..MemoryChannelConfig::default()
    };
    let (host, relay_host) = channel_pair_with(config);
    let (relay_guest, guest) = channel_pair_with(MemoryChannelConfig {
        capacity: guest_capacity,
        ..config
    });
    let clock = VirtualClock::new();
    let (driver, port) = BusDriver::new(
        BusRelay::new(RelayConfig::default()),
        relay_host,
        relay_guest,
        clock.clone(),
        RecordedBacking::default(),
    );
    let mut driver = driver;
    let mut ends = Ends { host, guest };
    send(
        &mut ends.guest,
        Packet::request(7, padded(query_version(ProtocolVersion::V1_4))),
    );
    assert_eq!(poll(&mut driver), None);
    let at_host = recv_all(&mut ends.host);
    assert_eq!(at_host.len(), 1);
    (driver, ends, clock, at_host[0].transaction_id, port)
}

/// A stop asked through the bus's port (from another thread, as a service does) makes the
/// running driver return `Stopped` between two packets with both channels open: packets
/// that arrive next wait in the channels, nothing is handled half, and the driver can run
/// again (or be saved) and picks them up.
#[test]
fn a_stop_through_the_port_returns_between_packets() {
    let (mut driver, mut ends, _clock, version_id, mut port) = running_with_port(256);
    assert!(futures::executor::block_on(port.stop()));
    assert_eq!(poll(&mut driver), Some(DriverExit::Stopped));
    assert_eq!(ends.host.state(), ChannelState::Open);
    assert_eq!(ends.guest.state(), ChannelState::Open);
    // The host answers while the driver is stopped: nothing reaches the guest.
    send(
        &mut ends.host,
        Packet::completion(version_id, padded(status(Status::SUCCESS))),
    );
    assert!(recv_all(&mut ends.guest).is_empty());
    // Run again: the answer goes through, once.
    assert_eq!(poll(&mut driver), None);
    let at_guest = recv_all(&mut ends.guest);
    assert_eq!(
        at_guest.iter().filter(|p| p.transaction_id == 7).count(),
        1,
        "{at_guest:?}"
    );
    assert_eq!(driver.relay().version(), ProtocolVersion::V1_4);
    // A stop asked of a driver that is gone says so.
    drop(driver);
    assert!(!futures::executor::block_on(port.stop()));
}

/// Host packets that arrive while the bus is stopped are queued up to the bound, the rest
/// left in the channel; the restored relay gets the queued ones first, in order, then the
/// rest from the channel: each exactly once.
#[test]
fn host_packets_while_stopped_reach_the_restored_relay_first_and_once() {
    let (driver, mut ends, clock, version_id) = running();
    let mut stopped = driver.stop();
    // The host answers the version, then sends relations again and again.
    send(
        &mut ends.host,
        Packet::completion(version_id, padded(status(Status::SUCCESS))),
    );
    let relations = 69;
    for _ in 0..relations {
        send(&mut ends.host, Packet::in_band(0, padded(relations2(&[1]))));
    }
    assert_eq!(stopped.poll_queue_host(&mut cx()), Poll::Ready(()));
    assert_eq!(stopped.host_queued(), MAX_HOST_QUEUE);
    // The stopped relay saw none of it, and the guest nothing.
    assert_eq!(stopped.relay().version(), ProtocolVersion::V1_0);
    assert!(recv_all(&mut ends.guest).is_empty());

    let bytes = stopped.save().to_bytes();
    let (host, guest, _, bars) = stopped.into_parts();
    clock.advance_to(Duration::from_secs(5));
    let saved = SavedBus::from_bytes(&bytes).unwrap();
    let (mut driver, _port) =
        BusDriver::restore(RelayConfig::default(), &saved, host, guest, clock, bars).unwrap();
    assert_eq!(poll(&mut driver), None);
    // The queued completion reached the relay: the guest has its answer, 1.4 is agreed.
    let at_guest = recv_all(&mut ends.guest);
    assert!(at_guest.iter().any(|p| p.transaction_id == 7));
    assert_eq!(driver.relay().version(), ProtocolVersion::V1_4);
    // Every relations message reached the relay once: each replaced the one before it.
    let c = driver.relay().counters();
    assert_eq!(c.superseded, relations - 1);
    assert_eq!(c.malformed_host, 0);
    assert_eq!(
        driver.relay().restored().map(|r| r.at),
        Some(Duration::from_secs(5))
    );
}

/// A host channel that ends while the bus is stopped: its end reaches the restored relay
/// after the packets queued before it.
#[test]
fn a_rescind_while_stopped_reaches_the_restored_relay_after_the_queue() {
    let (driver, mut ends, clock, version_id) = running();
    let mut stopped = driver.stop();
    send(
        &mut ends.host,
        Packet::completion(version_id, padded(status(Status::SUCCESS))),
    );
    ends.host.revoke();
    assert_eq!(stopped.poll_queue_host(&mut cx()), Poll::Ready(()));
    assert_eq!(stopped.host_queued(), 1);
    let saved = SavedBus::from_bytes(&stopped.save().to_bytes()).unwrap();
    assert_eq!(saved.host_end_while_stopped, 1);
    let (host, guest, _, bars) = stopped.into_parts();
    let (mut driver, _port) =
        BusDriver::restore(RelayConfig::default(), &saved, host, guest, clock, bars).unwrap();
    poll(&mut driver);
    assert_eq!(driver.relay().version(), ProtocolVersion::V1_4);
    assert!(matches!(
        driver.relay().host_link(),
        HostLink::Lost {
            rescinded: true,
            ..
        }
    ));
    assert!(
        recv_all(&mut ends.guest)
            .iter()
            .any(|p| p.transaction_id == 7)
    );
}

/// Packets the old driver had not sent yet (the guest's channel was full) are saved and
/// go out from the restored one, once.
#[test]
fn unsent_packets_are_sent_by_the_restored_driver() {
    let (mut driver, mut ends, clock, first) = running_with(1);
    send(
        &mut ends.host,
        Packet::completion(first, padded(status(Status::SUCCESS))),
    );
    poll(&mut driver);
    // The guest asks again without reading its first answer: the second answer waits in
    // the driver, the guest's channel being full.
    send(
        &mut ends.guest,
        Packet::request(8, padded(query_version(ProtocolVersion::V1_4))),
    );
    poll(&mut driver);
    let second = recv_all(&mut ends.host);
    assert_eq!(second.len(), 1);
    send(
        &mut ends.host,
        Packet::completion(second[0].transaction_id, padded(status(Status::SUCCESS))),
    );
    poll(&mut driver);
    let stopped = driver.stop();
    let saved = SavedBus::from_bytes(&stopped.save().to_bytes()).unwrap();
    assert_eq!(
        saved.to_guest.len(),
        1,
        "the second answer waits in the driver"
    );
    let (host, guest, _, bars) = stopped.into_parts();
    let (mut driver, _port) =
        BusDriver::restore(RelayConfig::default(), &saved, host, guest, clock, bars).unwrap();
    let ids = |ps: Vec<Packet>| ps.iter().map(|p| p.transaction_id).collect::<Vec<_>>();
    assert_eq!(ids(recv_all(&mut ends.guest)), vec![7]);
    poll(&mut driver);
    assert_eq!(ids(recv_all(&mut ends.guest)), vec![8]);
    poll(&mut driver);
    assert!(recv_all(&mut ends.guest).is_empty());
}

/// A refused state closes the bus cleanly: the guest's channel is revoked (its bus goes,
/// as after a rescind), the host's closed, and the error names what was wrong.
#[test]
fn a_refused_state_closes_the_bus() {
    let (driver, ends, clock, _) = running();
    let stopped = driver.stop();
    let mut saved = stopped.save();
    saved.relay.as_mut().unwrap().format = 9;
    let (host, guest, _, bars) = stopped.into_parts();
    let err = BusDriver::restore(RelayConfig::default(), &saved, host, guest, clock, bars)
        .err()
        .expect("refused");
    assert_eq!(err, RestoreError::UnknownFormat { found: 9, known: 1 });
    assert_eq!(ends.guest.state(), ChannelState::Ended(EndReason::Revoked));
    assert_eq!(ends.host.state(), ChannelState::Ended(EndReason::Closed));
}

/// A queue over its bound in a saved bus is refused.
#[test]
fn a_host_queue_over_its_bound_is_refused() {
    let (driver, _ends, clock, _) = running();
    let stopped = driver.stop();
    let mut saved = stopped.save();
    saved.host_queue = vec![Default::default(); MAX_HOST_QUEUE + 1];
    let (host, guest, _, bars) = stopped.into_parts();
    let err = BusDriver::restore(RelayConfig::default(), &saved, host, guest, clock, bars)
        .err()
        .expect("refused");
    assert!(matches!(err, RestoreError::OverLimit { field, .. } if field == "host_queue"));
}
