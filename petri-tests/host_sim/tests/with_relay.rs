//! Smoke test: the simulated host behind the real relay, with a scripted Linux-like guest.

mod common;

use common::*;
use host_sim::*;
use std::time::Duration;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::*;
use vpci_relay::{BusRelay, RelayConfig, Transmit};

/// Host, relay and a guest's inbox, pumped until nothing moves.
struct World {
    host: HostBus,
    relay: BusRelay,
    now: Duration,
    to_guest: Vec<Packet>,
    next_txid: u64,
}

impl World {
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(p) = self.host.poll_transmit() {
                self.relay.handle_host(self.now, p);
                moved = true;
            }
            while let Some(t) = self.relay.poll_transmit() {
                match t {
                    Transmit::ToHost(p) => self.host.handle_packet(self.now, p),
                    Transmit::ToGuest(p) => self.to_guest.push(p),
                    Transmit::CloseGuest => {}
                }
                moved = true;
            }
            while self.relay.poll_backing().is_some() {}
            while self.relay.poll_event().is_some() {}
            if !moved {
                break;
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            let next = [self.host.poll_timeout(), self.relay.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= end)
                .min();
            let Some(t) = next else { break };
            self.now = self.now.max(t);
            self.host.handle_timeout(self.now);
            self.relay.handle_timeout(self.now);
            self.pump();
        }
        self.now = end;
        self.host.handle_timeout(end);
        self.relay.handle_timeout(end);
        self.pump();
    }

    fn request(&mut self, payload: Vec<u8>) -> Packet {
        self.next_txid += 1;
        let id = self.next_txid;
        self.relay
            .handle_guest(self.now, Packet::request(id, padded(payload)));
        self.pump();
        let i = self
            .to_guest
            .iter()
            .position(|p| p.kind == PacketKind::Completion && p.transaction_id == id)
            .expect("the request is completed");
        self.to_guest.remove(i)
    }

    fn send(&mut self, payload: Vec<u8>) {
        self.relay
            .handle_guest(self.now, Packet::in_band(0, padded(payload)));
        self.pump();
    }

    fn messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.to_guest)
            .iter()
            .filter(|p| p.kind == PacketKind::InBand)
            .map(|p| decode(&p.payload, Sender::Host, ProtocolVersion::V1_4).unwrap())
            .collect()
    }
}

fn status_of(p: &Packet) -> Status {
    Status(u32::from_le_bytes(p.payload[..4].try_into().unwrap()))
}

/// Through the relay, a guest probes a function of the simulated host; a host eject
/// reaches the guest once the function is settled, and the guest's EJECTION_COMPLETE
/// reaches the host, which then removes the function.
#[test]
fn probe_and_eject_through_the_relay() {
    let mut w = World {
        host: HostBus::new(BusConfig {
            functions: vec![FunctionSpec::nic(1)],
            ..BusConfig::default()
        })
        .unwrap(),
        relay: BusRelay::new(RelayConfig::default()),
        now: Duration::ZERO,
        to_guest: Vec::new(),
        next_txid: 10,
    };
    let c = w.request(query_version(ProtocolVersion::V1_4));
    assert_eq!(status_of(&c), Status::SUCCESS);
    assert_eq!(w.host.version(), Some(ProtocolVersion::V1_4));
    w.send(query_relations());
    let m = w.messages();
    assert_eq!(relation_slots(&m[0]), [slot(1)]);
    assert!(status_of(&w.request(qrr(1))).is_success());
    assert!(status_of(&w.request(d0_entry(0xfe00_0000))).is_success());
    w.messages();
    assert!(status_of(&w.request(resources_assigned2(1, 0xfe10_0000, 1 << 20))).is_success());

    w.host.act(w.now, HostAction::Eject { slot: 1 }).unwrap();
    w.pump();
    w.advance(Duration::from_secs(5));
    let ejects: Vec<_> = w
        .messages()
        .into_iter()
        .filter(|m| matches!(m, Message::Eject(_)))
        .collect();
    assert_eq!(ejects.len(), 1, "the relay delivered the eject");
    w.send(ejection_complete(1));
    assert!(w.host.slots().is_empty());
    assert!(!w.host.eject_outstanding(slot(1)));
}
