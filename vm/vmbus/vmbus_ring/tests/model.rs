//! Property tests: random interleavings of writes and reads against a `VecDeque` model,
//! including free-space accounting and both signalling rules.

mod common;

use common::*;
use proptest::prelude::*;
use std::collections::VecDeque;
use vmbus_ring::*;

#[derive(Debug, Clone)]
enum Op {
    /// Write a packet with this payload length.
    Write(usize),
    /// Read one packet with read_packet.
    Read,
    /// Peek and consume up to n packets, then commit once.
    ReadBatch(usize),
    /// Mask interrupts (the writer must not signal until unmasked).
    Mask,
    /// Unmask; the result must say whether data is waiting.
    Unmask,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..1500).prop_map(Op::Write),
        1 => (0usize..64).prop_map(Op::Write),
        3 => Just(Op::Read),
        1 => (1usize..5).prop_map(Op::ReadBatch),
        1 => Just(Op::Mask),
        1 => Just(Op::Unmask),
    ]
}

struct Model {
    data_size: usize,
    /// (transaction id, payload, bytes used in the ring including trailer)
    packets: VecDeque<(u64, Vec<u8>, usize)>,
    used: usize,
    masked: bool,
    pending: Option<usize>,
}

impl Model {
    fn free(&self) -> usize {
        self.data_size - self.used
    }

    /// Pops one packet, returning it and whether a blocked writer must be signalled were
    /// this the only packet of the commit.
    fn pop(&mut self) -> (u64, Vec<u8>, usize) {
        let p = self.packets.pop_front().unwrap();
        self.used -= p.2;
        p
    }

    fn signal_writer(&self, free_before: usize) -> bool {
        match self.pending {
            Some(pending) => free_before <= pending && self.free() > pending,
            None => false,
        }
    }
}

fn run(start: u32, data_pages: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let data_size = data_pages * 4096;
    let (_, mut writer, mut reader) = ring_at(data_size, start);
    let mut model = Model {
        data_size,
        packets: VecDeque::new(),
        used: 0,
        masked: false,
        pending: None,
    };
    let mut next_id = 0u64;
    let mut buf = vec![0; reader.max_packet_len()];
    for op in ops {
        match op {
            Op::Write(len) => {
                let id = next_id;
                next_id += 1;
                let body = payload(id, len);
                let needed = framed_len(len).unwrap() + TRAILER_SIZE;
                let was_empty = model.packets.is_empty();
                match writer.write_packet(&inband(id), &body) {
                    Ok(out) => {
                        prop_assert!(model.free() > needed, "accepted without room");
                        prop_assert_eq!(out.signal_reader, was_empty && !model.masked);
                        model.packets.push_back((id, body, needed));
                        model.used += needed;
                        model.pending = None;
                    }
                    Err(WriteError::Full { needed: n, free }) => {
                        prop_assert_eq!(n, needed);
                        prop_assert_eq!(free, model.free());
                        prop_assert!(model.free() <= needed);
                        // Ask to be told when there is room; in a single thread nobody has
                        // freed any meanwhile.
                        prop_assert!(!writer.set_pending_send_size(needed).unwrap());
                        model.pending = Some(needed);
                    }
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
            Op::Read => {
                let free_before = model.free();
                match reader.read_packet(&mut buf).unwrap() {
                    None => prop_assert!(model.packets.is_empty()),
                    Some(packet) => {
                        let (id, body, _) = model.pop();
                        let info = packet.info;
                        prop_assert_eq!(info.header.meta, inband(id));
                        prop_assert_eq!(&info.payload(&buf)[..body.len()], &body[..]);
                        prop_assert_eq!(packet.signal_writer, model.signal_writer(free_before));
                    }
                }
            }
            Op::ReadBatch(n) => {
                let free_before = model.free();
                for _ in 0..n {
                    let Some(info) = reader.peek(&mut buf).unwrap() else {
                        prop_assert!(model.packets.is_empty());
                        break;
                    };
                    let (id, body, _) = model.pop();
                    prop_assert_eq!(info.header.meta.transaction_id, id);
                    prop_assert_eq!(&info.payload(&buf)[..body.len()], &body[..]);
                    reader.consume();
                }
                let signal = reader.commit().unwrap();
                prop_assert_eq!(signal, model.signal_writer(free_before));
            }
            Op::Mask => {
                reader.mask_interrupts().unwrap();
                model.masked = true;
            }
            Op::Unmask => {
                prop_assert_eq!(
                    reader.unmask_interrupts().unwrap(),
                    !model.packets.is_empty()
                );
                model.masked = false;
            }
        }
        prop_assert_eq!(writer.free_bytes().unwrap(), model.free());
    }
    // Drain: everything written comes out in order.
    while let Some(packet) = reader.read_packet(&mut buf).unwrap() {
        let (id, body, _) = model.pop();
        prop_assert_eq!(packet.info.header.meta.transaction_id, id);
        prop_assert_eq!(&packet.info.payload(&buf)[..body.len()], &body[..]);
    }
    prop_assert!(model.packets.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        // Miri's isolation has no getcwd, which the failure file needs.
        failure_persistence: if cfg!(miri) {
            None
        } else {
            ProptestConfig::default().failure_persistence
        },
        ..ProptestConfig::default()
    })]

    /// Any interleaving of writes, reads, batched reads and mask changes behaves like a
    /// FIFO with the ring's free-space and signalling rules, from any starting offset.
    #[test]
    fn ring_matches_model(
        start in (0u32..512).prop_map(|x| x * 8),
        data_pages in 1usize..3,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        run(start, data_pages, ops)?;
    }
}
