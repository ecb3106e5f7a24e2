//! The relay's promises to two conformant peers, driven by the fuzzer's bytes (the ideas of
//! `tests/final_view_props.rs`): a host with the protocol's freedom (hot-add, a new identity
//! in a listed slot, drop, EJECT of anything it ever listed, again and again, stale
//! relations sent before it saw an EJECTION_COMPLETE, answers at once, late, or past
//! `max_hold`) and a conformant guest (Linux's probe path without its races) that takes its
//! time. The bytes choose the host's actions, every delay, and when time passes.
//!
//! The guest also reads and writes config space through the window when the bytes say so,
//! and the device reports each access the relay forwarded done at a later step the bytes
//! choose, or not within the program ([`super::accesses`]).
//!
//! Checked after every step: at most one EJECT outstanding at the guest; no EJECT reaches
//! the guest while its probe waits on an answer; no EJECT or relations change reaches it
//! while a config access the relay forwarded is in flight (unless the host is lost, or the
//! access's function departed `departed_request_timeout` ago, when the relay may give it
//! up, and only then); a read of an identity register of a function the guest holds never
//! reads all ones, though the device answering it may be gone; nothing malformed reaches
//! either peer; no completion the guest never
//! asked for, none twice; the relay's tables within bounds (the accesses table counting
//! exactly the accesses neither done nor given up, within its limit). At
//! quiescence: every guest request and every host EJECT answered exactly once (each EJECT
//! within the host's 60 s), the guest holds exactly the host's functions with their
//! identities, the bus kept, no request left in the relay's tables, nothing counted
//! malformed.

use super::Source;
use super::accesses::Accesses;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use vmbus_channel::{Packet, PacketKind, padded};
use vpci_protocol::build;
use vpci_protocol::wire::FunctionDescription2;
use vpci_protocol::*;
use vpci_relay::*;

pub const SLOTS: u8 = 3;
const HOST_BUDGET: Duration = Duration::from_secs(60);
const HOST_DELAYS: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(20),
    Duration::from_secs(2),
    Duration::from_secs(35), // beyond max_hold
];
const GUEST_DELAYS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(5),
    Duration::from_millis(300),
];

fn slot(dev: u8) -> WinSlot {
    WinSlot::new(dev, 0)
}

fn message_type(payload: &[u8]) -> MessageType {
    MessageType(u32::from_le_bytes(
        payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .unwrap_or_default(),
    ))
}

/// The delays both peers take, from the fuzzer's bytes (taken as the peers need them, so a
/// run's timing is part of its input). Past the input's end: all zero.
struct Delays(VecDeque<u8>);

impl Delays {
    fn pick(&mut self, from: &[Duration]) -> Duration {
        from[usize::from(self.0.pop_front().unwrap_or(0)) % from.len()]
    }
}

/// A peer's packets in order: a channel is first in, first out.
#[derive(Default)]
struct Fifo(VecDeque<(Duration, Packet)>);

impl Fifo {
    fn push(&mut self, at: Duration, p: Packet) {
        let at = self.0.back().map_or(at, |(last, _)| at.max(*last));
        self.0.push_back((at, p));
    }

    fn next_at(&self) -> Option<Duration> {
        self.0.front().map(|(t, _)| *t)
    }
}

#[derive(Default)]
struct Host {
    /// Slot -> (identity, being ejected).
    has: BTreeMap<u8, (u32, bool)>,
    next_ident: u32,
    /// EJECTs sent per slot, not yet answered, with when.
    owed: BTreeMap<u8, VecDeque<Duration>>,
    version_agreed: bool,
    ever_listed: BTreeSet<u8>,
    out: Fifo,
}

impl Host {
    fn listing(&self) -> Vec<FunctionDescription2> {
        self.has
            .iter()
            .map(|(&dev, &(ident, _))| build::description2(slot(dev), 0x1414, 0xb1, ident))
            .collect()
    }

    fn send_list(&mut self, at: Duration, list: &[FunctionDescription2]) {
        self.ever_listed
            .extend(list.iter().map(|d| d.wslot.device()));
        self.out
            .push(at, Packet::in_band(0, padded(build::relations2(list))));
    }

    fn send_relations(&mut self, now: Duration) {
        if self.version_agreed {
            let list = self.listing();
            self.send_list(now, &list);
        }
    }

    fn view(&self) -> BTreeMap<u8, u32> {
        self.has
            .iter()
            .filter(|(_, (_, ejecting))| !ejecting)
            .map(|(&d, &(i, _))| (d, i))
            .collect()
    }

