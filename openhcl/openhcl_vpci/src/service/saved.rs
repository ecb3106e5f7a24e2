//! The service's saved state across an update: protobuf with numbered fields (`prost`), the
//! relay's own encoding, so that a newer service reads an older one's state (absent fields
//! take their defaults) and an older one skips fields it does not know.
//!
//! Descriptors cannot travel in bytes: each saved item names its descriptors by index into
//! the handover's descriptor list ([`super::handover`]), and restore checks every index.

use crate::control::{Message, MmioOp};
use crate::table::{BusTable, GuestSide, HostSide};
use prost::Message as _;
use std::collections::HashSet;
use thiserror::Error;

/// The format this service writes. A successor refuses a state whose major format it does not
/// know; fields added within a format are optional.
pub const FORMAT: u32 = 1;

/// The whole service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedService {
    /// [`FORMAT`] of the writer.
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// The writer's package version (shown by inspect after the update).
    #[prost(string, tag = "2")]
    pub writer_version: String,
    /// The bus table.
    #[prost(message, optional, tag = "3")]
    pub table: Option<SavedTable>,
    /// Guest accesses outstanding at the host.
    #[prost(message, repeated, tag = "4")]
    pub pending: Vec<SavedMmio>,
    /// The next host access id.
    #[prost(uint64, tag = "5")]
    pub next_mmio: u64,
    /// The host connection's descriptor index, if connected.
    #[prost(uint32, optional, tag = "6")]
    pub host_fd: Option<u32>,
    /// The guest connection: its id and descriptor index, if connected.
    #[prost(message, optional, tag = "7")]
    pub guest: Option<SavedGuest>,
    /// The guest listener's descriptor index.
    #[prost(uint32, tag = "8")]
    pub guest_listener_fd: u32,
    /// The control listener's descriptor index.
    #[prost(uint32, tag = "9")]
    pub control_listener_fd: u32,
    /// The connection that asked for the update (answered by the successor).
    #[prost(uint32, optional, tag = "10")]
    pub requester_fd: Option<u32>,
    /// The id the next guest connection gets.
    #[prost(uint64, tag = "11")]
    pub next_guest_id: u64,
    /// The running buses.
    #[prost(message, repeated, tag = "12")]
    pub buses: Vec<SavedBusEntry>,
    /// How many updates this service has been through before this one.
    #[prost(uint64, tag = "13")]
    pub updates: u64,
    /// When the state was saved (wall clock, ns since the Unix epoch): the successor's relay
    /// clocks go on from the saved relay times plus the time spent stopped.
    #[prost(uint64, tag = "14")]
    pub saved_at_unix_ns: u64,
}

/// The guest connection.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedGuest {
    /// The connection's id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Its descriptor index.
    #[prost(uint32, tag = "2")]
    pub fd: u32,
}

/// One guest access outstanding at the host.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedMmio {
    /// The id the host will answer.
    #[prost(uint64, tag = "1")]
    pub host_id: u64,
    /// The guest's id for it.
    #[prost(uint64, tag = "2")]
    pub guest_id: u64,
    /// The bus.
    #[prost(string, tag = "3")]
    pub bus: String,
    /// The bus's generation.
    #[prost(uint64, tag = "4")]
    pub generation: u64,
    /// The access, as the control plane's JSON (its own format).
    #[prost(string, tag = "5")]
    pub op_json: String,
    /// The relay's id for a config access it forwarded (its saved state holds the same).
    #[prost(uint64, optional, tag = "6")]
    pub relay_access: Option<u64>,
}

/// The bus table.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedTable {
    /// Every bus.
    #[prost(message, repeated, tag = "1")]
    pub buses: Vec<SavedTableEntry>,
    /// A guest is connected.
    #[prost(bool, tag = "2")]
    pub guest_connected: bool,
    /// The host sent all-offers-delivered.
    #[prost(bool, tag = "3")]
    pub all_offers_delivered: bool,
    /// The last generation given out.
    #[prost(uint64, tag = "4")]
    pub next_generation: u64,
}

