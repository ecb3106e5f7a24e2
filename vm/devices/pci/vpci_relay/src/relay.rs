//! `BusRelay`: the sans-IO state machine for one vPCI bus.

use crate::config::{RelayConfig, Safeguards};
use crate::events::{ChangeKind, Counters, PacketFault, RelayEvent, Side};
use crate::function::{Backing, Function, GuestState, HostState, Stage};
use crate::local::local_completion;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use vmbus_channel::{Packet, PacketFlags, PacketKind};
use vpci_protocol::wire::{FunctionDescription, FunctionDescription2, SlotBody};
use vpci_protocol::{
    BusRelations, Completion, CompletionBody, Fixed, Message, ProtocolVersion, Sender, Status,
    WinSlot, decode, decode_completion, encode, gets_completion,
};
use zerocopy::little_endian::U32;
use zerocopy::{FromZeros, IntoBytes};

/// Something the driver must send, or do to a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// Send this packet to the host.
    ToHost(Packet),
    /// Send this packet to the guest.
    ToGuest(Packet),
    /// Close the guest channel: the host's rescind reaches the guest (at a safe point).
    CloseGuest,
}

/// A guest access to a function's config space through the config window (trapped by the
/// paravisor). Offsets are within the function's 4 KiB config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigAccess {
    /// A read of `len` bytes (1, 2 or 4) at `offset`.
    Read {
        /// The function selected in the window's slot page.
        slot: WinSlot,
        /// Byte offset in config space.
        offset: u16,
        /// Access width in bytes.
        len: u8,
    },
    /// A write of `len` bytes at `offset`.
    Write {
        /// The function selected in the window's slot page.
        slot: WinSlot,
        /// Byte offset in config space.
        offset: u16,
        /// Access width in bytes.
        len: u8,
        /// The value written.
        value: u32,
    },
}

/// What the driver does with a config access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigAction {
    /// Carry it out on the device (and report a read's result with
    /// [`BusRelay::handle_config_read_result`]).
    Forward,
    /// Complete the read with this value; the device is not touched.
    Answer(u32),
    /// Drop the write; the device is not touched.
    Drop,
}

/// The relay's view of the bus as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostLink {
    /// The host answers on the channel.
    Up,
    /// The host rescinded or closed the channel, or broke the protocol, at this time.
    Lost {
        /// When.
        since: Duration,
        /// True for a rescind or close, false for a protocol violation.
        rescinded: bool,
    },
}

/// A guest request forwarded to the host (by the relay's own transaction id).
#[derive(Clone, Debug, Hash)]
struct Forwarded {
    guest_txid: u64,
    request: Message,
    slot: Option<WinSlot>,
    /// When it was forwarded.
    sent_at: Duration,
    /// The relay already answered the guest (the host took too long for a departed function,
    /// or is gone); the host's completion, if it comes, is dropped.
    answered_locally: bool,
}

/// The host relations the relay has not yet reflected to the guest.
#[derive(Clone, Debug, Hash)]
struct HostRelations {
    v2: bool,
    raw: Vec<u8>,
    slots: Vec<WinSlot>,
}

#[derive(Clone, Debug, Hash)]
struct Outstanding {
    kind: ChangeKind,
    since: Duration,
    /// Functions the change announced (relations only).
    added: Vec<WinSlot>,
    /// Whether this relations answered the guest's initial survey.
    initial: bool,
}

/// The relay for one vPCI bus. See the crate documentation for its guarantees.
///
/// Feed it with the `handle_*` methods, then drain [`poll_transmit`](Self::poll_transmit),
/// [`poll_backing`](Self::poll_backing) and [`poll_event`](Self::poll_event), and arm a timer
/// for [`poll_timeout`](Self::poll_timeout). It never blocks, reads no clock and does no I/O.
#[derive(Clone, Debug)]
pub struct BusRelay {
    config: RelayConfig,
    safeguards: Safeguards,
    now: Duration,
    version: ProtocolVersion,
    host: HostLink,
    guest_closed: bool,
    /// The guest sent QUERY_BUS_RELATIONS and waits for relations.
    survey_requested: bool,
    /// The guest has surveyed at least once.
    surveyed: bool,
    /// The guest's probe path is done: D0 entered, resources assigned, quiet.
    installed: bool,
    d0: Stage,
    /// The last guest traffic on the bus.
    bus_activity: Option<Duration>,
    functions: BTreeMap<u32, Function>,
    host_relations: Option<HostRelations>,
    /// Pending ejects in the order they arrived.
    eject_order: VecDeque<WinSlot>,
    outstanding: Option<Outstanding>,
    relations_held_reported: bool,
    /// The guest's view must be refreshed though no host relations are pending (a function
    /// re-added while its predecessor was being ejected is now free to announce).
    relations_dirty: bool,
    requests: BTreeMap<u64, Forwarded>,
    next_txid: u64,
    /// Host packets that asked for a completion, forwarded to the guest: relay id -> host id.
    host_requests: BTreeMap<u64, u64>,
    tx: VecDeque<Transmit>,
    backing: VecDeque<(WinSlot, Backing)>,
    events: VecDeque<RelayEvent>,
    counters: Counters,
}

