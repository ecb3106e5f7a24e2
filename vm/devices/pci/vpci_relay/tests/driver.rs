//! The async driver over in-memory channels and virtual time: packets flow both ways, timers
//! fire, a rescind closes the guest channel, buses do not wait on each other, and a packet a
//! channel refuses costs that one packet (counted), not the channel; a guest that goes away
//! leaves no host EJECT unanswered.

mod common;

use common::*;
use futures::FutureExt;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use std::cell::RefCell;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;
use vmbus_channel::{
    Channel, ChannelError, ChannelExt, ChannelState, EndReason, MemoryChannel, Packet, PacketError,
    channel_pair,
};
use vpci_protocol::*;
use vpci_relay::driver::DriverCounters;
use vpci_relay::*;

/// Faults a test plans for one of the relay's channel ends.
#[derive(Debug, Default)]
struct FaultPlan {
    /// Refuse this many of the next sends with `ChannelError::Packet` (nothing is sent).
    refuse_sends: usize,
    /// Fail this many of the next receives with `ChannelError::Packet` (as a ring does for
    /// an oversized packet it consumed and dropped).
    reject_recvs: usize,
    /// The packets refused so far.
    refused: Vec<Packet>,
    /// Fail every receive from now on as a ring whose peer broke its rules does.
    broken: bool,
}

/// The relay's end of an in-memory channel, with faults the test injects on demand.
struct Faulty {
    inner: MemoryChannel,
    plan: Rc<RefCell<FaultPlan>>,
}

impl Channel for Faulty {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Packet, ChannelError>> {
        let mut plan = self.plan.borrow_mut();
        if plan.broken {
            return Poll::Ready(Err(ChannelError::Protocol("corrupt ring".into())));
        }
        if plan.reject_recvs > 0 {
            plan.reject_recvs -= 1;
            return Poll::Ready(Err(ChannelError::Packet(PacketError::PayloadTooLarge {
                len: 1 << 20,
                max: 16 << 10,
            })));
        }
        drop(plan);
        self.inner.poll_recv(cx)
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        packet: &Packet,
    ) -> Poll<Result<(), ChannelError>> {
        let mut plan = self.plan.borrow_mut();
        if plan.refuse_sends > 0 {
            plan.refuse_sends -= 1;
            plan.refused.push(packet.clone());
            return Poll::Ready(Err(ChannelError::Packet(PacketError::PayloadTooLarge {
                len: packet.payload.len(),
                max: 0,
            })));
        }
        drop(plan);
        self.inner.poll_send(cx, packet)
    }

    fn close(&mut self) {
        self.inner.close()
    }

    fn revoke(&mut self) {
        self.inner.revoke()
    }

    fn state(&self) -> ChannelState {
        self.inner.state()
    }
}

struct Rig {
    host: MemoryChannel,
    guest: MemoryChannel,
    exit: Rc<RefCell<Option<DriverExit>>>,
    backing: RecordedBacking,
    port: BusPort,
    host_faults: Rc<RefCell<FaultPlan>>,
    guest_faults: Rc<RefCell<FaultPlan>>,
}

fn spawn_bus(pool: &LocalPool, clock: &VirtualClock) -> Rig {
    let (host_end, relay_host) = channel_pair();
    let (relay_guest, guest_end) = channel_pair();
    let host_faults = Rc::new(RefCell::new(FaultPlan::default()));
    let guest_faults = Rc::new(RefCell::new(FaultPlan::default()));
    let backing = RecordedBacking::default();
    let (mut driver, port) = BusDriver::new(
        BusRelay::new(RelayConfig::default()),
        Faulty {
            inner: relay_host,
            plan: host_faults.clone(),
        },
        Faulty {
            inner: relay_guest,
            plan: guest_faults.clone(),
        },
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
        port,
        host_faults,
        guest_faults,
    }
}

/// The bus's inspect tree, through its port.
fn inspect_tree(pool: &mut LocalPool, rig: &mut Rig) -> inspect::Node {
    pool.run_until(rig.port.inspect()).expect("driver running")
}

