//! Restoring a saved state that may be corrupt or hostile, then running the restored relay
//! between hostile peers (`relay.rs`).
//!
//! The input's first byte chooses how the state is made: its next two bytes give the
//! length of a saved state that follows (the seeds are the golden states of
//! `tests/saved_state/golden/`), taken as it is, mutated field by field (values out of
//! range, duplicate slots, ids, times, host and guest states that do not go together), or
//! mutated byte by byte (flips, truncation, insertion). The rest of the input drives the
//! restored relay.
//!
//! Promises: restoring never panics and returns the relay or a typed error; a relay it
//! returns keeps the promises `relay.rs` checks (no panic, tables within bounds, nothing
//! malformed to the guest, every request the guest makes after the restore answered
//! exactly once).

use super::Source;
use super::relay::{config, drive};
use std::time::Duration;
use vpci_protocol::build;
use vpci_relay::save::*;
use vpci_relay::*;

pub fn run(data: &[u8]) {
    let mut src = Source::new(data);
    let mode = src.below(3);
    let len = usize::from(src.u16());
    let state: Vec<u8> = (0..len).map(|_| src.byte()).collect();
    let bytes = match mode {
        0 => state,
        1 => {
            let mut saved =
                SavedRelay::from_bytes(&state).unwrap_or_else(|_| BusRelay::new(config()).save());
            for _ in 0..=src.below(4) {
                mutate(&mut saved, &mut src);
            }
            saved.to_bytes()
        }
        _ => {
            let mut state = state;
            for _ in 0..=src.below(4) {
                corrupt_bytes(&mut state, &mut src);
            }
            state
        }
    };
    restore_and_drive(&bytes, &mut src);
}

