//! The model behind `model_check.rs`: an abstract Hyper-V host and an abstract unfixed
//! (Linux 6.2) guest around one real, unchanged [`BusRelay`]. See that file's documentation for
//! how the model is built and how to read a counterexample.

#![allow(dead_code, unreachable_pub)]

use stateright::{Model, Property};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::wire::*;
use vpci_protocol::*;
use vpci_relay::*;
use zerocopy::FromZeros;

// ---- packets (as in tests/common) ----

fn padded(mut payload: Vec<u8>) -> Vec<u8> {
    payload.resize(payload.len().div_ceil(8) * 8, 0);
    payload
}

fn wslot(dev: u8) -> WinSlot {
    WinSlot::new(dev, 0)
}

fn desc2(dev: u8) -> FunctionDescription2 {
    let mut d = FunctionDescription2::new_zeroed();
    d.v_id = 0x1414.into();
    d.d_id = 0x00b1.into();
    d.base_class = 2;
    d.wslot = wslot(dev);
    d
}

fn slot_msg(f: fn(Fixed<SlotBody>) -> Message, dev: u8) -> Vec<u8> {
    encode(&f(Fixed::new(SlotBody { wslot: wslot(dev) })))
}

fn status(s: Status) -> Vec<u8> {
    s.0.to_le_bytes().to_vec()
}

/// A guest request that asks for a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Req {
    /// QUERY_PROTOCOL_VERSION (1.4).
    Version,
    /// QUERY_RESOURCE_REQUIREMENTS.
    Requirements(u8),
    /// BUS_D0ENTRY.
    D0Entry,
    /// RESOURCES_ASSIGNED2.
    Assigned(u8),
    /// CREATE_INTERRUPT_MESSAGE2.
    Interrupt(u8),
}

impl Req {
    fn slot(self) -> Option<u8> {
        match self {
            Req::Requirements(s) | Req::Assigned(s) | Req::Interrupt(s) => Some(s),
            Req::Version | Req::D0Entry => None,
        }
    }

    fn payload(self) -> Vec<u8> {
        let m = match self {
            Req::Version => Message::QueryProtocolVersion(Fixed::new(VersionBody {
                protocol_version: ProtocolVersion::V1_4.0.into(),
            })),
            Req::Requirements(s) => {
                Message::QueryResourceRequirements(Fixed::new(SlotBody { wslot: wslot(s) }))
            }
            Req::D0Entry => Message::BusD0Entry(Fixed::new(D0EntryBody {
                reserved: 0.into(),
                mmio_base: 0xf_e000_0000.into(),
            })),
            Req::Assigned(s) => {
                let mut head = ResourcesHead::new_zeroed();
                head.wslot = wslot(s);
                Message::ResourcesAssigned2(ResourcesAssigned {
                    head,
                    msi_resources: Vec::new(),
                    trailing: vec![0; 66],
                })
            }
            Req::Interrupt(s) => {
                let mut body = CreateInterrupt2Body::new_zeroed();
                body.wslot = wslot(s);
                body.int_desc.vector = 0x30 + s;
                body.int_desc.vector_count = 1.into();
                body.int_desc.processor_count = 1.into();
                Message::CreateInterruptMessage2(Fixed::new(body))
            }
        };
        padded(encode(&m))
    }

    /// The host's successful completion.
    fn success(self) -> Vec<u8> {
        let mut v = status(Status::SUCCESS);
        match self {
            Req::Requirements(_) => {
                v.extend_from_slice(&0xffff_c000u32.to_le_bytes());
                v.extend_from_slice(&[0; 20]);
            }
            Req::Interrupt(_) => v.extend_from_slice(&[0; 20]),
            _ => {}
        }
        padded(v)
    }
}

/// A guest message that asks for no completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Note {
    /// QUERY_BUS_RELATIONS.
    QueryRelations,
    /// DELETE_INTERRUPT_MESSAGE.
    DeleteInterrupt(u8),
    /// EJECTION_COMPLETE.
    EjectionComplete(u8),
}

impl Note {
    fn payload(self) -> Vec<u8> {
        let m = match self {
            Note::QueryRelations => Message::QueryBusRelations(Fixed::new(Empty {})),
            Note::DeleteInterrupt(s) => {
                let mut body = DeleteInterruptBody::new_zeroed();
                body.wslot = wslot(s);
                body.int_desc.vector_count = 1.into();
                body.int_desc.data = u32::from(0x30 + s).into();
                body.int_desc.address = 0xFEE0_0000u64.into();
                Message::DeleteInterruptMessage(Fixed::new(body))
            }
            Note::EjectionComplete(s) => {
                Message::EjectionComplete(Fixed::new(EjectionCompleteBody {
                    wslot: wslot(s),
                    status: 0.into(),
                }))
            }
        };
        padded(encode(&m))
    }
}

/// How the host ends a request it was forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Success with a well-formed body.
    Success,
    /// STATUS_UNSUCCESSFUL (what a host that removed the device may say to an interrupt request).
    Fail,
    /// Never answered (a host that removed the device may ignore it).
    Drop,
}

/// One input to the relay, kept so the relay can be rebuilt by replay.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Input {
    HostRelations(Vec<u8>),
    HostEject(u8),
    HostComplete { txid: u64, req: Req, ok: bool },
    HostClosed,
    GuestRequest { txid: u64, req: Req },
    GuestNote(Note),
    ConfigRead(u8),
    Timeout,
}

/// The relay's inputs so far, newest first, shared between states.
#[derive(Clone, Default)]
struct History(Option<Arc<(History, Duration, Input)>>);

impl History {
    fn push(&self, now: Duration, input: Input) -> Self {
        Self(Some(Arc::new((self.clone(), now, input))))
    }

    fn inputs(&self) -> Vec<(Duration, Input)> {
        let mut v = Vec::new();
        let mut cur = self;
        while let Some(node) = &cur.0 {
            v.push((node.1, node.2.clone()));
            cur = &node.0;
        }
        v.reverse();
        v
    }
}

