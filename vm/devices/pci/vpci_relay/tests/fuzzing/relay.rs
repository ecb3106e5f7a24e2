//! The relay between two hostile peers: each step is a host or guest packet built with
//! `vpci_protocol::build` (relations, ejects, completions of what the relay forwarded,
//! guest requests) and sometimes corrupted, a config access, time passing or a rescind.
//!
//! Promises checked after every step: no panic; the request tables and the function table
//! stay within their limits; everything the relay sends the guest decodes at the version in
//! use, and a completion reaches the guest only for a request it made, at most once. Once
//! the host is gone and the holds have run out, every guest request was answered exactly
//! once.

use super::Source;
use super::decode::corrupt;
use std::collections::BTreeMap;
use std::time::Duration;
use vmbus_channel::{Packet, PacketFlags, PacketKind, padded};
use vpci_protocol::build;
use vpci_protocol::*;
use vpci_relay::*;

const MAX_FUNCTIONS: usize = 8;
const MAX_REQUESTS: usize = 16;

struct World {
    relay: BusRelay,
    now: Duration,
    to_host: Vec<Packet>,
    /// Guest transaction id -> (request type, completions seen).
    asked: BTreeMap<u64, (MessageType, u32)>,
    next_txid: u64,
    closed: bool,
    /// The relay was restored from a saved state: completions of requests made before the
    /// save (ids below [`OWN_TXIDS`]) may reach the guest.
    restored: bool,
}

/// Where this harness's guest starts numbering its requests after a restore.
const OWN_TXIDS: u64 = 1 << 48;

fn slot(src: &mut Source<'_>) -> WinSlot {
    // A few devices, so that listings, ejects and requests meet.
    WinSlot::new(src.below(4) as u8, u8::from(src.below(8) == 0))
}

impl World {
    fn drain(&mut self) {
        while let Some(t) = self.relay.poll_transmit() {
            match t {
                Transmit::ToHost(p) => {
                    if self.to_host.len() < 256 {
                        self.to_host.push(p);
                    }
                }
                Transmit::ToGuest(p) => self.at_guest(p),
                Transmit::CloseGuest => self.closed = true,
            }
        }
        while self.relay.poll_backing().is_some() {}
        while self.relay.poll_event().is_some() {}
    }

    fn at_guest(&mut self, p: Packet) {
        trace(format_args!("relay->guest {p:?}"));
        // A guest may offer a version the protocol does not define, and this host accepts
        // anything: past the defined versions, the newest rules are the only ones there are.
        // A guest that negotiates down gets only what the version in use allows
        // (`tests/fuzz_findings.rs`).
        let version = Some(self.relay.version())
            .filter(|v| ProtocolVersion::ALL.contains(v))
            .unwrap_or(ProtocolVersion::V1_7);
        match p.kind {
            PacketKind::InBand => {
                if let Err(e) = decode(&p.payload, Sender::Host, version) {
                    panic!("the guest got a malformed message at {version}: {e}");
                }
            }
            PacketKind::Completion => {
                let Some((ty, n)) = self.asked.get_mut(&p.transaction_id) else {
                    if self.restored && p.transaction_id < OWN_TXIDS {
                        return; // asked before the save
                    }
                    panic!("a completion for {:#x}, never asked", p.transaction_id);
                };
                *n += 1;
                assert_eq!(*n, 1, "{ty} {:#x} answered twice", p.transaction_id);
                // A completion's layout does not depend on the version; a request newer than
                // the version in use was refused, and its refusal is still a completion. A
                // request that gets no completion by the protocol but asked for one may be
                // answered with a status.
                if !gets_completion(*ty) {
                    assert!(p.payload.len() >= 4, "{ty} answered without a status");
                } else if let Err(e) = decode_completion(&p.payload, *ty, ProtocolVersion::V1_7) {
                    panic!("the guest got a malformed {ty} completion: {e}");
                }
            }
            other => panic!("the guest got a {other:?} packet"),
        }
    }

    fn host_message(src: &mut Source<'_>) -> Vec<u8> {
        match src.below(4) {
            0 | 1 => {
                let descs: Vec<_> = (0..src.below(5))
                    .map(|_| build::description2(slot(src), 0x1414, 0xb1, src.below(3) as u32))
                    .collect();
                if src.below(4) == 0 {
                    build::relations(&descs)
                } else {
                    build::relations2(&descs)
                }
            }
            2 => build::eject(slot(src)),
            _ => super::decode::message(src),
        }
    }

    fn guest_message(src: &mut Source<'_>) -> Vec<u8> {
        let s = slot(src);
        match src.below(12) {
            0 => build::query_version(src.pick(&[ProtocolVersion::V1_4, ProtocolVersion::V1_1])),
            1 => build::query_relations(),
            2 => build::query_requirements(s),
            3 => build::d0_entry(0xf_e000_0000),
            4 => build::resources_assigned2(s, &[]),
            5 => build::create_interrupt2(s, 0x30, 0),
            6 => build::create_interrupt3(s, 0x31, 0),
            7 => build::delete_interrupt(s, 0xfee0_0000, 0x30),
            8 => build::resources_released(s),
            9 => build::ejection_complete(s),
            10 => build::d0_exit(),
            _ => super::decode::message(src),
        }
    }

    fn completion(src: &mut Source<'_>, request: Option<MessageType>) -> Vec<u8> {
        use MessageType as T;
        match (src.below(3), request) {
            (0, _) | (_, None) => build::status_reply(Status(src.pick(&[0, 0xC000_0001]))),
            (_, Some(T::QUERY_RESOURCE_REQUIREMENTS)) => {
                build::requirements_reply([0xffff_c000, 0, 0, 0, 0, 0])
            }
            (_, Some(T::CREATE_INTERRUPT_MESSAGE2 | T::CREATE_INTERRUPT_MESSAGE3)) => {
                build::interrupt_reply(0xfee0_0000, 0x30)
            }
            _ => build::status_reply(Status::SUCCESS),
        }
    }