    fn act(&mut self, now: Duration, action: u8, dev: u8) {
        match action {
            0 => {
                self.next_ident += 1;
                self.has.insert(dev, (self.next_ident, false));
                self.send_relations(now);
            }
            1 => {
                if self.has.remove(&dev).is_some() {
                    self.send_relations(now);
                }
            }
            _ => {
                if !self.ever_listed.contains(&dev) {
                    return;
                }
                if let Some(f) = self.has.get_mut(&dev) {
                    f.1 = true;
                }
                self.out
                    .push(now, Packet::in_band(0, padded(build::eject(slot(dev)))));
                // Owed from when it arrives (a FIFO may hold it back): the relay's budget.
                let sent = self.out.0.back().map_or(now, |(t, _)| *t);
                self.owed.entry(dev).or_default().push_back(sent);
            }
        }
    }

    fn receive(&mut self, now: Duration, p: Packet, delays: &mut Delays) {
        assert_eq!(
            p.kind,
            PacketKind::InBand,
            "the relay sent the host a completion"
        );
        let m = decode(&p.payload, Sender::Guest, ProtocolVersion::V1_4)
            .unwrap_or_else(|e| panic!("the relay sent the host garbage: {e}"));
        let delay = delays.pick(&HOST_DELAYS);
        let answer = |host: &mut Self, payload: Vec<u8>| {
            host.out.push(
                now + delay,
                Packet::completion(p.transaction_id, padded(payload)),
            );
        };
        match m {
            Message::EjectionComplete(e) => {
                let dev = e.body.wslot.device();
                if delays.pick(&[Duration::ZERO, Duration::ZERO, Duration::MAX]) == Duration::MAX {
                    // Relations it sent just before it saw this answer, still in flight.
                    let before = self.listing();
                    self.send_list(now, &before);
                }
                let sent = self
                    .owed
                    .get_mut(&dev)
                    .and_then(VecDeque::pop_front)
                    .unwrap_or_else(|| panic!("EJECTION_COMPLETE({dev}) that no EJECT asked for"));
                assert!(
                    now <= sent + HOST_BUDGET,
                    "EJECT({dev}) answered after {:?}",
                    now - sent
                );
                if self.owed.get(&dev).is_some_and(VecDeque::is_empty)
                    && self.has.get(&dev).is_some_and(|f| f.1)
                {
                    self.has.remove(&dev);
                }
            }
            Message::QueryBusRelations(_) => {
                let list = self.listing();
                self.send_list(now + delay, &list);
            }
            Message::QueryProtocolVersion(_) => {
                self.version_agreed = true;
                answer(self, build::status_reply(Status::SUCCESS));
            }
            Message::QueryResourceRequirements(_) => {
                answer(
                    self,
                    build::requirements_reply([0xffff_c000, 0, 0, 0, 0, 0]),
                );
            }
            Message::BusD0Entry(_) => {
                let list = self.listing();
                self.send_list(now + delay, &list);
                answer(self, build::status_reply(Status::SUCCESS));
            }
            _ if p.completion_requested() => answer(self, build::status_reply(Status::SUCCESS)),
            _ => {}
        }
    }
}

#[derive(Default)]
struct Guest {
    held: BTreeMap<u8, u32>,
    waiting: BTreeMap<u64, (MessageType, Option<u8>)>,
    answered: BTreeMap<u64, u32>,
    next_txid: u64,
    surveyed: bool,
    installed: bool,
    /// EJECTs received and not yet answered (their EJECTION_COMPLETE still queued).
    ejecting: BTreeSet<u8>,
    out: Fifo,
}

impl Guest {
    fn request(&mut self, at: Duration, payload: Vec<u8>, dev: Option<u8>) {
        self.next_txid += 1;
        let ty = message_type(&payload);
        self.waiting.insert(self.next_txid, (ty, dev));
        self.out
            .push(at, Packet::request(self.next_txid, padded(payload)));
    }

