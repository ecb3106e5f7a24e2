//! The async driver over in-memory channels and virtual time: packets flow both ways, timers
//! fire, a rescind closes the guest channel, and buses do not wait on each other.

mod common;

use common::*;
use futures::FutureExt;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use vmbus_channel::{
    Channel, ChannelExt, ChannelState, EndReason, MemoryChannel, Packet, channel_pair,
};
use vpci_protocol::*;
use vpci_relay::driver::RecordedBacking;
use vpci_relay::*;

struct Rig {
    host: MemoryChannel,
    guest: MemoryChannel,
    exit: Rc<RefCell<Option<DriverExit>>>,
    backing: RecordedBacking,
}

fn spawn_bus(pool: &LocalPool, clock: &VirtualClock) -> Rig {
    let (host_end, relay_host) = channel_pair();
    let (relay_guest, guest_end) = channel_pair();
    let backing = RecordedBacking::default();
    let (mut driver, _config) = BusDriver::new(
        BusRelay::new(RelayConfig::default()),
        relay_host,
        relay_guest,
        clock.clone(),
        backing.clone(),
    );
    let exit = Rc::new(RefCell::new(None));
    let done = exit.clone();
    pool.spawner()
        .spawn_local(async move {
            let e = driver.run().await;
            *done.borrow_mut() = Some(e);
        })
        .unwrap();
    Rig {
        host: host_end,
        guest: guest_end,
        exit,
        backing,
    }
}

fn send(ch: &mut MemoryChannel, p: Packet) {
    ch.send(&p).now_or_never().expect("room").expect("open");
}

fn recv_all(ch: &mut MemoryChannel) -> Vec<Packet> {
    let mut out = Vec::new();
    while let Some(Ok(p)) = ch.recv().now_or_never() {
        out.push(p);
    }
    out
}

fn types(ps: &[Packet]) -> Vec<Option<MessageType>> {
    ps.iter().map(message_type).collect()
}

/// Brings a bus through a Linux-like probe of one function at slot 1.
fn probe(pool: &mut LocalPool, rig: &mut Rig) {
    send(
        &mut rig.guest,
        Packet::request(1, query_version(ProtocolVersion::V1_4)),
    );
    pool.run_until_stalled();
    let v = recv_all(&mut rig.host);
    assert_eq!(types(&v), [Some(MessageType::QUERY_PROTOCOL_VERSION)]);
    send(
        &mut rig.host,
        Packet::completion(v[0].transaction_id, status(Status::SUCCESS)),
    );
    send(&mut rig.guest, Packet::in_band(0, query_relations()));
    pool.run_until_stalled();
    assert_eq!(recv_all(&mut rig.guest).len(), 1, "version completion");
    recv_all(&mut rig.host);
    send(&mut rig.host, Packet::in_band(0, relations2(&[1])));
    pool.run_until_stalled();
    let r = recv_all(&mut rig.guest);
    assert_eq!(types(&r), [Some(MessageType::BUS_RELATIONS2)]);
    for (req, reply) in [
        (qrr(1), requirements_reply()),
        (d0_entry(), status(Status::SUCCESS)),
        (resources_assigned2(1), status(Status::SUCCESS)),
    ] {
        send(&mut rig.guest, Packet::request(9, req));
        pool.run_until_stalled();
        let fwd = recv_all(&mut rig.host);
        assert_eq!(fwd.len(), 1);
        send(
            &mut rig.host,
            Packet::completion(fwd[0].transaction_id, reply),
        );
        pool.run_until_stalled();
        let c = recv_all(&mut rig.guest);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].transaction_id, 9, "the guest's own id comes back");
    }
}

fn advance(pool: &mut LocalPool, clock: &VirtualClock, by: Duration) {
    let end = clock.now() + by;
    while let Some(t) = clock.next_deadline().filter(|&t| t <= end) {
        clock.advance_to(t);
        pool.run_until_stalled();
    }
    clock.advance_to(end);
    pool.run_until_stalled();
}

/// The driver relays a probe, holds an eject until the settle window passes on the virtual
/// clock, and then delivers it.
#[test]
fn driver_relays_and_times() {
    let mut pool = LocalPool::new();
    let clock = VirtualClock::new();
    let mut rig = spawn_bus(&pool, &clock);
    probe(&mut pool, &mut rig);
    send(&mut rig.host, Packet::in_band(0, eject(1)));
    pool.run_until_stalled();
    assert!(recv_all(&mut rig.guest).is_empty(), "held until quiet");
    advance(&mut pool, &clock, Duration::from_secs(1));
    assert_eq!(types(&recv_all(&mut rig.guest)), [Some(MessageType::EJECT)]);
    assert!(
        rig.backing
            .0
            .lock()
            .unwrap()
            .contains(&(slot(1), Backing::Shield))
    );
}

/// After a rescind the driver ejects the function, then revokes the guest channel and ends.
#[test]
fn driver_rescind_closes_guest() {
    let mut pool = LocalPool::new();
    let clock = VirtualClock::new();
    let mut rig = spawn_bus(&pool, &clock);
    probe(&mut pool, &mut rig);
    advance(&mut pool, &clock, Duration::from_secs(1));
    rig.host.revoke();
    pool.run_until_stalled();
    advance(&mut pool, &clock, Duration::from_secs(1));
    assert_eq!(types(&recv_all(&mut rig.guest)), [Some(MessageType::EJECT)]);
    assert_eq!(*rig.exit.borrow(), None);
    send(&mut rig.guest, Packet::in_band(0, ejection_complete(1)));
    pool.run_until_stalled();
    advance(&mut pool, &clock, Duration::from_secs(1));
    assert_eq!(*rig.exit.borrow(), Some(DriverExit::GuestClosedByRelay));
    assert_eq!(rig.guest.state(), ChannelState::Ended(EndReason::Revoked));
}

/// Guarantee 6: a guest stuck on one bus (never completing its eject) does not delay another
/// bus on the same executor.
#[test]
fn g6_buses_are_independent() {
    let mut pool = LocalPool::new();
    let clock = VirtualClock::new();
    let mut stuck = spawn_bus(&pool, &clock);
    let mut live = spawn_bus(&pool, &clock);
    probe(&mut pool, &mut stuck);
    advance(&mut pool, &clock, Duration::from_secs(1));
    send(&mut stuck.host, Packet::in_band(0, eject(1)));
    advance(&mut pool, &clock, Duration::from_secs(1));
    assert_eq!(
        types(&recv_all(&mut stuck.guest)),
        [Some(MessageType::EJECT)]
    );
    // The stuck guest never answers; the other bus probes and ejects as if alone.
    probe(&mut pool, &mut live);
    send(&mut live.host, Packet::in_band(0, eject(1)));
    advance(&mut pool, &clock, Duration::from_secs(1));
    assert_eq!(
        types(&recv_all(&mut live.guest)),
        [Some(MessageType::EJECT)]
    );
    send(&mut live.guest, Packet::in_band(0, ejection_complete(1)));
    pool.run_until_stalled();
    assert_eq!(
        types(&recv_all(&mut live.host)),
        [Some(MessageType::EJECTION_COMPLETE)]
    );
    assert!(recv_all(&mut stuck.host).is_empty());
}