impl BusRelay {
    /// A relay for a bus whose channels have just opened.
    pub fn new(config: RelayConfig) -> Self {
        Self {
            config,
            safeguards: Safeguards::ALL_ON,
            now: Duration::ZERO,
            version: ProtocolVersion::V1_0,
            host: HostLink::Up,
            guest_closed: false,
            survey_requested: false,
            surveyed: false,
            installed: false,
            d0: Stage::NotStarted,
            bus_activity: None,
            functions: BTreeMap::new(),
            host_relations: None,
            eject_order: VecDeque::new(),
            outstanding: None,
            relations_held_reported: false,
            relations_dirty: false,
            requests: BTreeMap::new(),
            next_txid: 1,
            host_requests: BTreeMap::new(),
            tx: VecDeque::new(),
            backing: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// A relay with some safeguards switched off, so a test can show what each one prevents.
    #[cfg(any(test, feature = "safeguard-switches"))]
    pub fn with_safeguards(config: RelayConfig, safeguards: Safeguards) -> Self {
        Self {
            safeguards,
            ..Self::new(config)
        }
    }

    // ---- outputs ----

    /// The next packet to send or channel action to take.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.tx.pop_front()
    }

    /// The next backing change for a function's BARs and config space.
    pub fn poll_backing(&mut self) -> Option<(WinSlot, Backing)> {
        self.backing.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// When the relay next wants [`handle_timeout`](Self::handle_timeout) called, if ever.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let settle = self.config.settle;
        let max_hold = self.config.max_hold;
        let mut deadlines: Vec<Duration> = Vec::new();
        if let Some(o) = &self.outstanding {
            deadlines.push(o.since.saturating_add(max_hold));
            if o.kind == ChangeKind::Relations {
                deadlines.extend(self.bus_activity.map(|t| t.saturating_add(settle)));
            }
        }
        for f in self.functions.values() {
            if f.eject_pending() {
                deadlines.extend(self.bus_activity.map(|t| t.saturating_add(settle)));
                deadlines.extend(f.quiet_at(settle));
                deadlines.extend(f.eject_since.map(|t| t.saturating_add(max_hold)));
            }
        }
        for r in self.requests.values() {
            if !r.answered_locally && r.slot.is_some_and(|s| self.departed(s)) {
                deadlines.push(
                    r.sent_at
                        .saturating_add(self.config.departed_request_timeout),
                );
            }
        }
        if self.host_relations.is_some() || self.survey_requested || self.relations_dirty {
            deadlines.extend(self.bus_activity.map(|t| t.saturating_add(settle)));
        }
        if let HostLink::Lost { since, .. } = self.host {
            if !self.guest_closed {
                deadlines.push(since.saturating_add(max_hold));
                deadlines.extend(self.bus_activity.map(|t| t.saturating_add(settle)));
            }
        }
        deadlines.into_iter().filter(|&t| t > self.now).min()
    }

    // ---- inspection ----

    /// Feeds `state` with everything that decides the relay's future behaviour: not its
    /// counters, its configuration or its output queues (drain those first). Two relays with
    /// the same fingerprint input react to every input alike, which lets a model checker or
    /// simulator merge equal states without comparing histories.
    pub fn fingerprint<H: std::hash::Hasher>(&self, state: &mut H) {
        use std::hash::Hash;
        let Self {
            config: _,
            safeguards: _,
            now,
            version,
            host,
            guest_closed,
            survey_requested,
            surveyed,
            installed,
            d0,
            bus_activity,
            functions,
            host_relations,
            eject_order,
            outstanding,
            relations_held_reported,
            relations_dirty,
            requests,
            next_txid,
            host_requests,
            tx: _,
            backing: _,
            events: _,
            counters: _,
        } = self;
        (
            now,
            version,
            host,
            guest_closed,
            survey_requested,
            surveyed,
            installed,
            d0,
        )
            .hash(state);
        (
            bus_activity,
            functions,
            host_relations,
            eject_order,
            outstanding,
        )
            .hash(state);
        (
            relations_held_reported,
            relations_dirty,
            requests,
            next_txid,
            host_requests,
        )
            .hash(state);
    }

    /// The bus's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The protocol version the guest and host agreed on (1.0 until they have).
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The state of the host link.
    pub fn host_link(&self) -> HostLink {
        self.host
    }

    /// Whether the guest channel has been closed.
    pub fn guest_closed(&self) -> bool {
        self.guest_closed
    }

    /// Whether the guest's probe path is done.
    pub fn installed(&self) -> bool {
        self.installed
    }

    /// The change outstanding at the guest, if any.
    pub fn outstanding_change(&self) -> Option<ChangeKind> {
        self.outstanding.as_ref().map(|o| o.kind)
    }

    /// One function's state.
    pub fn function(&self, slot: WinSlot) -> Option<&Function> {
        self.functions.get(&slot.raw())
    }

    /// Every function, by slot.
    pub fn functions(&self) -> impl Iterator<Item = &Function> {
        self.functions.values()
    }

    /// Guest requests outstanding at the host.
    pub fn requests_outstanding(&self) -> usize {
        self.requests
            .values()
            .filter(|r| !r.answered_locally)
            .count()
    }

    fn inspect_tree(&self) -> inspect::Node {
        use inspect::{Inspect, Node};
        let host = match self.host {
            HostLink::Up => Node::str("up"),
            HostLink::Lost { since, rescinded } => Node::dir()
                .field("state", if rescinded { "rescinded" } else { "failed" })
                .field("since", &since)
                .build(),
        };
        let outstanding = match &self.outstanding {
            None => Node::Value(inspect::Value::None),
            Some(o) => Node::dir()
                .field(
                    "change",
                    &match o.kind {
                        ChangeKind::Relations => "relations".to_owned(),
                        ChangeKind::Eject(slot) => format!("eject {slot}"),
                    },
                )
                .field("since", &o.since)
                .field("initial", &o.initial)
                .build(),
        };
        let held: Vec<String> = self.eject_order.iter().map(|s| s.to_string()).collect();
        let functions = Node::Dir(
            self.functions
                .values()
                .map(|f| (f.slot.to_string(), f.inspect()))
                .collect(),
        );
        let requests = Node::Dir(
            self.requests
                .iter()
                .map(|(id, r)| {
                    let node = Node::dir()
                        .field("request", &r.request.message_type().to_string())
                        .field("slot", &r.slot.map(|s| s.to_string()))
                        .hex("guest_txid", r.guest_txid)
                        .field("sent_at", &r.sent_at)
                        .field("answered_locally", &r.answered_locally)
                        .build();
                    (format!("{id:#x}"), node)
                })
                .collect(),
        );
        Node::dir()
            .field("version", &self.version.to_string())
            .child("host", host)
            .field("guest_closed", &self.guest_closed)
            .field("surveyed", &self.surveyed)
            .field("survey_requested", &self.survey_requested)
            .field("d0", &self.d0)
            .field("installed", &self.installed)
            .field("now", &self.now)
            .child("outstanding_change", outstanding)
            .field("held_ejects", &held)
            .field("relations_pending", &self.host_relations.is_some())
            .child("functions", functions)
            .child("requests", requests)
            .field("counters", &self.counters)
            .build()
    }

    // ---- inputs ----

    /// A packet from the host.
    pub fn handle_host(&mut self, now: Duration, packet: Packet) {
        self.tick(now);
        if matches!(self.host, HostLink::Lost { .. }) {
            // The host is gone: nothing it sends can matter any more.
            return;
        }
        match packet.kind {
            PacketKind::Completion => self.host_completion(packet),
            PacketKind::InBand => match decode(&packet.payload, Sender::Host, self.version) {
                Ok(message) => self.host_message(packet, message),
                Err(e) => self.host_fault(e.into()),
            },
            other => self.host_fault(PacketFault::PacketKind(other.to_raw())),
        }
        self.progress();
    }

    /// A packet from the guest.
    pub fn handle_guest(&mut self, now: Duration, packet: Packet) {
        self.tick(now);
        if self.guest_closed {
            return;
        }
        match packet.kind {
            PacketKind::Completion => self.guest_completion(packet),
            PacketKind::InBand => match decode(&packet.payload, Sender::Guest, self.version) {
                Ok(message) => self.guest_message(packet, message),
                Err(e) => self.guest_fault(&packet, e.into()),
            },
            other => self.guest_fault(&packet, PacketFault::PacketKind(other.to_raw())),
        }
        self.progress();
    }

    /// A guest access to the config window. Returns what the driver must do with it.
    pub fn handle_config_access(&mut self, now: Duration, access: ConfigAccess) -> ConfigAction {
        self.tick(now);
        let (slot, read) = match access {
            ConfigAccess::Read { slot, .. } => (slot, true),
            ConfigAccess::Write { slot, .. } => (slot, false),
        };
        let host_up = self.host == HostLink::Up;
        let shield = self.safeguards.removal_shield;
        self.bus_activity = Some(now);
        let action = match self.functions.get_mut(&slot.raw()) {
            Some(f) if f.guest_visible() => {
                f.last_activity = Some(now);
                if host_up && f.host == HostState::Listed || !shield {
                    ConfigAction::Forward
                } else if let ConfigAccess::Read { offset, len, .. } = access {
                    // The guest has been told to let go: the function reads as absent.
                    let dword = if f.guest == GuestState::Ejecting {
                        u32::MAX
                    } else {
                        f.config_copy(offset & !3)
                    };
                    ConfigAction::Answer(extract(dword, offset, len))
                } else {
                    ConfigAction::Drop
                }
            }
            // A function the guest was never shown (or already let go): nothing there.
            _ if read => ConfigAction::Answer(u32::MAX),
            _ => ConfigAction::Drop,
        };
        self.progress();
        action
    }

    /// The result of a forwarded config read, so the relay can keep answering it after the
    /// host has removed the function.
    pub fn handle_config_read_result(&mut self, slot: WinSlot, offset: u16, len: u8, value: u32) {
        let limit = self.config.limits.max_config_cache;
        if let Some(f) = self.functions.get_mut(&slot.raw()) {
            if len == 4
                && offset % 4 == 0
                && (f.config.len() < limit || f.config.contains_key(&offset))
            {
                f.config.insert(offset, value);
            }
        }
    }

    /// The host's transport broke its rules (a corrupt ring, an oversized packet): the host
    /// loses its bus, as for a malformed packet.
    pub fn handle_host_transport_error(&mut self, now: Duration) {
        self.tick(now);
        if self.host == HostLink::Up {
            self.host_fault(PacketFault::Transport);
        }
        self.progress();
    }

    /// A timer armed from [`poll_timeout`](Self::poll_timeout) fired.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.tick(now);
        self.progress();
    }