/// Feeds one input to the relay; for a config read, returns what the relay decided.
fn feed(relay: &mut BusRelay, now: Duration, input: &Input) -> Option<ConfigAction> {
    match input {
        Input::HostRelations(slots) => {
            let m = Message::BusRelations2(BusRelations {
                functions: slots.iter().map(|&d| desc2(d)).collect(),
                trailing: Vec::new(),
            });
            relay.handle_host(now, Packet::in_band(0, padded(encode(&m))));
        }
        Input::HostEject(s) => relay.handle_host(
            now,
            Packet::in_band(0, padded(slot_msg(Message::Eject, *s))),
        ),
        Input::HostComplete { txid, req, ok } => {
            let payload = if *ok {
                req.success()
            } else {
                padded(status(Status::UNSUCCESSFUL))
            };
            relay.handle_host(now, Packet::completion(*txid, payload));
        }
        Input::HostClosed => relay.handle_host_closed(now),
        Input::GuestRequest { txid, req } => {
            relay.handle_guest(now, Packet::request(*txid, req.payload()))
        }
        Input::GuestNote(n) => relay.handle_guest(now, Packet::in_band(0, n.payload())),
        Input::ConfigRead(s) => {
            return Some(relay.handle_config_access(
                now,
                ConfigAccess::Read {
                    slot: wslot(*s),
                    offset: 0,
                    len: 4,
                },
            ));
        }
        Input::Timeout => relay.handle_timeout(now),
    }
    None
}

// ---- bounds ----

/// How far the host may go; the check is exhaustive within these.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// BUS_RELATIONS2 messages the host sends (answers, repeats and hot-add announcements).
    pub relations: u8,
    /// EJECTs the host sends.
    pub ejects: u8,
    /// Hot-adds of slot 2 (absent at boot).
    pub hot_adds: u8,
    /// Re-adds of a slot after its removal.
    pub re_adds: u8,
    /// Channel rescinds.
    pub rescinds: u8,
    /// Whether a relations message may leave out a listed function (a surprise removal).
    pub surprise_removal: bool,
    /// Whether slot 2 is present at boot too (otherwise only slot 1 is).
    pub two_at_boot: bool,
}

impl Bounds {
    /// The bound the all-safeguards test runs at.
    pub const SMALL: Self = Self {
        relations: 3,
        ejects: 2,
        hot_adds: 1,
        re_adds: 0,
        rescinds: 1,
        surprise_removal: false,
        two_at_boot: false,
    };

    /// The bound of the default check: a hot-add, two ejects, a re-add after an eject, a
    /// rescind, four relations messages.
    pub const DEFAULT: Self = Self {
        relations: 4,
        ejects: 2,
        hot_adds: 1,
        re_adds: 1,
        rescinds: 1,
        surprise_removal: false,
        two_at_boot: false,
    };

    /// A larger bound: five relations messages, three ejects, two re-adds.
    pub const LARGE: Self = Self {
        relations: 5,
        ejects: 3,
        hot_adds: 1,
        re_adds: 2,
        rescinds: 1,
        surprise_removal: false,
        two_at_boot: false,
    };

    /// Both functions present at boot (no hot-add), two ejects and a re-add.
    pub const TWO_AT_BOOT: Self = Self {
        relations: 4,
        ejects: 2,
        hot_adds: 0,
        re_adds: 1,
        rescinds: 1,
        surprise_removal: false,
        two_at_boot: true,
    };

    /// Surprise removals (a relations message leaving out a listed function) with a re-add.
    pub const SURPRISE: Self = Self {
        relations: 4,
        ejects: 2,
        hot_adds: 1,
        re_adds: 1,
        rescinds: 1,
        surprise_removal: true,
        two_at_boot: false,
    };
}

// ---- the host ----

/// One function at the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostFn {
    /// Not present.
    Absent,
    /// Present and assigned; `announced` once a relations message listed it.
    Listed { announced: bool },
    /// EJECT sent; the device is torn down at once (issue #3077); waits for EJECTION_COMPLETE.
    Ejecting,
    /// Removed (ejection completed, or left out of a relations message).
    Removed,
}

/// The abstract Hyper-V host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Host {
    /// Slots 1 and 2.
    pub fns: [HostFn; 2],
    /// The relay forwarded the guest's QUERY_BUS_RELATIONS.
    pub survey_seen: bool,
    /// Requests forwarded to it, not yet answered: relay txid -> request.
    pub pending: BTreeMap<u64, Req>,
    /// The channel was rescinded.
    pub rescinded: bool,
    /// Relations messages sent so far (bounded by [`Bounds::relations`]).
    pub relations_sent: u8,
    /// EJECTs sent so far.
    pub ejects: u8,
    /// Hot-adds so far.
    pub hot_adds: u8,
    /// Re-adds so far.
    pub re_adds: u8,
    /// An EJECTION_COMPLETE arrived for a function the host was not ejecting.
    pub stray_ejection_complete: bool,
}

impl Host {
    fn get(&self, s: u8) -> HostFn {
        self.fns[usize::from(s - 1)]
    }

    fn set(&mut self, s: u8, f: HostFn) {
        self.fns[usize::from(s - 1)] = f;
    }

    /// Whether the device behind the slot is mapped (its BARs and config space are real).
    fn mapped(&self, s: u8) -> bool {
        !self.rescinded && matches!(self.get(s), HostFn::Listed { .. })
    }

    fn listed(&self) -> Vec<u8> {
        (1..=2)
            .filter(|&s| matches!(self.get(s), HostFn::Listed { .. }))
            .collect()
    }

    /// What its relations messages list: what it has, including a function it is ejecting
    /// (dropped only once its EJECTION_COMPLETE arrives).
    fn relations(&self) -> Vec<u8> {
        (1..=2)
            .filter(|&s| matches!(self.get(s), HostFn::Listed { .. } | HostFn::Ejecting))
            .collect()
    }
}

// ---- the guest ----

