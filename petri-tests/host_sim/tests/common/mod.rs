//! A scripted guest around one `HostBus`: build real vPCI packets, feed them, and look at
//! what the host sent back.

#![allow(dead_code, unreachable_pub)]

use host_sim::*;
use std::collections::HashMap;
use std::time::Duration;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::wire::*;
use vpci_protocol::*;

pub const MS: Duration = Duration::from_millis(1);
pub const SEC: Duration = Duration::from_secs(1);

pub use vmbus_channel::padded;
use vpci_protocol::build;

pub fn slot(dev: u8) -> WinSlot {
    WinSlot::new(dev, 0)
}

pub fn slot_msg(f: fn(Fixed<SlotBody>) -> Message, dev: u8) -> Vec<u8> {
    encode(&f(Fixed::new(SlotBody { wslot: slot(dev) })))
}

pub fn qrr(dev: u8) -> Vec<u8> {
    build::query_requirements(slot(dev))
}

pub fn query_version(v: ProtocolVersion) -> Vec<u8> {
    build::query_version(v)
}

pub fn query_relations() -> Vec<u8> {
    build::query_relations()
}

pub fn d0_entry(mmio_base: u64) -> Vec<u8> {
    build::d0_entry(mmio_base)
}

pub fn ejection_complete(dev: u8) -> Vec<u8> {
    build::ejection_complete(slot(dev))
}

/// RESOURCES_ASSIGNED2 as Linux sends it (no MSI resources, padded to 202 bytes), with
/// BAR 0 at `bar0`.
pub fn resources_assigned2(dev: u8, bar0: u64, len: u32) -> Vec<u8> {
    build::resources_assigned2(slot(dev), &[(bar0, len)])
}

pub fn create_interrupt(dev: u8, vector: u8, cpu_mask: u64) -> Vec<u8> {
    build::create_interrupt(slot(dev), vector, cpu_mask)
}

pub fn create_interrupt2(dev: u8, vector: u8, cpu: u16) -> Vec<u8> {
    build::create_interrupt2(slot(dev), vector, cpu)
}

pub fn create_interrupt3(dev: u8, vector: u32, cpu: u16) -> Vec<u8> {
    build::create_interrupt3(slot(dev), vector, cpu)
}

pub fn delete_interrupt(dev: u8, address: u64, data: u32) -> Vec<u8> {
    build::delete_interrupt(slot(dev), address, data)
}

/// A host under test, a virtual clock, and everything the host sent.
pub struct Guest {
    pub bus: HostBus,
    pub now: Duration,
    /// Packets from the host, in order.
    pub inbox: Vec<Packet>,
    pub events: Vec<HostEvent>,
    next_txid: u64,
    /// The request type of each transaction id the guest used.
    pub requests: HashMap<u64, MessageType>,
}

impl Guest {
    pub fn new(config: BusConfig) -> Self {
        Self {
            bus: HostBus::new(config).unwrap(),
            now: Duration::ZERO,
            inbox: Vec::new(),
            events: Vec::new(),
            next_txid: 100,
            requests: HashMap::new(),
        }
    }

    /// A bus with NIC functions in the given slots.
    pub fn with_functions(slots: &[u8]) -> Self {
        Self::new(BusConfig {
            functions: slots.iter().map(|&s| FunctionSpec::nic(s.into())).collect(),
            ..BusConfig::default()
        })
    }

    pub fn drain(&mut self) {
        while let Some(p) = self.bus.poll_transmit() {
            self.inbox.push(p);
        }
        while let Some(e) = self.bus.poll_event() {
            self.events.push(e);
        }
    }

    /// Everything the host sent since the last call.
    pub fn take(&mut self) -> Vec<Packet> {
        self.drain();
        std::mem::take(&mut self.inbox)
    }

    /// Sends a request asking for a completion; returns its transaction id.
    pub fn request(&mut self, payload: Vec<u8>) -> u64 {
        self.next_txid += 1;
        let id = self.next_txid;
        if let Ok(t) = payload[..4].try_into().map(u32::from_le_bytes) {
            self.requests.insert(id, MessageType(t));
        }
        self.bus
            .handle_packet(self.now, Packet::request(id, padded(payload)));
        self.drain();
        id
    }

