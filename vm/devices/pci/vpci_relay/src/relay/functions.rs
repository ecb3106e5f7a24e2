//! The function table: one entry per slot (a function re-added while its predecessor leaves
//! waits inside that entry as its successor), and the set of slots the host ever listed.

use crate::function::{Function, HostState};
use crate::save::{Check, RestoreError, SavedFunctionTable};
use inspect::Inspect;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use vpci_protocol::WinSlot;

/// The functions of one bus, by slot.
#[derive(Clone, Debug, Default, Hash, Inspect)]
#[inspect(transparent)]
pub(crate) struct FunctionTable {
    #[inspect(with = "by_slot")]
    map: BTreeMap<u32, Function>,
    /// Every slot the host has listed since the bus opened (the wire names 256).
    #[inspect(skip)]
    ever_listed: [u64; 4],
}

fn bit(slot: WinSlot) -> (usize, u64) {
    let index = (slot.raw() & 0xff) as usize;
    (index / 64, 1u64 << (index % 64))
}

impl FunctionTable {
    pub(crate) fn get(&self, slot: WinSlot) -> Option<&Function> {
        self.map.get(&slot.raw())
    }

    pub(crate) fn get_mut(&mut self, slot: WinSlot) -> Option<&mut Function> {
        self.map.get_mut(&slot.raw())
    }

    pub(crate) fn insert(&mut self, f: Function) {
        let slot = f.slot;
        self.mark_listed(slot);
        self.map.insert(slot.raw(), f);
    }

    pub(crate) fn remove(&mut self, slot: WinSlot) -> Option<Function> {
        self.map.remove(&slot.raw())
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Function> + Clone {
        self.map.values()
    }

    pub(crate) fn slots(&self) -> Vec<WinSlot> {
        self.map.values().map(|f| f.slot).collect()
    }

    /// Records that the host listed `slot`.
    pub(crate) fn mark_listed(&mut self, slot: WinSlot) {
        let (word, mask) = bit(slot);
        if let Some(w) = self.ever_listed.get_mut(word) {
            *w |= mask;
        }
    }

    /// Whether the host ever listed `slot`.
    pub(crate) fn ever_listed(&self, slot: WinSlot) -> bool {
        let (word, mask) = bit(slot);
        self.ever_listed.get(word).is_some_and(|w| w & mask != 0)
    }

    /// When the functions next need the relay, after `now`: a held eject's function or the
    /// bus goes quiet (at `bus_quiet`), or its hold runs out; a host EJECT the relay owes
    /// reaches its deadline (`max_hold` after it arrived).
    pub(crate) fn deadline(
        &self,
        now: Duration,
        settle: Duration,
        max_hold: Duration,
        held: &VecDeque<WinSlot>,
        bus_quiet: Option<Duration>,
    ) -> Option<Duration> {
        let held = held
            .iter()
            .filter_map(|s| self.get(*s))
            .filter(|f| f.eject_pending())
            .flat_map(|f| {
                [
                    bus_quiet,
                    f.quiet_at(settle),
                    f.eject_since.map(|t| t.saturating_add(max_hold)),
                ]
            });
        let owed = self
            .map
            .values()
            .filter(|f| f.host == HostState::Ejecting)
            .map(|f| f.host_eject_since.map(|t| t.saturating_add(max_hold)));
        super::earliest_after(now, held.chain(owed))
    }
}

/// Functions keyed by their slot's name (`01.0`).
fn by_slot(map: &BTreeMap<u32, Function>) -> inspect::Node {
    inspect::Node::Dir(
        map.values()
            .map(|f| (f.slot.to_string(), f.inspect()))
            .collect(),
    )
}

impl FunctionTable {
    pub(crate) fn save(&self) -> SavedFunctionTable {
        let Self { map, ever_listed } = self;
        SavedFunctionTable {
            functions: map.values().map(Function::save).collect(),
            ever_listed: ever_listed.to_vec(),
        }
    }

    /// The table from its saved state, checked: at most the 256 slots the wire names, each
    /// once, each one the host listed.
    pub(crate) fn restore(
        saved: &SavedFunctionTable,
        check: &Check<'_>,
    ) -> Result<Self, RestoreError> {
        let SavedFunctionTable {
            functions,
            ever_listed,
        } = saved;
        if functions.len() > SLOTS {
            return Err(RestoreError::TooManyFunctions {
                count: functions.len(),
                limit: SLOTS,
            });
        }
        let mut table = Self::default();
        match ever_listed.as_slice() {
            [] => {}
            words => {
                table.ever_listed =
                    <[u64; 4]>::try_from(words).map_err(|_| RestoreError::OverLimit {
                        field: "functions.ever_listed".into(),
                        count: words.len(),
                        limit: 4,
                    })?;
            }
        }
        for (i, saved) in functions.iter().enumerate() {
            let f = Function::restore(saved, &format!("functions[{i}]"), check)?;
            if !table.ever_listed(f.slot) {
                return Err(RestoreError::IllegalState {
                    field: format!("functions[{i}]"),
                    why: "a function in a slot the host never listed",
                });
            }
            let raw = f.slot.raw();
            if table.map.insert(raw, f).is_some() {
                return Err(RestoreError::DuplicateSlot {
                    field: "functions".into(),
                    slot: raw,
                });
            }
        }
        Ok(table)
    }
}

/// The slots the wire names.
const SLOTS: usize = 256;
