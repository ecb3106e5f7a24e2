//! The world of the final-view properties: a host with the protocol's freedom, a conformant
//! guest that takes its time, the relay between them, and the clock that runs them.

use crate::common::*;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::wire::FunctionDescription2;
use vpci_protocol::*;
use vpci_relay::*;

pub(crate) const SLOTS: u8 = 3;
pub(crate) const HOST_BUDGET: Duration = Duration::from_secs(60);

/// How long the host takes to answer a request.
pub(crate) const DELAYS: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(20),
    Duration::from_secs(2),
    Duration::from_secs(35), // beyond max_hold
];

#[derive(Clone, Copy, Debug)]
pub(crate) enum Action {
    /// Put a new function (a new identity) in the slot, whatever is there.
    Add(u8),
    /// Leave the slot out of the next relations message.
    Drop(u8),
    /// EJECT the slot (whatever the host has there, or had).
    Eject(u8),
    /// Let time pass.
    Wait(u16),
}

/// A small deterministic generator for the peers' delays.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }
}

pub(crate) fn ident_desc(dev: u8, ident: u32) -> FunctionDescription2 {
    let mut d = desc2(dev, 0x1414);
    d.ser = ident.into();
    d
}

/// Packets a peer sends, in order: a channel is first in, first out, so a packet held back
/// (a slow answer) holds back everything sent after it.
#[derive(Default)]
pub(crate) struct Fifo(pub(crate) VecDeque<(Duration, Packet)>);

impl Fifo {
    /// Queues `p` to arrive at `at`, or after the packet before it; returns when it arrives.
    pub(crate) fn push(&mut self, at: Duration, p: Packet) -> Duration {
        let at = self.0.back().map_or(at, |(last, _)| at.max(*last));
        self.0.push_back((at, p));
        at
    }

    pub(crate) fn next_at(&self) -> Option<Duration> {
        self.0.front().map(|(t, _)| *t)
    }
}

/// The host: what it has in each slot, and what it owes and is owed.
#[derive(Default)]
pub(crate) struct Host {
    /// Slot -> the identity of the function it has there (listed, or being ejected).
    pub(crate) has: BTreeMap<u8, (u32, bool)>,
    pub(crate) next_ident: u32,
    /// EJECTs sent per slot and not yet answered, with when they were sent.
    pub(crate) owed: BTreeMap<u8, VecDeque<Duration>>,
    pub(crate) version_agreed: bool,
    /// Slots a relations message has listed (the host may EJECT only those).
    pub(crate) ever_listed: std::collections::BTreeSet<u8>,
    pub(crate) out: Fifo,
    pub(crate) failure: Option<String>,
}

impl Host {
    pub(crate) fn listing(&self) -> Vec<FunctionDescription2> {
        self.has
            .iter()
            .map(|(&dev, &(ident, _))| ident_desc(dev, ident))
            .collect()
    }

    pub(crate) fn send_relations(&mut self, now: Duration) {
        if self.version_agreed {
            let list = self.listing();
            self.send_list(now, &list);
        }
    }

    pub(crate) fn send_list(&mut self, now: Duration, list: &[FunctionDescription2]) {
        self.ever_listed
            .extend(list.iter().map(|d| d.wslot.device()));
        let payload = encode(&Message::BusRelations2(BusRelations {
            functions: list.to_vec(),
            trailing: Vec::new(),
        }));
        self.out.push(now, Packet::in_band(0, padded(payload)));
    }

    /// What the guest must hold at the end: what the host has and is not removing.
    pub(crate) fn view(&self) -> BTreeMap<u8, u32> {
        self.has
            .iter()
            .filter(|(_, (_, ejecting))| !ejecting)
            .map(|(&d, &(i, _))| (d, i))
            .collect()
    }

