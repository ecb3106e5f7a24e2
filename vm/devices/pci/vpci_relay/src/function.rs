//! Per-function state: what the host has done with a function, what the guest knows of it,
//! and how far the guest's probe of it has come.

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
    pub slot: WinSlot,
    /// Its description (a BUS_RELATIONS description is widened with zero flags).
    #[inspect(with = "description_node")]
    pub desc: FunctionDescription2,
    /// Whether the allow-list lets the guest see it.
    pub allowed: bool,
    /// The host's side.
    pub host: HostState,
    /// The guest's side.
    pub guest: GuestState,
    /// QUERY_RESOURCE_REQUIREMENTS progress.
    pub requirements: Stage,
    /// RESOURCES_ASSIGNED progress.
    pub resources: Stage,
    /// Whether the guest's probe path will send RESOURCES_ASSIGNED for it (it was announced
    /// before the bus was installed).
    pub needs_resources: bool,
    /// CREATE_INTERRUPT_MESSAGE requests outstanding.
    pub interrupts_pending: u32,
    /// Forwarded requests for it still outstanding at the host.
    pub requests_pending: u32,
    /// Host EJECTs of it that wait for an EJECTION_COMPLETE (at least 1 while `host` is
    /// `Ejecting`: the first, and any repeats). All are answered once the guest lets go, or
    /// at the host's deadline.
    pub host_ejects_owed: u32,
    /// When the host's first unanswered EJECT of it arrived: the relay answers it by
    /// `max_hold` after this, whatever the guest is doing.
    pub host_eject_since: Option<std::time::Duration>,
    /// The last guest traffic for it (a request or a config access).
    pub last_activity: Option<Duration>,
    /// When an eject for it became pending (the host's EJECT, or the relay's own).
    pub eject_since: Option<Duration>,
    /// Whether the hold of its eject has been reported (one event per hold).
    pub hold_reported: bool,
    /// The probed BARs the host reported.
    #[inspect(hex)]
    pub probed_bars: Option<[u32; 6]>,
    /// Config-space dwords seen through the window, for answering after removal.
    #[inspect(with = "cache_size")]
    pub config: BTreeMap<u16, u32>,
    /// Current backing.
    pub backing: Backing,
    /// The host listed this slot again, with a new identity, while the guest still holds the
    /// function leaving it: the host's current function in the slot, announced once the
    /// guest has let go of the old one (unless the host ejected it meanwhile).
    #[inspect(with = "successor_node")]
    pub successor: Option<Successor>,
}

/// What BAR register `bar` holds after `value` is written to it, given the probed BARs (what
/// each register read after all ones were written: its size mask and type bits).
fn bar_register(probed: &[u32; 6], bar: usize, value: u32) -> u32 {
    let Some(&p) = probed.get(bar) else {
        return value;
    };
    // The upper half of a 64-bit memory BAR (the register before it says so) keeps the
    // address bits its size allows.
    let upper = bar
        .checked_sub(1)
        .and_then(|b| probed.get(b))
        .is_some_and(|&lower| lower & 0x1 == 0 && lower & 0x6 == 0x4);
    if p == 0 {
        0 // not implemented
    } else if upper {
        value & p
    } else if p & 0x1 == 0x1 {
        (value & p & !0x3) | (p & 0x3) // I/O
    } else {
        (value & p & !0xf) | (p & 0xf) // memory
    }
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
    pub fn new(desc: FunctionDescription2, allowed: bool) -> Self {
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
        }
    }

    /// The slot's memory of an ejected function the guest no longer holds (or never saw):
    /// a listing of the same identity is stale, an EJECT of it a repeat.
    pub fn ejected(desc: FunctionDescription2, allowed: bool) -> Self {
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

    /// A guest write to config space once the host has removed the function: kept in the
    /// relay's copy as the device would take it, so that what the guest reads back is what a
    /// device would answer. A BAR keeps only its address bits and its type bits, as the
    /// probed BARs of QUERY_RESOURCE_REQUIREMENTS say (so BAR sizing works: write all ones,
    /// read the size mask); the identity registers are read-only. At most `limit` dwords are
    /// kept.
    pub fn shadow_write(&mut self, offset: u16, len: u8, value: u32, limit: usize) {
        let dword = offset & !3;
        if matches!(dword, 0x00 | 0x08 | 0x2c) {
            return;
        }
        let shift = u32::from(offset & 3) * 8;
        let width: u32 = match len {
            1 => 0xff,
            2 => 0xffff,
            _ => u32::MAX,
        };
        let mask = width.checked_shl(shift).unwrap_or(0);
        let merged =
            (self.config_copy(dword) & !mask) | (value.checked_shl(shift).unwrap_or(0) & mask);
        let stored = match (
            dword.checked_sub(0x10).map(|d| usize::from(d / 4)),
            self.probed_bars,
        ) {
            (Some(bar), Some(probed)) if bar < 6 => bar_register(&probed, bar, merged),
            _ => merged,
        };
        if self.config.len() < limit || self.config.contains_key(&dword) {
            self.config.insert(dword, stored);
        }
    }

    /// The config dword at `offset` (dword-aligned) as the relay answers it once the host
    /// has removed the function: the description's identity fields, else what the guest last
    /// read through the window, else all ones.
    pub fn config_copy(&self, offset: u16) -> u32 {
        let d = &self.desc;
        match offset {
            0x00 => u32::from(d.v_id.get()) | (u32::from(d.d_id.get()) << 16),
            0x08 => {
                u32::from(d.rev)
                    | (u32::from(d.prog_intf) << 8)
                    | (u32::from(d.subclass) << 16)
                    | (u32::from(d.base_class) << 24)
            }
            0x2c => d.subsystem_id.get(),
            _ => self.config.get(&offset).copied().unwrap_or(u32::MAX),
        }
    }
}