    fn receive(&mut self, now: Duration, p: Packet, delays: &mut Delays) {
        let delay = delays.pick(&GUEST_DELAYS);
        if p.kind == PacketKind::Completion {
            *self.answered.entry(p.transaction_id).or_default() += 1;
            let (ty, _) = self.waiting.remove(&p.transaction_id).unwrap_or_else(|| {
                panic!("a completion nobody waits for: {:#x}", p.transaction_id)
            });
            decode_completion(&p.payload, ty, ProtocolVersion::V1_4)
                .unwrap_or_else(|e| panic!("the guest got a malformed {ty} completion: {e}"));
            match ty {
                MessageType::QUERY_PROTOCOL_VERSION => {
                    self.out.push(
                        now + delay,
                        Packet::in_band(0, padded(build::query_relations())),
                    );
                }
                MessageType::BUS_D0ENTRY => {
                    let held: Vec<u8> = self.held.keys().copied().collect();
                    for dev in held {
                        self.request(
                            now + delay,
                            build::resources_assigned2(slot(dev), &[]),
                            Some(dev),
                        );
                    }
                }
                _ => {}
            }
            if self.surveyed && self.waiting.is_empty() {
                self.installed = true;
            }
            return;
        }
        let m = decode(&p.payload, Sender::Host, ProtocolVersion::V1_4)
            .unwrap_or_else(|e| panic!("the relay sent the guest garbage: {e}"));
        match m {
            Message::BusRelations2(r) => {
                let listed: BTreeMap<u8, u32> = r
                    .functions
                    .iter()
                    .map(|d| (d.wslot.device(), d.ser.get()))
                    .collect();
                self.held.retain(|d, _| listed.contains_key(d));
                for (&dev, &ident) in &listed {
                    if self.held.get(&dev) != Some(&ident) {
                        assert!(
                            !self.held.contains_key(&dev),
                            "slot {dev} changed identity under the guest"
                        );
                        self.held.insert(dev, ident);
                        self.request(now + delay, build::query_requirements(slot(dev)), Some(dev));
                    }
                }
                if !self.surveyed {
                    self.surveyed = true;
                    self.request(now + delay, build::d0_entry(0xf_e000_0000), None);
                }
            }
            Message::Eject(e) => {
                let dev = e.body.wslot.device();
                let probing =
                    !self.installed || self.waiting.values().any(|(_, d)| *d == Some(dev));
                assert!(!probing, "EJECT({dev}) while the probe waits on the host");
                assert!(
                    self.ejecting.is_empty(),
                    "EJECT({dev}) while the guest still handles EJECT{:?}",
                    self.ejecting
                );
                assert!(
                    self.held.remove(&dev).is_some(),
                    "EJECT({dev}) of nothing held"
                );
                self.ejecting.insert(dev);
                let when = now + delay + Duration::from_millis(50);
                self.out.push(
                    when,
                    Packet::in_band(0, padded(build::ejection_complete(slot(dev)))),
                );
            }
            _ => {}
        }
    }
}

struct World {
    relay: BusRelay,
    now: Duration,
    host: Host,
    guest: Guest,
    delays: Delays,
    malformed: Vec<String>,
    /// Save the relay, encode it, and restore it from the bytes after every input.
    service: bool,
    /// Everything the relay put out, in order (kept only when `record` is on).
    trace: Vec<String>,
    record: bool,
    /// The guest's config accesses the relay forwarded, until the device reports them done.
    accesses: Accesses,
}

impl World {
    fn pump(&mut self) {
        while let Some(t) = self.relay.poll_transmit() {
            if self.record {
                self.trace.push(format!("{:?} {t:?}", self.now));
            }
            match t {
                Transmit::ToHost(p) => self.host.receive(self.now, p, &mut self.delays),
                Transmit::ToGuest(p) => {
                    self.check_change(&p);
                    self.guest.receive(self.now, p, &mut self.delays)
                }
                Transmit::CloseGuest => panic!("the guest's bus was closed"),
            }
        }
        while let Some(e) = self.relay.poll_event() {
            if self.record {
                self.trace.push(format!("{:?} {e:?}", self.now));
            }
            match e {
                RelayEvent::Malformed { side, fault } => {
                    self.malformed.push(format!("{side:?}: {fault}"));
                }
                RelayEvent::AccessAbandoned { slot } => {
                    let timeout = RelayConfig::default().departed_request_timeout;
                    self.accesses.abandoned(self.now, slot, timeout);
                }
                _ => {}
            }
        }
        while let Some(b) = self.relay.poll_backing() {
            if self.record {
                self.trace.push(format!("{:?} {b:?}", self.now));
            }
        }
        assert!(self.relay.functions().count() <= usize::from(SLOTS));
        assert!(self.relay.requests_outstanding() <= self.guest.waiting.len());
        let limit = RelayConfig::default().limits.max_accesses_in_flight;
        self.accesses.check_table(&self.relay, limit);
    }