    pub(crate) fn act(&mut self, now: Duration, a: Action) {
        match a {
            Action::Add(dev) => {
                self.next_ident += 1;
                self.has.insert(dev, (self.next_ident, false));
                self.send_relations(now);
            }
            Action::Drop(dev) => {
                if self.has.remove(&dev).is_some() {
                    self.send_relations(now);
                }
            }
            Action::Eject(dev) => {
                if !self.ever_listed.contains(&dev) {
                    return;
                }
                // An EJECT names the host's newest function in the slot; one for a slot it
                // has nothing in (dropped, or already ejected) is within its rights too.
                if let Some(f) = self.has.get_mut(&dev) {
                    f.1 = true;
                }
                let sent = self.out.push(now, Packet::in_band(0, padded(eject(dev))));
                self.owed.entry(dev).or_default().push_back(sent);
            }
            Action::Wait(_) => {}
        }
    }

    pub(crate) fn receive(&mut self, now: Duration, p: Packet, rng: &mut Rng) {
        if p.kind != PacketKind::InBand {
            self.failure
                .get_or_insert("the relay sent the host a completion".into());
            return;
        }
        let Ok(m) = decode(&p.payload, Sender::Guest, ProtocolVersion::V1_4) else {
            self.failure
                .get_or_insert("the relay sent the host garbage".into());
            return;
        };
        let delay = rng.pick(&DELAYS);
        match m {
            Message::EjectionComplete(e) => {
                let dev = e.body.wslot.device();
                if rng.next() % 3 == 0 {
                    // Relations it sent just before it saw this answer, still in flight.
                    let before = self.listing();
                    self.send_list(now, &before);
                }
                let Some(sent) = self.owed.get_mut(&dev).and_then(VecDeque::pop_front) else {
                    self.failure
                        .get_or_insert(format!("EJECTION_COMPLETE({dev}) that no EJECT asked for"));
                    return;
                };
                if now > sent + HOST_BUDGET {
                    self.failure
                        .get_or_insert(format!("EJECT({dev}) answered after {:?}", now - sent));
                }
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
                self.answer(now + delay, &p, status(Status::SUCCESS));
            }
            Message::QueryResourceRequirements(_) => {
                self.answer(now + delay, &p, requirements_reply());
            }
            Message::BusD0Entry(_) => {
                // As Hyper-V: relations again before the D0 entry's completion.
                let list = self.listing();
                self.send_list(now + delay, &list);
                self.answer(now + delay, &p, status(Status::SUCCESS));
            }
            _ if p.completion_requested() => self.answer(now + delay, &p, status(Status::SUCCESS)),
            _ => {}
        }
    }

    pub(crate) fn answer(&mut self, at: Duration, p: &Packet, payload: Vec<u8>) {
        self.out
            .push(at, Packet::completion(p.transaction_id, padded(payload)));
    }
}

/// A conformant guest (Linux's probe path, without its races) that takes its time.
#[derive(Default)]
pub(crate) struct Guest {
    /// Slot -> identity of the function it holds.
    pub(crate) held: BTreeMap<u8, u32>,
    /// Requests waiting for their completion: txid -> what for, and the function it names.
    pub(crate) waiting: BTreeMap<u64, (MessageType, Option<u8>)>,
    pub(crate) answered: BTreeMap<u64, u32>,
    pub(crate) next_txid: u64,
    pub(crate) surveyed: bool,
    pub(crate) installed: bool,
    pub(crate) out: Fifo,
    pub(crate) failure: Option<String>,
}

impl Guest {
    pub(crate) fn request(&mut self, at: Duration, payload: Vec<u8>, dev: Option<u8>) {
        self.next_txid += 1;
        let ty = MessageType(u32::from_le_bytes(payload[..4].try_into().unwrap()));
        self.waiting.insert(self.next_txid, (ty, dev));
        self.out
            .push(at, Packet::request(self.next_txid, padded(payload)));
    }

    /// Whether an EJECT of `dev` now would land in a probe: the bus's probe path is not done,
    /// or a request for the function waits for its answer.
    pub(crate) fn probing(&self, dev: u8) -> bool {
        !self.installed || self.waiting.values().any(|(_, d)| *d == Some(dev))
    }