    /// The host rescinded or closed its channel.
    pub fn handle_host_closed(&mut self, now: Duration) {
        self.tick(now);
        self.lose_host(true);
        self.progress();
    }

    fn tick(&mut self, now: Duration) {
        // Time never runs backwards for the relay, whatever the driver passes.
        self.now = self.now.max(now);
    }

    // ---- host side ----

    fn host_message(&mut self, packet: Packet, message: Message) {
        match message {
            Message::BusRelations(m) => {
                let descs = m.functions.iter().map(widen).collect();
                self.host_relations(packet, descs, false);
            }
            Message::BusRelations2(m) => {
                self.host_relations(packet, m.functions, true);
            }
            Message::Eject(m) => self.host_eject(m.body.wslot),
            other => {
                // INVALIDATE_BLOCK and the rarely used host notifications: pass them on for
                // functions the guest holds, drop them otherwise.
                let visible = other
                    .wslot()
                    .and_then(|s| self.functions.get(&s.raw()))
                    .is_some_and(Function::guest_visible);
                if visible {
                    self.forward_host_packet(packet);
                } else if packet.completion_requested() {
                    self.tx.push_back(Transmit::ToHost(Packet::completion(
                        packet.transaction_id,
                        Status::SUCCESS.0.to_le_bytes().to_vec(),
                    )));
                }
            }
        }
    }

    fn forward_host_packet(&mut self, mut packet: Packet) {
        if packet.completion_requested() {
            if self.host_requests.len() >= self.config.limits.max_outstanding_requests {
                // A guest that never completes cannot make the table grow: the relay answers
                // the host itself and the guest gets the notification without the request.
                self.count_fault(
                    Side::Host,
                    PacketFault::TooManyRequests(self.config.limits.max_outstanding_requests),
                );
                self.tx.push_back(Transmit::ToHost(Packet::completion(
                    packet.transaction_id,
                    Status::SUCCESS.0.to_le_bytes().to_vec(),
                )));
                packet.flags = PacketFlags(packet.flags.0 & !PacketFlags::COMPLETION_REQUESTED.0);
                self.counters.relayed_to_guest += 1;
                self.tx.push_back(Transmit::ToGuest(packet));
                return;
            }
            let id = self.alloc_txid();
            self.host_requests.insert(id, packet.transaction_id);
            packet.transaction_id = id;
        }
        self.counters.relayed_to_guest += 1;
        self.tx.push_back(Transmit::ToGuest(packet));
    }