/// One bus of the table.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedTableEntry {
    /// The bus id.
    #[prost(string, tag = "1")]
    pub bus: String,
    /// [`GuestSide`] as 1..=5.
    #[prost(uint32, tag = "2")]
    pub guest: u32,
    /// [`HostSide`] as 1..=4.
    #[prost(uint32, tag = "3")]
    pub host: u32,
    /// The generation.
    #[prost(uint64, tag = "4")]
    pub generation: u64,
    /// Rescinds seen.
    #[prost(uint64, tag = "5")]
    pub rescinds: u64,
    /// Re-offers held.
    #[prost(uint64, tag = "6")]
    pub held_reoffers: u64,
}

/// One running bus: its relay and driver, its backing, and its two ring ends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedBusEntry {
    /// The bus id.
    #[prost(string, tag = "1")]
    pub bus: String,
    /// The generation it runs as.
    #[prost(uint64, tag = "2")]
    pub generation: u64,
    /// The driver's saved state (`vpci_relay`'s own encoding).
    #[prost(bytes = "vec", tag = "3")]
    pub driver: Vec<u8>,
    /// The host ring end.
    #[prost(message, optional, tag = "4")]
    pub host_ring: Option<SavedRing>,
    /// The guest ring end.
    #[prost(message, optional, tag = "5")]
    pub guest_ring: Option<SavedRing>,
    /// The host channel was revoked (the host rescinded the bus).
    #[prost(bool, tag = "6")]
    pub host_revoked: bool,
    /// The backing of each mapped slot.
    #[prost(message, repeated, tag = "7")]
    pub bars: Vec<SavedBar>,
    /// The relay's time when it stopped (ns on its own time base).
    #[prost(uint64, tag = "8")]
    pub relay_now_ns: u64,
}

/// A ring end: its private state and where its descriptors are.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedRing {
    /// The end created the channel.
    #[prost(bool, tag = "1")]
    pub creator: bool,
    /// Its own end (0 none, 1 closed, 2 revoked).
    #[prost(uint32, tag = "2")]
    pub local_end: u32,
    /// The peer's latched end (same codes).
    #[prost(uint32, tag = "3")]
    pub peer_end: u32,
    /// The peer broke the ring.
    #[prost(bool, tag = "4")]
    pub broken: bool,
    /// The peer process was seen gone.
    #[prost(bool, tag = "5")]
    pub peer_gone: bool,
    /// The first descriptor's index.
    #[prost(uint32, tag = "6")]
    pub first_fd: u32,
    /// How many descriptors (3, or 4 with a liveness socket).
    #[prost(uint32, tag = "7")]
    pub fd_count: u32,
}

/// A mapped slot's backing.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedBar {
    /// The slot (raw).
    #[prost(uint32, tag = "1")]
    pub slot: u32,
    /// 1 device, 2 shield.
    #[prost(uint32, tag = "2")]
    pub backing: u32,
}

/// Why a saved service state cannot be restored.
#[derive(Debug, Error)]
pub enum SavedError {
    /// The bytes are not a saved service.
    #[error("saved service state does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A format this service does not know.
    #[error("saved service state of format {0}; this service reads format {FORMAT}")]
    Format(u32),
    /// A field out of range.
    #[error("saved service state: {0}")]
    Invalid(String),
    /// A descriptor index beyond what the handover carried, or used twice.
    #[error("saved service state names descriptor {index} of {count} (or names it twice)")]
    Descriptor {
        /// The index.
        index: u32,
        /// How many were handed over.
        count: usize,
    },
}

/// A saved service state decoded and checked in everything that needs no descriptor (see
/// [`validate`]).
#[derive(Debug)]
pub struct Validated {
    /// The state as decoded.
    pub saved: SavedService,
    /// The bus table it holds.
    pub table: BusTable,
    /// Each outstanding access's operation, in the order of `saved.pending`.
    pub ops: Vec<MmioOp>,
}

/// The largest ring end code a saved ring holds (0 none, 1 closed, 2 revoked).
const MAX_END_CODE: u32 = 2;

