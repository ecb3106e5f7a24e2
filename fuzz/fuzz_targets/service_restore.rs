//! The `openhcl-vpci` service's own saved state (what it hands its successor on an update),
//! decoded and checked by `openhcl_vpci::service::saved::validate`, the code the successor
//! runs before it takes any descriptor.
//!
//! The input (structured with `arbitrary`) describes a valid saved service: buses in every
//! table state, the running ones with their ring ends, mapped slots and relay state, guest
//! accesses outstanding at the host, the connections and listeners, and the descriptors the
//! handover carries. Then it picks corruptions: some each make the state invalid (a wrong
//! format, a table state, generation or bus id out of range, a bus twice, a running bus the
//! table does not run, a ring end missing, with a wrong descriptor count or end code, a
//! backing code out of range, an access that does not decode, is too wide or has an id not
//! issued or used twice, too many accesses, a descriptor index beyond the handover or named
//! twice, fewer descriptors handed over than named); some touch only the bytes (truncation,
//! a byte flipped, a field length that lies) and may or may not; an unknown field appended
//! must be skipped. Or the input is taken as the state's bytes as they are.
//!
//! Promises: never a panic; a valid state validates to exactly what was written (decode of
//! the encoding is the state itself, the restored table saves back to the saved one, each
//! access's operation is the one written); a state with a corruption that invalidates it is
//! a typed error, of the kind the corruption calls for when there is one corruption; any state
//! that validates re-encodes to one that validates the same. Each running bus's relay state
//! is restored as the bus would restore it (`vpci_relay`), without a panic.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use openhcl_vpci::control::MmioOp;
use openhcl_vpci::service::saved::{
    FORMAT, SavedBar, SavedBusEntry, SavedError, SavedGuest, SavedMmio, SavedRing, SavedService,
    SavedTable, SavedTableEntry, validate,
};
use prost::Message as _;
use std::time::Duration;
use vpci_relay::{BusRelay, RelayConfig, SavedBus};

/// The most accesses the service keeps outstanding (`service::MAX_PENDING_MMIO`).
const MAX_PENDING: usize = openhcl_vpci::service::MAX_PENDING_MMIO;
const MAX_BUSES: usize = 8;
const MAX_ACCESSES: usize = 16;
const MAX_BARS: usize = 6;
const MAX_CORRUPTIONS: usize = 3;