    fn host_relations(&mut self, packet: Packet, descs: Vec<FunctionDescription2>, v2: bool) {
        let limit = self.config.limits.max_functions;
        if descs.len() > limit {
            return self.host_fault(PacketFault::TooManyFunctions {
                count: descs.len(),
                limit,
            });
        }
        let mut slots: Vec<WinSlot> = Vec::with_capacity(descs.len());
        for d in &descs {
            if slots.contains(&d.wslot) {
                return self.host_fault(PacketFault::DuplicateSlot(d.wslot));
            }
            slots.push(d.wslot);
        }
        if packet.completion_requested() {
            // vPCI relations need no completion; answer one if asked so nothing waits.
            self.tx.push_back(Transmit::ToHost(Packet::completion(
                packet.transaction_id,
                Status::SUCCESS.0.to_le_bytes().to_vec(),
            )));
        }
        // A slot re-added while its predecessor leaves, and now dropped again: forget it.
        for f in self.functions.values_mut() {
            if f.successor.is_some() && !slots.contains(&f.slot) {
                f.successor = None;
            }
        }
        // Functions the host no longer lists.
        let gone: Vec<u32> = self
            .functions
            .iter()
            .filter(|(_, f)| !slots.contains(&f.slot) && f.host == HostState::Listed)
            .map(|(&k, _)| k)
            .collect();
        for key in gone {
            let Some(f) = self.functions.get_mut(&key) else {
                continue;
            };
            if f.guest_visible() {
                // Dropped without an eject: the guest still holds it, so the relay ejects it
                // through the same serialization as a host eject.
                f.host = HostState::Gone;
                f.synthesized_eject = true;
                let slot = f.slot;
                self.begin_eject(slot);
            } else {
                self.functions.remove(&key);
            }
        }
        // Functions newly listed, or re-described while the guest has not seen them.
        for d in descs {
            let allowed = self.config.allows(&d);
            match self.functions.get_mut(&d.wslot.raw()) {
                Some(f) if !f.guest_visible() => *f = Function::new(d, allowed),
                // Listed again after the host dropped it without an eject, while the guest
                // still holds the old one: the new one waits for the guest to let go. (A slot
                // the host is ejecting stays in its lists until the EJECTION_COMPLETE reaches
                // it; that is not a re-add.)
                Some(f) if f.host == HostState::Gone => f.successor = Some(d),
                Some(_) => {}
                None => {
                    self.functions
                        .insert(d.wslot.raw(), Function::new(d, allowed));
                }
            }
        }
        if self
            .host_relations
            .replace(HostRelations {
                v2,
                raw: packet.payload,
                slots,
            })
            .is_some()
        {
            self.superseded();
        }
    }

    fn host_eject(&mut self, slot: WinSlot) {
        let Some(f) = self.functions.get_mut(&slot.raw()) else {
            // Nothing to eject; complete it so the host does not wait 60 seconds.
            self.count_fault(Side::Host, PacketFault::UnknownSlot(slot));
            self.complete_host_eject(slot);
            return;
        };
        if f.host != HostState::Listed {
            if f.successor.take().is_some() {
                // The host takes back a re-added function the guest was never shown.
                self.complete_host_eject(slot);
                self.counters.coalesced += 1;
                self.event(RelayEvent::Coalesced { slot });
                tracing::info!(bus = %self.config.name, %slot, message = "PCI_EJECT", "coalesced: re-added function removed before the guest saw it");
            }
            return; // Otherwise a repeated eject: the first one is being handled.
        }
        f.host = HostState::Ejecting;
        if !f.guest_visible() && (self.safeguards.coalesce || !f.allowed) {
            // Guarantee 3: the guest never saw it, so it never will.
            self.functions.remove(&slot.raw());
            self.complete_host_eject(slot);
            self.counters.coalesced += 1;
            self.event(RelayEvent::Coalesced { slot });
            tracing::info!(bus = %self.config.name, %slot, message = "PCI_EJECT", "coalesced: function removed before the guest saw it");
            return;
        }
        if f.guest_visible() {
            self.begin_eject(slot);
        }
        // (With coalescing off, a hidden function stays listed as ejecting; it is announced
        // and then ejected, as a plain pass-through would do.)
    }

    fn begin_eject(&mut self, slot: WinSlot) {
        let now = self.now;
        let shield = self.safeguards.removal_shield;
        if let Some(f) = self.functions.get_mut(&slot.raw()) {
            if f.eject_since.is_none() {
                f.eject_since = Some(now);
                f.hold_reported = false;
                self.eject_order.push_back(slot);
            }
            if shield && f.backing == Backing::Device {
                f.backing = Backing::Shield;
                self.backing.push_back((slot, Backing::Shield));
                self.event(RelayEvent::Backing {
                    slot,
                    backing: Backing::Shield,
                });
            }
        }
    }

    fn complete_host_eject(&mut self, slot: WinSlot) {
        if self.host != HostLink::Up {
            return;
        }
        let body = vpci_protocol::wire::EjectionCompleteBody {
            wslot: slot,
            status: U32::ZERO,
        };
        let payload = encode(&Message::EjectionComplete(Fixed::new(body)));
        self.tx
            .push_back(Transmit::ToHost(Packet::in_band(0, payload)));
    }

    fn host_completion(&mut self, packet: Packet) {
        let id = packet.transaction_id;
        let Some(fwd) = self.requests.remove(&id) else {
            return self.host_fault(PacketFault::UnknownTransaction(id));
        };
        let request_type = fwd.request.message_type();
        if fwd.answered_locally {
            // The guest already has its answer; whatever the host says now is moot.
            self.counters.late_completions += 1;
            self.event(RelayEvent::LateCompletion {
                request: request_type,
            });
            return;
        }
        let completion = match decode_completion(&packet.payload, request_type, self.version) {
            Ok(c) => c,
            Err(e) => {
                self.requests.insert(id, fwd);
                return self.host_fault(e.into());
            }
        };
        if let Some(f) = fwd.slot.and_then(|s| self.functions.get_mut(&s.raw())) {
            f.requests_pending = f.requests_pending.saturating_sub(1);
        }
        self.apply_completion(&fwd.request, &completion);
        let departed = fwd.slot.is_some_and(|s| self.departed(s));
        let is_interrupt = matches!(
            fwd.request,
            Message::CreateInterruptMessage(_)
                | Message::CreateInterruptMessage2(_)
                | Message::CreateInterruptMessage3(_)
        );
        if departed
            && is_interrupt
            && !completion.status.is_success()
            && self.safeguards.local_answers
        {
            // The host refused an interrupt for a function it is removing: a failure here is
            // Linux 6.2's NULL chip_data (race C2), so the guest gets a plausible success.
            let local = local_completion(&fwd.request, fwd.slot.and_then(|s| self.function(s)));
            self.answer_guest(fwd.guest_txid, fwd.slot, &local);
            return;
        }
        self.counters.relayed_to_guest += 1;
        self.tx.push_back(Transmit::ToGuest(Packet::completion(
            fwd.guest_txid,
            packet.payload,
        )));
    }