    /// A packet the relay sends the guest: if it is an EJECT, or relations that change what
    /// the guest holds, no access the relay forwarded may be in flight.
    fn check_change(&self, p: &Packet) {
        if p.kind != PacketKind::InBand || self.accesses.idle() {
            return;
        }
        let what = match decode(&p.payload, Sender::Host, ProtocolVersion::V1_4) {
            Ok(Message::Eject(e)) => format!("EJECT({})", e.body.wslot.device()),
            Ok(Message::BusRelations2(r)) => {
                let listed: BTreeMap<u8, u32> = r
                    .functions
                    .iter()
                    .map(|d| (d.wslot.device(), d.ser.get()))
                    .collect();
                if listed == self.guest.held {
                    return;
                }
                format!("relations {listed:?}")
            }
            _ => return,
        };
        let timeout = RelayConfig::default().departed_request_timeout;
        let host_up = self.relay.host_link() == HostLink::Up;
        self.accesses
            .change_reaches_guest(self.now, &what, host_up, timeout);
    }

    /// The device reports done what is due at `step` (everything still in flight: `None`).
    fn accesses_done(&mut self, step: Option<usize>) {
        let due = self.accesses.due(step);
        if due.is_empty() {
            return;
        }
        for done in due {
            let guest = self.relay.handle_config_done(self.now, done.id, done.value);
            // The guest is never shown a function it holds vanish: an identity register
            // reads as described, whatever the gone device answered.
            if let Some((offset, len)) = done.read {
                let identity = matches!(offset & !3, 0x00 | 0x08 | 0x2c);
                if identity && self.guest.held.contains_key(&done.slot) {
                    assert!(
                        guest.is_some_and(|v| v != super::accesses::all_ones(len)),
                        "the guest, holding slot {}, read {guest:?} at {offset:#x} (the device \
                         answered {:?})",
                        done.slot,
                        done.value
                    );
                }
            }
        }
        self.pump();
        if self.service {
            self.service_now();
        }
    }

    /// Servicing at this instant: the relay saved, encoded, and restored from the bytes.
    fn service_now(&mut self) {
        let bytes = self.relay.to_bytes();
        self.relay = BusRelay::restore_bytes(RelayConfig::default(), &bytes, self.now)
            .unwrap_or_else(|e| panic!("a state the relay saved was refused: {e}"));
        self.pump();
    }

    /// The bus stopped for `window`: nothing reaches the relay and no timer fires; the
    /// host's packets due meanwhile wait in the driver's queue and reach the relay first,
    /// in order, when it resumes. With `service`, the relay is saved when it stops and
    /// restored from the bytes when it resumes; without, it simply waits (and its overdue
    /// timer fires first on resuming, as restoring does what fell due).
    fn stop(&mut self, window: Duration) {
        let saved = self.service.then(|| self.relay.to_bytes());
        let until = self.now + window;
        let mut queued = Vec::new();
        while self.host.out.next_at().is_some_and(|t| t <= until) {
            queued.extend(self.host.out.0.pop_front().map(|(_, p)| p));
        }
        self.now = until;
        match saved {
            Some(bytes) => {
                self.relay = BusRelay::restore_bytes(RelayConfig::default(), &bytes, until)
                    .unwrap_or_else(|e| panic!("a state the relay saved was refused: {e}"));
            }
            None => {
                self.relay.handle_timeout(until);
                // Restoring fires no timer: the rest of what the wake-up does is the same.
                let timer = self.relay.poll_event();
                assert!(matches!(timer, Some(RelayEvent::Timer(_))), "{timer:?}");
            }
        }
        self.pump();
        for p in queued {
            self.accesses.host_packet(self.now, &p);
            self.relay.handle_host(self.now, p);
            self.pump();
            if self.service {
                self.service_now();
            }
        }
    }

