//! The change queue: the one host change outstanding at the guest (guarantee 1), the ejects
//! waiting for their turn, and the host relations not yet reflected to the guest.

use super::functions::FunctionTable;
use crate::events::ChangeKind;
use crate::function::GuestState;
use crate::save::{
    Check, MAX_SAVED_PAYLOAD, RestoreError, SavedChange, SavedChangeQueue, SavedHostRelations,
    description, description_bytes, ns, slot as slot_of,
};
use inspect::Inspect;
use std::collections::VecDeque;
use std::time::Duration;
use vpci_protocol::wire::FunctionDescription2;
use vpci_protocol::{ProtocolVersion, WinSlot};

/// The host change the guest is working on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Inspect)]
#[inspect(tag = "change", rename_all = "snake_case")]
pub(crate) enum Outstanding {
    /// A relations message.
    Relations {
        since: Duration,
        /// Functions it announced.
        #[inspect(with = "slot_list")]
        added: Vec<WinSlot>,
        /// It answered the guest's survey before the probe path was done.
        initial: bool,
    },
    /// An EJECT of one function.
    Eject {
        #[inspect(display)]
        slot: WinSlot,
        since: Duration,
    },
}

impl Outstanding {
    pub(crate) fn kind(&self) -> ChangeKind {
        match self {
            Self::Relations { .. } => ChangeKind::Relations,
            Self::Eject { slot, .. } => ChangeKind::Eject(*slot),
        }
    }

    pub(crate) fn since(&self) -> Duration {
        match self {
            Self::Relations { since, .. } | Self::Eject { since, .. } => *since,
        }
    }
}

/// The latest host relations the relay has not yet reflected to the guest.
#[derive(Clone, Debug, Hash, Inspect)]
pub(crate) struct HostRelations {
    /// BUS_RELATIONS2 (else BUS_RELATIONS).
    pub(crate) v2: bool,
    /// The host's payload, passed on byte for byte when it says exactly what the guest needs.
    #[inspect(skip)]
    pub(crate) raw: Vec<u8>,
    /// `raw` lists exactly `functions` (false when the relay left functions out).
    pub(crate) exact: bool,
    /// The functions it lists, in its order.
    #[inspect(rename = "slots", with = "described_slots")]
    pub(crate) functions: Vec<FunctionDescription2>,
}

/// The change queue of one bus.
#[derive(Clone, Debug, Hash, Inspect)]
pub(crate) struct ChangeQueue {
    pub(crate) outstanding: Option<Outstanding>,
    /// Ejects waiting to be delivered, in the order they began.
    #[inspect(rename = "held_ejects", with = "slot_list")]
    pub(crate) ejects: VecDeque<WinSlot>,
    /// Host relations waiting to be reflected.
    #[inspect(rename = "pending_host_relations")]
    pub(crate) host_relations: Option<HostRelations>,
    /// The guest's view must be refreshed though no host relations wait (a function re-added
    /// while its predecessor left is now free to announce).
    pub(crate) relations_dirty: bool,
    /// The current hold of a relations update has been reported.
    pub(crate) relations_held_reported: bool,
    /// The alarm: a change the guest did not finish within `max_hold` of its own time (the
    /// relay moved on from a stuck guest), until the guest finishes it after all. An EJECT
    /// stays overdue until its EJECTION_COMPLETE; a relations change until the next change
    /// the guest finishes.
    #[inspect(with = "overdue_node")]
    pub(crate) overdue: Option<Outstanding>,
}

fn overdue_node(o: &Option<Outstanding>) -> inspect::Node {
    match o {
        None => inspect::Node::Value(inspect::Value::None),
        Some(o) => inspect::Node::dir()
            .field(
                "change",
                &match o.kind() {
                    ChangeKind::Relations => "relations".to_owned(),
                    ChangeKind::Eject(slot) => format!("eject {slot}"),
                },
            )
            .field("since", &o.since())
            .build(),
    }
}

/// Whether `raw` is a host's BUS_RELATIONS2 (`v2`) or BUS_RELATIONS listing exactly
/// `functions`, in order.
fn relations_say(raw: &[u8], v2: bool, functions: &[FunctionDescription2]) -> bool {
    use vpci_protocol::{Message, Sender, decode};
    match decode(raw, Sender::Host, ProtocolVersion::V1_7) {
        Ok(Message::BusRelations2(m)) if v2 => m.functions.as_slice() == functions,
        Ok(Message::BusRelations(m)) if !v2 => m
            .functions
            .iter()
            .map(FunctionDescription2::from)
            .eq(functions.iter().copied()),
        _ => false,
    }
}

