//! A scripted host and guest around one `BusRelay`: build real vPCI packets, feed them, and
//! look at what came out on each side.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::wire::*;
use vpci_protocol::*;
use vpci_relay::*;

pub const MS: Duration = Duration::from_millis(1);

pub use vmbus_channel::padded;
use vpci_protocol::build;

pub fn slot(dev: u8) -> WinSlot {
    WinSlot::new(dev, 0)
}

pub fn desc2(dev: u8, vendor: u16) -> FunctionDescription2 {
    build::description2(slot(dev), vendor, 0x00b1, 0)
}

pub fn relations2(devs: &[u8]) -> Vec<u8> {
    let descs: Vec<_> = devs.iter().map(|&d| desc2(d, 0x1414)).collect();
    build::relations2(&descs)
}

/// BUS_RELATIONS2 listing these descriptions.
pub fn relations_of(descs: &[FunctionDescription2]) -> Vec<u8> {
    build::relations2(descs)
}

/// Slot `dev` with another device id and serial than `desc2(dev, 0x1414)`.
pub fn new_identity(dev: u8) -> FunctionDescription2 {
    build::description2(slot(dev), 0x1414, 0x00b2, 7)
}

/// EJECTION_COMPLETEs the relay sent the host for slot `dev`.
pub fn ejection_completes_to_host(bus: &Bus, dev: u8) -> usize {
    bus.host_messages()
        .iter()
        .filter(|m| matches!(m, Message::EjectionComplete(e) if e.body.wslot == slot(dev)))
        .count()
}

/// The descriptions of the last relations message the guest got.
pub fn last_guest_relations(bus: &Bus) -> Vec<FunctionDescription2> {
    bus.guest_messages()
        .into_iter()
        .filter_map(|m| match m {
            Message::BusRelations2(r) => Some(r.functions),
            _ => None,
        })
        .next_back()
        .unwrap_or_default()
}

pub fn slot_msg(f: fn(Fixed<SlotBody>) -> Message, dev: u8) -> Vec<u8> {
    encode(&f(Fixed::new(SlotBody { wslot: slot(dev) })))
}

pub fn eject(dev: u8) -> Vec<u8> {
    build::eject(slot(dev))
}

pub fn qrr(dev: u8) -> Vec<u8> {
    build::query_requirements(slot(dev))
}

pub fn ejection_complete(dev: u8) -> Vec<u8> {
    build::ejection_complete(slot(dev))
}

pub fn resources_assigned2(dev: u8) -> Vec<u8> {
    build::resources_assigned2(slot(dev), &[])
}

pub fn create_interrupt2(dev: u8, vector: u8) -> Vec<u8> {
    build::create_interrupt2(slot(dev), vector, 0)
}

pub fn d0_entry() -> Vec<u8> {
    build::d0_entry(0xf_e000_0000)
}

pub fn query_relations() -> Vec<u8> {
    build::query_relations()
}

pub fn query_version(v: ProtocolVersion) -> Vec<u8> {
    build::query_version(v)
}

pub fn status(s: Status) -> Vec<u8> {
    build::status_reply(s)
}

pub fn requirements_reply() -> Vec<u8> {
    build::requirements_reply([0xffff_c000, 0, 0, 0, 0, 0])
}

#[allow(unused_imports)]
pub use vpci_relay::sim::{BarCall, RecordedBacking};

/// A bus under test: the relay, a clock, and what came out of it.
pub struct Bus {
    pub relay: BusRelay,
    pub now: Duration,
    pub to_host: Vec<Packet>,
    pub to_guest: Vec<Packet>,
    pub closed: bool,
    pub events: Vec<RelayEvent>,
    pub backing: Vec<(WinSlot, Backing)>,
    next_guest_txid: u64,
}

impl Bus {
    pub fn new() -> Self {
        Self::with(RelayConfig::default(), Safeguards::ALL_ON)
    }

    pub fn with(config: RelayConfig, safeguards: Safeguards) -> Self {
        Self {
            relay: BusRelay::with_safeguards(config, safeguards),
            now: Duration::ZERO,
            to_host: Vec::new(),
            to_guest: Vec::new(),
            closed: false,
            events: Vec::new(),
            backing: Vec::new(),
            next_guest_txid: 1000,
        }
    }

    pub fn drain(&mut self) {
        while let Some(t) = self.relay.poll_transmit() {
            match t {
                Transmit::ToHost(p) => self.to_host.push(p),
                Transmit::ToGuest(p) => self.to_guest.push(p),
                Transmit::CloseGuest => self.closed = true,
            }
        }
        while let Some(b) = self.relay.poll_backing() {
            self.backing.push(b);
        }
        while let Some(e) = self.relay.poll_event() {
            self.events.push(e);
        }
    }

