//! Config accesses in flight: guest accesses to the config window that the relay let through
//! to the device ([`ConfigAction::Forward`](super::ConfigAction::Forward)) and that the
//! caller has not reported done yet.
//!
//! While one is in flight the guest is not quiet, whatever the clock says: its vCPU sits in
//! the access (Linux's `hv_pcifront_read_config` under the bus's config lock, in the middle
//! of a probe), waiting on the host. A host that takes its time answering must not make the
//! probe look finished and open the window for an EJECT (C3) or the next relations change.

use super::window::ConfigAccess;
use crate::save::{Check, RestoreError, SavedAccess, SavedAccessTable, ns, opt_ns, slot};
use inspect::Inspect;
use std::collections::BTreeMap;
use std::time::Duration;
use vpci_protocol::WinSlot;

/// One forwarded config access, to be given back to
/// [`BusRelay::handle_config_done`](crate::BusRelay::handle_config_done) when the device has
/// answered it (or the caller gave up on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccessId(u64);

impl AccessId {
    /// The id as a number (to carry it across a process boundary or a saved state).
    pub fn to_raw(self) -> u64 {
        self.0
    }

    /// An id from [`to_raw`](Self::to_raw). An id the relay never issued, or one already
    /// done, is ignored by `handle_config_done`.
    pub fn from_raw(raw: u64) -> Self {
        Self(raw)
    }
}

impl std::fmt::Display for AccessId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "access {}", self.0)
    }
}

/// A forwarded access the guest waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct InFlight {
    pub(crate) access: ConfigAccess,
    /// When it was forwarded.
    pub(crate) since: Duration,
    /// When the relay first saw its function departed: the departed-request timeout counts
    /// from here, not from `since` (a read the device was slow on before the host removed
    /// the function must not be given up the moment it departs).
    pub(crate) departed: Option<Duration>,
}

impl InFlight {
    pub(crate) fn slot(&self) -> WinSlot {
        match self.access {
            ConfigAccess::Read { slot, .. } | ConfigAccess::Write { slot, .. } => slot,
        }
    }
}

/// The accesses in flight, bounded by [`Limits::max_accesses_in_flight`](crate::Limits).
#[derive(Clone, Debug, Hash)]
pub(crate) struct AccessTable {
    next_id: u64,
    in_flight: BTreeMap<u64, InFlight>,
}

impl Inspect for AccessTable {
    fn inspect(&self) -> inspect::Node {
        let Self { next_id, in_flight } = self;
        inspect::Node::dir()
            .field("next_id", next_id)
            .child(
                "in_flight",
                inspect::Node::Dir(
                    in_flight
                        .iter()
                        .map(|(id, a)| {
                            let (kind, offset, len) = match a.access {
                                ConfigAccess::Read { offset, len, .. } => ("read", offset, len),
                                ConfigAccess::Write { offset, len, .. } => ("write", offset, len),
                            };
                            let mut node = inspect::Node::dir()
                                .field("slot", &a.slot().to_string())
                                .field("kind", kind)
                                .field("offset", &format!("{offset:#x}"))
                                .field("len", &len)
                                .field("since", &a.since);
                            if let Some(d) = &a.departed {
                                node = node.field("departed", d);
                            }
                            let node = node.build();
                            (id.to_string(), node)
                        })
                        .collect(),
                ),
            )
            .build()
    }
}

impl AccessTable {
    pub(crate) fn new() -> Self {
        Self {
            next_id: 1,
            in_flight: BTreeMap::new(),
        }
    }

    /// Nothing in flight.
    pub(crate) fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// How many are in flight.
    pub(crate) fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Records a forwarded access; `None` if `limit` are already in flight.
    pub(crate) fn start(
        &mut self,
        access: ConfigAccess,
        now: Duration,
        limit: usize,
    ) -> Option<AccessId> {
        if self.in_flight.len() >= limit {
            return None;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.in_flight.insert(
            id,
            InFlight {
                access,
                since: now,
                departed: None,
            },
        );
        Some(AccessId(id))
    }

    /// The access `id` is done; `None` if it was not in flight (never issued, reported
    /// twice, or given up).
    pub(crate) fn finish(&mut self, id: AccessId) -> Option<InFlight> {
        self.in_flight.remove(&id.0)
    }

    /// Every access in flight has its departure noted.
    pub(crate) fn all_departed(&self) -> bool {
        self.in_flight.values().all(|a| a.departed.is_some())
    }

    /// The slots of the accesses in flight.
    pub(crate) fn slots(&self) -> impl Iterator<Item = WinSlot> + '_ {
        self.in_flight.values().map(InFlight::slot)
    }

    /// Notes `now` as the departure of each access whose function `departed` says is gone
    /// and whose departure was not noted yet; returns whether it noted any.
    pub(crate) fn note_departures(
        &mut self,
        now: Duration,
        departed: impl Fn(WinSlot) -> bool,
    ) -> bool {
        let mut noted = false;
        for a in self.in_flight.values_mut() {
            if a.departed.is_none() && departed(a.slot()) {
                a.departed = Some(now);
                noted = true;
            }
        }
        noted
    }

    /// The accesses whose function departed at least `timeout` ago (a host that removed the
    /// device may never answer them; see [`note_departures`](Self::note_departures)), to give
    /// up on with [`finish`](Self::finish): they stop holding the bus.
    pub(crate) fn stale(&self, now: Duration, timeout: Duration) -> Vec<AccessId> {
        self.in_flight
            .iter()
            .filter(|(_, a)| a.departed.is_some_and(|d| now >= d.saturating_add(timeout)))
            .map(|(&id, _)| AccessId(id))
            .collect()
    }