    pub(crate) fn receive(&mut self, now: Duration, p: Packet, rng: &mut Rng) {
        let delay = rng.pick(&[
            Duration::ZERO,
            Duration::from_millis(5),
            Duration::from_millis(300),
        ]);
        if p.kind == PacketKind::Completion {
            *self.answered.entry(p.transaction_id).or_default() += 1;
            let Some((ty, _)) = self.waiting.remove(&p.transaction_id) else {
                self.failure.get_or_insert(format!(
                    "a completion nobody waits for: {:#x}",
                    p.transaction_id
                ));
                return;
            };
            match ty {
                MessageType::QUERY_PROTOCOL_VERSION => {
                    // QUERY_BUS_RELATIONS asks for no completion: the relations answer it.
                    self.out
                        .push(now + delay, Packet::in_band(0, padded(query_relations())));
                }
                MessageType::BUS_D0ENTRY => {
                    let held: Vec<u8> = self.held.keys().copied().collect();
                    for dev in held {
                        self.request(now + delay, resources_assigned2(dev), Some(dev));
                    }
                }
                _ => {}
            }
            if self.surveyed && self.waiting.is_empty() && !self.installed {
                self.installed = true;
            }
            return;
        }
        let Ok(m) = decode(&p.payload, Sender::Host, ProtocolVersion::V1_4) else {
            self.failure
                .get_or_insert("the relay sent the guest garbage".into());
            return;
        };
        match m {
            Message::BusRelations2(r) => {
                let listed: BTreeMap<u8, u32> = r
                    .functions
                    .iter()
                    .map(|d| (d.wslot.device(), d.ser.get()))
                    .collect();
                // Functions no longer listed go; new ones are queried.
                self.held.retain(|d, _| listed.contains_key(d));
                for (&dev, &ident) in &listed {
                    if self.held.get(&dev) != Some(&ident) {
                        if self.held.contains_key(&dev) {
                            self.failure.get_or_insert(format!(
                                "slot {dev} changed identity under the guest"
                            ));
                        }
                        self.held.insert(dev, ident);
                        self.request(now + delay, qrr(dev), Some(dev));
                    }
                }
                if !self.surveyed {
                    self.surveyed = true;
                    self.request(now + delay, d0_entry(), None);
                }
            }
            Message::Eject(e) => {
                let dev = e.body.wslot.device();
                if self.probing(dev) {
                    self.failure
                        .get_or_insert(format!("EJECT({dev}) while the probe waits on the host"));
                }
                if self.held.remove(&dev).is_none() {
                    self.failure
                        .get_or_insert(format!("EJECT({dev}) of nothing held"));
                }
                let when = now + delay + Duration::from_millis(50);
                self.out
                    .push(when, Packet::in_band(0, padded(ejection_complete(dev))));
            }
            _ => {}
        }
    }
}

pub(crate) struct World {
    pub(crate) relay: BusRelay,
    pub(crate) now: Duration,
    pub(crate) host: Host,
    pub(crate) guest: Guest,
    pub(crate) rng: Rng,
    /// Malformed packets the relay counted, in words.
    pub(crate) malformed: Vec<String>,
    /// Every packet, in words, for a failure's report.
    pub(crate) trace: Vec<String>,
    /// Timers fire late (by up to 3 s, varying from timer to timer), as a loaded paravisor's
    /// would.
    pub(crate) late_timers: bool,
    /// How many times a timer's expiry is reported at once (a burst of wake-ups).
    pub(crate) timer_burst: u32,
}

/// A packet in words.
pub(crate) fn describe(p: &Packet, sender: Sender) -> String {
    match p.kind {
        PacketKind::Completion => format!("completion {:#x}", p.transaction_id),
        _ => match decode(&p.payload, sender, ProtocolVersion::V1_4) {
            Ok(Message::BusRelations2(r)) => format!(
                "RELATIONS{:?}",
                r.functions
                    .iter()
                    .map(|d| (d.wslot.device(), d.ser.get()))
                    .collect::<Vec<_>>()
            ),
            Ok(m) => format!(
                "{}{} {:#x}",
                m.message_type(),
                m.wslot()
                    .map(|s| format!("({})", s.device()))
                    .unwrap_or_default(),
                p.transaction_id
            ),
            Err(e) => format!("garbage: {e}"),
        },
    }
}