/// Why the guest crashed (or would have).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// C1/C5: the channel closed while the probe path was mid-flight.
    C5CloseDuringProbe,
    /// C2: an interrupt's descriptor is NULL at unmask (EJECT during interrupt setup, or a
    /// failed CREATE_INTERRUPT_MESSAGE).
    C2NullDescriptor(u8),
    /// C3: an ejection completed before the root bus existed and the probe path then touched
    /// the function.
    C3TouchedEjected(u8),
    /// C4: a relations message added a function after the survey, before the root bus existed.
    C4AddedDuringProbe(u8),
    /// C4 (drop variant): a relations message dropped a function the guest holds.
    C4Dropped(u8),
    /// C7: a BAR access to a function whose device is gone and whose BARs are not shielded.
    C7BarFault(u8),
    /// C7: a config access to a gone device that the relay forwarded to it.
    C7ConfigFault(u8),
}

/// The probe path (hv_pci_probe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    /// Channel not opened yet; QUERY_PROTOCOL_VERSION next.
    Start,
    /// Waiting for the version's completion.
    WaitVersion,
    /// QUERY_BUS_RELATIONS next.
    SendSurvey,
    /// Waiting on the survey completion (`survey_event`).
    WaitSurvey,
    /// BUS_D0ENTRY next.
    SendD0,
    /// Waiting for D0 entry's completion.
    WaitD0,
    /// RESOURCES_ASSIGNED2 for the next child linked at the survey, or root-bus creation.
    AssignNext,
    /// Waiting for a RESOURCES_ASSIGNED2 completion.
    WaitAssigned(u8),
    /// Root-bus creation next (scans config space, starts drivers).
    CreateRootBus,
    /// The bus is installed.
    Done,
}

/// A function's device driver (after the root bus or a rescan created its pci_dev).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Driver {
    /// No pci_dev.
    None,
    /// Probing: about to read config/BARs and compose its MSI.
    Probe,
    /// CREATE_INTERRUPT_MESSAGE2 outstanding; busy-polling.
    WaitInterrupt,
    /// Bound, interrupt unmasked.
    Bound,
}

/// A linked child (hpdev).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Child {
    /// The probe path assigned its resources.
    pub assigned: bool,
    /// Its driver.
    pub driver: Driver,
    /// Marked ejecting by the channel callback.
    pub ejecting: bool,
}

/// A work item on the bus's ordered workqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// `pci_devices_present_work`.
    Relations,
    /// `hv_eject_device_work`.
    Eject(u8),
}

/// The work item running.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Running {
    /// Relations work: functions still to query, the one being queried, those linked.
    Relations {
        todo: Vec<u8>,
        waiting: Option<u8>,
        added: Vec<u8>,
    },
    /// Eject work, the driver removed; EJECTION_COMPLETE next.
    EjectRemoved(u8),
}

/// A host change the guest is working on (for G1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// A relations update; `with_probe` when it arrived before the probe path was done.
    Relations { with_probe: bool },
    /// An EJECT, until EJECTION_COMPLETE.
    Eject(u8),
}

/// Who waits for a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Waiter {
    Probe,
    Work,
    Driver(u8),
}

/// The abstract Linux 6.2 guest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Guest {
    /// The probe path.
    pub probe: Probe,
    /// hbus->survey_event is set (the probe path waits on it).
    pub survey_waiting: bool,
    /// The survey completed.
    pub surveyed: bool,
    /// The children the probe path will assign resources to and scan (linked at survey).
    pub probe_children: Vec<u8>,
    /// The linked children, by slot.
    pub children: BTreeMap<u8, Child>,
    /// Children whose ejection completed before the root bus existed (C3).
    pub ejected_early: BTreeSet<u8>,
    /// The newest relations record not yet consumed by relations work.
    pub record: Option<Vec<u8>>,
    /// Whether that record changes what the guest has (a repeat is no change).
    pub record_changes: bool,
    /// The ordered workqueue.
    pub queue: VecDeque<Work>,
    /// The work item running.
    pub running: Option<Running>,
    /// Requests awaiting completion: guest txid -> (request, who waits).
    waiting: BTreeMap<u64, (Req, Waiter)>,
    /// The guest's next transaction id.
    pub next_txid: u64,
    /// The host change it is working on (for G1).
    pub change: Option<Change>,
    /// The channel was closed (CloseGuest).
    pub closed: bool,
    /// How it died, if it did.
    pub failure: Option<Failure>,
}

impl Guest {
    fn new() -> Self {
        Self {
            probe: Probe::Start,
            survey_waiting: false,
            surveyed: false,
            probe_children: Vec::new(),
            children: BTreeMap::new(),
            ejected_early: BTreeSet::new(),
            record: None,
            record_changes: false,
            queue: VecDeque::new(),
            running: None,
            waiting: BTreeMap::new(),
            next_txid: 1000,
            change: None,
            closed: false,
            failure: None,
        }
    }

    fn fail(&mut self, f: Failure) {
        self.failure.get_or_insert(f);
    }

    /// What the guest believes it has or is about to have (for telling a real change from a
    /// repeat).
    fn expected_view(&self) -> Vec<u8> {
        if let Some(r) = &self.record {
            return r.clone();
        }
        let mut v: BTreeSet<u8> = self.children.keys().copied().collect();
        if let Some(Running::Relations { todo, waiting, .. }) = &self.running {
            v.extend(todo.iter().copied());
            v.extend(waiting.iter().copied());
        }
        v.into_iter().collect()
    }

    /// Whether the guest has a step it can take now.
    fn runnable(&self) -> Vec<GuestStep> {
        let mut v = Vec::new();
        if self.closed || self.failure.is_some() {
            return v;
        }
        if matches!(
            self.probe,
            Probe::Start
                | Probe::SendSurvey
                | Probe::SendD0
                | Probe::AssignNext
                | Probe::CreateRootBus
        ) {
            v.push(GuestStep::Probe);
        }
        let work = match &self.running {
            None => !self.queue.is_empty(),
            Some(Running::Relations { waiting, .. }) => waiting.is_none(),
            Some(Running::EjectRemoved(_)) => true,
        };
        if work {
            v.push(GuestStep::Work);
        }
        for (&s, c) in &self.children {
            if c.driver == Driver::Probe {
                v.push(GuestStep::Driver(s));
            }
        }
        v
    }

