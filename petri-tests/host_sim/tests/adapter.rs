//! The async adapter over an in-memory channel with a virtual clock, and `HostSim`'s buses.

mod common;

use common::*;
use futures::FutureExt;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use host_sim::*;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;
use vmbus_channel::{ChannelError, ChannelExt, EndReason, Packet, PacketKind, channel_pair};
use vpci_protocol::*;

/// The time and the sleepers waiting for a deadline.
type ClockState = (Duration, Vec<(Duration, Waker)>);

/// Virtual time that moves only when the test says so.
#[derive(Clone, Default)]
struct TestClock(Arc<Mutex<ClockState>>);

impl TestClock {
    fn advance_to(&self, t: Duration) {
        let due: Vec<Waker> = {
            let mut inner = self.0.lock().unwrap();
            inner.0 = t;
            let (due, rest) = inner.1.drain(..).partition(|(d, _)| *d <= t);
            inner.1 = rest;
            due.into_iter().map(|(_, w)| w).collect()
        };
        due.into_iter().for_each(Waker::wake);
    }
}

impl HostClock for TestClock {
    fn now(&self) -> Duration {
        self.0.lock().unwrap().0
    }

    fn sleep_until(&self, deadline: Duration) -> Sleep {
        let clock = self.clone();
        Box::pin(poll_fn(move |cx| {
            let mut inner = clock.0.lock().unwrap();
            if inner.0 >= deadline {
                Poll::Ready(())
            } else {
                inner.1.push((deadline, cx.waker().clone()));
                Poll::Pending
            }
        }))
    }
}

fn bus_with(slots: &[u8]) -> HostBus {
    HostBus::new(BusConfig {
        functions: slots.iter().map(|&s| FunctionSpec::nic(s.into())).collect(),
        ..BusConfig::default()
    })
    .unwrap()
}

/// The adapter answers what the guest sends, sends what a host action produces, fires the
/// 60 s eject wait when virtual time gets there, and on rescind revokes the channel after
/// its last packet.
#[test]
fn adapter_runs_a_bus_over_a_channel() {
    let (host_end, mut guest) = channel_pair();
    let clock = TestClock::default();
    let shared = SharedBus::new(bus_with(&[1]));
    let mut pool = LocalPool::new();
    let run = pool
        .spawner()
        .spawn_local_with_handle(run_bus(shared.clone(), host_end, clock.clone()))
        .unwrap();
    pool.run_until_stalled();

    let request = Packet::request(7, padded(query_version(ProtocolVersion::V1_4)));
    guest.send(&request).now_or_never().unwrap().unwrap();
    pool.run_until_stalled();
    let reply = guest.recv().now_or_never().unwrap().unwrap();
    assert_eq!(
        (reply.kind, reply.transaction_id),
        (PacketKind::Completion, 7)
    );
    assert_eq!(&reply.payload[..4], &[0, 0, 0, 0]);

    shared
        .act(clock.now(), HostAction::Eject { slot: 1 })
        .unwrap();
    pool.run_until_stalled();
    let eject = guest.recv().now_or_never().unwrap().unwrap();
    assert!(matches!(
        decode(&eject.payload, Sender::Host, ProtocolVersion::V1_4),
        Ok(Message::Eject(_))
    ));

    clock.advance_to(Duration::from_secs(59));
    pool.run_until_stalled();
    assert_eq!(shared.with(|b| b.slots()), [slot(1)]);
    clock.advance_to(Duration::from_secs(60));
    pool.run_until_stalled();
    assert!(
        shared.with(|b| b.slots()).is_empty(),
        "removed by force at 60 s"
    );

    shared
        .act(clock.now(), HostAction::SendRelations {})
        .unwrap();
    shared.act(clock.now(), HostAction::Rescind {}).unwrap();
    pool.run_until_stalled();
    assert_eq!(run.now_or_never().unwrap().unwrap(), RunExit::Rescinded);
    let last = guest.recv().now_or_never().unwrap().unwrap();
    assert_eq!(
        last.kind,
        PacketKind::InBand,
        "relations sent before the rescind"
    );
    assert!(matches!(
        guest.recv().now_or_never().unwrap(),
        Err(ChannelError::Revoked)
    ));
}

/// When the guest side closes its end, the adapter returns.
#[test]
fn adapter_returns_when_the_guest_closes() {
    let (host_end, guest) = channel_pair();
    let mut pool = LocalPool::new();
    let run = pool
        .spawner()
        .spawn_local_with_handle(run_bus(
            SharedBus::new(bus_with(&[])),
            host_end,
            TestClock::default(),
        ))
        .unwrap();
    pool.run_until_stalled();
    drop(guest);
    pool.run_until_stalled();
    assert_eq!(
        run.now_or_never().unwrap().unwrap(),
        RunExit::GuestEnded(EndReason::Closed)
    );
}

/// `HostSim` keeps buses apart: each bus's packets come out tagged with its id, actions
/// reach only their bus, and the earliest deadline of any bus is the host's.
#[test]
fn host_sim_buses_are_independent() {
    let mut sim = HostSim::new();
    let a = sim
        .add_bus(BusConfig {
            name: "a".into(),
            functions: vec![FunctionSpec::nic(1)],
            ..BusConfig::default()
        })
        .unwrap();
    let b = sim
        .add_bus(BusConfig {
            name: "b".into(),
            functions: vec![FunctionSpec::nic(1)],
            policy: HostPolicy {
                eject_timeout: Time(Duration::from_secs(5)),
                ..HostPolicy::default()
            },
            ..BusConfig::default()
        })
        .unwrap();
    sim.act(b, Duration::ZERO, HostAction::Eject { slot: 1 })
        .unwrap();
    let q = Packet::request(1, padded(query_version(ProtocolVersion::V1_3)));
    assert!(sim.handle_packet(a, Duration::ZERO, q));
    let (first, p) = sim.poll_transmit().unwrap();
    assert_eq!((first, p.kind), (a, PacketKind::Completion));
    let (second, _) = sim.poll_transmit().unwrap();
    assert_eq!(second, b);
    assert!(sim.poll_transmit().is_none());
    assert_eq!(sim.poll_timeout(), Some(Duration::from_secs(5)));
    sim.handle_timeout(Duration::from_secs(5));
    assert!(sim.bus(b).unwrap().slots().is_empty());
    assert_eq!(sim.bus(a).unwrap().slots(), [slot(1)]);
    assert_eq!(sim.bus(a).unwrap().version(), Some(ProtocolVersion::V1_3));
    assert_eq!(
        sim.act(BusId(7), Duration::ZERO, HostAction::Rescind {}),
        Err(ActionError::NoSuchBus(7))
    );
    assert!(sim.poll_event().is_some());
}