/// Decodes a saved service state and checks all of it that needs no live descriptor: the
/// format; the bus table (states in range, generations given out, bus ids the control plane
/// accepts, no bus twice); each outstanding access (its operation, an id issued and unique,
/// a width and bus id the control plane accepts, at most
/// [`MAX_PENDING_MMIO`](super::MAX_PENDING_MMIO)); each running bus (saved once, running in
/// the table at its generation, both ring ends present with 3 or 4 descriptors and end codes
/// in range, known backings); and every descriptor index the state names, each below
/// `descriptors` (how many the handover carried) and named once.
///
/// The successor runs this before it takes any descriptor, so a state that passes names
/// only descriptors it can take. The drivers' own states (`SavedBusEntry::driver`) are
/// checked per bus when each is restored: a bad one closes its bus only.
pub fn validate(state: &[u8], descriptors: usize) -> Result<Validated, SavedError> {
    let saved = SavedService::decode(state)?;
    if saved.format != FORMAT {
        return Err(SavedError::Format(saved.format));
    }
    let table = BusTable::restore(
        saved
            .table
            .as_ref()
            .ok_or_else(|| SavedError::Invalid("no bus table".into()))?,
    )?;
    let mut ops = Vec::new();
    let mut ids = HashSet::new();
    for p in &saved.pending {
        let op: MmioOp = serde_json::from_str(&p.op_json)
            .map_err(|e| SavedError::Invalid(format!("access {}: {e}", p.host_id)))?;
        if !ids.insert(p.host_id) || p.host_id >= saved.next_mmio {
            return Err(SavedError::Invalid(format!("access id {}", p.host_id)));
        }
        if ops.len() >= super::MAX_PENDING_MMIO {
            return Err(SavedError::Invalid("too many accesses outstanding".into()));
        }
        let message = Message::Mmio {
            id: p.host_id,
            bus: p.bus.clone(),
            op,
        };
        message
            .validate()
            .map_err(|e| SavedError::Invalid(format!("access {}: {e}", p.host_id)))?;
        ops.push(op);
    }
    // The guest connection's id was issued before the saved next one (ids start at 1), so a
    // guest that connects after the update never gets the id of the one restored.
    if let Some(g) = &saved.guest {
        if g.id == 0 || g.id >= saved.next_guest_id {
            return Err(SavedError::Invalid(format!(
                "guest connection id {} was not issued (next id {})",
                g.id, saved.next_guest_id
            )));
        }
    }
    let mut named = Descriptors {
        count: descriptors,
        seen: HashSet::new(),
    };
    named.one(saved.host_fd)?;
    named.one(saved.guest.as_ref().map(|g| g.fd))?;
    named.one(Some(saved.guest_listener_fd))?;
    named.one(Some(saved.control_listener_fd))?;
    named.one(saved.requester_fd)?;
    let mut names = HashSet::new();
    for entry in &saved.buses {
        if !names.insert(entry.bus.as_str()) {
            return Err(SavedError::Invalid(format!(
                "bus {} saved twice",
                entry.bus
            )));
        }
        if table.running(&entry.bus) != Some(entry.generation) {
            return Err(SavedError::Invalid(format!(
                "bus {} generation {} is not running in the table",
                entry.bus, entry.generation
            )));
        }
        for (ring, which) in [(&entry.host_ring, "host"), (&entry.guest_ring, "guest")] {
            let ring = ring.as_ref().ok_or_else(|| {
                SavedError::Invalid(format!("bus {}: no {which} ring", entry.bus))
            })?;
            if !(3..=4).contains(&ring.fd_count) {
                return Err(SavedError::Invalid(format!(
                    "bus {}: a {which} ring end with {} descriptors",
                    entry.bus, ring.fd_count
                )));
            }
            if ring.local_end > MAX_END_CODE || ring.peer_end > MAX_END_CODE {
                return Err(SavedError::Invalid(format!(
                    "bus {}: {which} ring end codes {} and {}",
                    entry.bus, ring.local_end, ring.peer_end
                )));
            }
            for i in 0..ring.fd_count {
                named.one(Some(ring.first_fd.saturating_add(i)))?;
            }
        }
        for bar in &entry.bars {
            if !(1..=2).contains(&bar.backing) {
                return Err(SavedError::Invalid(format!(
                    "bus {}: backing {} of slot {:#x}",
                    entry.bus, bar.backing, bar.slot
                )));
            }
        }
    }
    Ok(Validated { saved, table, ops })
}

/// The descriptor indices a state names so far.
struct Descriptors {
    count: usize,
    seen: HashSet<u32>,
}

impl Descriptors {
    /// Notes `index` (if any): an error if it is beyond `count` or named before.
    fn one(&mut self, index: Option<u32>) -> Result<(), SavedError> {
        let Some(index) = index else {
            return Ok(());
        };
        if usize::try_from(index).map_or(true, |i| i >= self.count) || !self.seen.insert(index) {
            return Err(SavedError::Descriptor {
                index,
                count: self.count,
            });
        }
        Ok(())
    }
}

