//! Per-function state: what the host has done with a function, what the guest knows of it,
//! and how far the guest's probe of it has come.
//!
//! The fields are private to the crate: outside it a [`Function`] is a read-only view, and
//! inside it every change of state goes through the named transitions in [`machine`] (the
//! host-state x guest-state machine in one file). [`config`] answers a removed function's
//! config space.

mod config;
mod machine;
mod save;

pub(crate) use machine::{EjectAnswer, LetGo, Listing, Omitted, RequestKind};
pub(crate) use save::{BACKINGS, STAGES, index_of, required};

use inspect::{Inspect, Node};
use std::collections::BTreeMap;
use std::time::Duration;
use vpci_protocol::WinSlot;
use vpci_protocol::wire::FunctionDescription2;

/// How far one guest request of a kind has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Inspect)]
pub enum Stage {
    /// Not sent yet.
    #[default]
    NotStarted,
    /// Sent, not completed.
    Pending,
    /// Completed (by the host or locally).
    Done,
}

/// The host's side of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Inspect)]
pub enum HostState {
    /// Listed in the host's relations; no eject.
    Listed,
    /// The host sent EJECT and waits for EJECTION_COMPLETE: the relay owes it exactly one,
    /// the guest's own when the guest lets go in time, else the relay's at the host's
    /// deadline.
    Ejecting,
    /// The host ejected it and has its EJECTION_COMPLETE. Relations the host sent before it
    /// saw that answer may still list it: such a listing of the same identity is stale and
    /// changes nothing, until the host lists the slot without it or with a new identity.
    Ejected,
    /// The host no longer has it and waits for nothing (it dropped it from its relations
    /// without an eject, or the host itself is gone).
    Gone,
}

/// The guest's side of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Inspect)]
pub enum GuestState {
    /// Never announced to the guest.
    Hidden,
    /// Announced in a relations message.
    Announced,
    /// EJECT delivered; waiting for EJECTION_COMPLETE.
    Ejecting,
}

/// Where a function's BARs and config space are backed for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Inspect)]
pub enum Backing {
    /// By the device itself (the host's mapping).
    Device,
    /// By the relay's shield: config reads from the relay's copy, BAR reads all ones, writes
    /// dropped. Installed when the host removes a function the guest still holds.
    Shield,
    /// Not backed: the guest sent EJECTION_COMPLETE and holds no reference.
    Released,
}

/// The host's newest function in a slot whose old function the guest still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Successor {
    /// Its description.
    pub desc: FunctionDescription2,
    /// The host ejected it before the guest was ever shown it (the relay answered at once).
    /// It is still the host's last listing in the slot: a repeated EJECT, or a stale listing
    /// of it, changes nothing.
    pub ejected: bool,
}