/// The driver's counters as the inspect tree shows them.
fn driver_counters(pool: &mut LocalPool, rig: &mut Rig) -> DriverCounters {
    let tree = inspect_tree(pool, rig);
    let count = |name: &str| match tree
        .get(&format!("driver/{name}"))
        .and_then(|n| n.as_value())
    {
        Some(inspect::Value::Unsigned { value, .. }) => *value,
        other => panic!("driver/{name}: {other:?}"),
    };
    DriverCounters {
        host_send_rejected: count("host_send_rejected"),
        guest_send_rejected: count("guest_send_rejected"),
        guest_recv_rejected: count("guest_recv_rejected"),
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
    assert_eq!(
        rig.backing.calls(),
        [BarCall::MapDevice(slot(1)), BarCall::MapShield(slot(1))]
    );
}

/// After a rescind the driver shields and ejects the function, unmaps it once the guest has
/// completed the eject, then revokes the guest channel and ends.
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
    assert_eq!(
        rig.backing.calls(),
        [
            BarCall::MapDevice(slot(1)),
            BarCall::MapShield(slot(1)),
            BarCall::Unmap(slot(1)),
        ],
        "shielded at the rescind, unmapped once the guest let go"
    );
}

/// Guarantee 10: the guest is handed the host's EJECT, then its channel ends (`broken`: its
/// ring breaks, counted as a guest fault). The driver stops, and the relay's answer to that
/// EJECT reaches the host first.
fn guest_gone_after_eject(broken: bool) {
    let mut pool = LocalPool::new();
    let clock = VirtualClock::new();
    let mut rig = spawn_bus(&pool, &clock);
    probe(&mut pool, &mut rig);
    send(&mut rig.host, Packet::in_band(0, eject(1)));
    advance(&mut pool, &clock, Duration::from_secs(1));
    assert_eq!(types(&recv_all(&mut rig.guest)), [Some(MessageType::EJECT)]);
    assert!(recv_all(&mut rig.host).is_empty());
    if broken {
        rig.guest_faults.borrow_mut().broken = true;
        // Wake the driver: a packet it will never read.
        send(&mut rig.guest, Packet::in_band(0, query_relations()));
    } else {
        rig.guest.close();
    }
    pool.run_until_stalled();
    assert_eq!(*rig.exit.borrow(), Some(DriverExit::GuestGone));
    assert_eq!(
        types(&recv_all(&mut rig.host)),
        [Some(MessageType::EJECTION_COMPLETE)],
        "the host's EJECT answered"
    );
}

#[test]
fn guest_closed_after_eject_answers_the_host() {
    guest_gone_after_eject(false);
}