    /// Sends a message without asking for a completion.
    pub fn send(&mut self, payload: Vec<u8>) {
        self.bus
            .handle_packet(self.now, Packet::in_band(0, padded(payload)));
        self.drain();
    }

    /// Lets time pass, firing the host's timers on the way.
    pub fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(t) = self.bus.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.bus.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
        self.bus.handle_timeout(end);
        self.drain();
    }

    pub fn act(&mut self, action: HostAction) -> Result<(), ActionError> {
        let r = self.bus.act(self.now, action);
        self.drain();
        r
    }

    pub fn version(&self) -> ProtocolVersion {
        self.bus.version().unwrap_or(ProtocolVersion::V1_0)
    }

    /// Decodes a completion the host sent, by the request it answers.
    pub fn decode_completion(&self, p: &Packet) -> Completion {
        assert_eq!(p.kind, PacketKind::Completion, "{p:?}");
        let t = self.requests[&p.transaction_id];
        decode_completion(&p.payload, t, self.version()).unwrap()
    }

    /// Takes what the host sent and expects exactly one completion, for `txid`, reading only
    /// its status (for requests the protocol crate says get none, which OpenVMM completes
    /// anyway when asked).
    pub fn expect_status(&mut self, txid: u64) -> Status {
        let out = self.take();
        assert_eq!(out.len(), 1, "expected one completion, got {out:?}");
        assert_eq!(out[0].kind, PacketKind::Completion);
        assert_eq!(out[0].transaction_id, txid);
        Status(u32::from_le_bytes(out[0].payload[..4].try_into().unwrap()))
    }

    /// Decodes an in-band message the host sent.
    pub fn decode_message(&self, p: &Packet) -> Message {
        assert_eq!(p.kind, PacketKind::InBand, "{p:?}");
        decode(&p.payload, Sender::Host, self.version()).unwrap()
    }

    /// Takes what the host sent and expects exactly one completion, for `txid`.
    pub fn expect_completion(&mut self, txid: u64) -> Completion {
        let out = self.take();
        assert_eq!(out.len(), 1, "expected one completion, got {out:?}");
        assert_eq!(out[0].transaction_id, txid);
        self.decode_completion(&out[0])
    }

    /// Negotiates `v` and runs the survey: QUERY_BUS_RELATIONS, then the requirements of
    /// every listed function; returns the listed slots.
    pub fn probe_to_survey(&mut self, v: ProtocolVersion) -> Vec<WinSlot> {
        let id = self.request(query_version(v));
        assert_eq!(self.expect_completion(id).status, Status::SUCCESS);
        self.send(query_relations());
        let out = self.take();
        let slots = relation_slots(&self.decode_message(&out[0]));
        for s in &slots {
            let id = self.request(qrr(s.device()));
            assert!(self.expect_completion(id).status.is_success());
        }
        slots
    }

    /// BUS_D0ENTRY with this config window base; drops the relations and completion.
    pub fn enter_d0(&mut self, mmio_base: u64) {
        let id = self.request(d0_entry(mmio_base));
        let out = self.take();
        assert!(
            out.iter()
                .any(|p| p.transaction_id == id && p.kind == PacketKind::Completion)
        );
    }

    pub fn has_event(&self, f: impl Fn(&HostEventKind) -> bool) -> bool {
        self.events.iter().any(|e| f(&e.kind))
    }
}

/// The slots a relations message lists.
pub fn relation_slots(m: &Message) -> Vec<WinSlot> {
    match m {
        Message::BusRelations(r) => r.functions.iter().map(|f| f.wslot).collect(),
        Message::BusRelations2(r) => r.functions.iter().map(|f| f.wslot).collect(),
        other => panic!("not relations: {other:?}"),
    }
}

/// The serials a relations message lists.
pub fn relation_serials(m: &Message) -> Vec<u32> {
    match m {
        Message::BusRelations(r) => r.functions.iter().map(|f| f.ser.get()).collect(),
        Message::BusRelations2(r) => r.functions.iter().map(|f| f.ser.get()).collect(),
        other => panic!("not relations: {other:?}"),
    }
}
