//! The abstract Hyper-V host: what it has in each slot, what it owes and is owed, and how it
//! reacts to what the relay sends it.

use super::Step;
use super::wire::{Ident, Input, Req, slot_dev};
use std::collections::BTreeMap;
use std::time::Duration;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::{Message, ProtocolVersion, Sender, decode};

/// How long Hyper-V waits for the EJECTION_COMPLETE of an EJECT before it gives up on the
/// guest (the host's budget; the relay's `max_hold` is configured below it).
pub const HOST_EJECT_BUDGET: Duration = Duration::from_secs(60);

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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostSlot {
    /// Identity of the newest function put in the slot (0: none yet). Each new function gets
    /// the next number, so a re-listed slot always has a new identity.
    pub ident: Ident,
    /// What became of that function.
    pub state: HostFn,
    /// When each EJECT sent for the slot and not yet answered by an EJECTION_COMPLETE was
    /// sent, oldest first (an EJECTION_COMPLETE answers the oldest). Each must be answered
    /// within [`HOST_EJECT_BUDGET`].
    pub owed: Vec<Duration>,
    /// A relations message has listed the slot (so the host may EJECT it at any time).
    pub ever_listed: bool,
}

impl HostSlot {
    /// A slot with nothing in it.
    pub const EMPTY: Self = Self {
        ident: 0,
        state: HostFn::Absent,
        owed: Vec::new(),
        ever_listed: false,
    };

    /// A slot with its first function, present at boot.
    pub const AT_BOOT: Self = Self {
        ident: 1,
        state: HostFn::Listed { announced: false },
        owed: Vec::new(),
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
    /// Requests it answers slowly: it owes them an answer but lets time pass first (relay
    /// txid -> the request and when the host received it).
    pub slow: BTreeMap<u64, (Req, Duration)>,
    /// A relations message built from the host's view before it processed the latest
    /// EJECTION_COMPLETE (so still listing the function that EJECTION_COMPLETE removed), in
    /// flight: it reaches the relay before any later packet of the host, if at all.
    pub stale: Option<Vec<(u8, Ident)>>,
    /// The channel was rescinded.
    pub rescinded: bool,
    /// The slots its last relations message (stale or not) listed: until a message leaves a
    /// slot out, the relay may keep what it knows of that slot (an ejected function's
    /// identity, to recognise a stale listing of it).
    pub last_listed: Vec<u8>,
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
    /// Requests answered slowly so far.
    pub slows: u8,
    /// Stale relations messages sent so far.
    pub stales: u8,
    /// Config reads its devices were slow on so far.
    pub slow_reads: u8,
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
            slow: BTreeMap::new(),
            stale: None,
            last_listed: Vec::new(),
            rescinded: false,
            relations_sent: 0,
            ejects: 0,
            adds: 0,
            drops: 0,
            ignored: 0,
            late_answers: 0,
            slows: 0,
            stales: 0,
            slow_reads: 0,
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
        self.slots.iter().any(|s| !s.owed.is_empty())
    }

    /// When the oldest unanswered EJECT runs out of the host's budget.
    pub fn eject_deadline(&self) -> Option<Duration> {
        self.slots
            .iter()
            .filter_map(|s| s.owed.first())
            .min()
            .map(|&t| t + HOST_EJECT_BUDGET)
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
                let before = h.relations();
                match h.slots.get_mut(usize::from(s).wrapping_sub(1)) {
                    Some(slot) if !slot.owed.is_empty() => {
                        slot.owed.remove(0);
                        if slot.state == HostFn::Ejecting {
                            slot.state = HostFn::Removed;
                            // A relations message the host built before it processed this
                            // may still be on its way (an earlier one in flight is older).
                            h.stale.get_or_insert(before);
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
        h.last_listed = list.iter().map(|&(s, _)| s).collect();
        self.note(format!("host->RELATIONS{list:?}"));
        self.input(Input::HostRelations(list));
    }
}
