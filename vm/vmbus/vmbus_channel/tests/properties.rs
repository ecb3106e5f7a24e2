//! Properties: the transaction table agrees with a simple model, and both backends deliver
//! exactly the same packets.

use futures::executor::block_on;
use proptest::prelude::*;
use std::collections::BTreeSet;
use vmbus_channel::ring::{RingChannelConfig, ring_channel_pair};
use vmbus_channel::{
    Channel, ChannelExt, EndReason, MemoryChannelConfig, Packet, PacketFlags, PacketKind,
    PacketLimits, TransactionConfig, TransactionError, Transactions, channel_pair_with,
};

#[derive(Debug, Clone)]
enum Op {
    Begin,
    Complete(u64),
    Cancel(u64),
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Begin),
        4 => (0u64..40).prop_map(Op::Complete),
        1 => (0u64..40).prop_map(Op::Cancel),
        1 => Just(Op::Close),
    ]
}

proptest! {
    /// Every answer of the table matches the model: ids are issued in order from the first
    /// id, the bound holds, and each completion is classified as matched, unknown (never
    /// issued) or already completed.
    #[test]
    fn transactions_match_model(ops in proptest::collection::vec(op(), 0..200), max in 1usize..8) {
        let first = 5u64;
        let mut table = Transactions::new(TransactionConfig { max_outstanding: max, first_id: first });
        let mut outstanding = BTreeSet::new();
        let mut next = first;
        let mut closed = false;
        for op in ops {
            match op {
                Op::Begin => {
                    let got = table.begin(next * 10);
                    if closed {
                        prop_assert_eq!(got, Err(TransactionError::Ended(EndReason::Closed)));
                    } else if outstanding.len() >= max {
                        prop_assert_eq!(got, Err(TransactionError::TooManyOutstanding { limit: max }));
                    } else {
                        prop_assert_eq!(got, Ok(next));
                        outstanding.insert(next);
                        next += 1;
                    }
                }
                Op::Complete(id) => {
                    let got = table.complete(id);
                    if outstanding.remove(&id) {
                        prop_assert_eq!(got, Ok(id * 10));
                    } else if (first..next).contains(&id) {
                        prop_assert_eq!(got, Err(TransactionError::AlreadyCompleted { id }));
                    } else {
                        prop_assert_eq!(got, Err(TransactionError::Unknown { id }));
                    }
                }
                Op::Cancel(id) => {
                    let got = table.cancel(id);
                    prop_assert_eq!(got.is_some(), outstanding.remove(&id));
                }
                Op::Close => {
                    let failed: Vec<u64> = table.close(EndReason::Closed).into_iter().map(|(id, _)| id).collect();
                    let expected: Vec<u64> = std::mem::take(&mut outstanding).into_iter().collect();
                    prop_assert_eq!(failed, expected);
                    closed = true;
                }
            }
            prop_assert_eq!(table.len(), outstanding.len());
        }
    }
}

fn packet() -> impl Strategy<Value = Packet> {
    (
        prop_oneof![
            Just(PacketKind::InBand),
            Just(PacketKind::Completion),
            Just(PacketKind::GpaDirect),
            (1u16..=13).prop_map(PacketKind::from_raw),
        ],
        any::<u16>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..=256),
    )
        .prop_map(|(kind, flags, transaction_id, payload)| Packet {
            kind,
            flags: PacketFlags(flags),
            transaction_id,
            payload,
        })
}

/// Sends every packet through `a` and receives it on `b`, one at a time.
fn relay(a: &mut impl Channel, b: &mut impl Channel, packets: &[Packet]) -> Vec<Packet> {
    block_on(async {
        let mut out = Vec::new();
        for packet in packets {
            a.send(packet).await.unwrap();
            out.push(b.recv().await.unwrap());
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The in-memory pair and the ring pair deliver the same packets: same kind, flags and
    /// id, the payload zero-padded to 8 bytes.
    #[test]
    fn backends_deliver_identical_packets(packets in proptest::collection::vec(packet(), 1..40)) {
        let limits = PacketLimits::new(256).unwrap();
        let (mut ma, mut mb) = channel_pair_with(MemoryChannelConfig { limits, capacity: 4 });
        let (mut ra, mut rb) =
            ring_channel_pair(RingChannelConfig { ring_size: 4096, limits }).unwrap();
        let via_memory = relay(&mut ma, &mut mb, &packets);
        let via_ring = relay(&mut ra, &mut rb, &packets);
        prop_assert_eq!(&via_memory, &via_ring);
        for (sent, received) in packets.iter().zip(&via_ring) {
            let mut expected = sent.clone();
            expected.payload.resize(sent.payload.len().div_ceil(8) * 8, 0);
            prop_assert_eq!(&expected, received);
        }
    }
}