    /// Whether the change the guest works on is finished.
    fn update_change(&mut self) {
        let done = match self.change {
            Some(Change::Relations { with_probe }) => {
                // As the relay can see it: every listed function queried (the rescan that
                // follows sends nothing).
                !self.record_changes
                    && !matches!(&self.running, Some(Running::Relations { todo, waiting, .. })
                        if !todo.is_empty() || waiting.is_some())
                    && (!with_probe || self.probe == Probe::Done)
            }
            _ => false,
        };
        if done {
            self.change = None;
        }
    }
}

/// One internal step of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestStep {
    /// The probe path's next step.
    Probe,
    /// The workqueue's next step.
    Work,
    /// A driver's probe: read config and BARs, compose the MSI.
    Driver(u8),
}

// ---- observations ----

/// What was seen on the way (monotone flags) and property violations found in transitions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Seen {
    /// The relay reported a held eject.
    pub eject_held: bool,
    /// The relay coalesced a function.
    pub coalesced: bool,
    /// The relay answered a guest request itself.
    pub answered_locally: bool,
    /// A change ran into the relay's `max_hold` fallback.
    pub change_timed_out: bool,
    /// The guest channel was closed after the host's rescind.
    pub guest_closed_after_rescind: bool,
    /// An eject work removed a driver.
    pub driver_removed: bool,
    /// G1 broken: a change delivered while the guest was on another.
    pub g1: Option<String>,
    /// G2 broken: an EJECT for a function not settled at the guest.
    pub g2: Option<u8>,
    /// G3 broken: a function announced that the host had already taken back.
    pub g3: Option<u8>,
    /// G7 broken: a completion for a request the guest is not waiting for.
    pub stray_completion: Option<u64>,
}

/// The model's state. Equality and hashing leave out the replay history: two states are the
/// same when the relay's full `Debug` rendering (fingerprinted), the host, the guest, the
/// backings, the clock and the observations are.
#[derive(Clone)]
pub struct State {
    history: History,
    /// Hash of `format!("{relay:?}")` after the last step (the relay's whole state).
    pub relay_fp: u64,
    pub now: Duration,
    /// The relay's next timer.
    pub timeout: Option<Duration>,
    pub host: Host,
    pub guest: Guest,
    /// The last backing the relay emitted per slot.
    pub backing: [Option<Back>; 2],
    pub seen: Seen,
    /// A short trace of what reached the guest and host (for reading counterexamples).
    pub last: String,
}

impl PartialEq for State {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for State {}
impl Hash for State {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key().hash(h)
    }
}

#[allow(clippy::type_complexity)]
impl State {
    fn key(
        &self,
    ) -> (
        u64,
        Duration,
        Option<Duration>,
        &Host,
        &Guest,
        &[Option<Back>; 2],
        &Seen,
    ) {
        (
            self.relay_fp,
            self.now,
            self.timeout,
            &self.host,
            &self.guest,
            &self.backing,
            &self.seen,
        )
    }

    /// Nothing more happens unless the host starts something new: the guest has no step, the
    /// host owes no answer, and the relay wants no timer.
    pub fn quiescent(&self) -> bool {
        self.guest.failure.is_none()
            && self.guest.runnable().is_empty()
            && self.host.pending.is_empty()
            && self.timeout.is_none()
    }
}

impl State {
    /// Whether the guest holds exactly the functions the host has announced and still has, and
    /// no host eject waits for an answer.
    pub fn views_agree(&self) -> bool {
        let host: Vec<u8> = (1..=2)
            .filter(|&s| self.host.get(s) == HostFn::Listed { announced: true })
            .collect();
        let guest: Vec<u8> = self.guest.children.keys().copied().collect();
        host == guest && !self.host.fns.contains(&HostFn::Ejecting)
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("now", &self.now)
            .field("last", &self.last)
            .field("host", &self.host)
            .field("guest", &self.guest)
            .field("backing", &self.backing)
            .field("seen", &self.seen)
            .finish()
    }
}

/// [`Backing`] as the model keeps it (the relay's type derives no `Hash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Back {
    /// [`Backing::Device`].
    Device,
    /// [`Backing::Shield`].
    Shield,
    /// [`Backing::Released`].
    Released,
}

impl From<Backing> for Back {
    fn from(b: Backing) -> Self {
        match b {
            Backing::Device => Back::Device,
            Backing::Shield => Back::Shield,
            Backing::Released => Back::Released,
        }
    }
}

/// One step of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// An internal step of the guest.
    Guest(GuestStep),
    /// The host sends BUS_RELATIONS2 with what it has, leaving `drop` out (a surprise removal).
    HostRelations { drop: Option<u8> },
    /// The host hot-adds (or re-adds) a function and announces it.
    HostAdd(u8),
    /// The host ejects a function.
    HostEject(u8),
    /// The host rescinds the channel.
    HostRescind,
    /// The host answers (or drops) a forwarded request.
    HostComplete { txid: u64, outcome: Outcome },
    /// The clock moves to the relay's next timer.
    AdvanceTime,
}

// ---- the model ----

/// The model: bounds and the relay's safeguards.
pub struct RelayModel {
    /// How far the host may go.
    pub bounds: Bounds,
    /// The relay's safeguards (all on, or one off for the teeth).
    pub safeguards: Safeguards,
}

/// One step in the making: the relay rebuilt, and the state being changed.
struct Step {
    relay: BusRelay,
    s: State,
}

impl Step {
    fn input(&mut self, input: Input) -> Option<ConfigAction> {
        let now = self.s.now;
        let r = feed(&mut self.relay, now, &input);
        self.s.history = self.s.history.push(now, input);
        self.drain();
        r
    }

