//! `service_restore`'s valid states: built from arbitrary parts, with the descriptors they
//! name laid out as a handover would carry them.

use arbitrary::Arbitrary;
use openhcl_vpci::control::MmioOp;
use openhcl_vpci::service::saved::{
    FORMAT, SavedBar, SavedBusEntry, SavedGuest, SavedMmio, SavedRing, SavedService, SavedTable,
    SavedTableEntry,
};
use vpci_relay::{BusRelay, RelayConfig, SavedBus};

use crate::corrupt::Corruption;

const MAX_BUSES: usize = 8;
const MAX_ACCESSES: usize = 16;
const MAX_BARS: usize = 6;

#[derive(Debug, Arbitrary)]
pub(crate) struct Parts {
    writer_version: String,
    updates: u64,
    saved_at_unix_ns: u64,
    next_guest_id: u64,
    guest_connected: bool,
    all_offers_delivered: bool,
    generations_after: u8,
    buses: Vec<BusPart>,
    accesses: Vec<AccessPart>,
    ids_after: u8,
    host: bool,
    guest: Option<u64>,
    requester: bool,
    /// Descriptors handed over beyond those named.
    spare: u8,
    /// Rotates the descriptor indices (the order they were collected in).
    rotate: u16,
    pub(crate) corruptions: Vec<Corruption>,
}

#[derive(Debug, Arbitrary)]
struct BusPart {
    name: String,
    running: bool,
    /// The table's guest state when not running (2 of 5 codes taken from it).
    guest: u8,
    host: u8,
    generation: u8,
    rescinds: u64,
    held_reoffers: u64,
    host_ring: RingPart,
    guest_ring: RingPart,
    host_revoked: bool,
    bars: Vec<(u32, bool)>,
    relay_now_ns: u64,
    driver: DriverPart,
}

#[derive(Debug, Arbitrary)]
struct RingPart {
    creator: bool,
    local_end: u8,
    peer_end: u8,
    broken: bool,
    peer_gone: bool,
    liveness: bool,
}

#[derive(Debug, Arbitrary)]
enum DriverPart {
    Empty,
    Bytes(Vec<u8>),
    /// A new relay's saved state, as a bus driver's.
    Fresh,
}

#[derive(Debug, Arbitrary)]
struct AccessPart {
    gap: u8,
    guest_id: u64,
    bus: u8,
    generation: u64,
    op: OpPart,
    relay_access: Option<u64>,
}

#[derive(Debug, Arbitrary)]
enum OpPart {
    ConfigRead(u32, u16, u8),
    ConfigWrite(u32, u16, u8, u32),
    BarRead(u32, u8, u64, u8),
    BarWrite(u32, u8, u64, u8, u32),
}

/// A bus id the control plane accepts, unique by its index suffix (the part after the last
/// `-` is the index, and `name` adds none after it).
fn bus_id(name: &str, index: usize) -> String {
    let mut id: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.{}:".contains(*c))
        .take(48)
        .collect();
    id.push_str(&format!("-{index}"));
    id
}

fn width(sel: u8) -> u8 {
    [1, 2, 4][usize::from(sel % 3)]
}

fn op(part: &OpPart) -> MmioOp {
    match *part {
        OpPart::ConfigRead(slot, offset, len) => MmioOp::ConfigRead {
            slot,
            offset,
            len: width(len),
        },
        OpPart::ConfigWrite(slot, offset, len, value) => MmioOp::ConfigWrite {
            slot,
            offset,
            len: width(len),
            value,
        },
        OpPart::BarRead(slot, bar, offset, len) => MmioOp::BarRead {
            slot,
            bar,
            offset,
            len: width(len),
        },
        OpPart::BarWrite(slot, bar, offset, len, value) => MmioOp::BarWrite {
            slot,
            bar,
            offset,
            len: width(len),
            value,
        },
    }
}

pub(crate) fn json(op: &MmioOp) -> String {
    serde_json::to_string(op).unwrap_or_default()
}

/// A ring end; its descriptors are placed by [`layout`].
fn ring(part: &RingPart) -> SavedRing {
    SavedRing {
        creator: part.creator,
        local_end: u32::from(part.local_end % 3),
        peer_end: u32::from(part.peer_end % 3),
        broken: part.broken,
        peer_gone: part.peer_gone,
        first_fd: 0,
        fd_count: if part.liveness { 4 } else { 3 },
    }
}

fn driver(part: &DriverPart) -> Vec<u8> {
    match part {
        DriverPart::Empty => Vec::new(),
        DriverPart::Bytes(bytes) => bytes.iter().copied().take(256).collect(),
        DriverPart::Fresh => SavedBus {
            relay: Some(BusRelay::new(RelayConfig::default()).save()),
            ..SavedBus::default()
        }
        .to_bytes(),
    }
}