#[test]
fn guest_ring_broken_after_eject_answers_the_host() {
    guest_gone_after_eject(true);
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

/// A packet the host channel refuses (`ChannelError::Packet`: nothing sent, channel usable)
/// is dropped and counted; the host link stays up and the next guest request reaches the host.
#[test]
fn host_send_refusal_drops_one_packet() {
    let mut pool = LocalPool::new();
    let clock = VirtualClock::new();
    let mut rig = spawn_bus(&pool, &clock);
    probe(&mut pool, &mut rig);
    rig.host_faults.borrow_mut().refuse_sends = 1;
    send(
        &mut rig.guest,
        Packet::request(20, create_interrupt2(1, 0x30)),
    );
    pool.run_until_stalled();
    assert!(recv_all(&mut rig.host).is_empty(), "refused by the channel");
    assert_eq!(
        types(&rig.host_faults.borrow().refused),
        [Some(MessageType::CREATE_INTERRUPT_MESSAGE2)]
    );
    // The guest is not left waiting for an answer the host will never give.
    let answers: Vec<Packet> = recv_all(&mut rig.guest)
        .into_iter()
        .filter(|p| p.transaction_id == 20)
        .collect();
    assert_eq!(answers.len(), 1, "one completion for the refused request");
    assert_eq!(
        answers[0].payload.get(..4),
        Some(&Status::BAD_DATA.0.to_le_bytes()[..])
    );

    send(
        &mut rig.guest,
        Packet::request(21, create_interrupt2(1, 0x31)),
    );
    pool.run_until_stalled();
    assert_eq!(
        types(&recv_all(&mut rig.host)),
        [Some(MessageType::CREATE_INTERRUPT_MESSAGE2)],
        "the host link survived the refusal"
    );
    let tree = inspect_tree(&mut pool, &mut rig);
    assert_eq!(tree.get("host"), Some(&inspect::Node::str("up")));
    assert_eq!(
        driver_counters(&mut pool, &mut rig),
        DriverCounters {
            host_send_rejected: 1,
            ..DriverCounters::default()
        }
    );
    assert_eq!(*rig.exit.borrow(), None);
}

/// A packet the guest channel refuses is dropped and counted; the driver keeps running and
/// the next completion reaches the guest.
#[test]
fn guest_send_refusal_drops_one_packet() {
    let mut pool = LocalPool::new();
    let clock = VirtualClock::new();
    let mut rig = spawn_bus(&pool, &clock);
    probe(&mut pool, &mut rig);
    rig.guest_faults.borrow_mut().refuse_sends = 1;
    // The guest queries the function's requirements twice; the completion of the first is
    // refused by the guest channel.
    for id in [30, 31] {
        send(&mut rig.guest, Packet::request(id, qrr(1)));
        pool.run_until_stalled();
        let fwd = recv_all(&mut rig.host);
        assert_eq!(
            types(&fwd),
            [Some(MessageType::QUERY_RESOURCE_REQUIREMENTS)]
        );
        send(
            &mut rig.host,
            Packet::completion(fwd[0].transaction_id, requirements_reply()),
        );
        pool.run_until_stalled();
    }
    assert_eq!(rig.guest_faults.borrow().refused[0].transaction_id, 30);
    let got = recv_all(&mut rig.guest);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].transaction_id, 31,
        "the guest channel is still in use"
    );
    assert_eq!(*rig.exit.borrow(), None);
    assert_eq!(
        driver_counters(&mut pool, &mut rig),
        DriverCounters {
            guest_send_rejected: 1,
            ..DriverCounters::default()
        }
    );
}

/// A packet the guest channel rejects on receive (consumed and dropped by the channel) is
/// counted, and the guest's next packet is relayed.
#[test]
fn guest_recv_rejection_is_counted() {
    let mut pool = LocalPool::new();
    let clock = VirtualClock::new();
    let mut rig = spawn_bus(&pool, &clock);
    rig.guest_faults.borrow_mut().reject_recvs = 1;
    send(
        &mut rig.guest,
        Packet::request(1, query_version(ProtocolVersion::V1_4)),
    );
    pool.run_until_stalled();
    assert_eq!(
        types(&recv_all(&mut rig.host)),
        [Some(MessageType::QUERY_PROTOCOL_VERSION)]
    );
    assert_eq!(
        driver_counters(&mut pool, &mut rig),
        DriverCounters {
            guest_recv_rejected: 1,
            ..DriverCounters::default()
        }
    );
}

/// A virtual sleep that is dropped (the driver re-arms its timer for a nearer deadline) no
/// longer counts as a deadline, however often it was polled: a simulator advancing to
/// `next_deadline` must not jump to a time nobody waits for.
#[test]
fn virtual_clock_forgets_dropped_sleeps() {
    let clock = VirtualClock::new();
    let mut far = clock.sleep_until(Duration::from_secs(30));
    let mut near = clock.sleep_until(Duration::from_millis(100));
    let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
    for _ in 0..100 {
        assert!(far.as_mut().poll(&mut cx).is_pending());
    }
    assert!(near.as_mut().poll(&mut cx).is_pending());
    assert_eq!(clock.next_deadline(), Some(Duration::from_millis(100)));
    drop(far);
    clock.advance_to(Duration::from_millis(100));
    assert!(near.as_mut().poll(&mut cx).is_ready());
    assert_eq!(clock.next_deadline(), None, "nobody sleeps any more");
}