/// One function on the bus (or, once the guest has let go of an ejected function, the slot's
/// memory of it: host state [`HostState::Ejected`], guest state [`GuestState::Hidden`]).
#[derive(Clone, Debug, Hash, Inspect)]
pub struct Function {
    /// The function's slot.
    #[inspect(display)]
    pub(crate) slot: WinSlot,
    /// Its description (a BUS_RELATIONS description is widened with zero flags).
    #[inspect(with = "description_node")]
    pub(crate) desc: FunctionDescription2,
    /// Whether the allow-list lets the guest see it.
    pub(crate) allowed: bool,
    /// The host's side.
    pub(crate) host: HostState,
    /// The guest's side.
    pub(crate) guest: GuestState,
    /// QUERY_RESOURCE_REQUIREMENTS progress.
    pub(crate) requirements: Stage,
    /// RESOURCES_ASSIGNED progress.
    pub(crate) resources: Stage,
    /// Whether the guest's probe path will send RESOURCES_ASSIGNED for it (it was announced
    /// before the bus was installed).
    pub(crate) needs_resources: bool,
    /// CREATE_INTERRUPT_MESSAGE requests outstanding.
    pub(crate) interrupts_pending: u32,
    /// Forwarded requests for it still outstanding at the host.
    pub(crate) requests_pending: u32,
    /// Host EJECTs of it that wait for an EJECTION_COMPLETE (at least 1 while `host` is
    /// `Ejecting`: the first, and any repeats). All are answered once the guest lets go, or
    /// at the host's deadline.
    pub(crate) host_ejects_owed: u32,
    /// When the host's first unanswered EJECT of it arrived: the relay answers it by
    /// `max_hold` after this, whatever the guest is doing.
    pub(crate) host_eject_since: Option<Duration>,
    /// The last guest traffic for it (a request or a config access).
    pub(crate) last_activity: Option<Duration>,
    /// When an eject for it became pending (the host's EJECT, or the relay's own).
    pub(crate) eject_since: Option<Duration>,
    /// Whether the hold of its eject has been reported (one event per hold).
    pub(crate) hold_reported: bool,
    /// The probed BARs the host reported.
    #[inspect(hex)]
    pub(crate) probed_bars: Option<[u32; 6]>,
    /// Config-space dwords seen through the window, for answering after removal.
    #[inspect(with = "cache_size")]
    pub(crate) config: BTreeMap<u16, u32>,
    /// Current backing.
    pub(crate) backing: Backing,
    /// The host listed this slot again, with a new identity, while the guest still holds the
    /// function leaving it: the host's current function in the slot, announced once the
    /// guest has let go of the old one (unless the host ejected it meanwhile).
    #[inspect(with = "successor_node")]
    pub(crate) successor: Option<Successor>,
    /// The host's latest relations leave the slot out: nothing the host sends later can be a
    /// stale listing of this function (a channel is first in, first out), so once the guest
    /// lets go the slot needs no memory of it.
    pub(crate) unlisted: bool,
}

/// Whether two descriptions name the same function: slot, vendor id, device id and serial.
pub(crate) fn same_identity(a: &FunctionDescription2, b: &FunctionDescription2) -> bool {
    a.wslot == b.wslot && a.v_id == b.v_id && a.d_id == b.d_id && a.ser == b.ser
}

fn description_node(d: &FunctionDescription2) -> Node {
    Node::dir()
        .hex("vendor_id", d.v_id.get().into())
        .hex("device_id", d.d_id.get().into())
        .hex("revision", d.rev.into())
        .hex(
            "class",
            (u64::from(d.base_class) << 16) | (u64::from(d.subclass) << 8) | u64::from(d.prog_intf),
        )
        .hex("subsystem_id", d.subsystem_id.get().into())
        .field("serial", &d.ser.get())
        .field("numa_node", &d.virtual_numa_node.get())
        .build()
}

fn successor_node(s: &Option<Successor>) -> Node {
    match s {
        Some(s) => Node::dir()
            .child("description", description_node(&s.desc))
            .field("ejected", &s.ejected)
            .build(),
        None => Node::Value(inspect::Value::None),
    }
}

fn cache_size(c: &BTreeMap<u16, u32>) -> Node {
    c.len().inspect()
}

impl Function {
    /// A function the host just listed.
    pub(crate) fn new(desc: FunctionDescription2, allowed: bool) -> Self {
        Self {
            slot: desc.wslot,
            desc,
            allowed,
            host: HostState::Listed,
            guest: GuestState::Hidden,
            requirements: Stage::NotStarted,
            resources: Stage::NotStarted,
            needs_resources: false,
            interrupts_pending: 0,
            requests_pending: 0,
            host_ejects_owed: 0,
            host_eject_since: None,
            last_activity: None,
            eject_since: None,
            hold_reported: false,
            probed_bars: None,
            config: BTreeMap::new(),
            backing: Backing::Released,
            successor: None,
            unlisted: false,
        }
    }

    /// The slot's memory of an ejected function the guest no longer holds (or never saw):
    /// a listing of the same identity is stale, an EJECT of it a repeat.
    pub(crate) fn ejected(desc: FunctionDescription2, allowed: bool) -> Self {
        Self {
            host: HostState::Ejected,
            ..Self::new(desc, allowed)
        }
    }

    /// The host's last listing in the slot: the successor if there is one, else this function.
    pub fn last_listed(&self) -> &FunctionDescription2 {
        self.successor.as_ref().map_or(&self.desc, |s| &s.desc)
    }