/// A valid state from `parts`, with the descriptors it needs handed over (and the ops of its
/// accesses).
pub(crate) fn build(parts: &Parts) -> (SavedService, Layout, Vec<MmioOp>) {
    let buses: Vec<&BusPart> = parts.buses.iter().take(MAX_BUSES).collect();
    let names: Vec<String> = buses
        .iter()
        .enumerate()
        .map(|(i, b)| bus_id(&b.name, i))
        .collect();
    let max_generation = buses
        .iter()
        .map(|b| u64::from(b.generation))
        .max()
        .unwrap_or(0);
    let next_generation = max_generation + u64::from(parts.generations_after);
    let mut table: Vec<SavedTableEntry> = buses
        .iter()
        .zip(&names)
        .map(|(b, name)| SavedTableEntry {
            bus: name.clone(),
            // Open (3) when running; else one of the other four.
            guest: if b.running {
                3
            } else {
                [1, 2, 4, 5][usize::from(b.guest % 4)]
            },
            host: u32::from(b.host % 4) + 1,
            generation: u64::from(b.generation),
            rescinds: b.rescinds,
            held_reoffers: b.held_reoffers,
        })
        .collect();
    // The order the table saves in.
    table.sort_by(|a, b| a.bus.cmp(&b.bus));

    let mut running = Vec::new();
    for (b, name) in buses.iter().zip(&names).filter(|(b, _)| b.running) {
        running.push(SavedBusEntry {
            bus: name.clone(),
            generation: u64::from(b.generation),
            driver: driver(&b.driver),
            host_ring: Some(ring(&b.host_ring)),
            guest_ring: Some(ring(&b.guest_ring)),
            host_revoked: b.host_revoked,
            bars: b
                .bars
                .iter()
                .take(MAX_BARS)
                .map(|&(slot, shield)| SavedBar {
                    slot,
                    backing: if shield { 2 } else { 1 },
                })
                .collect(),
            relay_now_ns: b.relay_now_ns,
        });
    }

    let mut ops = Vec::new();
    let mut pending = Vec::new();
    let mut host_id = 0u64;
    for a in parts.accesses.iter().take(MAX_ACCESSES) {
        host_id += u64::from(a.gap);
        let op = op(&a.op);
        let bus = names
            .get(usize::from(a.bus))
            .cloned()
            .unwrap_or_else(|| format!("gone-{}", a.bus));
        pending.push(SavedMmio {
            host_id,
            guest_id: a.guest_id,
            bus,
            generation: a.generation,
            op_json: json(&op),
            relay_access: a.relay_access,
        });
        ops.push(op);
        host_id += 1;
    }

    // With a guest connected, at least one id was issued before the next one.
    let next_guest_id = parts
        .next_guest_id
        .max(if parts.guest.is_some() { 2 } else { 1 });
    let mut state = SavedService {
        format: FORMAT,
        writer_version: parts.writer_version.chars().take(32).collect(),
        table: Some(SavedTable {
            buses: table,
            guest_connected: parts.guest_connected,
            all_offers_delivered: parts.all_offers_delivered,
            next_generation,
        }),
        pending,
        next_mmio: host_id + u64::from(parts.ids_after),
        host_fd: parts.host.then_some(0),
        // A connected guest's id was issued: 1 up to below the next id.
        guest: parts.guest.map(|id| SavedGuest {
            id: 1 + id % (next_guest_id - 1),
            fd: 0,
        }),
        guest_listener_fd: 0,
        control_listener_fd: 0,
        requester_fd: parts.requester.then_some(0),
        next_guest_id,
        buses: running,
        updates: parts.updates,
        saved_at_unix_ns: parts.saved_at_unix_ns,
    };
    let layout = layout(&mut state, parts.rotate, usize::from(parts.spare % 4));
    (state, layout, ops)
}

/// How the descriptors were laid out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// How many the state names.
    pub(crate) named: usize,
    /// How many the handover carries (the named ones and spares).
    pub(crate) descriptors: usize,
}

/// Places every descriptor the state names: each connection or listener is a block of one,
/// each ring end a run of its count; the blocks in an order `rotate` picks (rotated, maybe
/// reversed), `spare` unnamed descriptors between two of them.
fn layout(state: &mut SavedService, rotate: u16, spare: usize) -> Layout {
    let mut sizes = Vec::new();
    for_each_fd(state, |_, size| sizes.push(size));
    let n = sizes.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.rotate_left(usize::from(rotate) % n.max(1));
    if rotate & 0x8000 != 0 {
        order.reverse();
    }
    let spare_at = usize::from(rotate >> 8) % (n + 1);
    let mut starts = vec![0u32; n];
    let mut next = 0u32;
    for (pos, &block) in order.iter().enumerate() {
        if pos == spare_at {
            next += spare as u32;
        }
        starts[block] = next;
        next += sizes[block];
    }
    if spare_at == n {
        next += spare as u32;
    }
    let mut k = 0;
    for_each_fd(state, |fd, _| {
        *fd = starts[k];
        k += 1;
    });
    Layout {
        named: sizes.iter().map(|&s| s as usize).sum(),
        descriptors: next as usize,
    }
}

/// Every descriptor index the state names (a ring end's first, with its count), in the
/// order the service names them.
pub(crate) fn for_each_fd(state: &mut SavedService, mut f: impl FnMut(&mut u32, u32)) {
    if let Some(fd) = state.host_fd.as_mut() {
        f(fd, 1);
    }
    if let Some(g) = state.guest.as_mut() {
        f(&mut g.fd, 1);
    }
    f(&mut state.guest_listener_fd, 1);
    f(&mut state.control_listener_fd, 1);
    if let Some(fd) = state.requester_fd.as_mut() {
        f(fd, 1);
    }
    for bus in &mut state.buses {
        for r in [bus.host_ring.as_mut(), bus.guest_ring.as_mut()]
            .into_iter()
            .flatten()
        {
            f(&mut r.first_fd, r.fd_count);
        }
    }
}