    /// Records what a completed request means for the bus and its functions.
    fn apply_completion(&mut self, request: &Message, completion: &Completion) {
        // The guest acts on what it is answered: that starts its next step, so the quiet
        // window runs from here.
        self.bus_activity = Some(self.now);
        if let Some(f) = request
            .wslot()
            .and_then(|s| self.functions.get_mut(&s.raw()))
        {
            f.last_activity = Some(self.now);
        }
        let ok = completion.status.is_success();
        let stage = if ok { Stage::Done } else { Stage::NotStarted };
        match request {
            Message::QueryProtocolVersion(m) if ok => {
                self.version = ProtocolVersion(m.body.protocol_version.get());
            }
            Message::BusD0Entry(_) => self.d0 = stage,
            Message::BusD0Exit(_) if ok => {
                self.d0 = Stage::NotStarted;
                self.installed = false;
            }
            _ => {}
        }
        let Some(f) = request
            .wslot()
            .and_then(|s| self.functions.get_mut(&s.raw()))
        else {
            return;
        };
        match request {
            Message::QueryResourceRequirements(_) => {
                // A failed query still ends the guest's wait for it; the guest drops the
                // function, so it counts as done for settling.
                f.requirements = Stage::Done;
                if let CompletionBody::ResourceRequirements(r) = &completion.body {
                    f.probed_bars = Some(r.body.probed_bar.map(|b| b.get()));
                }
            }
            Message::ResourcesAssigned(_)
            | Message::ResourcesAssigned2(_)
            | Message::ResourcesAssigned3(_) => f.resources = Stage::Done,
            Message::CreateInterruptMessage(_)
            | Message::CreateInterruptMessage2(_)
            | Message::CreateInterruptMessage3(_) => {
                f.interrupts_pending = f.interrupts_pending.saturating_sub(1);
            }
            _ => {}
        }
    }

    fn host_fault(&mut self, fault: PacketFault) {
        self.count_fault(Side::Host, fault);
        // Guarantee 9: a host that breaks the protocol loses its bus, not the VM.
        self.lose_host(false);
    }

    fn lose_host(&mut self, rescinded: bool) {
        if matches!(self.host, HostLink::Lost { .. }) {
            return;
        }
        self.host = HostLink::Lost {
            since: self.now,
            rescinded,
        };
        self.event(RelayEvent::HostLost { rescinded });
        tracing::warn!(bus = %self.config.name, rescinded, "host lost: winding the bus down");
        // Nobody will answer what is outstanding: answer it now.
        let ids: Vec<u64> = self.requests.keys().copied().collect();
        for id in ids {
            self.answer_forwarded_locally(id);
        }
        self.requests.clear();
        self.host_relations = None;
        let keys: Vec<u32> = self.functions.keys().copied().collect();
        for key in keys {
            let Some(f) = self.functions.get_mut(&key) else {
                continue;
            };
            f.host = HostState::Gone;
            f.successor = None;
            f.requests_pending = 0;
            f.interrupts_pending = 0;
            if f.guest == GuestState::Announced {
                f.synthesized_eject = true;
                let slot = f.slot;
                self.begin_eject(slot);
            } else if f.guest == GuestState::Hidden {
                self.functions.remove(&key);
            }
        }
    }

    // ---- guest side ----

    fn guest_message(&mut self, packet: Packet, message: Message) {
        let now = self.now;
        self.bus_activity = Some(now);
        let slot = message.wslot();
        if let Some(f) = slot.and_then(|s| self.functions.get_mut(&s.raw())) {
            f.last_activity = Some(now);
        }
        match &message {
            Message::EjectionComplete(m) => {
                return self.guest_ejection_complete(packet, m.body.wslot);
            }
            Message::QueryBusRelations(_) => {
                self.survey_requested = true;
                self.surveyed = true;
            }
            Message::BusD0Entry(_) => self.d0 = Stage::Pending,
            _ => {}
        }
        if let Some(f) = slot.and_then(|s| self.functions.get_mut(&s.raw())) {
            match &message {
                Message::QueryResourceRequirements(_) => f.requirements = Stage::Pending,
                Message::ResourcesAssigned(_)
                | Message::ResourcesAssigned2(_)
                | Message::ResourcesAssigned3(_) => f.resources = Stage::Pending,
                Message::CreateInterruptMessage(_)
                | Message::CreateInterruptMessage2(_)
                | Message::CreateInterruptMessage3(_) => f.interrupts_pending += 1,
                _ => {}
            }
        }
        let local = self.host != HostLink::Up
            || slot.is_some_and(|s| self.departed(s) && self.safeguards.local_answers);
        if local {
            if matches!(message, Message::QueryBusRelations(_)) {
                // No host to answer the survey: the progress step answers it.
                return;
            }
            self.answer_locally(&packet, &message);
            return;
        }
        self.forward_guest_request(packet, message);
    }

    fn forward_guest_request(&mut self, mut packet: Packet, message: Message) {
        let wants_completion =
            packet.completion_requested() && gets_completion(message.message_type());
        if wants_completion {
            let limit = self.config.limits.max_outstanding_requests;
            if self.requests.len() >= limit {
                self.guest_fault(&packet, PacketFault::TooManyRequests(limit));
                return;
            }
            let id = self.alloc_txid();
            let slot = message.wslot();
            if let Some(f) = slot.and_then(|s| self.functions.get_mut(&s.raw())) {
                f.requests_pending += 1;
            }
            self.requests.insert(
                id,
                Forwarded {
                    guest_txid: packet.transaction_id,
                    request: message,
                    slot,
                    sent_at: self.now,
                    answered_locally: false,
                },
            );
            packet.transaction_id = id;
        }
        self.counters.relayed_to_host += 1;
        self.tx.push_back(Transmit::ToHost(packet));
    }