    fn step(&mut self, src: &mut Source<'_>) {
        let now = self.now;
        match src.below(9) {
            0 | 1 => {
                let mut b = Self::host_message(src);
                if src.below(4) == 0 {
                    corrupt(src, &mut b);
                }
                let flags = PacketFlags(u16::from(src.below(8) == 0));
                let p = Packet {
                    kind: PacketKind::InBand,
                    flags,
                    transaction_id: u64::from(src.byte()),
                    payload: padded(b),
                };
                trace(format_args!("host->relay {p:?}"));
                self.relay.handle_host(now, p);
            }
            2 | 3 => {
                // The host answers one of the requests the relay sent it (or a made-up id).
                let asked: Vec<&Packet> = self
                    .to_host
                    .iter()
                    .filter(|p| p.completion_requested())
                    .collect();
                let (id, ty) = match asked.len() {
                    0 => (u64::from(src.byte()), None),
                    n => {
                        let p = asked[src.below(n)];
                        let ty = p.payload.get(..4).map(|b| {
                            MessageType(u32::from_le_bytes(b.try_into().unwrap_or_default()))
                        });
                        (p.transaction_id, ty)
                    }
                };
                let mut b = Self::completion(src, ty);
                if src.below(4) == 0 {
                    corrupt(src, &mut b);
                }
                self.relay
                    .handle_host(now, Packet::completion(id, padded(b)));
            }
            4 | 5 => {
                let mut b = Self::guest_message(src);
                if src.below(8) == 0 {
                    corrupt(src, &mut b);
                }
                self.next_txid += 1;
                let ty = b
                    .get(..4)
                    .map(|w| MessageType(u32::from_le_bytes(w.try_into().unwrap_or_default())));
                let request = src.bool();
                // Every request is tracked: one the protocol gives no completion (or one
                // that is not a request at all) may still be answered once, with a status.
                if request && !self.closed {
                    let ty = ty.unwrap_or(MessageType(0));
                    self.asked.insert(self.next_txid, (ty, 0));
                }
                let p = if request {
                    Packet::request(self.next_txid, padded(b))
                } else {
                    Packet::in_band(self.next_txid, padded(b))
                };
                trace(format_args!("guest->relay {p:?}"));
                self.relay.handle_guest(now, p);
            }
            6 => {
                let s = slot(src);
                let any = src.u16();
                let offset = src.pick(&[0u16, 4, 0x10, 0x40, 0xffc, any]);
                let access = if src.bool() {
                    ConfigAccess::Read {
                        slot: s,
                        offset,
                        len: 4,
                    }
                } else {
                    ConfigAccess::Write {
                        slot: s,
                        offset,
                        len: 4,
                        value: src.u32(),
                    }
                };
                let _ = self.relay.handle_config_access(now, access);
            }
            7 => {
                let ms = src.pick(&[1u64, 50, 150, 1_000, 5_000, 31_000]);
                self.advance(Duration::from_millis(ms));
            }
            _ => {
                if src.below(16) == 0 {
                    self.relay.handle_host_closed(now);
                } else {
                    self.relay.handle_timeout(now);
                }
            }
        }
        self.drain();
        assert!(self.relay.requests_outstanding() <= MAX_REQUESTS);
        assert!(self.relay.host_requests_outstanding() <= MAX_REQUESTS);
        // `max_functions` bounds what one relations message adds; the table itself is bounded
        // by the wire's 256 slots (one entry per slot).
        assert!(self.relay.functions().count() <= 256);
        assert!(self.relay.remembered_local_answers() <= Limits::default().max_remembered_answers);
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(t) = self.relay.poll_timeout() {
            if t > end || t < self.now {
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
}

/// `FUZZ_TRACE=1` prints every packet (replaying one crash file, to read what happened).
fn trace(line: std::fmt::Arguments<'_>) {
    if std::env::var_os("FUZZ_TRACE").is_some() {
        eprintln!("{line}");
    }
}

/// The configuration this harness runs the relay with.
pub fn config() -> RelayConfig {
    RelayConfig {
        limits: Limits {
            max_functions: MAX_FUNCTIONS,
            max_outstanding_requests: MAX_REQUESTS,
            ..Limits::default()
        },
        ..RelayConfig::default()
    }
}

pub fn run(data: &[u8]) {
    drive(
        BusRelay::new(config()),
        Duration::ZERO,
        false,
        &mut Source::new(data),
    );
}

/// Runs `relay` (at `now`; `restored`: from a saved state) between the hostile peers the
/// input describes, checking the promises after every step and at the end.
pub fn drive(relay: BusRelay, now: Duration, restored: bool, src: &mut Source<'_>) {
    let closed = relay.guest_closed();
    let mut w = World {
        relay,
        now,
        to_host: Vec::new(),
        asked: BTreeMap::new(),
        next_txid: if restored { OWN_TXIDS } else { 0 },
        closed,
        restored,
    };
    w.drain();
    let mut steps = 0;
    while !src.is_empty() && steps < 400 {
        w.step(src);
        steps += 1;
    }
    w.relay.handle_host_closed(w.now);
    w.drain();
    w.advance(Duration::from_secs(120));
    for (id, (ty, n)) in &w.asked {
        if gets_completion(*ty) {
            assert_eq!(*n, 1, "guest request {id:#x} ({ty}) answered {n} times");
        }
    }
}
