//! The abstract Hyper-V host: what it has in each slot, what it owes and is owed, and how it
//! reacts to what the relay sends it.

use super::Step;
use super::wire::{Ident, Input, Req, slot_dev};
use std::collections::BTreeMap;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::{Message, ProtocolVersion, Sender, decode};

/// The newest function the host put in a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostFn {
    /// Nothing in the slot yet.
    Absent,
    /// Present and mapped; `announced` once a relations message listed it.
    Listed { announced: bool },
    /// EJECT sent; the device is torn down at once (OpenVMM issue #3077); still listed in
    /// relations until an EJECTION_COMPLETE for the slot arrives.
    Ejecting,
    /// Removed: its ejection completed, or a relations message left it out.
    Removed,
}

/// One slot at the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostSlot {
    /// Identity of the newest function put in the slot (0: none yet). Each new function gets
    /// the next number, so a re-listed slot always has a new identity.
    pub ident: Ident,
    /// What became of that function.
    pub state: HostFn,
    /// EJECTs sent for the slot and not yet answered by an EJECTION_COMPLETE.
    pub owed: u8,
    /// A relations message has listed the slot (so the host may EJECT it at any time).
    pub ever_listed: bool,
}

impl HostSlot {
    /// A slot with nothing in it.
    pub const EMPTY: Self = Self {
        ident: 0,
        state: HostFn::Absent,
        owed: 0,
        ever_listed: false,
    };

    /// A slot with its first function, present at boot.
    pub const AT_BOOT: Self = Self {
        ident: 1,
        state: HostFn::Listed { announced: false },
        owed: 0,
        ever_listed: false,
    };
}

/// The abstract Hyper-V host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Host {
    /// Slots 1 and 2.
    pub slots: [HostSlot; 2],
    /// The relay forwarded the guest's QUERY_BUS_RELATIONS.
    pub survey_seen: bool,
    /// Forwarded requests it owes an answer: relay txid -> the request and the identity of
    /// the guest's function it is for.
    pub pending: BTreeMap<u64, (Req, Option<Ident>)>,
    /// Requests it chose not to answer when asked and may still answer late.
    pub late: BTreeMap<u64, Req>,
    /// The channel was rescinded.
    pub rescinded: bool,
    /// Relations messages sent so far (bounded by `Bounds::relations`).
    pub relations_sent: u8,
    /// EJECTs sent so far.
    pub ejects: u8,
    /// New functions put in a slot so far.
    pub adds: u8,
    /// Functions left out of a relations message so far.
    pub drops: u8,
    /// Requests left unanswered so far.
    pub ignored: u8,
    /// Late answers so far.
    pub late_answers: u8,
    /// An EJECTION_COMPLETE arrived for a slot that was owed none.
    pub stray_ejection_complete: Option<u8>,
}

impl Host {
    /// A host with these slots, before the channel opened.
    pub fn new(slots: [HostSlot; 2]) -> Self {
        Self {
            slots,
            survey_seen: false,
            pending: BTreeMap::new(),
            late: BTreeMap::new(),
            rescinded: false,
            relations_sent: 0,
            ejects: 0,
            adds: 0,
            drops: 0,
            ignored: 0,
            late_answers: 0,
            stray_ejection_complete: None,
        }
    }

    /// Slot `s` (1 or 2).
    pub fn slot(&self, s: u8) -> &HostSlot {
        &self.slots[usize::from(s - 1)]
    }

    /// Slot `s` (1 or 2), to change it.
    pub fn slot_mut(&mut self, s: u8) -> &mut HostSlot {
        &mut self.slots[usize::from(s - 1)]
    }

    /// Whether function `ident` in slot `s` is mapped (its BARs and config space are real).
    pub fn mapped(&self, s: u8, ident: Ident) -> bool {
        let slot = self.slot(s);
        !self.rescinded && slot.ident == ident && matches!(slot.state, HostFn::Listed { .. })
    }

    /// What its relations messages list: what it has, including a function it is ejecting
    /// (dropped only once its EJECTION_COMPLETE arrives).
    pub fn relations(&self) -> Vec<(u8, Ident)> {
        (1..=2)
            .filter(|&s| matches!(self.slot(s).state, HostFn::Listed { .. } | HostFn::Ejecting))
            .map(|s| (s, self.slot(s).ident))
            .collect()
    }

    /// The functions it has listed to the relay and still has: the guest must end up with
    /// exactly these.
    pub fn announced(&self) -> Vec<(u8, Ident)> {
        (1..=2)
            .filter(|&s| self.slot(s).state == HostFn::Listed { announced: true })
            .map(|s| (s, self.slot(s).ident))
            .collect()
    }

    /// Whether any EJECT still waits for its EJECTION_COMPLETE.
    pub fn ejects_owed(&self) -> bool {
        self.slots.iter().any(|s| s.owed > 0)
    }
}

impl Step {
    /// A packet from the relay reaches the host.
    pub(super) fn host_receives(&mut self, p: Packet) {
        if p.kind != PacketKind::InBand {
            return;
        }
        let Ok(m) = decode(&p.payload, Sender::Guest, ProtocolVersion::V1_4) else {
            return;
        };
        let origin = self.origin;
        let h = &mut self.s.host;
        if h.rescinded {
            return;
        }
        match &m {
            Message::QueryBusRelations(_) => h.survey_seen = true,
            Message::EjectionComplete(e) => {
                let s = slot_dev(e.body.wslot);
                match h.slots.get_mut(usize::from(s).wrapping_sub(1)) {
                    Some(slot) if slot.owed > 0 => {
                        slot.owed -= 1;
                        if slot.state == HostFn::Ejecting {
                            slot.state = HostFn::Removed;
                        }
                    }
                    _ => {
                        h.stray_ejection_complete.get_or_insert(s);
                    }
                }
                self.note(format!("host<-EJECTION_COMPLETE({s})"));
            }
            _ if p.completion_requested() => {
                if let Some(req) = Req::of(&m) {
                    h.pending.insert(p.transaction_id, (req, origin));
                }
            }
            _ => {}
        }
    }

    /// The host sends BUS_RELATIONS2 with what it has.
    pub(super) fn host_relations(&mut self) {
        let h = &mut self.s.host;
        h.relations_sent += 1;
        for slot in &mut h.slots {
            match slot.state {
                HostFn::Listed { .. } => {
                    slot.state = HostFn::Listed { announced: true };
                    slot.ever_listed = true;
                }
                HostFn::Ejecting => slot.ever_listed = true,
                HostFn::Absent | HostFn::Removed => {}
            }
        }
        let list = h.relations();
        self.note(format!("host->RELATIONS{list:?}"));
        self.input(Input::HostRelations(list));
    }
}