    fn answer_locally(&mut self, packet: &Packet, message: &Message) {
        let slot = message.wslot();
        let local = local_completion(message, slot.and_then(|s| self.function(s)));
        self.apply_completion(message, &local);
        if packet.completion_requested() {
            self.answer_guest(packet.transaction_id, slot, &local);
        } else {
            self.counters.answered_locally += 1;
            self.event(RelayEvent::AnsweredLocally {
                slot,
                request: message.message_type(),
            });
        }
    }

    fn answer_guest(&mut self, guest_txid: u64, slot: Option<WinSlot>, completion: &Completion) {
        self.counters.answered_locally += 1;
        self.event(RelayEvent::AnsweredLocally {
            slot,
            request: completion.request,
        });
        tracing::info!(bus = %self.config.name, ?slot, request = %completion.request, "answered locally");
        self.tx.push_back(Transmit::ToGuest(Packet::completion(
            guest_txid,
            completion.encode(),
        )));
    }

    fn answer_forwarded_locally(&mut self, id: u64) {
        let Some(fwd) = self.requests.get_mut(&id) else {
            return;
        };
        if fwd.answered_locally {
            return;
        }
        fwd.answered_locally = true;
        let (guest_txid, slot, request) = (fwd.guest_txid, fwd.slot, fwd.request.clone());
        let local = local_completion(&request, slot.and_then(|s| self.function(s)));
        self.apply_completion(&request, &local);
        self.answer_guest(guest_txid, slot, &local);
    }

    fn guest_ejection_complete(&mut self, packet: Packet, slot: WinSlot) {
        let Some(f) = self.functions.get_mut(&slot.raw()) else {
            return self.guest_fault(&packet, PacketFault::UnknownSlot(slot));
        };
        if f.guest != GuestState::Ejecting {
            return self.guest_fault(&packet, PacketFault::UnknownSlot(slot));
        }
        let forward = f.host == HostState::Ejecting && !f.synthesized_eject;
        let successor = f.successor.take();
        self.functions.remove(&slot.raw());
        if let Some(d) = successor {
            let allowed = self.config.allows(&d);
            self.functions.insert(slot.raw(), Function::new(d, allowed));
            self.relations_dirty = true;
        }
        self.backing.push_back((slot, Backing::Released));
        self.event(RelayEvent::Backing {
            slot,
            backing: Backing::Released,
        });
        if forward && self.host == HostLink::Up {
            self.counters.relayed_to_host += 1;
            self.tx.push_back(Transmit::ToHost(packet));
        }
        if self
            .outstanding
            .as_ref()
            .is_some_and(|o| o.kind == ChangeKind::Eject(slot))
        {
            self.finish_change();
        }
    }

    fn guest_completion(&mut self, packet: Packet) {
        match self.host_requests.remove(&packet.transaction_id) {
            Some(host_id) if self.host == HostLink::Up => {
                self.counters.relayed_to_host += 1;
                self.tx.push_back(Transmit::ToHost(Packet::completion(
                    host_id,
                    packet.payload,
                )));
            }
            Some(_) => {}
            None => {
                let id = packet.transaction_id;
                self.count_fault(Side::Guest, PacketFault::UnknownTransaction(id));
            }
        }
    }

    fn guest_fault(&mut self, packet: &Packet, fault: PacketFault) {
        self.count_fault(Side::Guest, fault);
        if packet.kind == PacketKind::InBand && packet.completion_requested() {
            // The guest waits for an answer to whatever it sent: give it a failure.
            self.tx.push_back(Transmit::ToGuest(Packet::completion(
                packet.transaction_id,
                Status::BAD_DATA.0.to_le_bytes().to_vec(),
            )));
        }
    }

    // ---- progress: delivering held changes ----

    /// Delivers whatever the rules allow now, finishes changes the guest has finished, and
    /// closes the guest channel at a safe point after the host is gone.
    fn progress(&mut self) {
        // Each pass either changes state or stops; a bus holds at most 256 functions, so
        // this bound is never reached by a correct relay (it guards against a logic error).
        for _ in 0..1024 {
            if !self.step() {
                return;
            }
        }
        tracing::error!(bus = %self.config.name, "relay progress did not settle");
    }

    fn step(&mut self) -> bool {
        if self.guest_closed {
            return false;
        }
        self.update_installed();
        let now = self.now;
        if self.answer_stale_requests() {
            return true;
        }
        if let Some(o) = &self.outstanding {
            if self.change_finished(o) {
                self.finish_change();
                return true;
            }
            if now >= o.since.saturating_add(self.config.max_hold) {
                let kind = o.kind;
                self.outstanding = None;
                self.counters.timed_out += 1;
                self.event(RelayEvent::ChangeTimedOut(kind));
                tracing::warn!(bus = %self.config.name, ?kind, "guest did not finish a change in time; moving on");
                return true;
            }
        }
        let gated = self.outstanding.is_some() && self.safeguards.one_change_at_a_time;
        // With a safeguard switched off (tests only), its event goes through at once, as a
        // plain pass-through would let it.
        if !self.safeguards.hold_eject_until_settled && self.try_deliver_eject(false) {
            return true;
        }
        if !self.safeguards.rescind_at_safe_point && self.try_close() {
            return true;
        }
        if self.try_deliver_eject(gated) || (!gated && self.try_deliver_relations()) {
            return true;
        }
        !gated && self.try_close()
    }