impl HostRelations {
    /// Whether it lists exactly these functions, in this order, with these descriptions, in a
    /// message the guest may receive at the `version` in use (so its bytes can be passed on as
    /// they are: BUS_RELATIONS2 exists from 1.3 on, and a guest may have negotiated lower
    /// since the host sent it).
    pub(crate) fn says<'a>(
        &self,
        version: ProtocolVersion,
        view: impl Iterator<Item = &'a FunctionDescription2>,
    ) -> bool {
        self.exact
            && (!self.v2 || version >= ProtocolVersion::V1_3)
            && self.functions.iter().eq(view)
    }
}

impl ChangeQueue {
    pub(crate) fn new() -> Self {
        Self {
            outstanding: None,
            ejects: VecDeque::new(),
            host_relations: None,
            relations_dirty: false,
            relations_held_reported: false,
            overdue: None,
        }
    }

    /// Whether relations are to be delivered (host relations wait, or the view is dirty).
    pub(crate) fn relations_wanted(&self) -> bool {
        self.host_relations.is_some() || self.relations_dirty
    }

    /// Queues an eject, once.
    pub(crate) fn queue_eject(&mut self, slot: WinSlot) {
        if !self.ejects.contains(&slot) {
            self.ejects.push_back(slot);
        }
    }

    /// When the change queue next needs the relay, after `now`: the outstanding change runs
    /// out of `max_hold`, or the bus goes quiet (at `bus_quiet`) while a relations change is
    /// outstanding, relations wait to go, or the guest waits for its survey.
    pub(crate) fn deadline(
        &self,
        now: Duration,
        max_hold: Duration,
        bus_quiet: Option<Duration>,
        survey_requested: bool,
    ) -> Option<Duration> {
        let hold = self
            .outstanding
            .as_ref()
            .map(|o| o.since().saturating_add(max_hold));
        let relations = matches!(self.outstanding, Some(Outstanding::Relations { .. }))
            || self.relations_wanted()
            || survey_requested;
        super::earliest_after(now, [hold, bus_quiet.filter(|_| relations)])
    }
}

/// Slots as a list of their names (`01.0`).
fn slot_list<'a, T>(slots: &'a T) -> inspect::Node
where
    &'a T: IntoIterator<Item = &'a WinSlot>,
{
    slots
        .into_iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .inspect()
}

/// The slots of described functions, as a list of their names.
fn described_slots(descs: &[FunctionDescription2]) -> inspect::Node {
    slot_list(&descs.iter().map(|d| d.wslot).collect::<Vec<_>>())
}

impl Outstanding {
    fn save(&self) -> SavedChange {
        match self {
            Self::Relations {
                since,
                added,
                initial,
            } => SavedChange {
                kind: CHANGE_RELATIONS,
                since_ns: ns(*since),
                slot: 0,
                added: added.iter().map(|s| s.raw()).collect(),
                initial: *initial,
            },
            Self::Eject { slot, since } => SavedChange {
                kind: CHANGE_EJECT,
                since_ns: ns(*since),
                slot: slot.raw(),
                added: Vec::new(),
                initial: false,
            },
        }
    }

    /// A change from its saved state, checked against the function table: an EJECT names a
    /// function the guest was told to eject; relations name each slot once.
    fn restore(
        saved: &SavedChange,
        path: &str,
        check: &Check<'_>,
        functions: &FunctionTable,
    ) -> Result<Self, RestoreError> {
        let SavedChange {
            kind,
            since_ns,
            slot,
            added,
            initial,
        } = saved;
        let since = check.time(format!("{path}.since_ns"), *since_ns)?;
        match *kind {
            CHANGE_RELATIONS => {
                check.count(format!("{path}.added"), added.len(), 256)?;
                let mut slots = Vec::with_capacity(added.len());
                for &raw in added {
                    let s = slot_of(format!("{path}.added"), raw)?;
                    if slots.contains(&s) {
                        return Err(RestoreError::DuplicateSlot {
                            field: format!("{path}.added"),
                            slot: raw,
                        });
                    }
                    slots.push(s);
                }
                Ok(Self::Relations {
                    since,
                    added: slots,
                    initial: *initial,
                })
            }
            CHANGE_EJECT => {
                let s = slot_of(format!("{path}.slot"), *slot)?;
                if !functions
                    .get(s)
                    .is_some_and(|f| f.guest == GuestState::Ejecting)
                {
                    return Err(RestoreError::NoSuchFunction {
                        field: format!("{path}.slot"),
                        slot: *slot,
                    });
                }
                Ok(Self::Eject { slot: s, since })
            }
            other => Err(RestoreError::BadValue {
                field: format!("{path}.kind"),
                value: u64::from(other),
            }),
        }
    }
}

