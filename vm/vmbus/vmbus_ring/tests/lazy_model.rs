//! Property test of a lazy reader's rules, one step at a time: random interleavings of a
//! writer that blocks when full and a reader that polls, masks, flushes and sleeps, checked
//! for FIFO order and for the wake-up rule: once the reader has drained the ring and
//! committed (as a lazy reader must on an empty ring), a blocked writer has been signalled.

mod common;

use common::*;
use proptest::prelude::*;
use std::collections::VecDeque;
use vmbus_ring::*;

#[derive(Debug, Clone)]
enum Op {
    /// The writer writes a packet with this payload length, or blocks if it does not fit.
    /// A blocked writer does nothing until signalled.
    Write(usize),
    /// The reader reads one packet; on an empty ring it commits instead.
    Read,
    /// The reader flushes (if `true`; else it leaves publishing to the unmask), unmasks
    /// and, unless told to read again, "sleeps" until the next signal or reader step.
    Sleep(bool),
    /// The reader masks interrupts.
    Mask,
    /// The reader turns lazy publishing on or off.
    Lazy(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..3000).prop_map(Op::Write),
        // Packets needing more than the three quarters a lazy reader always leaves free.
        1 => (3100usize..4000).prop_map(Op::Write),
        2 => (0usize..200).prop_map(Op::Write),
        5 => Just(Op::Read),
        1 => any::<bool>().prop_map(Op::Sleep),
        1 => Just(Op::Mask),
        1 => any::<bool>().prop_map(Op::Lazy),
    ]
}

fn run(start: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (_, mut writer, mut reader) = ring_at(4096, start);
    reader.set_lazy_publish(true);
    reader.mask_interrupts().unwrap();
    let mut buf = vec![0; reader.max_packet_len()];
    let mut queue: VecDeque<(u64, usize)> = VecDeque::new();
    let mut next_id = 0u64;
    // Some(needed) while the writer sleeps on a full ring.
    let mut blocked: Option<usize> = None;
    // The reader's view: whether it may sleep (it must never sleep on a waiting packet).
    let mut reader_asleep = false;

    for op in ops {
        match op {
            Op::Write(len) => {
                if blocked.is_some() {
                    continue;
                }
                let body = payload(next_id, len);
                match writer.write_packet(&inband(next_id), &body) {
                    Ok(out) => {
                        if out.signal_reader {
                            reader_asleep = false;
                        }
                        prop_assert!(!reader_asleep, "the reader sleeps on a packet");
                        queue.push_back((next_id, len));
                        next_id += 1;
                    }
                    Err(WriteError::Full { needed, .. }) => {
                        if !writer.set_pending_send_size(needed).unwrap() {
                            blocked = Some(needed);
                        }
                    }
                    Err(e) => prop_assert!(false, "{e}"),
                }
            }
            Op::Read => {
                reader_asleep = false;
                match reader.read_packet(&mut buf).unwrap() {
                    Some(packet) => {
                        let (id, len) = queue.pop_front().unwrap();
                        prop_assert_eq!(packet.info.header.meta.transaction_id, id);
                        prop_assert_eq!(&packet.info.payload(&buf)[..len], &payload(id, len)[..]);
                        if packet.signal_writer {
                            blocked = None;
                        }
                    }
                    None => {
                        prop_assert!(queue.is_empty());
                        if reader.commit().unwrap() {
                            blocked = None;
                        }
                        // Drained and committed: every byte is free, so a writer still asleep
                        // would sleep forever.
                        prop_assert_eq!(blocked, None, "lost wake-up of a blocked writer");
                    }
                }
            }
            Op::Sleep(flush) => {
                if flush && reader.flush().unwrap() {
                    blocked = None;
                }
                if !reader.unmask_interrupts().unwrap() {
                    prop_assert!(queue.is_empty(), "unmask missed a waiting packet");
                    reader_asleep = true;
                }
                // Told to read again: the next Read reports any signal the unmask owes.
            }
            Op::Mask => {
                // Only an awake reader masks.
                reader_asleep = false;
                reader.mask_interrupts().unwrap();
            }
            Op::Lazy(lazy) => reader.set_lazy_publish(lazy),
        }
        if reader_asleep {
            // A sleeping reader has published everything: the writer's signalling decision
            // is exact, and its space is all there is.
            prop_assert_eq!(reader.unpublished_bytes(), 0);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 512 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever the interleaving, packets arrive in order, a sleeping reader is woken by
    /// the next packet, and a drained reader's commit wakes a blocked writer.
    #[test]
    fn lazy_reader_never_loses_a_wake_up(
        start in (0u32..512).prop_map(|x| x * 8),
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        run(start, ops)?;
    }
}
