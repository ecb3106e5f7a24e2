//! Properties: generated messages survive encode then decode; arbitrary bytes never panic
//! the decoders, and whatever decodes re-encodes to exactly the bytes it came from.

use proptest::prelude::*;
use proptest::strategy::Union;
use vpci_protocol::wire::*;
use vpci_protocol::*;
use zerocopy::{FromBytes, Immutable, KnownLayout};

fn wire<T: FromBytes + Immutable + KnownLayout + Reserved + std::fmt::Debug>()
-> impl Strategy<Value = T> {
    proptest::collection::vec(any::<u8>(), size_of::<T>()).prop_map(|b| {
        let mut v = T::read_from_bytes(&b).expect("exact size");
        v.clear_reserved();
        v
    })
}

fn trailing() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..9)
}

fn fixed<B>() -> impl Strategy<Value = Fixed<B>>
where
    B: FromBytes + Immutable + KnownLayout + Reserved + std::fmt::Debug,
{
    (wire::<B>(), trailing()).prop_map(|(body, trailing)| Fixed {
        body,
        trailing,
        omitted: 0,
    })
}

fn relations<D>() -> impl Strategy<Value = BusRelations<D>>
where
    D: FromBytes + Immutable + KnownLayout + Reserved + std::fmt::Debug + Clone,
{
    (proptest::collection::vec(wire::<D>(), 0..6), trailing()).prop_map(|(functions, trailing)| {
        BusRelations {
            functions,
            trailing,
        }
    })
}

fn resources(msi_size: usize) -> impl Strategy<Value = ResourcesAssigned> {
    (wire::<ResourcesHead>(), 0..3usize, trailing()).prop_flat_map(move |(head, n, trailing)| {
        proptest::collection::vec(any::<u8>(), n * msi_size).prop_map(move |msi| {
            let mut head = head;
            head.msi_descriptor_count = (n as u32).into();
            ResourcesAssigned {
                head,
                msi_resources: msi,
                trailing: trailing.clone(),
            }
        })
    })
}

fn message() -> impl Strategy<Value = Message> {
    use Message as M;
    Union::new(vec![
        relations().prop_map(M::BusRelations).boxed(),
        relations().prop_map(M::BusRelations2).boxed(),
        fixed().prop_map(M::QueryBusRelations).boxed(),
        fixed().prop_map(M::InvalidateDevice).boxed(),
        fixed().prop_map(M::InvalidateBus).boxed(),
        fixed().prop_map(M::PowerStateChange).boxed(),
        fixed().prop_map(M::QueryResourceRequirements).boxed(),
        fixed().prop_map(M::QueryResourceResources).boxed(),
        fixed().prop_map(M::BusD0Entry).boxed(),
        fixed().prop_map(M::BusD0Exit).boxed(),
        fixed::<ReadBlockBody>()
            .prop_map(|mut m| {
                m.body.bytes_requested = (m.body.bytes_requested.get() % 129).into();
                M::ReadBlock(m)
            })
            .boxed(),
        (
            wire::<WriteBlockHead>(),
            proptest::collection::vec(any::<u8>(), 0..129),
            trailing(),
        )
            .prop_map(|(mut head, bytes, trailing)| {
                head.byte_count = (bytes.len() as u32).into();
                M::WriteBlock(WriteBlock {
                    head,
                    bytes,
                    trailing,
                })
            })
            .boxed(),
        fixed().prop_map(M::Eject).boxed(),
        fixed().prop_map(M::QueryStop).boxed(),
        fixed().prop_map(M::Reenable).boxed(),
        fixed().prop_map(M::QueryStopFailed).boxed(),
        fixed().prop_map(M::EjectionComplete).boxed(),
        // OpenVMM's EJECTION_COMPLETE: type and slot, no status and nothing after it.
        wire::<WinSlot>()
            .prop_map(|wslot| {
                M::EjectionComplete(Fixed {
                    body: EjectionCompleteBody {
                        wslot,
                        status: 0.into(),
                    },
                    trailing: Vec::new(),
                    omitted: 4,
                })
            })
            .boxed(),
        resources(16).prop_map(M::ResourcesAssigned).boxed(),
        fixed().prop_map(M::ResourcesReleased).boxed(),
        fixed().prop_map(M::InvalidateBlock).boxed(),
        fixed().prop_map(M::QueryProtocolVersion).boxed(),
        fixed().prop_map(M::CreateInterruptMessage).boxed(),
        fixed().prop_map(M::DeleteInterruptMessage).boxed(),
        resources(72).prop_map(M::ResourcesAssigned2).boxed(),
        fixed().prop_map(M::CreateInterruptMessage2).boxed(),
        fixed().prop_map(M::DeleteInterruptMessage2).boxed(),
        resources(80).prop_map(M::ResourcesAssigned3).boxed(),
        fixed().prop_map(M::CreateInterruptMessage3).boxed(),
        fixed().prop_map(M::ResetDevice).boxed(),
        (
            wire::<WinSlot>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            trailing(),
        )
            .prop_map(|(wslot, data, trailing)| {
                M::TdispCommand(TdispCommand {
                    wslot,
                    data,
                    trailing,
                })
            })
            .boxed(),
        fixed().prop_map(M::QueryIsolatedResources).boxed(),
    ])
}

fn sender_for(m: &Message) -> Sender {
    match m.direction() {
        Direction::GuestToHost => Sender::Guest,
        Direction::HostToGuest | Direction::Either => Sender::Host,
    }
}

fn typed_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        0..MessageType::ALL.len(),
        proptest::collection::vec(any::<u8>(), 0..400),
    )
        .prop_map(|(i, tail)| {
            let mut bytes = MessageType::ALL[i].0.to_le_bytes().to_vec();
            bytes.extend(tail);
            bytes
        })
}

fn any_version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        (0..8usize).prop_map(|i| ProtocolVersion::ALL[i]),
        any::<u32>().prop_map(ProtocolVersion)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// decode(encode(m)) == m for every generated message.
    #[test]
    fn encode_then_decode(m in message()) {
        let bytes = encode(&m);
        let back = decode(&bytes, sender_for(&m), ProtocolVersion::V1_7);
        prop_assert_eq!(back.as_ref(), Ok(&m));
    }

    /// Arbitrary bytes never panic the decoder; what decodes re-encodes byte for byte.
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                       host in any::<bool>(), version in any_version()) {
        let from = if host { Sender::Host } else { Sender::Guest };
        if let Ok(m) = decode(&bytes, from, version) {
            prop_assert_eq!(encode(&m), bytes);
        }
    }

    /// Bytes behind a valid type reach every body decoder; same properties.
    #[test]
    fn typed_arbitrary_bytes(bytes in typed_bytes(), host in any::<bool>()) {
        let from = if host { Sender::Host } else { Sender::Guest };
        match decode(&bytes, from, ProtocolVersion::V1_7) {
            Ok(m) => prop_assert_eq!(encode(&m), bytes),
            Err(e) => prop_assert!(e.offset() <= bytes.len()),
        }
    }

    /// Completion decoding never panics for any request type; what decodes re-encodes.
    #[test]
    fn arbitrary_completions(i in 0..MessageType::ALL.len(),
                             bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let request = MessageType::ALL[i];
        match decode_completion(&bytes, request, ProtocolVersion::V1_7) {
            Ok(c) => prop_assert_eq!(c.encode(), bytes),
            Err(e) => prop_assert!(e.offset() <= bytes.len()),
        }
    }
}
