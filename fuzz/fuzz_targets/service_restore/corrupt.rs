//! `service_restore`'s corruptions: of a built state's fields (each makes it invalid, and
//! says which typed error it calls for) and of its encoded bytes.

use arbitrary::Arbitrary;
use openhcl_vpci::control::MmioOp;
use openhcl_vpci::service::saved::{
    FORMAT, SavedBar, SavedBusEntry, SavedMmio, SavedRing, SavedService, SavedTableEntry,
};

use crate::Expect;
use crate::build::{Layout, for_each_fd, json};

/// The most accesses the service keeps outstanding (`service::MAX_PENDING_MMIO`).
const MAX_PENDING: usize = openhcl_vpci::service::MAX_PENDING_MMIO;

/// One targeted corruption; bus, ring, access and descriptor choices wrap around what the
/// state has (a descriptor choice counts the places the service names one, in its order).
#[derive(Debug, Arbitrary)]
pub(crate) enum Corruption {
    Format(u32),
    NoTable,
    GuestIdNotIssued(u64),
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
pub(crate) fn corrupt(
    state: &mut SavedService,
    layout: &mut Layout,
    c: &Corruption,
) -> Option<Expect> {
    match *c {
        Corruption::Format(f) => {
            state.format = if f == FORMAT { FORMAT + 1 } else { f };
            Some(Expect::Format)
        }
        Corruption::NoTable => {
            state.table = None;
            Some(Expect::Invalid)
        }
        Corruption::GuestIdNotIssued(k) => {
            let next = state.next_guest_id;
            let guest = state.guest.as_mut()?;
            guest.id = if k % 2 == 0 {
                0
            } else {
                next.saturating_add(k / 2)
            };
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
pub(crate) fn corrupt_bytes(bytes: &mut Vec<u8>, c: &Corruption) -> Option<Expect> {
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