    fn drain(&mut self) {
        while let Some((slot, b)) = self.relay.poll_backing() {
            let s = slot_dev(slot);
            if (1..=2).contains(&s) {
                self.s.backing[usize::from(s - 1)] = Some(b.into());
            }
        }
        while let Some(e) = self.relay.poll_event() {
            match e {
                RelayEvent::EjectHeld { .. } => self.s.seen.eject_held = true,
                RelayEvent::Coalesced { .. } => self.s.seen.coalesced = true,
                RelayEvent::AnsweredLocally { .. } => self.s.seen.answered_locally = true,
                RelayEvent::ChangeTimedOut(_) => self.s.seen.change_timed_out = true,
                _ => {}
            }
        }
        while let Some(t) = self.relay.poll_transmit() {
            match t {
                Transmit::ToHost(p) => self.host_receives(p),
                Transmit::ToGuest(p) => self.guest_receives(p),
                Transmit::CloseGuest => self.guest_closes(),
            }
        }
    }

    fn note(&mut self, what: String) {
        if !self.s.last.is_empty() {
            self.s.last.push_str("; ");
        }
        self.s.last.push_str(&what);
    }

    // ---- host side ----

    fn host_receives(&mut self, p: Packet) {
        if p.kind != PacketKind::InBand {
            return;
        }
        let Ok(m) = decode(&p.payload, Sender::Guest, ProtocolVersion::V1_4) else {
            return;
        };
        let h = &mut self.s.host;
        if h.rescinded {
            return;
        }
        match &m {
            Message::QueryBusRelations(_) => h.survey_seen = true,
            Message::EjectionComplete(e) => {
                let s = slot_dev(e.body.wslot);
                if (1..=2).contains(&s) && h.get(s) == HostFn::Ejecting {
                    h.set(s, HostFn::Removed);
                } else {
                    h.stray_ejection_complete = true;
                }
                self.note(format!("host<-EJECTION_COMPLETE({s})"));
            }
            _ if p.completion_requested() => {
                let req = match &m {
                    Message::QueryProtocolVersion(_) => Req::Version,
                    Message::QueryResourceRequirements(x) => {
                        Req::Requirements(slot_dev(x.body.wslot))
                    }
                    Message::BusD0Entry(_) => Req::D0Entry,
                    Message::ResourcesAssigned2(x) => Req::Assigned(slot_dev(x.head.wslot)),
                    Message::CreateInterruptMessage2(x) => Req::Interrupt(slot_dev(x.body.wslot)),
                    _ => return,
                };
                h.pending.insert(p.transaction_id, req);
            }
            _ => {}
        }
    }

    fn host_relations(&mut self, drop: Option<u8>) {
        let h = &mut self.s.host;
        h.relations_sent += 1;
        if let Some(d) = drop {
            h.set(d, HostFn::Removed);
        }
        for s in h.listed() {
            h.set(s, HostFn::Listed { announced: true });
        }
        let list = h.relations();
        self.note(format!("host->RELATIONS{list:?}"));
        self.input(Input::HostRelations(list));
    }

    // ---- guest side ----