const CHANGE_RELATIONS: u32 = 1;
const CHANGE_EJECT: u32 = 2;

impl ChangeQueue {
    pub(crate) fn save(&self) -> SavedChangeQueue {
        let Self {
            outstanding,
            ejects,
            host_relations,
            relations_dirty,
            relations_held_reported,
            overdue,
        } = self;
        SavedChangeQueue {
            outstanding: outstanding.as_ref().map(Outstanding::save),
            ejects: ejects.iter().map(|s| s.raw()).collect(),
            host_relations: host_relations.as_ref().map(|h| {
                let HostRelations {
                    v2,
                    raw,
                    exact,
                    functions,
                } = h;
                SavedHostRelations {
                    v2: *v2,
                    raw: raw.clone(),
                    exact: *exact,
                    functions: functions.iter().map(description_bytes).collect(),
                }
            }),
            relations_dirty: *relations_dirty,
            relations_held_reported: *relations_held_reported,
            overdue: overdue.as_ref().map(Outstanding::save),
        }
    }

    /// The queue from its saved state, checked against the function table: every held eject
    /// names a function whose eject is pending, each once; the host relations list each slot
    /// once, within the configured limit.
    pub(crate) fn restore(
        saved: &SavedChangeQueue,
        check: &Check<'_>,
        functions: &FunctionTable,
    ) -> Result<Self, RestoreError> {
        let SavedChangeQueue {
            outstanding,
            ejects,
            host_relations,
            relations_dirty,
            relations_held_reported,
            overdue,
        } = saved;
        let outstanding = outstanding
            .as_ref()
            .map(|o| Outstanding::restore(o, "changes.outstanding", check, functions))
            .transpose()?;
        let overdue = overdue
            .as_ref()
            .map(|o| Outstanding::restore(o, "changes.overdue", check, functions))
            .transpose()?;
        check.count("changes.ejects", ejects.len(), 256)?;
        let mut queue = VecDeque::with_capacity(ejects.len());
        for &raw in ejects {
            let s = slot_of("changes.ejects", raw)?;
            if queue.contains(&s) {
                return Err(RestoreError::DuplicateSlot {
                    field: "changes.ejects".into(),
                    slot: raw,
                });
            }
            if !functions.get(s).is_some_and(crate::Function::eject_pending) {
                return Err(RestoreError::NoSuchFunction {
                    field: "changes.ejects".into(),
                    slot: raw,
                });
            }
            queue.push_back(s);
        }
        let host_relations = host_relations
            .as_ref()
            .map(|h| {
                let SavedHostRelations {
                    v2,
                    raw,
                    exact,
                    functions,
                } = h;
                if raw.len() > MAX_SAVED_PAYLOAD {
                    return Err(RestoreError::PayloadTooLarge {
                        field: "changes.host_relations.raw".into(),
                        len: raw.len(),
                    });
                }
                let field = "changes.host_relations.functions";
                check.count(field, functions.len(), check.config.limits.max_functions)?;
                let mut descs: Vec<FunctionDescription2> = Vec::with_capacity(functions.len());
                for bytes in functions {
                    let d = description(field, bytes)?;
                    slot_of(field, d.wslot.raw())?;
                    if descs.iter().any(|o| o.wslot == d.wslot) {
                        return Err(RestoreError::DuplicateSlot {
                            field: field.into(),
                            slot: d.wslot.raw(),
                        });
                    }
                    descs.push(d);
                }
                // `raw` goes to the guest byte for byte when `exact`: it must then be the
                // host's relations message of that kind listing exactly these functions.
                if *exact && !relations_say(raw, *v2, &descs) {
                    return Err(RestoreError::BadRequest {
                        field: "changes.host_relations.raw".into(),
                    });
                }
                Ok(HostRelations {
                    v2: *v2,
                    raw: raw.clone(),
                    exact: *exact,
                    functions: descs,
                })
            })
            .transpose()?;
        Ok(Self {
            outstanding,
            ejects: queue,
            host_relations,
            relations_dirty: *relations_dirty,
            relations_held_reported: *relations_held_reported,
            overdue,
        })
    }
}
