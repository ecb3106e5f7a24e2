//! `BusRelay`: the sans-IO state machine for one vPCI bus.
//!
//! The relay's state is split into sub-states that each own their data, their methods and
//! their deadlines, in the manner of quinn-proto's `Connection`:
//!
//! - [`functions`]: the function table (one entry per slot) and the slots ever listed;
//! - [`requests`]: guest requests at the host, remembered local answers, host requests at the
//!   guest, transaction ids;
//! - [`probe`]: the guest's probe phase and bus activity;
//! - [`accesses`]: config accesses forwarded to the device that the guest still waits on;
//! - [`changes`]: the outstanding change, held ejects, pending host relations;
//! - [`output`]: transmit, backing, events and counters.
//!
//! The handlers that move between them live in [`host`] (host packets), [`guest`] (guest
//! packets), [`window`] (config-window accesses) and [`progress`] (delivering held changes,
//! timers). [`BusRelay::poll_timeout`] is the minimum of the sub-states' deadlines.

mod accesses;
mod changes;
mod functions;
mod guest;
mod host;
mod output;
mod probe;
mod progress;
mod requests;
mod servicing;
mod window;

pub use accesses::AccessId;
pub use output::Transmit;
pub(crate) use output::{restore_packet, save_packet};
pub use probe::ProbePhase;
pub use servicing::Restored;
pub use window::{ConfigAccess, ConfigAction};

use crate::config::{RelayConfig, Safeguards};
use crate::events::{ChangeKind, Counters, RelayEvent};
use crate::function::{Backing, Function, HostState};
use accesses::AccessTable;
use changes::ChangeQueue;
use functions::FunctionTable;
use output::Outputs;
use probe::GuestBus;
use requests::RequestTable;
use std::time::Duration;
use vmbus_channel::Packet;
use vpci_protocol::{ProtocolVersion, WinSlot};

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

impl HostLink {
    /// When a lost host's bus next needs the relay: the guest channel closes at a safe point
    /// (the bus quiet), or after `max_hold`.
    fn deadline(
        &self,
        now: Duration,
        max_hold: Duration,
        bus_quiet: Option<Duration>,
    ) -> Option<Duration> {
        match self {
            Self::Up => None,
            Self::Lost { since, .. } => {
                earliest_after(now, [Some(since.saturating_add(max_hold)), bus_quiet])
            }
        }
    }
}

/// The earliest of `times` that is still ahead of `now`.
pub(crate) fn earliest_after(
    now: Duration,
    times: impl IntoIterator<Item = Option<Duration>>,
) -> Option<Duration> {
    times.into_iter().flatten().filter(|&t| t > now).min()
}

/// The relay for one vPCI bus. See the crate documentation for its guarantees.
///
/// Feed it with the `handle_*` methods, then drain [`poll_transmit`](Self::poll_transmit),
/// [`poll_backing`](Self::poll_backing) and [`poll_event`](Self::poll_event), and arm a timer
/// for [`poll_timeout`](Self::poll_timeout). It never blocks, reads no clock and does no I/O.
///
/// Its inspect tree shows the bus (name, version, time, host link), the guest's probe phase,
/// the change queue, every function with its host and guest state, the request table and
/// the counters.
#[derive(Clone, Debug, inspect::Inspect)]
pub struct BusRelay {
    #[inspect(rename = "name", with = "config_name")]
    config: RelayConfig,
    #[inspect(skip)]
    safeguards: Safeguards,
    now: Duration,
    #[inspect(display)]
    version: ProtocolVersion,
    #[inspect(with = "host_link_node")]
    host: HostLink,
    guest_closed: bool,
    guest: GuestBus,
    functions: FunctionTable,
    changes: ChangeQueue,
    requests: RequestTable,
    accesses: AccessTable,
    #[inspect(rename = "counters", with = "counters_node")]
    out: Outputs,
    /// When and from which saved-state format the relay was restored, if it was.
    restored: Option<servicing::Restored>,
}

fn config_name(config: &RelayConfig) -> inspect::Node {
    inspect::Node::str(&config.name)
}

fn host_link_node(host: &HostLink) -> inspect::Node {
    use inspect::Node;
    match host {
        HostLink::Up => Node::str("up"),
        HostLink::Lost { since, rescinded } => Node::dir()
            .field("state", if *rescinded { "rescinded" } else { "failed" })
            .field("since", since)
            .build(),
    }
}