    /// Answers requests for departed functions that the host has left unanswered for
    /// `departed_request_timeout` (a host that removed the device may never answer).
    fn answer_stale_requests(&mut self) -> bool {
        if !self.safeguards.local_answers {
            return false;
        }
        if self.requests.is_empty() {
            return false;
        }
        let deadline = self.config.departed_request_timeout;
        let stale: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| {
                !r.answered_locally
                    && self.now >= r.sent_at.saturating_add(deadline)
                    && r.slot.is_some_and(|s| self.departed(s))
            })
            .map(|(&id, _)| id)
            .collect();
        for &id in &stale {
            self.answer_forwarded_locally(id);
            if let Some(slot) = self.requests.get(&id).and_then(|r| r.slot) {
                if let Some(f) = self.functions.get_mut(&slot.raw()) {
                    f.requests_pending = f.requests_pending.saturating_sub(1);
                }
            }
        }
        !stale.is_empty()
    }

    fn update_installed(&mut self) {
        if self.installed || !self.surveyed || self.survey_requested || self.d0 != Stage::Done {
            return;
        }
        let quiet = self.bus_quiet();
        let assigned = self
            .functions
            .values()
            .filter(|f| f.guest == GuestState::Announced && f.needs_resources)
            .all(|f| f.resources == Stage::Done && f.requirements == Stage::Done);
        let idle = self.requests.values().all(|r| r.answered_locally);
        if quiet && assigned && idle {
            self.installed = true;
            tracing::info!(bus = %self.config.name, "guest probe path done");
        }
    }

    fn change_finished(&self, o: &Outstanding) -> bool {
        match o.kind {
            ChangeKind::Eject(_) => false, // finished by the guest's EJECTION_COMPLETE
            ChangeKind::Relations => {
                let queried = o.added.iter().all(|s| {
                    self.functions.get(&s.raw()).is_none_or(|f| {
                        f.requirements == Stage::Done || f.guest != GuestState::Announced
                    })
                });
                // The guest's relations work runs on after its last request completes;
                // quiet for the settle window is what the relay can see of it ending.
                queried && (!o.initial || self.installed) && self.bus_quiet()
            }
        }
    }

    /// Whether the bus has had no guest traffic (and relayed no answer) for the settle window.
    fn bus_quiet(&self) -> bool {
        self.bus_activity
            .is_none_or(|t| self.now >= t.saturating_add(self.config.settle))
    }

    fn finish_change(&mut self) {
        if let Some(o) = self.outstanding.take() {
            self.event(RelayEvent::ChangeFinished(o.kind));
        }
    }

    /// Delivers the first eject the rules allow (none while `gated`: another change is
    /// outstanding), and reports each newly held one.
    fn try_deliver_eject(&mut self, gated: bool) -> bool {
        if self.eject_order.is_empty() {
            return false;
        }
        let now = self.now;
        let settle = self.config.settle;
        let max_hold = self.config.max_hold;
        let hold = self.safeguards.hold_eject_until_settled;
        // The guest's last change (an eject's work runs on after EJECTION_COMPLETE) must have
        // gone quiet too.
        let bus_ready = (self.installed || !self.surveyed) && self.bus_quiet();
        let mut chosen = None;
        let mut newly_held = Vec::new();
        self.eject_order.retain(|s| {
            self.functions
                .get(&s.raw())
                .is_some_and(Function::eject_pending)
        });
        for slot in &self.eject_order {
            let Some(f) = self.functions.get(&slot.raw()) else {
                continue;
            };
            let expired = f
                .eject_since
                .is_some_and(|t| now >= t.saturating_add(max_hold));
            if !gated && (!hold || expired || (bus_ready && f.settled(now, settle))) {
                chosen = Some(*slot);
                break;
            }
            if !f.hold_reported {
                newly_held.push(*slot);
            }
        }
        for slot in newly_held {
            if let Some(f) = self.functions.get_mut(&slot.raw()) {
                f.hold_reported = true;
            }
            self.counters.held += 1;
            self.event(RelayEvent::EjectHeld { slot });
            tracing::info!(bus = %self.config.name, %slot, message = "PCI_EJECT", "eject held: function not settled");
        }
        let Some(slot) = chosen else {
            return false;
        };
        let Some(f) = self.functions.get_mut(&slot.raw()) else {
            return false;
        };
        f.guest = GuestState::Ejecting;
        let was_held = f.hold_reported;
        if was_held {
            self.counters.released += 1;
        }
        self.eject_order.retain(|s| *s != slot);
        let payload = encode(&Message::Eject(Fixed::new(SlotBody { wslot: slot })));
        self.counters.relayed_to_guest += 1;
        self.tx
            .push_back(Transmit::ToGuest(Packet::in_band(0, payload)));
        self.outstanding = Some(Outstanding {
            kind: ChangeKind::Eject(slot),
            since: now,
            added: Vec::new(),
            initial: false,
        });
        self.event(RelayEvent::ChangeDelivered(ChangeKind::Eject(slot)));
        tracing::info!(bus = %self.config.name, %slot, message = "PCI_EJECT", released = was_held, "eject delivered to the guest");
        true
    }

    /// The functions the guest should see, in slot order.
    fn guest_view(&self) -> impl Iterator<Item = &Function> + Clone {
        let coalesce = self.safeguards.coalesce;
        self.functions.values().filter(move |f| {
            f.guest_visible()
                || (f.allowed
                    && (f.host == HostState::Listed
                        || (!coalesce && f.host == HostState::Ejecting)))
        })
    }

    fn try_deliver_relations(&mut self) -> bool {
        let wanted = self.survey_requested || self.host_relations.is_some() || self.relations_dirty;
        if !wanted {
            return false;
        }
        let host_up = self.host == HostLink::Up;
        if host_up && self.host_relations.is_none() && !self.relations_dirty {
            return false; // the survey waits for the host's answer
        }
        // After the first survey, further relations wait for the guest's probe path (C1, C4),
        // unless the guest asked again.
        let may = self.surveyed
            && (self.survey_requested
                || (self.installed && self.bus_quiet())
                || !self.safeguards.one_change_at_a_time);
        let added: Vec<WinSlot> = self
            .guest_view()
            .filter(|f| !f.guest_visible())
            .map(|f| f.slot)
            .collect();
        if added.is_empty() && !self.survey_requested {
            // Nothing new for the guest (a repeat of what it has, or only removals that ejects
            // carry): absorb it. Pass it on byte for byte when idle and identical, as the
            // host meant it.
            let identical = self
                .host_relations
                .as_ref()
                .is_some_and(|h| h.slots.iter().eq(self.guest_view().map(|f| &f.slot)));
            self.relations_dirty = false;
            match self.host_relations.take() {
                Some(h) if identical && self.outstanding.is_none() && may => {
                    self.counters.relayed_to_guest += 1;
                    self.tx
                        .push_back(Transmit::ToGuest(Packet::in_band(0, h.raw)));
                }
                Some(_) => self.superseded(),
                None => {}
            }
            return false;
        }
        if !may {
            if !self.relations_held_reported {
                self.relations_held_reported = true;
                self.counters.held += 1;
                self.event(RelayEvent::RelationsHeld);
                tracing::info!(bus = %self.config.name, message = "PCI_BUS_RELATIONS", "relations held behind the guest's probe");
            }
            return false;
        }
        let view: Vec<&Function> = self.guest_view().collect();
        let payload = self.relations_payload(&view);
        let view_len = view.len();
        let initial = !self.installed;
        let now = self.now;
        for slot in &added {
            if let Some(f) = self.functions.get_mut(&slot.raw()) {
                f.guest = GuestState::Announced;
                f.needs_resources = initial;
                f.backing = Backing::Device;
                self.backing.push_back((*slot, Backing::Device));
            }
        }
        for slot in &added {
            self.event(RelayEvent::Backing {
                slot: *slot,
                backing: Backing::Device,
            });
            if self
                .function(*slot)
                .is_some_and(|f| f.host == HostState::Ejecting)
            {
                self.begin_eject(*slot);
            }
        }
        if self.relations_held_reported {
            self.counters.released += 1;
            self.relations_held_reported = false;
        }
        self.survey_requested = false;
        self.relations_dirty = false;
        self.host_relations = None;
        self.counters.relayed_to_guest += 1;
        self.tx
            .push_back(Transmit::ToGuest(Packet::in_band(0, payload)));
        self.outstanding = Some(Outstanding {
            kind: ChangeKind::Relations,
            since: now,
            added,
            initial,
        });
        self.event(RelayEvent::ChangeDelivered(ChangeKind::Relations));
        tracing::info!(bus = %self.config.name, message = "PCI_BUS_RELATIONS", functions = view_len, "relations delivered to the guest");
        true
    }

    /// The relations message for `view`: the host's own bytes when they say exactly that,
    /// else a new message in the host's dialect.
    fn relations_payload(&self, view: &[&Function]) -> Vec<u8> {
        let slots: Vec<WinSlot> = view.iter().map(|f| f.slot).collect();
        match &self.host_relations {
            Some(h) if h.slots == slots => h.raw.clone(),
            host => {
                let v2 = host
                    .as_ref()
                    .map_or(self.version >= ProtocolVersion::V1_3, |h| h.v2);
                let message = if v2 {
                    Message::BusRelations2(BusRelations {
                        functions: view.iter().map(|f| f.desc).collect(),
                        trailing: Vec::new(),
                    })
                } else {
                    Message::BusRelations(BusRelations {
                        functions: view.iter().map(|f| narrow(&f.desc)).collect(),
                        trailing: Vec::new(),
                    })
                };
                encode(&message)
            }
        }
    }

    fn try_close(&mut self) -> bool {
        let HostLink::Lost { since, .. } = self.host else {
            return false;
        };
        let safe = !self.safeguards.rescind_at_safe_point
            || self.now >= since.saturating_add(self.config.max_hold)
            || (self.outstanding.is_none()
                && !self.survey_requested
                && self.functions.values().all(|f| !f.guest_visible())
                // A guest that has not spoken yet may be just starting its probe: wait for
                // its probe path too (or for max_hold, if it never speaks).
                && self.installed);
        if !safe {
            return false;
        }
        self.guest_closed = true;
        self.tx.push_back(Transmit::CloseGuest);
        self.event(RelayEvent::GuestClosed);
        tracing::info!(bus = %self.config.name, "guest channel closed after the host's rescind");
        true
    }

    // ---- helpers ----

    /// Whether requests for this function must no longer reach the host (guarantee 4).
    fn departed(&self, slot: WinSlot) -> bool {
        self.host != HostLink::Up
            || self
                .functions
                .get(&slot.raw())
                .is_none_or(|f| f.host != HostState::Listed || !f.allowed || !f.guest_visible())
    }

    fn alloc_txid(&mut self) -> u64 {
        let id = self.next_txid;
        self.next_txid = self.next_txid.wrapping_add(1).max(1);
        id
    }

    fn superseded(&mut self) {
        self.counters.superseded += 1;
        self.event(RelayEvent::RelationsSuperseded);
    }

    fn count_fault(&mut self, side: Side, fault: PacketFault) {
        match side {
            Side::Host => self.counters.malformed_host += 1,
            Side::Guest => self.counters.malformed_guest += 1,
        }
        tracing::warn!(bus = %self.config.name, ?side, %fault, "malformed packet");
        self.event(RelayEvent::Malformed { side, fault });
    }

    fn event(&mut self, event: RelayEvent) {
        self.events.push_back(event);
    }
}