    /// When the next access to a departed function goes stale, after `now`.
    pub(crate) fn deadline(&self, now: Duration, timeout: Duration) -> Option<Duration> {
        super::earliest_after(
            now,
            self.in_flight
                .values()
                .map(|a| a.departed.map(|d| d.saturating_add(timeout))),
        )
    }

    pub(crate) fn save(&self) -> SavedAccessTable {
        let Self { next_id, in_flight } = self;
        SavedAccessTable {
            next_id: *next_id,
            in_flight: in_flight
                .iter()
                .map(|(&id, a)| {
                    let (write, slot, offset, len, value) = match a.access {
                        ConfigAccess::Read { slot, offset, len } => (false, slot, offset, len, 0),
                        ConfigAccess::Write {
                            slot,
                            offset,
                            len,
                            value,
                        } => (true, slot, offset, len, value),
                    };
                    SavedAccess {
                        id,
                        write,
                        slot: slot.raw(),
                        offset: offset.into(),
                        len: len.into(),
                        value,
                        since_ns: ns(a.since),
                        departed_ns: opt_ns(a.departed),
                    }
                })
                .collect(),
        }
    }

    /// The table from its saved state, checked: ids below the next one and distinct, each
    /// access one the window could have forwarded, within the configuration's limit.
    pub(crate) fn restore(
        saved: &SavedAccessTable,
        check: &Check<'_>,
    ) -> Result<Self, RestoreError> {
        let SavedAccessTable { next_id, in_flight } = saved;
        check.count(
            "accesses.in_flight",
            in_flight.len(),
            check.config.limits.max_accesses_in_flight,
        )?;
        let mut table = BTreeMap::new();
        for (i, a) in in_flight.iter().enumerate() {
            let field = |name: &str| format!("accesses.in_flight[{i}].{name}");
            let SavedAccess {
                id,
                write,
                slot: raw_slot,
                offset,
                len,
                value,
                since_ns,
                departed_ns,
            } = a;
            if *id == 0 || id >= next_id || table.contains_key(id) {
                return Err(RestoreError::BadValue {
                    field: field("id"),
                    value: *id,
                });
            }
            let slot = slot(field("slot"), *raw_slot)?;
            let offset = u16::try_from(*offset)
                .ok()
                .filter(|o| *o < 4096)
                .ok_or_else(|| RestoreError::BadValue {
                    field: field("offset"),
                    value: u64::from(*offset),
                })?;
            let len = u8::try_from(*len)
                .ok()
                .filter(|l| matches!(l, 1 | 2 | 4))
                .ok_or_else(|| RestoreError::BadValue {
                    field: field("len"),
                    value: u64::from(*len),
                })?;
            let access = if *write {
                ConfigAccess::Write {
                    slot,
                    offset,
                    len,
                    value: *value,
                }
            } else {
                ConfigAccess::Read { slot, offset, len }
            };
            let since = check.time(field("since_ns"), *since_ns)?;
            let departed = check.opt_time(field("departed_ns"), *departed_ns)?;
            if departed.is_some_and(|d| d < since) {
                return Err(RestoreError::BadValue {
                    field: field("departed_ns"),
                    value: departed_ns.unwrap_or_default(),
                });
            }
            table.insert(
                *id,
                InFlight {
                    access,
                    since,
                    departed,
                },
            );
        }
        Ok(Self {
            next_id: (*next_id).max(1),
            in_flight: table,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(slot: u32) -> ConfigAccess {
        ConfigAccess::Read {
            slot: WinSlot::from_raw(slot),
            offset: 0,
            len: 4,
        }
    }

    /// The table holds at most `limit`, and an id is done once only.
    #[test]
    fn bounded_and_done_once() {
        let mut t = AccessTable::new();
        let a = t.start(read(1), Duration::ZERO, 2).expect("room for one");
        let b = t.start(read(1), Duration::ZERO, 2).expect("room for two");
        assert_ne!(a, b);
        assert_eq!(t.start(read(1), Duration::ZERO, 2), None);
        assert!(t.finish(a).is_some());
        assert!(t.finish(a).is_none());
        assert!(t.finish(AccessId(99)).is_none());
        assert_eq!(t.len(), 1);
    }

    /// Only accesses to departed functions go stale, and only the timeout after their
    /// departure was noted (however long they were in flight before).
    #[test]
    fn stale_only_when_departed_and_old() {
        let mut t = AccessTable::new();
        let _ = t.start(read(1), Duration::ZERO, 8);
        let _ = t.start(read(2), Duration::ZERO, 8);
        let departed = |s: WinSlot| s == WinSlot::from_raw(2);
        let timeout = Duration::from_secs(1);
        let at = Duration::from_secs(5);
        assert_eq!(t.deadline(at, timeout), None);
        assert!(t.stale(at, timeout).is_empty(), "nothing departed yet");
        assert!(t.note_departures(at, departed));
        assert!(!t.note_departures(at + timeout, departed), "noted once");
        assert_eq!(t.deadline(at, timeout), Some(at + timeout));
        assert!(t.stale(at + Duration::from_millis(999), timeout).is_empty());
        let stale = t.stale(at + timeout, timeout);
        assert_eq!(stale.len(), 1);
        for id in stale {
            assert_eq!(t.finish(id).map(|a| a.slot()), Some(WinSlot::from_raw(2)));
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.deadline(at + timeout, timeout), None);
    }
}