    /// Whether the host's last listing in the slot has been ejected by the host (an EJECT
    /// now is a repeat, and a listing of the same identity is stale).
    pub fn last_listed_ejected(&self) -> bool {
        match &self.successor {
            Some(s) => s.ejected,
            None => matches!(self.host, HostState::Ejecting | HostState::Ejected),
        }
    }

    // ---- the read-only view ----

    /// The function's slot.
    pub fn slot(&self) -> WinSlot {
        self.slot
    }

    /// Its description, as the host listed it (a BUS_RELATIONS description widened with zero
    /// flags).
    pub fn desc(&self) -> &FunctionDescription2 {
        &self.desc
    }

    /// Whether the allow-list lets the guest see it.
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// The host's side.
    pub fn host(&self) -> HostState {
        self.host
    }

    /// The guest's side.
    pub fn guest(&self) -> GuestState {
        self.guest
    }

    /// QUERY_RESOURCE_REQUIREMENTS progress.
    pub fn requirements(&self) -> Stage {
        self.requirements
    }

    /// RESOURCES_ASSIGNED progress.
    pub fn resources(&self) -> Stage {
        self.resources
    }

    /// CREATE_INTERRUPT_MESSAGE requests outstanding at the host.
    pub fn interrupts_pending(&self) -> u32 {
        self.interrupts_pending
    }

    /// Forwarded requests for it still outstanding at the host.
    pub fn requests_pending(&self) -> u32 {
        self.requests_pending
    }

    /// Host EJECTs of it the relay still owes an EJECTION_COMPLETE.
    pub fn host_ejects_owed(&self) -> u32 {
        self.host_ejects_owed
    }

    /// When the host's first unanswered EJECT of it arrived.
    pub fn host_eject_since(&self) -> Option<Duration> {
        self.host_eject_since
    }

    /// When an eject for it became pending at the guest (the host's, or the relay's own).
    pub fn eject_since(&self) -> Option<Duration> {
        self.eject_since
    }

    /// The last guest traffic for it.
    pub fn last_activity(&self) -> Option<Duration> {
        self.last_activity
    }

    /// The BARs the host reported for it (QUERY_RESOURCE_REQUIREMENTS).
    pub fn probed_bars(&self) -> Option<[u32; 6]> {
        self.probed_bars
    }

    /// Where its BARs and config space are backed for the guest.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The host's newest function in the slot, waiting for the guest to let go of this one.
    pub fn successor(&self) -> Option<&Successor> {
        self.successor.as_ref()
    }

    /// Whether `d` describes this same function: a function is its slot and its identity
    /// (vendor, device and serial number), as Linux's relations work and OpenVMM's vPCI
    /// client match them.
    pub fn is(&self, d: &FunctionDescription2) -> bool {
        same_identity(&self.desc, d)
    }

    /// Whether the guest can see it (announced, possibly being ejected).
    pub fn guest_visible(&self) -> bool {
        self.guest != GuestState::Hidden
    }

    /// Whether an eject is waiting to be delivered to the guest.
    pub fn eject_pending(&self) -> bool {
        self.guest == GuestState::Announced && self.eject_since.is_some()
    }

    /// Whether the guest's probe of it is settled (guarantee 2): requirements queried,
    /// resources assigned and completed where the probe path assigns them, nothing
    /// outstanding, and quiet for `settle`.
    pub fn settled(&self, now: Duration, settle: Duration) -> bool {
        let Self {
            requirements,
            resources,
            needs_resources,
            interrupts_pending,
            requests_pending,
            last_activity,
            ..
        } = self;
        *requirements == Stage::Done
            && *resources != Stage::Pending
            && (!needs_resources || *resources == Stage::Done)
            && *interrupts_pending == 0
            && *requests_pending == 0
            && last_activity.is_none_or(|t| now >= t.saturating_add(settle))
    }

    /// When it will be quiet long enough, if that is still ahead.
    pub fn quiet_at(&self, settle: Duration) -> Option<Duration> {
        self.last_activity.map(|t| t.saturating_add(settle))
    }
}