fn counters_node(out: &Outputs) -> inspect::Node {
    inspect::Inspect::inspect(&out.counters)
}

impl BusRelay {
    /// A relay for a bus whose channels have just opened. A `max_hold` beyond the host's
    /// EJECT budget is clamped to [`MAX_HOLD_LIMIT`](crate::MAX_HOLD_LIMIT); check a
    /// configuration with [`RelayConfig::validate`] to refuse it instead.
    pub fn new(mut config: RelayConfig) -> Self {
        config.max_hold = config.max_hold.min(crate::MAX_HOLD_LIMIT);
        let requests = RequestTable::new(
            config.limits.max_outstanding_requests,
            config.limits.max_remembered_answers,
        );
        Self {
            out: Outputs::new(config.name.clone()),
            config,
            safeguards: Safeguards::ALL_ON,
            now: Duration::ZERO,
            version: ProtocolVersion::V1_0,
            host: HostLink::Up,
            guest_closed: false,
            guest: GuestBus::new(),
            functions: FunctionTable::default(),
            changes: ChangeQueue::new(),
            requests,
            accesses: AccessTable::new(),
            restored: None,
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
        self.out.poll_transmit()
    }

    /// The next backing change for a function's BARs and config space.
    pub fn poll_backing(&mut self) -> Option<(WinSlot, Backing)> {
        self.out.poll_backing()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.out.poll_event()
    }

    /// When the relay next wants [`handle_timeout`](Self::handle_timeout) called, if ever:
    /// the earliest of the sub-states' deadlines that is still ahead.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.guest_closed {
            return None;
        }
        let Self {
            config,
            safeguards,
            now,
            version: _,
            host,
            guest_closed: _,
            guest,
            functions,
            changes,
            requests,
            accesses,
            out: _,
            restored: _,
        } = self;
        let now = *now;
        let (settle, max_hold) = (config.settle, config.max_hold);
        let bus_quiet = guest.quiet_at(settle);
        let departed = safeguards
            .local_answers
            .then(|| requests.deadline(now, config.departed_request_timeout, |s| self.departed(s)));
        let abandoned = accesses.deadline(now, config.departed_request_timeout);
        [
            changes.deadline(now, max_hold, bus_quiet, guest.survey_requested()),
            functions.deadline(now, settle, max_hold, &changes.ejects, bus_quiet),
            guest.deadline(now, settle),
            departed.flatten(),
            abandoned,
            host.deadline(now, max_hold, bus_quiet),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- inspection ----

    /// The bus's counters.
    pub fn counters(&self) -> &Counters {
        &self.out.counters
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
        self.guest.installed()
    }

    /// How far the guest's probe path has come.
    pub fn probe_phase(&self) -> ProbePhase {
        self.guest.phase
    }

    /// The change outstanding at the guest, if any.
    pub fn outstanding_change(&self) -> Option<ChangeKind> {
        self.changes.outstanding.as_ref().map(|o| o.kind())
    }

    /// The alarm: a change the guest did not finish within `max_hold` of its own time (the
    /// relay moved on from a stuck guest), until the guest finishes it after all. Also in the
    /// inspect tree as `changes/overdue`.
    pub fn overdue_change(&self) -> Option<ChangeKind> {
        self.changes.overdue.as_ref().map(|o| o.kind())
    }

    /// One function's state.
    pub fn function(&self, slot: WinSlot) -> Option<&Function> {
        self.functions.get(slot)
    }

    /// Every function, by slot.
    pub fn functions(&self) -> impl Iterator<Item = &Function> {
        self.functions.values()
    }

    /// Guest requests the host still owes an answer (requests the relay answered itself
    /// never count here).
    pub fn requests_outstanding(&self) -> usize {
        self.requests.live_len()
    }

    /// Host requests forwarded to the guest that the guest has not completed.
    pub fn host_requests_outstanding(&self) -> usize {
        self.requests.host_requests_len()
    }

    /// Config accesses forwarded to the device that the caller has not reported done
    /// ([`handle_config_done`](Self::handle_config_done)): the guest waits on each.
    pub fn accesses_in_flight(&self) -> usize {
        self.accesses.len()
    }

    /// Requests answered locally that are remembered so the host's late completion is
    /// recognised (bounded by [`Limits::max_remembered_answers`](crate::Limits)).
    pub fn remembered_local_answers(&self) -> usize {
        self.requests.remembered()
    }

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
            guest,
            functions,
            changes,
            requests,
            accesses,
            out: _,
            restored: _,
        } = self;
        (now, version, host, guest_closed, guest).hash(state);
        (functions, changes, requests, accesses).hash(state);
    }

    // ---- inputs ----

    /// A packet from the host: relations, ejects, completions of forwarded requests, the
    /// rarer notifications. A malformed one costs the host its bus (guarantee 9).
    pub fn handle_host(&mut self, now: Duration, packet: Packet) {
        self.tick(now);
        self.host_packet(packet);
        self.progress();
    }

    /// A packet from the guest: a request (forwarded, or answered by the relay), a
    /// completion of a host request, or EJECTION_COMPLETE.
    pub fn handle_guest(&mut self, now: Duration, packet: Packet) {
        self.tick(now);
        self.guest_packet(packet);
        self.progress();
    }

    /// The host's channel refused a packet the relay sent it (`ChannelError::Packet`: nothing
    /// was sent). A forwarded guest request in it will never be answered by the host, so the
    /// relay answers the guest itself with a failure, as for a request it refuses (guarantee
    /// 7: every guest request gets exactly one completion).
    pub fn handle_host_send_refused(&mut self, now: Duration, packet: &Packet) {
        self.tick(now);
        self.host_send_refused(packet);
        self.progress();
    }

    /// A guest access to the config window. Returns what the driver must do with it; an
    /// access it forwards ([`ConfigAction::Forward`]) must be reported done with
    /// [`handle_config_done`](Self::handle_config_done) when the device has answered: until
    /// then the guest waits on the host, and the bus does not count as quiet.
    pub fn handle_config_access(&mut self, now: Duration, access: ConfigAccess) -> ConfigAction {
        self.tick(now);
        let action = self.config_access(access);
        self.progress();
        action
    }

    /// A forwarded config access is done: the device answered it (`result`: a read's value,
    /// ignored for a write) or it failed (`None`). The relay remembers a read's value, so it
    /// can keep answering it after the host has removed the function, and counts the guest's
    /// quiet from now. Returns what the guest must read for a read: the device's value,
    /// unless that says the device is gone (the access failed, or an identity register reads
    /// all ones: the host removed the function before the relay heard of it), when it is the
    /// removal shield's answer (a `RelayEvent::DeviceGoneRead`): a guest is never shown a
    /// function vanish that it was not told to let go. `None` for a write; an id that is not
    /// in flight (done twice, never issued, or given up on) is ignored and gives `None`.
    pub fn handle_config_done(
        &mut self,
        now: Duration,
        id: AccessId,
        result: Option<u32>,
    ) -> Option<u32> {
        self.tick(now);
        let value = self.config_done(id, result);
        self.progress();
        value
    }

    /// A timer armed from [`poll_timeout`](Self::poll_timeout) fired.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.tick(now);
        if !self.guest_closed {
            self.out.emit(RelayEvent::Timer(self.now));
        }
        self.progress();
    }

    /// The host rescinded or closed its channel.
    pub fn handle_host_closed(&mut self, now: Duration) {
        self.tick(now);
        self.lose_host(true);
        self.progress();
    }

    /// The host's transport broke its rules (a corrupt ring, an oversized packet): the host
    /// loses its bus, as for a malformed packet.
    pub fn handle_host_transport_error(&mut self, now: Duration) {
        self.tick(now);
        if self.host == HostLink::Up {
            self.host_fault(crate::PacketFault::Transport);
        }
        self.progress();
    }

    /// The guest's channel ended, or broke the transport's rules (`transport`: counted as
    /// `PacketFault::Transport` from the guest): no guest will answer anything on this bus
    /// again. Every host EJECT still owed is answered now, so the host does not wait out its
    /// budget (guarantee 10); the driver sends those answers before it stops.
    pub fn handle_guest_gone(&mut self, now: Duration, transport: bool) {
        self.tick(now);
        if transport {
            self.count_fault(crate::events::Side::Guest, crate::PacketFault::Transport);
        }
        self.answer_owed_host_ejects();
    }

    fn tick(&mut self, now: Duration) {
        // Time never runs backwards for the relay, whatever the driver passes.
        self.now = self.now.max(now);
    }

    // ---- helpers ----

    /// Whether requests for this function must no longer reach the host (guarantee 4).
    fn departed(&self, slot: WinSlot) -> bool {
        self.host != HostLink::Up
            || self
                .functions
                .get(slot)
                .is_none_or(|f| f.host != HostState::Listed || !f.allowed || !f.guest_visible())
    }
}