    fn run_until(&mut self, until: Duration) {
        loop {
            let host_next = self.host.out.next_at();
            let guest_next = self.guest.out.next_at();
            let timer = self.relay.poll_timeout();
            let Some(next) = [host_next, guest_next, timer].into_iter().flatten().min() else {
                break;
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            if host_next == Some(next) {
                let (_, p) = self.host.out.0.pop_front().unwrap();
                self.accesses.host_packet(self.now, &p);
                self.relay.handle_host(self.now, p);
            } else if guest_next == Some(next) {
                let (_, p) = self.guest.out.0.pop_front().unwrap();
                if message_type(&p.payload) == MessageType::EJECTION_COMPLETE {
                    self.guest.ejecting.remove(&p.payload[4]);
                }
                self.relay.handle_guest(self.now, p);
            } else {
                self.relay.handle_timeout(self.now);
            }
            self.pump();
            if self.service {
                self.service_now();
            }
        }
        self.now = self.now.max(until);
    }
}

pub fn run(data: &[u8]) {
    run_with(data, Servicing::default());
}

/// How a run is serviced.
#[derive(Clone, Copy, Debug, Default)]
pub struct Servicing {
    /// Save, encode and restore the relay after every input.
    pub every_input: bool,
    /// Stop the bus for this long before this step (host packets arriving meanwhile are
    /// queued and delivered first when it resumes).
    pub stop: Option<(usize, Duration)>,
    /// Record everything the relay puts out.
    pub record: bool,
}

/// What a run produced: everything the relay put out, in order, and its final fingerprint.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub trace: Vec<String>,
    pub fingerprint: u64,
}

/// A run with servicing; the promises are checked as by [`run`].
pub fn run_with(data: &[u8], servicing: Servicing) -> Outcome {
    // The first half of the input drives the host's actions, the second half the delays.
    let (actions, delays) = data.split_at(data.len() / 2);
    let mut w = World {
        relay: BusRelay::new(RelayConfig::default()),
        now: Duration::ZERO,
        host: Host::default(),
        guest: Guest::default(),
        delays: Delays(delays.iter().copied().collect()),
        malformed: Vec::new(),
        service: servicing.every_input,
        trace: Vec::new(),
        record: servicing.record,
        accesses: Accesses::default(),
    };
    w.guest.request(
        Duration::ZERO,
        build::query_version(ProtocolVersion::V1_4),
        None,
    );
    let mut src = Source::new(actions);
    let mut steps = 0;
    while !src.is_empty() && steps < 120 {
        if let Some((at, window)) = servicing.stop {
            if at == steps {
                w.stop(window);
            }
        }
        w.accesses_done(Some(steps));
        let b = src.byte();
        let dev = (b >> 4) % SLOTS;
        // Bit 3 set: the guest reads (bit 0 clear) or writes config space of slot `dev`
        // through the window; the next bytes choose offset, width, value and when the
        // device reports it done.
        if b & 8 != 0 {
            w.accesses.start(&mut w.relay, w.now, steps, b, &mut src);
            w.pump();
            if w.service {
                w.service_now();
            }
            w.run_until(w.now);
            steps += 1;
            continue;
        }
        match b % 8 {
            // Let time pass: from a moment to past every hold.
            0..=2 => {
                let ms = [1u64, 30, 150, 1_000, 3_000, 31_000][usize::from(src.byte()) % 6];
                w.run_until(w.now + Duration::from_millis(ms));
            }
            3 | 4 => w.host.act(w.now, 0, dev),
            5 => w.host.act(w.now, 1, dev),
            _ => w.host.act(w.now, 2, dev),
        }
        w.run_until(w.now);
        steps += 1;
    }
    // The device answers what it still owes (an access it never answered would hold the
    // bus, rightly, for ever).
    w.accesses_done(None);
    for _ in 0..20 {
        w.run_until(w.now + Duration::from_secs(120));
    }
    assert!(
        w.host.out.0.is_empty() && w.guest.out.0.is_empty() && w.relay.poll_timeout().is_none(),
        "not quiescent"
    );
    assert_eq!(
        w.relay.host_link(),
        HostLink::Up,
        "a conformant host lost its bus"
    );
    assert_eq!(
        w.guest.held,
        w.host.view(),
        "the guest's view is not the host's"
    );
    let unanswered: Vec<_> = w.host.owed.iter().filter(|(_, q)| !q.is_empty()).collect();
    assert!(unanswered.is_empty(), "EJECTs unanswered: {unanswered:?}");
    assert!(w.guest.waiting.is_empty(), "guest requests unanswered");
    assert!(
        w.guest.answered.values().all(|&n| n == 1),
        "a guest request answered twice"
    );
    assert_eq!(w.relay.requests_outstanding(), 0);
    assert_eq!(w.relay.accesses_in_flight(), 0, "accesses left in flight");
    assert_eq!(w.relay.host_requests_outstanding(), 0);
    assert!(
        w.malformed.is_empty(),
        "counted malformed: {:?}",
        w.malformed
    );
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    w.relay.fingerprint(&mut hasher);
    Outcome {
        trace: w.trace,
        fingerprint: std::hash::Hasher::finish(&hasher),
    }
}