/// A BUS_RELATIONS description as a BUS_RELATIONS2 one (no flags, node 0).
fn widen(d: &FunctionDescription) -> FunctionDescription2 {
    let mut wide = FunctionDescription2::new_zeroed();
    wide.as_mut_bytes()[..FunctionDescription::SIZE].copy_from_slice(d.as_bytes());
    wide
}

/// The BUS_RELATIONS part of a BUS_RELATIONS2 description.
fn narrow(d: &FunctionDescription2) -> FunctionDescription {
    let mut narrow = FunctionDescription::new_zeroed();
    narrow
        .as_mut_bytes()
        .copy_from_slice(&d.as_bytes()[..FunctionDescription::SIZE]);
    narrow
}

/// The `len` bytes at `offset` of a config dword.
fn extract(dword: u32, offset: u16, len: u8) -> u32 {
    let shift = u32::from(offset & 3) * 8;
    let value = dword.checked_shr(shift).unwrap_or(0);
    match len {
        1 => value & 0xff,
        2 => value & 0xffff,
        _ => value,
    }
}

/// The relay's state as an inspect tree: the bus, every function with its host and guest state,
/// held ejects, outstanding requests and counters.
impl inspect::Inspect for BusRelay {
    fn inspect(&self) -> inspect::Node {
        self.inspect_tree()
    }
}