fn guest_code(side: GuestSide) -> u32 {
    match side {
        GuestSide::NotOffered => 1,
        GuestSide::Offered => 2,
        GuestSide::Open => 3,
        GuestSide::Revoked => 4,
        GuestSide::Reoffered => 5,
    }
}

fn guest_side(code: u32) -> Option<GuestSide> {
    Some(match code {
        1 => GuestSide::NotOffered,
        2 => GuestSide::Offered,
        3 => GuestSide::Open,
        4 => GuestSide::Revoked,
        5 => GuestSide::Reoffered,
        _ => return None,
    })
}

fn host_code(side: HostSide) -> u32 {
    match side {
        HostSide::Offered => 1,
        HostSide::Open => 2,
        HostSide::Rescinded => 3,
        HostSide::Released => 4,
    }
}

fn host_side(code: u32) -> Option<HostSide> {
    Some(match code {
        1 => HostSide::Offered,
        2 => HostSide::Open,
        3 => HostSide::Rescinded,
        4 => HostSide::Released,
        _ => return None,
    })
}

impl BusTable {
    /// The table as saved state (what [`BusTable::restore`] reads back).
    pub fn save(&self) -> SavedTable {
        let (buses, guest_connected, all_offers_delivered, next_generation) = self.parts();
        SavedTable {
            buses: buses
                .map(|(bus, e)| SavedTableEntry {
                    bus: bus.to_owned(),
                    guest: guest_code(e.guest),
                    host: host_code(e.host),
                    generation: e.generation,
                    rescinds: e.rescinds,
                    held_reoffers: e.held_reoffers,
                })
                .collect(),
            guest_connected,
            all_offers_delivered,
            next_generation,
        }
    }