    /// Advances the clock, firing the relay's timers on the way.
    pub fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(t) = self.relay.poll_timeout() {
            if t > end {
                break;
            }
            self.now = t;
            self.relay.handle_timeout(t);
            self.drain();
        }
        self.now = end;
        self.relay.handle_timeout(end);
        self.drain();
    }

    pub fn host_sends(&mut self, payload: Vec<u8>) {
        self.relay
            .handle_host(self.now, Packet::in_band(0, padded(payload)));
        self.drain();
    }

    /// The guest sends a request asking for a completion; returns its transaction id.
    pub fn guest_requests(&mut self, payload: Vec<u8>) -> u64 {
        self.next_guest_txid += 1;
        let id = self.next_guest_txid;
        self.relay
            .handle_guest(self.now, Packet::request(id, padded(payload)));
        self.drain();
        id
    }

    pub fn guest_sends(&mut self, payload: Vec<u8>) {
        self.relay
            .handle_guest(self.now, Packet::in_band(0, padded(payload)));
        self.drain();
    }

    /// The host completes the last forwarded request of this type.
    pub fn host_completes(&mut self, ty: MessageType, payload: Vec<u8>) {
        let p = self
            .to_host
            .iter()
            .rev()
            .find(|p| p.completion_requested() && message_type(p) == Some(ty))
            .unwrap_or_else(|| panic!("no {ty} forwarded to the host"))
            .clone();
        self.relay.handle_host(
            self.now,
            Packet::completion(p.transaction_id, padded(payload)),
        );
        self.drain();
    }

    pub fn guest_completion(&self, txid: u64) -> Option<&Packet> {
        self.to_guest
            .iter()
            .find(|p| p.kind == PacketKind::Completion && p.transaction_id == txid)
    }

    pub fn guest_messages(&self) -> Vec<Message> {
        self.to_guest
            .iter()
            .filter(|p| p.kind == PacketKind::InBand)
            .map(|p| {
                decode(&p.payload, Sender::Host, ProtocolVersion::V1_4)
                    .expect("relay sends valid messages")
            })
            .collect()
    }

    pub fn host_messages(&self) -> Vec<Message> {
        self.to_host
            .iter()
            .filter(|p| p.kind == PacketKind::InBand)
            .map(|p| {
                decode(&p.payload, Sender::Guest, ProtocolVersion::V1_4)
                    .expect("relay sends valid messages")
            })
            .collect()
    }

    pub fn guest_ejects(&self) -> Vec<WinSlot> {
        self.guest_messages()
            .iter()
            .filter_map(|m| match m {
                Message::Eject(e) => Some(e.body.wslot),
                _ => None,
            })
            .collect()
    }

    pub fn guest_relations(&self) -> Vec<Vec<WinSlot>> {
        self.guest_messages()
            .iter()
            .filter_map(|m| match m {
                Message::BusRelations2(r) => Some(r.functions.iter().map(|f| f.wslot).collect()),
                _ => None,
            })
            .collect()
    }

    /// Negotiates 1.4 and answers the survey with these devices; the guest queries each.
    pub fn survey(&mut self, devs: &[u8]) {
        let v = self.guest_requests(query_version(ProtocolVersion::V1_4));
        self.host_completes(MessageType::QUERY_PROTOCOL_VERSION, status(Status::SUCCESS));
        assert!(self.guest_completion(v).is_some());
        self.guest_sends(query_relations());
        self.host_sends(relations2(devs));
        for &d in devs {
            self.guest_requests(qrr(d));
            self.host_completes(
                MessageType::QUERY_RESOURCE_REQUIREMENTS,
                requirements_reply(),
            );
        }
    }

    /// The rest of the Linux probe path: D0 entry, resources for each device, then quiet.
    pub fn finish_probe(&mut self, devs: &[u8]) {
        let id = self.guest_requests(d0_entry());
        if self.guest_completion(id).is_none() {
            self.host_completes(MessageType::BUS_D0ENTRY, status(Status::SUCCESS));
        }
        for &d in devs {
            // A function the host is removing is answered by the relay itself.
            let id = self.guest_requests(resources_assigned2(d));
            if self.guest_completion(id).is_none() {
                self.host_completes(MessageType::RESOURCES_ASSIGNED2, status(Status::SUCCESS));
            }
        }
        self.advance(Duration::from_secs(1));
        assert!(self.relay.installed(), "probe path should be done");
    }

    pub fn installed_with(devs: &[u8]) -> Self {
        let mut bus = Self::new();
        bus.survey(devs);
        bus.finish_probe(devs);
        bus
    }
}

pub fn message_type(p: &Packet) -> Option<MessageType> {
    let bytes: [u8; 4] = p.payload.get(..4)?.try_into().ok()?;
    Some(MessageType(u32::from_le_bytes(bytes)))
}