    fn guest_receives(&mut self, p: Packet) {
        if self.s.guest.closed {
            return;
        }
        match p.kind {
            PacketKind::Completion => self.guest_completion(p),
            PacketKind::InBand => {
                let Ok(m) = decode(&p.payload, Sender::Host, ProtocolVersion::V1_4) else {
                    return;
                };
                match m {
                    Message::BusRelations2(r) => {
                        let list: Vec<u8> = r.functions.iter().map(|f| slot_dev(f.wslot)).collect();
                        self.guest_relations(list);
                    }
                    Message::BusRelations(r) => {
                        let list: Vec<u8> = r.functions.iter().map(|f| slot_dev(f.wslot)).collect();
                        self.guest_relations(list);
                    }
                    Message::Eject(e) => self.guest_eject(slot_dev(e.body.wslot)),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn guest_relations(&mut self, list: Vec<u8>) {
        self.note(format!("guest<-RELATIONS{list:?}"));
        let g = &self.s.guest;
        let expected = g.expected_view();
        let real_change = list != expected;
        // G3: a function new to the guest must still be the host's.
        for &s in &list {
            if !expected.contains(&s) && !g.children.contains_key(&s) && !self.s.host.mapped(s) {
                self.s.seen.g3.get_or_insert(s);
            }
        }
        let g = &mut self.s.guest;
        if real_change {
            if let Some(c) = g.change {
                self.s
                    .seen
                    .g1
                    .get_or_insert(format!("relations {list:?} while on {c:?}"));
            }
            g.change = Some(Change::Relations {
                with_probe: g.probe != Probe::Done,
            });
        }
        g.record = Some(list);
        g.record_changes |= real_change;
        // Each message queues a work item; the first to run takes the newest record and the
        // others find none, so one queued item stands for them all.
        if !g.queue.contains(&Work::Relations) {
            g.queue.push_back(Work::Relations);
        }
    }

    fn guest_eject(&mut self, s: u8) {
        self.note(format!("guest<-EJECT({s})"));
        let g = &mut self.s.guest;
        if let Some(c) = g.change {
            self.s
                .seen
                .g1
                .get_or_insert(format!("EJECT({s}) while on {c:?}"));
        }
        g.change = Some(Change::Eject(s));
        // Settled at the guest: the probe path is done (so resources were assigned where it
        // assigns them), the function is linked (its requirements were queried), and its
        // driver is not setting up its interrupt.
        let settled = g.probe == Probe::Done
            && g.children
                .get(&s)
                .is_some_and(|c| !matches!(c.driver, Driver::Probe | Driver::WaitInterrupt));
        if !settled {
            self.s.seen.g2.get_or_insert(s);
        }
        let Some(c) = g.children.get_mut(&s) else {
            // 6.2: an EJECT for a slot with no child is ignored.
            return;
        };
        c.ejecting = true;
        if matches!(c.driver, Driver::Probe | Driver::WaitInterrupt) {
            // 6.2's compose loop gives up on the ejecting mark: NULL descriptor at unmask.
            g.fail(Failure::C2NullDescriptor(s));
        }
        g.queue.push_back(Work::Eject(s));
    }

    fn guest_completion(&mut self, p: Packet) {
        let g = &mut self.s.guest;
        let Some((req, waiter)) = g.waiting.remove(&p.transaction_id) else {
            self.s.seen.stray_completion.get_or_insert(p.transaction_id);
            return;
        };
        let ok = p.payload.get(..4) == Some(&[0, 0, 0, 0][..]);
        self.note(format!("guest<-done {req:?} ok={ok}"));
        let g = &mut self.s.guest;
        match waiter {
            Waiter::Probe => {
                g.probe = match (g.probe, req) {
                    (Probe::WaitVersion, _) => Probe::SendSurvey,
                    (Probe::WaitD0, _) => Probe::AssignNext,
                    (Probe::WaitAssigned(s), _) => {
                        if let Some(c) = g.children.get_mut(&s) {
                            c.assigned = true;
                        }
                        Probe::AssignNext
                    }
                    (p, _) => p,
                };
            }
            Waiter::Work => {
                if let Some(Running::Relations { waiting, added, .. }) = &mut g.running {
                    if let Some(s) = waiting.take() {
                        added.push(s);
                        g.children.insert(
                            s,
                            Child {
                                assigned: false,
                                driver: Driver::None,
                                ejecting: false,
                            },
                        );
                    }
                }
            }
            Waiter::Driver(s) => {
                if let Some(c) = g.children.get_mut(&s) {
                    c.driver = Driver::Bound;
                    if !ok {
                        g.fail(Failure::C2NullDescriptor(s));
                    }
                }
            }
        }
    }

    fn guest_closes(&mut self) {
        self.note("guest<-CLOSE".to_owned());
        if self.s.host.rescinded {
            self.s.seen.guest_closed_after_rescind = true;
        }
        if self.s.guest.probe == Probe::Start {
            // The probe path has not opened the channel yet: it fails to, and returns cleanly.
        } else if self.s.guest.probe != Probe::Done {
            self.s.guest.fail(Failure::C5CloseDuringProbe);
        } else {
            // hv_pci_remove: the root bus goes; each bound driver's remove reads its BARs.
            let bound: Vec<u8> = self
                .s
                .guest
                .children
                .iter()
                .filter(|(_, c)| c.driver != Driver::None)
                .map(|(&s, _)| s)
                .collect();
            for s in bound {
                self.bar_read(s);
            }
        }
        self.s.guest.closed = true;
    }

    fn request(&mut self, req: Req, waiter: Waiter) {
        let g = &mut self.s.guest;
        g.next_txid += 1;
        let txid = g.next_txid;
        g.waiting.insert(txid, (req, waiter));
        self.input(Input::GuestRequest { txid, req });
    }

    fn bar_read(&mut self, s: u8) {
        if !self.s.host.mapped(s) && self.s.backing[usize::from(s - 1)] != Some(Back::Shield) {
            self.s.guest.fail(Failure::C7BarFault(s));
        }
    }

    fn config_read(&mut self, s: u8) {
        let action = self.input(Input::ConfigRead(s));
        if action == Some(ConfigAction::Forward) && !self.s.host.mapped(s) {
            self.s.guest.fail(Failure::C7ConfigFault(s));
        }
    }

    fn guest_step(&mut self, step: GuestStep) {
        match step {
            GuestStep::Probe => self.probe_step(),
            GuestStep::Work => self.work_step(),
            GuestStep::Driver(s) => {
                self.config_read(s);
                self.bar_read(s);
                if let Some(c) = self.s.guest.children.get_mut(&s) {
                    c.driver = Driver::WaitInterrupt;
                }
                self.request(Req::Interrupt(s), Waiter::Driver(s));
            }
        }
    }

    fn probe_step(&mut self) {
        match self.s.guest.probe {
            Probe::Start => {
                self.s.guest.probe = Probe::WaitVersion;
                self.request(Req::Version, Waiter::Probe);
            }
            Probe::SendSurvey => {
                self.s.guest.probe = Probe::WaitSurvey;
                self.s.guest.survey_waiting = true;
                self.input(Input::GuestNote(Note::QueryRelations));
            }
            Probe::SendD0 => {
                self.s.guest.probe = Probe::WaitD0;
                self.request(Req::D0Entry, Waiter::Probe);
            }
            Probe::AssignNext => {
                let g = &self.s.guest;
                let next = g
                    .probe_children
                    .iter()
                    .copied()
                    .find(|s| g.children.get(s).is_none_or(|c| !c.assigned));
                match next {
                    Some(s) if g.ejected_early.contains(&s) || !g.children.contains_key(&s) => {
                        self.s.guest.fail(Failure::C3TouchedEjected(s));
                    }
                    Some(s) => {
                        self.s.guest.probe = Probe::WaitAssigned(s);
                        self.request(Req::Assigned(s), Waiter::Probe);
                    }
                    None => self.s.guest.probe = Probe::CreateRootBus,
                }
            }
            Probe::CreateRootBus => {
                let mut slots: BTreeSet<u8> = self.s.guest.children.keys().copied().collect();
                slots.extend(self.s.guest.probe_children.iter().copied());
                for s in slots {
                    if self.s.guest.ejected_early.contains(&s) {
                        self.s.guest.fail(Failure::C3TouchedEjected(s));
                        return;
                    }
                    self.config_read(s);
                    if let Some(c) = self.s.guest.children.get_mut(&s) {
                        c.driver = Driver::Probe;
                    }
                }
                self.s.guest.probe = Probe::Done;
            }
            _ => {}
        }
    }

    fn work_step(&mut self) {
        let running = self.s.guest.running.take();
        match running {
            None => {
                let Some(w) = self.s.guest.queue.pop_front() else {
                    return;
                };
                match w {
                    Work::Relations => {
                        self.s.guest.record_changes = false;
                        let Some(list) = self.s.guest.record.take() else {
                            return; // collapsed into an earlier run
                        };
                        let g = &mut self.s.guest;
                        let dropped: Vec<u8> = g
                            .children
                            .keys()
                            .copied()
                            .filter(|s| !list.contains(s))
                            .collect();
                        if let Some(&d) = dropped.first() {
                            g.fail(Failure::C4Dropped(d));
                            return;
                        }
                        let todo: Vec<u8> = list
                            .iter()
                            .copied()
                            .filter(|s| !g.children.contains_key(s))
                            .collect();
                        self.relations_continue(todo, Vec::new());
                    }
                    Work::Eject(s) => self.eject_start(s),
                }
            }
            Some(Running::Relations { todo, added, .. }) => self.relations_continue(todo, added),
            Some(Running::EjectRemoved(s)) => {
                self.eject_finish(s);
            }
        }
    }

    fn relations_continue(&mut self, mut todo: Vec<u8>, added: Vec<u8>) {
        if !todo.is_empty() {
            let s = todo.remove(0);
            self.s.guest.running = Some(Running::Relations {
                todo,
                waiting: Some(s),
                added,
            });
            self.request(Req::Requirements(s), Waiter::Work);
            return;
        }
        let g = &mut self.s.guest;
        if g.probe == Probe::Done {
            // Installed: rescan; drivers probe the new functions.
            for s in &added {
                if let Some(c) = g.children.get_mut(s) {
                    c.driver = Driver::Probe;
                }
            }
        } else if g.survey_waiting {
            // survey_child_resources: wake the probe path.
            g.survey_waiting = false;
            g.surveyed = true;
            g.probe_children = g.children.keys().copied().collect();
            if g.probe == Probe::WaitSurvey {
                g.probe = Probe::SendD0;
            }
        } else if let Some(&s) = added.first() {
            if g.surveyed {
                g.fail(Failure::C4AddedDuringProbe(s));
            }
        }
    }

    fn eject_start(&mut self, s: u8) {
        let g = &mut self.s.guest;
        let Some(c) = g.children.get(&s).copied() else {
            return;
        };
        if c.driver == Driver::None {
            // No pci_dev (no root bus yet): complete at once.
            if g.probe != Probe::Done {
                g.ejected_early.insert(s);
            }
            self.eject_finish(s);
            return;
        }
        // The driver's remove path: free the interrupt, read device registers.
        self.s.seen.driver_removed = true;
        if c.driver == Driver::Bound {
            self.input(Input::GuestNote(Note::DeleteInterrupt(s)));
        }
        self.bar_read(s);
        self.config_read(s);
        self.s.guest.running = Some(Running::EjectRemoved(s));
    }

    fn eject_finish(&mut self, s: u8) {
        let g = &mut self.s.guest;
        g.children.remove(&s);
        g.running = None;
        if g.change == Some(Change::Eject(s)) {
            g.change = None;
        }
        self.input(Input::GuestNote(Note::EjectionComplete(s)));
    }
}

fn slot_dev(s: WinSlot) -> u8 {
    u8::try_from(s.raw() & 0x1f).unwrap_or(0)
}

impl RelayModel {
    /// A model with these bounds and safeguards.
    pub fn new(bounds: Bounds, safeguards: Safeguards) -> Self {
        Self { bounds, safeguards }
    }

    /// Takes one action, which must be enabled (for scripted scenarios).
    pub fn step(&self, s: &State, a: Action) -> State {
        let mut enabled = Vec::new();
        self.actions(s, &mut enabled);
        assert!(enabled.contains(&a), "{a:?} is not enabled in {s:?}");
        self.next_state(s, a).expect("enabled action")
    }

    /// Lets the guest run until every context waits.
    pub fn run_guest(&self, mut s: State) -> State {
        while let Some(&g) = s.guest.runnable().first() {
            s = self.step(&s, Action::Guest(g));
        }
        s
    }

    /// The host ends the forwarded request `req` this way.
    pub fn complete(&self, s: &State, req: Req, outcome: Outcome) -> State {
        let txid = s
            .host
            .pending
            .iter()
            .find(|(_, r)| **r == req)
            .map(|(&t, _)| t)
            .unwrap_or_else(|| panic!("{req:?} is not pending at the host: {s:?}"));
        self.step(s, Action::HostComplete { txid, outcome })
    }

    /// Lets the guest run, the host answer everything (dropping interrupt requests for
    /// functions it has removed) and time pass, until nothing more happens by itself.
    pub fn settle(&self, mut s: State) -> State {
        loop {
            let mut enabled = Vec::new();
            self.actions(&s, &mut enabled);
            let next = enabled.into_iter().find(|a| match a {
                Action::Guest(_) | Action::AdvanceTime => true,
                Action::HostComplete { outcome, .. } => *outcome != Outcome::Fail,
                _ => false,
            });
            match next {
                Some(a) => s = self.next_state(&s, a).expect("enabled action"),
                None => return s,
            }
        }
    }

    fn relay(&self) -> BusRelay {
        BusRelay::with_safeguards(RelayConfig::default(), self.safeguards)
    }

    /// The relay as it is in `s` (rebuilt by replay), for inspection in scripted tests.
    pub fn relay_of(&self, s: &State) -> BusRelay {
        self.rebuild(s)
    }

    fn rebuild(&self, s: &State) -> BusRelay {
        let mut relay = self.relay();
        for (now, input) in s.history.inputs() {
            feed(&mut relay, now, &input);
            while relay.poll_transmit().is_some() {}
            while relay.poll_backing().is_some() {}
            while relay.poll_event().is_some() {}
        }
        relay
    }
}

fn fingerprint(relay: &BusRelay) -> u64 {
    let mut h = DefaultHasher::new();
    format!("{relay:?}").hash(&mut h);
    h.finish()
}

impl Model for RelayModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let relay = self.relay();
        let mut fns = [HostFn::Listed { announced: false }, HostFn::Absent];
        if self.bounds.two_at_boot {
            fns[1] = HostFn::Listed { announced: false };
        }
        vec![State {
            history: History::default(),
            relay_fp: fingerprint(&relay),
            now: Duration::ZERO,
            timeout: relay.poll_timeout(),
            host: Host {
                fns,
                survey_seen: false,
                pending: BTreeMap::new(),
                rescinded: false,
                relations_sent: 0,
                ejects: 0,
                hot_adds: 0,
                re_adds: 0,
                stray_ejection_complete: false,
            },
            guest: Guest::new(),
            backing: [None, None],
            seen: Seen::default(),
            last: String::new(),
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.guest.failure.is_some() {
            return; // the guest is dead; the counterexample ends here
        }
        let guest_steps = s.guest.runnable();
        let idle = guest_steps.is_empty();
        actions.extend(guest_steps.into_iter().map(Action::Guest));
        let h = &s.host;
        let b = &self.bounds;
        if !h.rescinded {
            if h.survey_seen && h.relations_sent < b.relations {
                actions.push(Action::HostRelations { drop: None });
                if b.surprise_removal {
                    for sl in h.listed() {
                        if matches!(h.get(sl), HostFn::Listed { announced: true }) {
                            actions.push(Action::HostRelations { drop: Some(sl) });
                        }
                    }
                }
            }
            for sl in 1..=2u8 {
                match h.get(sl) {
                    HostFn::Absent if h.hot_adds < b.hot_adds => actions.push(Action::HostAdd(sl)),
                    HostFn::Removed if h.re_adds < b.re_adds => actions.push(Action::HostAdd(sl)),
                    HostFn::Listed { announced: true } if h.ejects < b.ejects => {
                        actions.push(Action::HostEject(sl))
                    }
                    _ => {}
                }
            }
            if b.rescinds > 0 {
                actions.push(Action::HostRescind);
            }
            for (&txid, &req) in &h.pending {
                let gone = req.slot().is_some_and(|sl| !h.mapped(sl));
                if gone && matches!(req, Req::Interrupt(_)) {
                    actions.push(Action::HostComplete {
                        txid,
                        outcome: Outcome::Fail,
                    });
                    actions.push(Action::HostComplete {
                        txid,
                        outcome: Outcome::Drop,
                    });
                } else {
                    actions.push(Action::HostComplete {
                        txid,
                        outcome: Outcome::Success,
                    });
                }
            }
        }
        // Time passes only while the guest waits and the host owes nothing: guest steps and
        // host answers are quick next to the settle window.
        if idle && (h.pending.is_empty() || h.rescinded) && s.timeout.is_some() {
            actions.push(Action::AdvanceTime);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut st = Step {
            relay: self.rebuild(last),
            s: last.clone(),
        };
        st.s.last.clear();
        match action {
            Action::Guest(g) => st.guest_step(g),
            Action::HostRelations { drop } => st.host_relations(drop),
            Action::HostAdd(sl) => {
                let h = &mut st.s.host;
                if h.get(sl) == HostFn::Absent {
                    h.hot_adds += 1;
                } else {
                    h.re_adds += 1;
                }
                h.set(sl, HostFn::Listed { announced: false });
                if h.survey_seen && h.relations_sent < self.bounds.relations {
                    st.host_relations(None);
                }
            }
            Action::HostEject(sl) => {
                st.s.host.ejects += 1;
                st.s.host.set(sl, HostFn::Ejecting);
                st.note(format!("host->EJECT({sl})"));
                st.input(Input::HostEject(sl));
            }
            Action::HostRescind => {
                let h = &mut st.s.host;
                h.rescinded = true;
                h.pending.clear();
                st.note("host rescinds".to_owned());
                st.input(Input::HostClosed);
            }
            Action::HostComplete { txid, outcome } => {
                let req = st.s.host.pending.remove(&txid)?;
                if outcome != Outcome::Drop {
                    st.input(Input::HostComplete {
                        txid,
                        req,
                        ok: outcome == Outcome::Success,
                    });
                }
            }
            Action::AdvanceTime => {
                let t = last.timeout?;
                st.s.now = t;
                st.input(Input::Timeout);
            }
        }
        st.s.guest.update_change();
        st.s.relay_fp = fingerprint(&st.relay);
        st.s.timeout = st.relay.poll_timeout();
        Some(st.s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no guest panic or fault (C1-C5, C7)", |_, s: &State| {
                s.guest.failure.is_none()
            }),
            Property::always("G1 one change at a time", |_, s: &State| {
                s.seen.g1.is_none()
            }),
            Property::always("G2 eject only when settled", |_, s: &State| {
                s.seen.g2.is_none()
            }),
            Property::always("G3 never announce a removed function", |_, s: &State| {
                s.seen.g3.is_none()
            }),
            Property::always("G7 every request exactly one completion", |_, s: &State| {
                s.seen.stray_completion.is_none() && (!s.quiescent() || s.guest.waiting.is_empty())
            }),
            Property::always("G5 rescind ends with CloseGuest", |_, s: &State| {
                !s.quiescent() || !s.host.rescinded || s.guest.closed
            }),
            Property::always("G7 the host's functions reach the guest", |_, s: &State| {
                !s.quiescent() || s.host.rescinded || s.guest.closed || s.views_agree()
            }),
            Property::always("no change runs into max_hold", |_, s: &State| {
                !s.seen.change_timed_out
            }),
            Property::always("host sees no stray EJECTION_COMPLETE", |_, s: &State| {
                !s.host.stray_ejection_complete
            }),
            Property::sometimes("an eject was held", |_, s: &State| s.seen.eject_held),
            Property::sometimes("a function was coalesced", |_, s: &State| s.seen.coalesced),
            Property::sometimes("a request was answered locally", |_, s: &State| {
                s.seen.answered_locally
            }),
            Property::sometimes("an eject removed a bound driver", |_, s: &State| {
                s.seen.driver_removed
            }),
            Property::sometimes("a rescind closed the guest", |_, s: &State| {
                s.seen.guest_closed_after_rescind
            }),
        ]
    }
}