#[derive(Debug, Arbitrary)]
enum Input {
    /// A state built from parts, then corrupted.
    Built(Parts),
    /// Bytes as they are, with this many descriptors.
    Raw(u8, Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Parts {
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
    corruptions: Vec<Corruption>,
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

/// One targeted corruption; bus, ring, access and descriptor choices wrap around what the
/// state has (a descriptor choice counts the places the service names one, in its order).
#[derive(Debug, Arbitrary)]
enum Corruption {
    Format(u32),
    NoTable,
    GuestState(u8, u32),
    HostState(u8, u32),
    GenerationBeyond(u8, u8),
    BadBusId(u8, u8),
    TableBusTwice(u8),
    RunningBusTwice(u8),
    NotRunning(u8),
    NoRing(u8, bool),
    RingFdCount(u8, bool, u32),
    RingEndCode(u8, bool, bool, u32),
    Backing(u8, u32, u32),
    AccessJson(u8, u8),
    AccessWidth(u8, u8),
    AccessIdNotIssued(u8),
    AccessIdTwice(u8),
    TooManyAccesses,
    FdBeyond(u16, u16),
    FdTwice(u16, u16),
    FewerDescriptors(u16),
    // Bytes only: the state may stay valid.
    Truncate(u16),
    FlipByte(u16, u8),
    LyingLength(u8, i8),
    // Must stay valid.
    UnknownField(u32, Vec<u8>),
}

/// What kind of error a corruption calls for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Format,
    Invalid,
    Descriptor,
    /// Bytes changed: valid or a typed error.
    Either,
    /// Still valid.
    Valid,
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    match Input::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(Input::Built(parts)) => built(parts),
        Ok(Input::Raw(descriptors, bytes)) => {
            if let Ok(v) = validate(&bytes, usize::from(descriptors)) {
                revalidates(&v.saved, usize::from(descriptors));
            }
        }
        Err(_) => {}
    }
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

fn with_width(op: MmioOp, width: u8) -> MmioOp {
    match op {
        MmioOp::ConfigRead { slot, offset, .. } => MmioOp::ConfigRead {
            slot,
            offset,
            len: width,
        },
        MmioOp::ConfigWrite {
            slot,
            offset,
            value,
            ..
        } => MmioOp::ConfigWrite {
            slot,
            offset,
            len: width,
            value,
        },
        MmioOp::BarRead {
            slot, bar, offset, ..
        } => MmioOp::BarRead {
            slot,
            bar,
            offset,
            len: width,
        },
        MmioOp::BarWrite {
            slot,
            bar,
            offset,
            value,
            ..
        } => MmioOp::BarWrite {
            slot,
            bar,
            offset,
            len: width,
            value,
        },
    }
}

fn json(op: &MmioOp) -> String {
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
fn build(parts: &Parts) -> (SavedService, Layout, Vec<MmioOp>) {
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
        guest: parts.guest.map(|id| SavedGuest { id, fd: 0 }),
        guest_listener_fd: 0,
        control_listener_fd: 0,
        requester_fd: parts.requester.then_some(0),
        next_guest_id: parts.next_guest_id,
        buses: running,
        updates: parts.updates,
        saved_at_unix_ns: parts.saved_at_unix_ns,
    };
    let layout = layout(&mut state, parts.rotate, usize::from(parts.spare % 4));
    (state, layout, ops)
}

/// How the descriptors were laid out.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// How many the state names.
    named: usize,
    /// How many the handover carries (the named ones and spares).
    descriptors: usize,
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
fn for_each_fd(state: &mut SavedService, mut f: impl FnMut(&mut u32, u32)) {
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

/// Sets the `k`-th place that names a descriptor (a ring end's first) to `index`.
fn set_fd(state: &mut SavedService, k: usize, index: u32) {
    let mut i = 0;
    for_each_fd(state, |fd, _| {
        if i == k {
            *fd = index;
        }
        i += 1;
    });
}

/// `code` moved out of `range` (by the range's length) if it is in it.
fn outside(code: u32, range: std::ops::RangeInclusive<u32>) -> u32 {
    if range.contains(&code) {
        code + (range.end() - range.start() + 1)
    } else {
        code
    }
}

/// The `i`-th of `len` items (wrapping), if any.
fn pick(i: impl Into<usize>, len: usize) -> Option<usize> {
    (len > 0).then(|| i.into() % len)
}

fn running_bus(state: &mut SavedService, b: u8) -> Option<&mut SavedBusEntry> {
    let i = pick(b, state.buses.len())?;
    state.buses.get_mut(i)
}

fn table_bus(state: &mut SavedService, b: u8) -> Option<&mut SavedTableEntry> {
    let table = state.table.as_mut()?;
    let i = pick(b, table.buses.len())?;
    table.buses.get_mut(i)
}

fn ring_slot(bus: &mut SavedBusEntry, host: bool) -> &mut Option<SavedRing> {
    if host {
        &mut bus.host_ring
    } else {
        &mut bus.guest_ring
    }
}

/// Applies a corruption of the state's fields; what it calls for, or `None` if it had
/// nothing to act on.
fn corrupt(state: &mut SavedService, layout: &mut Layout, c: &Corruption) -> Option<Expect> {
    match *c {
        Corruption::Format(f) => {
            state.format = if f == FORMAT { FORMAT + 1 } else { f };
            Some(Expect::Format)
        }
        Corruption::NoTable => {
            state.table = None;
            Some(Expect::Invalid)
        }
        Corruption::GuestState(b, code) => {
            table_bus(state, b)?.guest = outside(code, 1..=5);
            Some(Expect::Invalid)
        }
        Corruption::HostState(b, code) => {
            table_bus(state, b)?.host = outside(code, 1..=4);
            Some(Expect::Invalid)
        }
        Corruption::GenerationBeyond(b, x) => {
            let next = state.table.as_ref()?.next_generation;
            table_bus(state, b)?.generation = next + 1 + u64::from(x);
            Some(Expect::Invalid)
        }
        Corruption::BadBusId(b, kind) => {
            table_bus(state, b)?.bus = match kind % 3 {
                0 => String::new(),
                1 => "bus 0".into(),
                _ => "x".repeat(65),
            };
            Some(Expect::Invalid)
        }
        Corruption::TableBusTwice(b) => {
            let again = table_bus(state, b)?.clone();
            state.table.as_mut()?.buses.push(again);
            Some(Expect::Invalid)
        }
        Corruption::RunningBusTwice(b) => {
            let again = running_bus(state, b)?.clone();
            state.buses.push(again);
            Some(Expect::Invalid)
        }
        Corruption::NotRunning(b) => {
            let bus = running_bus(state, b)?;
            bus.generation = bus.generation.wrapping_add(1);
            Some(Expect::Invalid)
        }
        Corruption::NoRing(b, host) => {
            *ring_slot(running_bus(state, b)?, host) = None;
            Some(Expect::Invalid)
        }
        Corruption::RingFdCount(b, host, count) => {
            ring_slot(running_bus(state, b)?, host).as_mut()?.fd_count = outside(count, 3..=4);
            Some(Expect::Invalid)
        }
        Corruption::RingEndCode(b, host, local, code) => {
            let ring = ring_slot(running_bus(state, b)?, host).as_mut()?;
            let code = code.max(3);
            if local {
                ring.local_end = code;
            } else {
                ring.peer_end = code;
            }
            Some(Expect::Invalid)
        }
        Corruption::Backing(b, slot, code) => {
            let backing = outside(code, 1..=2);
            running_bus(state, b)?.bars.push(SavedBar { slot, backing });
            Some(Expect::Invalid)
        }
        Corruption::AccessJson(i, cut) => {
            let i = pick(i, state.pending.len())?;
            let access = state.pending.get_mut(i)?;
            let cut = usize::from(cut) % access.op_json.len().max(1);
            // Every proper prefix of a JSON object is unfinished.
            access.op_json.truncate(cut);
            Some(Expect::Invalid)
        }
        Corruption::AccessWidth(i, width) => {
            let i = pick(i, state.pending.len())?;
            let access = state.pending.get_mut(i)?;
            let width = if matches!(width, 1 | 2 | 4) {
                width + 4
            } else {
                width
            };
            let op: MmioOp = serde_json::from_str(&access.op_json).ok()?;
            access.op_json = json(&with_width(op, width));
            Some(Expect::Invalid)
        }
        Corruption::AccessIdNotIssued(i) => {
            let i = pick(i, state.pending.len())?;
            state.next_mmio = state.pending.get(i)?.host_id;
            Some(Expect::Invalid)
        }
        Corruption::AccessIdTwice(i) => {
            let i = pick(i, state.pending.len())?;
            let again = state.pending.get(i)?.clone();
            state.pending.push(again);
            Some(Expect::Invalid)
        }
        Corruption::TooManyAccesses => {
            let op = json(&MmioOp::ConfigRead {
                slot: 0,
                offset: 0,
                len: 4,
            });
            while state.pending.len() <= MAX_PENDING {
                state.pending.push(SavedMmio {
                    host_id: state.next_mmio,
                    guest_id: 0,
                    bus: "bus".into(),
                    generation: 0,
                    op_json: op.clone(),
                    relay_access: None,
                });
                state.next_mmio += 1;
            }
            Some(Expect::Invalid)
        }
        Corruption::FdBeyond(k, x) => {
            let beyond = (layout.descriptors + usize::from(x)) as u32;
            let mut n = 0;
            for_each_fd(state, |_, _| n += 1);
            set_fd(state, pick(k, n)?, beyond);
            Some(Expect::Descriptor)
        }
        Corruption::FdTwice(a, b) => {
            let mut firsts = Vec::new();
            for_each_fd(state, |fd, _| firsts.push(*fd));
            let n = firsts.len();
            let a = pick(a, n)?;
            let mut b = pick(b, n)?;
            if a == b {
                b = (b + 1) % n;
            }
            set_fd(state, a, *firsts.get(b)?);
            (a != b).then_some(Expect::Descriptor)
        }
        Corruption::FewerDescriptors(k) => {
            layout.descriptors = layout.named - 1 - usize::from(k) % layout.named;
            Some(Expect::Descriptor)
        }
        Corruption::Truncate(_)
        | Corruption::FlipByte(..)
        | Corruption::LyingLength(..)
        | Corruption::UnknownField(..) => None,
    }
}

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Where each top-level length-delimited field's length varint stands: (start, end, length).
fn length_fields(bytes: &[u8]) -> Vec<(usize, usize, u64)> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(key) = varint(bytes, &mut at) else {
            break;
        };
        match key & 7 {
            0 => {
                if varint(bytes, &mut at).is_none() {
                    break;
                }
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let start = at;
                let Some(len) = varint(bytes, &mut at) else {
                    break;
                };
                found.push((start, at, len));
                at = at.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
            }
            _ => break,
        }
    }
    found
}

/// Applies a corruption of the encoded bytes; what it calls for, or `None` if it had
/// nothing to act on.
fn corrupt_bytes(bytes: &mut Vec<u8>, c: &Corruption) -> Option<Expect> {
    match c {
        Corruption::Truncate(n) => {
            let n = pick(*n, bytes.len())?;
            bytes.truncate(n);
            Some(Expect::Either)
        }
        Corruption::FlipByte(at, x) => {
            let at = pick(*at, bytes.len())?;
            *bytes.get_mut(at)? ^= (*x).max(1);
            Some(Expect::Either)
        }
        Corruption::LyingLength(k, delta) => {
            let fields = length_fields(bytes);
            let (start, end, len) = *fields.get(pick(*k, fields.len())?)?;
            let delta = if *delta == 0 { 1 } else { i64::from(*delta) };
            let lie = len.checked_add_signed(delta)?;
            let mut out = bytes.get(..start)?.to_vec();
            put_varint(&mut out, lie);
            out.extend_from_slice(bytes.get(end..)?);
            *bytes = out;
            Some(Expect::Either)
        }
        Corruption::UnknownField(tag, value) => {
            // Tags past the 14 this format has, below protobuf's largest.
            let tag = 1000 + u64::from(*tag % 1_000_000);
            put_varint(bytes, (tag << 3) | 2);
            let value: Vec<u8> = value.iter().copied().take(32).collect();
            put_varint(bytes, value.len() as u64);
            bytes.extend_from_slice(&value);
            Some(Expect::Valid)
        }
        _ => None,
    }
}

fn built(parts: Parts) {
    let (mut state, mut layout, ops) = build(&parts);
    if parts.corruptions.is_empty() {
        valid(&state, layout, &ops);
        return;
    }
    let mut expects = Vec::new();
    let mut bytes_stage = Vec::new();
    for c in parts.corruptions.iter().take(MAX_CORRUPTIONS) {
        match c {
            Corruption::Truncate(_)
            | Corruption::FlipByte(..)
            | Corruption::LyingLength(..)
            | Corruption::UnknownField(..) => bytes_stage.push(c),
            c => {
                if let Some(e) = corrupt(&mut state, &mut layout, c) {
                    expects.push(e);
                }
            }
        }
    }
    let mut bytes = state.encode_to_vec();
    for c in bytes_stage {
        if let Some(e) = corrupt_bytes(&mut bytes, c) {
            expects.push(e);
        }
    }
    let descriptors = layout.descriptors;
    let result = validate(&bytes, descriptors);
    if expects.iter().all(|e| *e == Expect::Valid) {
        match result {
            Ok(v) => {
                assert_eq!(v.saved, state, "unknown fields must be skipped");
                revalidates(&v.saved, descriptors);
            }
            Err(e) => panic!("a valid state with unknown fields refused: {e}"),
        }
        return;
    }
    if expects.contains(&Expect::Either) {
        if let Ok(v) = result {
            revalidates(&v.saved, descriptors);
        }
        return;
    }
    let err = match result {
        Ok(v) => panic!("corrupted by {expects:?}, yet valid: {v:?}"),
        Err(e) => e,
    };
    assert!(!err.to_string().is_empty());
    let invalidating: Vec<Expect> = expects
        .iter()
        .copied()
        .filter(|e| *e != Expect::Valid)
        .collect();
    if let [one] = invalidating[..] {
        let kind = match err {
            SavedError::Decode(_) => None,
            SavedError::Format(_) => Some(Expect::Format),
            SavedError::Invalid(_) => Some(Expect::Invalid),
            SavedError::Descriptor { .. } => Some(Expect::Descriptor),
        };
        assert_eq!(kind, Some(one), "{err}");
    }
}

/// The promises of a valid state.
fn valid(state: &SavedService, layout: Layout, ops: &[MmioOp]) {
    let descriptors = layout.descriptors;
    let bytes = state.encode_to_vec();
    let v = match validate(&bytes, descriptors) {
        Ok(v) => v,
        Err(e) => panic!("a valid state refused: {e}\n{state:?}"),
    };
    assert_eq!(&v.saved, state);
    assert_eq!(Some(v.table.save()), state.table);
    assert_eq!(v.ops, ops);
    for bus in &v.saved.buses {
        assert_eq!(v.table.running(&bus.bus), Some(bus.generation));
        // The bus's own restore: a typed error or a relay, never a panic.
        if let Ok(SavedBus {
            relay: Some(relay), ..
        }) = SavedBus::from_bytes(&bus.driver)
        {
            let now = Duration::from_nanos(bus.relay_now_ns);
            let _ = BusRelay::restore(RelayConfig::default(), &relay, now);
        }
    }
    // Spare descriptors are fine; with none, one fewer never is.
    if layout.named == descriptors {
        assert!(matches!(
            validate(&bytes, descriptors - 1),
            Err(SavedError::Descriptor { .. })
        ));
    }
    revalidates(&v.saved, descriptors);
}

/// A state that validated re-encodes to one that validates to the same.
fn revalidates(saved: &SavedService, descriptors: usize) {
    match validate(&saved.encode_to_vec(), descriptors) {
        Ok(again) => assert_eq!(&again.saved, saved),
        Err(e) => panic!("a validated state, re-encoded, refused: {e}"),
    }
}
