//! The decoders: a message or completion built the way peers send it, with one targeted
//! corruption (a cut, bytes added, a count or slot field overwritten, the type swapped, a
//! byte flipped), decoded as either sender at any version. Promise: no panic, and whatever
//! decodes re-encodes to exactly the bytes it came from (a relay forwards what it got).

use super::Source;
use vpci_protocol::build;
use vpci_protocol::wire::FunctionDescription2;
use vpci_protocol::*;

fn slot(src: &mut Source<'_>) -> WinSlot {
    // Mostly valid slots; now and then one with reserved bits.
    if src.below(8) == 0 {
        WinSlot::from_raw(src.u32())
    } else {
        WinSlot::new(src.byte(), src.byte())
    }
}

fn descriptions(src: &mut Source<'_>) -> Vec<FunctionDescription2> {
    (0..src.below(6))
        .map(|_| {
            let s = slot(src);
            build::description2(s, src.u16(), src.u16(), src.u32())
        })
        .collect()
}

/// A message or completion payload as a peer builds it.
pub fn message(src: &mut Source<'_>) -> Vec<u8> {
    let v = src.pick(&ProtocolVersion::ALL);
    match src.below(22) {
        0 => build::query_version(v),
        1 => build::query_relations(),
        2 => build::d0_entry(u64::from(src.u32()) << 12),
        3 => build::d0_exit(),
        4 => build::query_requirements(slot(src)),
        5 => build::eject(slot(src)),
        6 => build::ejection_complete(slot(src)),
        7 => build::resources_released(slot(src)),
        8 => build::resources_assigned(slot(src), &[(u64::from(src.u32()), src.u32())]),
        9 => build::resources_assigned2(slot(src), &[]),
        10 => build::create_interrupt(slot(src), src.byte(), u64::from(src.u32())),
        11 => build::create_interrupt2(slot(src), src.byte(), src.u16()),
        12 => build::create_interrupt3(slot(src), src.u32(), src.u16()),
        13 => build::delete_interrupt(slot(src), u64::from(src.u32()), src.u32()),
        14 => build::relations2(&descriptions(src)),
        15 => build::relations(&descriptions(src)),
        16 => build::status_reply(Status(src.u32())),
        17 => build::requirements_reply([src.u32(), 0, src.u32(), 0, 0, 0]),
        18 => build::interrupt_reply(u64::from(src.u32()), src.u32()),
        // The head of a RESOURCES_ASSIGNED completion: status, slot, six ranges, a count.
        19 => {
            let mut b = build::status_reply(Status::SUCCESS);
            b.extend(
                build::resources_assigned2(slot(src), &[])
                    .get(4..136)
                    .unwrap_or(&[]),
            );
            b
        }
        20 => {
            // A message type and slot, nothing else.
            let ty = src.pick(MessageType::ALL);
            let mut b = ty.0.to_le_bytes().to_vec();
            b.extend(slot(src).raw().to_le_bytes());
            b
        }
        _ => src.bytes(64),
    }
}

/// One targeted corruption of `b`.
pub fn corrupt(src: &mut Source<'_>, b: &mut Vec<u8>) {
    let at = |src: &mut Source<'_>, len: usize| usize::from(src.u16()) % len.max(1);
    match src.below(10) {
        0 | 1 => {}
        2 => {
            // Cut it short.
            let n = at(src, b.len() + 1);
            b.truncate(n);
        }
        3 => {
            // Bytes after it (VMBus padding, a newer dialect, or a lie).
            let extra = src.bytes(40);
            b.extend(extra);
        }
        4 => {
            // A count or slot field: the word after the type (relations' count, most
            // messages' slot) or the one after the status (completions).
            let any = src.u32();
            let v = src.pick(&[0, 1, 2, 255, 256, 257, 0x8000_0000, u32::MAX, any]);
            let off = src.pick(&[4usize, 8, 128, 132]);
            if b.len() >= off + 4 {
                b[off..off + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        5 => {
            // Reserved slot bits.
            if b.len() >= 8 {
                b[5] |= src.byte().max(1);
            }
        }
        6 => {
            // Another message type.
            if b.len() >= 4 {
                let ty = src.pick(MessageType::ALL);
                b[..4].copy_from_slice(&ty.0.to_le_bytes());
            }
        }
        7 => {
            // One byte anywhere.
            if !b.is_empty() {
                let i = at(src, b.len());
                b[i] ^= src.byte().max(1);
            }
        }
        8 => {
            // The end of the payload repeated (a list longer than its count).
            let tail = b.iter().rev().take(28).rev().copied().collect::<Vec<_>>();
            b.extend(tail);
        }
        _ => {
            let i = at(src, b.len() + 1);
            b.truncate(i);
            let extra = src.bytes(16);
            b.extend(extra);
        }
    }
}

/// The harness: build, corrupt, decode every way.
pub fn run(data: &[u8]) {
    let mut src = Source::new(data);
    let mut b = message(&mut src);
    corrupt(&mut src, &mut b);
    let version = src.pick(&ProtocolVersion::ALL);
    for from in [Sender::Host, Sender::Guest] {
        if let Ok(m) = decode(&b, from, version) {
            assert_eq!(encode(&m), b, "{m:?} re-encodes differently");
            assert!(m.direction() != Direction::GuestToHost || from == Sender::Guest);
        }
    }
    let request = src.pick(MessageType::ALL);
    if let Ok(c) = decode_completion(&b, request, version) {
        assert_eq!(c.encode(), b, "{c:?} re-encodes differently");
    }
}