    /// A table from saved state, every field checked.
    pub fn restore(saved: &SavedTable) -> Result<Self, SavedError> {
        let mut table = BusTable::new();
        for e in &saved.buses {
            let guest = guest_side(e.guest).ok_or_else(|| {
                SavedError::Invalid(format!("bus {}: guest state {}", e.bus, e.guest))
            })?;
            let host = host_side(e.host).ok_or_else(|| {
                SavedError::Invalid(format!("bus {}: host state {}", e.bus, e.host))
            })?;
            if e.generation > saved.next_generation {
                return Err(SavedError::Invalid(format!(
                    "bus {}: generation {} beyond {}",
                    e.bus, e.generation, saved.next_generation
                )));
            }
            let message = crate::control::Message::Open { bus: e.bus.clone() };
            message
                .validate()
                .map_err(|err| SavedError::Invalid(err.to_string()))?;
            table
                .insert_restored(
                    &e.bus,
                    guest,
                    host,
                    e.generation,
                    e.rescinds,
                    e.held_reoffers,
                )
                .map_err(SavedError::Invalid)?;
        }
        table.set_restored_flags(
            saved.guest_connected,
            saved.all_offers_delivered,
            saved.next_generation,
        );
        Ok(table)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A ring end of 3 descriptors from `first_fd`, nothing ended.
    pub(in crate::service) fn ring(first_fd: u32) -> SavedRing {
        SavedRing {
            creator: true,
            local_end: 0,
            peer_end: 0,
            broken: false,
            peer_gone: false,
            first_fd,
            fd_count: 3,
        }
    }

    /// Both listeners (descriptors 0 and 1), one running bus `bus0` at generation 1 with ring
    /// ends 2-4 and 5-7, one access outstanding at the host (id 0).
    pub(in crate::service) fn valid() -> SavedService {
        SavedService {
            format: FORMAT,
            writer_version: "test".into(),
            table: Some(SavedTable {
                buses: vec![SavedTableEntry {
                    bus: "bus0".into(),
                    guest: 3,
                    host: 2,
                    generation: 1,
                    rescinds: 0,
                    held_reoffers: 0,
                }],
                guest_connected: true,
                all_offers_delivered: true,
                next_generation: 1,
            }),
            pending: vec![SavedMmio {
                host_id: 0,
                guest_id: 7,
                bus: "bus0".into(),
                generation: 1,
                op_json: r#"{"op":"config_read","slot":0,"offset":0,"len":4}"#.into(),
                relay_access: Some(3),
            }],
            next_mmio: 1,
            host_fd: None,
            guest: None,
            guest_listener_fd: 0,
            control_listener_fd: 1,
            requester_fd: None,
            next_guest_id: 2,
            buses: vec![SavedBusEntry {
                bus: "bus0".into(),
                generation: 1,
                driver: vec![1, 2, 3],
                host_ring: Some(ring(2)),
                guest_ring: Some(ring(5)),
                host_revoked: false,
                bars: vec![SavedBar {
                    slot: 0,
                    backing: 2,
                }],
                relay_now_ns: 5,
            }],
            updates: 0,
            saved_at_unix_ns: 0,
        }
    }

    fn check(state: &SavedService, descriptors: usize) -> Result<Validated, SavedError> {
        validate(&state.encode_to_vec(), descriptors)
    }

    #[test]
    fn a_valid_state_validates_and_its_table_saves_back() {
        let v = check(&valid(), 8).expect("valid");
        assert_eq!(v.saved, valid());
        assert_eq!(Some(v.table.save()), valid().table);
        assert_eq!(
            v.ops,
            vec![MmioOp::ConfigRead {
                slot: 0,
                offset: 0,
                len: 4
            }]
        );
    }

    #[test]
    fn descriptor_indices_are_checked_without_descriptors() {
        assert!(matches!(
            check(&valid(), 7),
            Err(SavedError::Descriptor { index: 7, count: 7 })
        ));
        let mut s = valid();
        s.host_fd = Some(1);
        assert!(matches!(
            check(&s, 8),
            Err(SavedError::Descriptor { index: 1, .. })
        ));
        // A ring end reaching past the last index does not wrap around.
        let mut s = valid();
        s.buses[0].guest_ring = Some(ring(u32::MAX - 1));
        assert!(matches!(check(&s, 8), Err(SavedError::Descriptor { .. })));
    }

    /// A ring end code the saver never writes (only 0, 1 and 2 exist) is refused, not read as
    /// "closed".
    /// A restored guest connection's id must be one the saved service issued: below its next
    /// id, and not 0 (ids start at 1).
    #[test]
    fn a_guest_id_not_issued_is_refused() {
        let with_guest = |id: u64| {
            let mut s = valid();
            s.guest = Some(SavedGuest { id, fd: 8 });
            s
        };
        assert!(check(&with_guest(1), 9).is_ok());
        for id in [0, 2, 3, u64::MAX] {
            assert!(
                matches!(check(&with_guest(id), 9), Err(SavedError::Invalid(_))),
                "guest id {id}"
            );
        }
    }

    #[test]
    fn ring_end_codes_out_of_range_are_refused() {
        let with_end = |host: bool, local: bool, code: u32| {
            let mut s = valid();
            let bus = &mut s.buses[0];
            let ring = if host {
                bus.host_ring.as_mut()
            } else {
                bus.guest_ring.as_mut()
            };
            if let Some(r) = ring {
                if local {
                    r.local_end = code;
                } else {
                    r.peer_end = code;
                }
            }
            check(&s, 8)
        };
        for (host, local) in [(true, true), (true, false), (false, true), (false, false)] {
            for code in [3, 255, 256, u32::MAX] {
                assert!(
                    matches!(with_end(host, local, code), Err(SavedError::Invalid(_))),
                    "host {host} local {local} code {code}"
                );
            }
            for code in 0..=2 {
                assert!(with_end(host, local, code).is_ok(), "{code}");
            }
        }
    }

    /// An outstanding access the control plane would have refused (a width other than 1, 2
    /// or 4, or a bad bus id) is refused from a saved state too.
    #[test]
    fn accesses_the_control_plane_refuses_are_refused() {
        for json in [
            r#"{"op":"config_read","slot":0,"offset":0,"len":3}"#,
            r#"{"op":"bar_write","slot":0,"bar":0,"offset":0,"len":0,"value":1}"#,
        ] {
            let mut s = valid();
            s.pending[0].op_json = json.into();
            assert!(
                matches!(check(&s, 8), Err(SavedError::Invalid(m)) if m.starts_with("access 0:")),
                "{json}"
            );
        }
        let mut s = valid();
        s.pending[0].bus = "bus 0".into();
        assert!(matches!(check(&s, 8), Err(SavedError::Invalid(_))));
    }
}
