//! A raw vPCI guest for the service's benchmarks: opens a bus offered on a control socket and
//! speaks the protocol itself (no model, no config accesses), so the figures are the
//! transport's and the relay's, not a guest's.

use futures::executor::block_on;
use openhcl_vpci::control::{self, Message};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use vmbus_channel::{ChannelExt, Packet, PacketKind, RingChannel, RingChannelConfig, padded};
use vpci_protocol::{MessageType, ProtocolVersion, WinSlot, build};

/// The control connection to an offerer (the service's guest socket, or a host endpoint).
pub struct Offers {
    /// The connection.
    pub stream: UnixStream,
}

impl Offers {
    /// Connects to `socket`, retrying for up to 10 s.
    pub fn connect(socket: &std::path::Path) -> Self {
        let start = Instant::now();
        loop {
            match UnixStream::connect(socket) {
                Ok(stream) => return Self { stream },
                Err(e) if start.elapsed() > Duration::from_secs(10) => {
                    panic!("cannot reach {}: {e}", socket.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Reads offers until `n` buses were offered; returns their ids.
    pub fn offers(&self, n: usize) -> Vec<String> {
        let mut buses = Vec::new();
        while buses.len() < n {
            match control::recv(&self.stream) {
                Ok(Some((Message::Offer { bus }, _))) => buses.push(bus),
                Ok(Some(_)) => {}
                other => panic!("the offerer went away: {other:?}"),
            }
        }
        buses
    }

    /// Opens `bus`'s ring.
    pub fn open(&self, bus: &str) -> RingChannel {
        control::open_ring(&self.stream, bus, RingChannelConfig::default()).expect("open ring")
    }
}

/// One bus as the raw guest drives it.
pub struct RawBus {
    ring: RingChannel,
    next_id: u64,
}

impl RawBus {
    /// A bus over `ring`.
    pub fn new(ring: RingChannel) -> Self {
        Self { ring, next_id: 1 }
    }

    /// Sends a request and waits for its completion (other packets are dropped).
    pub fn call(&mut self, payload: Vec<u8>) -> Packet {
        let id = self.next_id;
        self.next_id += 1;
        block_on(self.ring.send(&Packet::request(id, padded(payload)))).expect("send");
        loop {
            let p = block_on(self.ring.recv()).expect("recv");
            if p.kind == PacketKind::Completion && p.transaction_id == id {
                return p;
            }
        }
    }

    /// Waits for the host's relations.
    fn relations(&mut self) {
        block_on(
            self.ring
                .send(&Packet::in_band(0, padded(build::query_relations()))),
        )
        .expect("send");
        loop {
            let p = block_on(self.ring.recv()).expect("recv");
            let kind = p.payload.get(0..4).map(|b| [b[0], b[1], b[2], b[3]]);
            let relations = [MessageType::BUS_RELATIONS.0, MessageType::BUS_RELATIONS2.0];
            if p.kind == PacketKind::InBand
                && kind.is_some_and(|k| relations.contains(&u32::from_le_bytes(k)))
            {
                return;
            }
        }
    }

    /// The vPCI part of a probe of `slots`: version, relations, requirements, D0 entry,
    /// resources.
    pub fn probe(&mut self, slots: &[u32]) {
        self.call(build::query_version(ProtocolVersion::V1_4));
        self.relations();
        for &s in slots {
            self.call(build::query_requirements(WinSlot::from_raw(s)));
        }
        self.call(build::d0_entry(0xf000_0000));
        for &s in slots {
            let memory = [(0xf100_0000 + u64::from(s) * 0x10_0000, 0x4000)];
            self.call(build::resources_assigned2(WinSlot::from_raw(s), &memory));
        }
    }

    /// One steady-state request and its completion: the function's requirements.
    pub fn round_trip(&mut self, slot: u32) {
        self.call(build::query_requirements(WinSlot::from_raw(slot)));
    }
}