impl World {
    pub(crate) fn new(seed: u64) -> Self {
        let mut w = Self {
            relay: BusRelay::new(RelayConfig::default()),
            now: Duration::ZERO,
            host: Host::default(),
            guest: Guest::default(),
            rng: Rng(seed | 1),
            malformed: Vec::new(),
            trace: Vec::new(),
            late_timers: false,
            timer_burst: 1,
        };
        w.guest
            .request(Duration::ZERO, query_version(ProtocolVersion::V1_4), None);
        w
    }

    pub(crate) fn pump(&mut self) {
        while let Some(t) = self.relay.poll_transmit() {
            match t {
                Transmit::ToHost(p) => {
                    let line =
                        format!("{:?} relay->host {}", self.now, describe(&p, Sender::Guest));
                    self.trace.push(line);
                    self.host.receive(self.now, p, &mut self.rng);
                }
                Transmit::ToGuest(p) => {
                    let line =
                        format!("{:?} relay->guest {}", self.now, describe(&p, Sender::Host));
                    self.trace.push(line);
                    self.guest.receive(self.now, p, &mut self.rng);
                }
                Transmit::CloseGuest => {
                    self.guest
                        .failure
                        .get_or_insert("the guest's bus was closed".into());
                }
            }
        }
        while let Some(e) = self.relay.poll_event() {
            if let RelayEvent::Malformed { side, fault } = e {
                self.malformed
                    .push(format!("{:?} at {:?}: {side:?} {fault}", self.now, side));
            }
        }
        while self.relay.poll_backing().is_some() {}
    }

    /// Delivers everything due by `until`, in time order, firing the relay's timers.
    pub(crate) fn run_until(&mut self, until: Duration) {
        loop {
            let host_next = self.host.out.next_at();
            let guest_next = self.guest.out.next_at();
            let timer = self.relay.poll_timeout().map(|t| t + self.lateness(t));
            let Some(next) = [host_next, guest_next, timer].into_iter().flatten().min() else {
                break;
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            if host_next == Some(next) {
                if let Some((_, p)) = self.host.out.0.pop_front() {
                    let line = format!("{:?} host->relay {}", self.now, describe(&p, Sender::Host));
                    self.trace.push(line);
                    self.relay.handle_host(self.now, p);
                }
            } else if guest_next == Some(next) {
                if let Some((_, p)) = self.guest.out.0.pop_front() {
                    let line = format!(
                        "{:?} guest->relay {}",
                        self.now,
                        describe(&p, Sender::Guest)
                    );
                    self.trace.push(line);
                    self.relay.handle_guest(self.now, p);
                }
            } else {
                for _ in 0..self.timer_burst {
                    self.relay.handle_timeout(self.now);
                }
            }
            self.pump();
        }
        self.now = self.now.max(until);
    }

    /// How late the timer armed for `at` fires: nothing, or up to 3 s as a fixed function of
    /// `at` (so the run stays deterministic).
    pub(crate) fn lateness(&self, at: Duration) -> Duration {
        if !self.late_timers {
            return Duration::ZERO;
        }
        let ms = u64::try_from(at.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(ms.wrapping_mul(2_654_435_761) % 3000)
    }

    pub(crate) fn act(&mut self, a: Action) {
        if let Action::Wait(ms) = a {
            return self.run_until(self.now + Duration::from_millis(u64::from(ms)));
        }
        self.trace.push(format!("{:?} host acts: {a:?}", self.now));
        self.host.act(self.now, a);
        self.run_until(self.now);
    }

    /// Runs until nothing is left to happen (bounded: well past every deadline).
    pub(crate) fn quiesce(&mut self) {
        for _ in 0..20 {
            self.run_until(self.now + Duration::from_secs(120));
        }
    }
}