/// Restores `bytes` (never a panic) and, if that worked, drives the relay on.
pub fn restore_and_drive(bytes: &[u8], src: &mut Source<'_>) {
    let now = Duration::from_millis(u64::from(src.u16()));
    let relay = match BusRelay::restore_bytes(config(), bytes, now) {
        Ok(relay) => relay,
        Err(e) => {
            // A typed error that says what it is.
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let at = relay.restored().map(|r| r.at);
    assert!(
        at.is_some_and(|at| at >= now),
        "restored at {at:?}, asked {now:?}"
    );
    drive(relay, at.unwrap_or(now), true, src);
}

/// A function description's 28 wire bytes: vendor 0x1414, device 0xb1, serial 1, in `slot`.
fn description(slot: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(28);
    d.extend_from_slice(&0x1414u16.to_le_bytes());
    d.extend_from_slice(&0xb1u16.to_le_bytes());
    d.extend_from_slice(&[0; 8]); // revision, class, subsystem
    d.extend_from_slice(&slot.to_le_bytes());
    d.extend_from_slice(&1u32.to_le_bytes()); // serial
    d.extend_from_slice(&[0; 8]); // flags, NUMA node, reserved
    d
}

fn corrupt_bytes(state: &mut Vec<u8>, src: &mut Source<'_>) {
    let at = src.below(256) * state.len() / 256;
    match src.below(3) {
        0 => {
            if let Some(b) = state.get_mut(at) {
                *b ^= 1 << src.below(8);
            }
        }
        1 => state.truncate(at),
        _ => state.insert(at.min(state.len()), src.byte()),
    }
}

fn mutate(s: &mut SavedRelay, src: &mut Source<'_>) {
    let slot =
        |src: &mut Source<'_>| u32::from(src.byte()) | if src.below(16) == 0 { 0x100 } else { 0 };
    let time = |src: &mut Source<'_>| match src.below(3) {
        0 => u64::from(src.u32()),
        1 => s.now_ns.saturating_sub(u64::from(src.u16())),
        _ => u64::MAX - u64::from(src.byte()),
    };
    let t = time(src);
    match src.below(15) {
        0 => {
            let any = src.u32();
            s.format = src.pick(&[0, 1, 2, any]);
        }
        1 => {
            let any = src.u32();
            s.version = src.pick(&[0x1_0000, 0x1_0004, 0x1_0008, any]);
        }
        2 => s.now_ns = t,
        3 => s.guest_closed ^= true,
        4 => {
            s.host_lost = match s.host_lost {
                Some(_) => None,
                None => Some(SavedHostLost {
                    since_ns: t,
                    rescinded: src.bool(),
                }),
            }
        }
        5 => {
            let g = s.guest.get_or_insert_with(Default::default);
            g.phase = src.below(6) as u32;
            g.d0 = src.below(4) as u32;
            g.installed = src.bool();
            g.activity_ns = Some(t);
        }
        6 | 7 => {
            let table = s.functions.get_or_insert_with(Default::default);
            let f = match table.functions.len() {
                0 => None,
                n => table.functions.get(src.below(n)).cloned(),
            };
            let mut f = f.unwrap_or_else(|| {
                let raw = slot(src);
                SavedFunction {
                    slot: raw,
                    desc: description(raw),
                    host: 1,
                    guest: 2,
                    backing: 1,
                    ..Default::default()
                }
            });
            match src.below(8) {
                0 => f.host = src.below(6) as u32,
                1 => f.guest = src.below(5) as u32,
                2 => f.backing = src.below(5) as u32,
                3 => f.host_ejects_owed = src.u32(),
                4 => f.host_eject_since_ns = Some(t),
                5 => f.eject_since_ns = Some(t),
                6 => f.requests_pending = src.u32(),
                _ => f.desc.truncate(src.below(28)),
            }
            table.functions.push(f);
            if src.bool() {
                table.ever_listed = vec![u64::MAX; 4];
            }
        }
        8 => {
            let c = s.changes.get_or_insert_with(Default::default);
            c.outstanding = Some(SavedChange {
                kind: src.below(4) as u32,
                since_ns: t,
                slot: slot(src),
                added: vec![slot(src), slot(src)],
                initial: src.bool(),
            });
        }
        9 => {
            let c = s.changes.get_or_insert_with(Default::default);
            c.ejects.push(slot(src));
        }
        10 => {
            let r = s.requests.get_or_insert_with(Default::default);
            let raw = slot(src);
            r.live.push(SavedRequest {
                id: u64::from(src.u16()),
                guest_txid: u64::from(src.byte()),
                request: build::query_requirements(vpci_protocol::WinSlot::from_raw(raw)),
                slot: src.bool().then_some(raw),
                sent_at_ns: t,
            });
        }
        11 => {
            let r = s.requests.get_or_insert_with(Default::default);
            let any = u64::from(src.u16());
            r.next_txid = src.pick(&[0, 1, u64::MAX, any]);
            r.host_requests.push(SavedHostRequest {
                id: u64::from(src.byte()),
                host_txid: u64::from(src.byte()),
            });
        }
        12 => {
            let o = s.outputs.get_or_insert_with(Default::default);
            o.tx.push(SavedTransmit {
                to: src.below(5) as u32,
                packet: Some(SavedPacket {
                    kind: src.pick(&[6, 11, 7]),
                    flags: src.below(3) as u32,
                    transaction_id: u64::from(src.byte()),
                    payload: src.bytes(40),
                }),
            });
        }
        13 => {
            // Config accesses in flight: ids around the next one, widths and offsets the
            // window cannot carry, times ahead or before the access, departures.
            let a = s.accesses.get_or_insert_with(Default::default);
            let any = u64::from(src.u16());
            a.next_id = src.pick(&[0, 1, 9, u64::MAX, any]);
            a.in_flight.push(SavedAccess {
                id: u64::from(src.below(12) as u8),
                write: src.bool(),
                slot: slot(src),
                offset: {
                    let any = src.u32();
                    src.pick(&[0, 0x10, 0xffc, 0x1000, any])
                },
                len: src.below(6) as u32,
                value: src.u32(),
                since_ns: t,
                departed_ns: if src.bool() { Some(time(src)) } else { None },
            });
        }
        _ => {
            let c = s.changes.get_or_insert_with(Default::default);
            c.host_relations = Some(SavedHostRelations {
                v2: src.bool(),
                raw: build::relations2(&[]),
                exact: src.bool(),
                functions: vec![vec![0; src.below(30)]],
            });
        }
    }
}
