//! Byte vectors for every message, built by hand from the spec's field offsets (never from
//! the encoder), decoded, checked field by field, and re-encoded to the same bytes.

mod bytes;

use bytes::*;
use vpci_protocol::*;

/// BUS_RELATIONS: 8 + 20n bytes.
#[test]
fn bus_relations() {
    let bytes = B::ty(0x00)
        .u32(2)
        .desc(0x1414, 0xb111, slot(1, 0), 5)
        .desc(0x8086, 0x2222, slot(2, 1), 6)
        .done();
    assert_eq!(bytes.len(), 8 + 40);
    let Message::BusRelations(m) = round_trip(&bytes, Sender::Host) else {
        panic!()
    };
    assert_eq!(m.functions.len(), 2);
    assert_eq!(m.functions[0].v_id.get(), 0x1414);
    assert_eq!(m.functions[0].subsystem_id.get(), 0x1234_5678);
    assert_eq!(m.functions[1].d_id.get(), 0x2222);
    assert_eq!(
        (
            m.functions[1].wslot.device(),
            m.functions[1].wslot.function()
        ),
        (2, 1)
    );
    assert_eq!(m.functions[1].ser.get(), 6);
}

/// BUS_RELATIONS2: 8 + 28n bytes, with flags and NUMA node.
#[test]
fn bus_relations2() {
    let bytes = B::ty(0x19)
        .u32(2)
        .desc2(0x1414, 0xb111, slot(1, 0), 3)
        .desc2(0x15b3, 0x101e, slot(4, 0), 1)
        .done();
    assert_eq!(bytes.len(), 8 + 56);
    let Message::BusRelations2(m) = round_trip(&bytes, Sender::Host) else {
        panic!()
    };
    assert_eq!(m.functions[0].virtual_numa_node.get(), 3);
    assert_eq!(m.functions[0].flags.get(), 1);
    assert_eq!(m.functions[1].v_id.get(), 0x15b3);
    assert_eq!(m.functions[1].wslot.device(), 4);
    // Empty relations (every function gone) are valid.
    let empty = B::ty(0x19).u32(0).done();
    let Message::BusRelations2(m) = round_trip(&empty, Sender::Host) else {
        panic!()
    };
    assert!(m.functions.is_empty());
}

/// QUERY_BUS_RELATIONS and BUS_D0EXIT: the type alone (4 bytes), or padded to 8 by VMBus.
#[test]
fn type_only_messages() {
    let q = round_trip(&B::ty(0x01).done(), Sender::Guest);
    assert!(matches!(q, Message::QueryBusRelations(_)));
    let padded = B::ty(0x08).zeros(4).done();
    let Message::BusD0Exit(m) = round_trip(&padded, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.trailing, [0; 4]);
    assert!(matches!(
        round_trip(&B::ty(0x03).done(), Sender::Host),
        Message::InvalidateBus(_)
    ));
}

/// QUERY_PROTOCOL_VERSION: 8 bytes, accepted whatever version is current.
#[test]
fn query_protocol_version() {
    let bytes = B::ty(0x13).u32(0x0001_0004).done();
    let m = decode(&bytes, Sender::Guest, ProtocolVersion::V1_0).unwrap();
    let Message::QueryProtocolVersion(m) = &m else {
        panic!()
    };
    assert_eq!(m.body.protocol_version.get(), 0x0001_0004);
    round_trip(&bytes, Sender::Guest);
}

/// BUS_D0ENTRY: type, reserved u32, mmio_base u64 (16 bytes).
#[test]
fn bus_d0_entry() {
    let bytes = B::ty(0x07).u32(0).u64(0xf_e000_0000).done();
    assert_eq!(bytes.len(), 16);
    let Message::BusD0Entry(m) = round_trip(&bytes, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.body.mmio_base.get(), 0xf_e000_0000);
}

/// Slot-only messages: QUERY_RESOURCE_REQUIREMENTS, RESOURCES_RELEASED, EJECT, RESET_DEVICE,
/// QUERY_ISOLATED_RESOURCES, INVALIDATE_DEVICE, QUERY_STOP, REENABLE, QUERY_STOP_FAILED.
#[test]
fn slot_messages() {
    let cases: [(u32, Sender); 9] = [
        (0x05, Sender::Guest),
        (0x11, Sender::Guest),
        (0x0B, Sender::Host),
        (0x1C, Sender::Guest),
        (0x1E, Sender::Guest),
        (0x02, Sender::Host),
        (0x0C, Sender::Host),
        (0x0D, Sender::Host),
        (0x0E, Sender::Guest),
    ];
    for (off, from) in cases {
        let bytes = B::ty(off).u32(slot(7, 3)).done();
        assert_eq!(bytes.len(), 8);
        let m = round_trip(&bytes, from);
        assert_eq!(m.message_type().0, 0x4249_0000 + off);
        let s = m.wslot().unwrap();
        assert_eq!((s.device(), s.function()), (7, 3), "{m:?}");
    }
}

/// QUERY_RESOURCE_RESOURCES: type, wslot, three reserved u64 (OpenVMM's layout).
#[test]
fn query_resource_resources() {
    let bytes = B::ty(0x06).u32(slot(1, 0)).zeros(24).done();
    let Message::QueryResourceResources(m) = round_trip(&bytes, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.body.wslot.device(), 1);
}

/// EJECTION_COMPLETE: type, wslot, status (12 bytes); as VMBus pads it, 16.
#[test]
fn ejection_complete() {
    let bytes = B::ty(0x0F).u32(slot(2, 0)).u32(0).done();
    assert_eq!(bytes.len(), 12);
    let Message::EjectionComplete(m) = round_trip(&bytes, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.body.wslot.device(), 2);
    assert_eq!(m.body.status.get(), 0);
    let padded = B::ty(0x0F).u32(slot(2, 0)).u32(0).zeros(4).done();
    round_trip(&padded, Sender::Guest);
}

/// POWER_STATE_CHANGE: 16 bytes from Linux (reserved word kept), 12 in the short form.
#[test]
fn power_state_change() {
    let linux = B::ty(0x04).u32(slot(1, 0)).u32(4).u32(0).done();
    let Message::PowerStateChange(m) = round_trip(&linux, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.body.power_state.get(), 4);
    assert_eq!(m.trailing.len(), 4);
    let short = B::ty(0x04).u32(slot(1, 0)).u32(1).done();
    let Message::PowerStateChange(m) = round_trip(&short, Sender::Guest) else {
        panic!()
    };
    assert!(m.trailing.is_empty());
}

/// RESOURCES_ASSIGNED as Linux sends it: 148 bytes, no MSI resources.
#[test]
fn resources_assigned_linux() {
    let bytes = B::ty(0x10)
        .u32(slot(1, 0))
        .u8(3) // resource 0: memory
        .u8(0)
        .u16(0)
        .u64(0xfe00_0000)
        .u32(0x1000)
        .u32(0)
        .zeros(100) // resources 1-5
        .u32(0) // msi_descriptors
        .zeros(16) // reserved[4]
        .done();
    assert_eq!(bytes.len(), 148);
    let Message::ResourcesAssigned(m) = round_trip(&bytes, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.head.wslot.device(), 1);
    assert_eq!(m.head.memory_range[0].resource_type, 3);
    assert_eq!(m.head.memory_range[0].address.get(), 0xfe00_0000);
    assert_eq!(m.head.memory_range[0].length.get(), 0x1000);
    assert_eq!(m.trailing.len(), 12);
}

/// RESOURCES_ASSIGNED2 as Linux sends it: 202 bytes.
#[test]
fn resources_assigned2_linux() {
    let bytes = B::ty(0x16)
        .u32(slot(1, 0))
        .zeros(120)
        .u32(0)
        .zeros(70)
        .done();
    assert_eq!(bytes.len(), 202);
    let Message::ResourcesAssigned2(m) = round_trip(&bytes, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.trailing.len(), 66);
}

/// RESOURCES_ASSIGNED3 in OpenVMM's layout: 136-byte head then 80-byte MSI resources.
#[test]
fn resources_assigned3_openvmm() {
    let bytes = B::ty(0x1A)
        .u32(slot(1, 0))
        .zeros(120)
        .u32(2)
        .u32(0)
        .bytes(&[0xaa; 160])
        .done();
    let Message::ResourcesAssigned3(m) = round_trip(&bytes, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.head.msi_descriptor_count.get(), 2);
    assert_eq!(m.msi_resources.len(), 160);
    assert!(m.trailing.is_empty());
}

/// CREATE_INTERRUPT_MESSAGE: type, wslot, hv_msi_desc (24 bytes).
#[test]
fn create_interrupt_message() {
    let bytes = B::ty(0x14)
        .u32(slot(1, 0))
        .u8(0x31) // vector
        .u8(0) // delivery mode
        .u16(1) // vector_count
        .u32(0) // reserved
        .u64(0b1010) // cpu_mask
        .done();
    assert_eq!(bytes.len(), 24);
    let Message::CreateInterruptMessage(m) = round_trip(&bytes, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.body.int_desc.vector, 0x31);
    assert_eq!(m.body.int_desc.cpu_mask.get(), 0b1010);
}

/// CREATE_INTERRUPT_MESSAGE2: 78 bytes (Linux) or 80 (OpenVMM); both keep their size.
#[test]
fn create_interrupt_message2_both_dialects() {
    let linux = B::ty(0x17)
        .u32(slot(1, 0))
        .u8(0x40)
        .u8(0)
        .u16(1)
        .u16(2) // processor_count
        .u16(0)
        .u16(5)
        .zeros(60)
        .done();
    assert_eq!(linux.len(), 78);
    let Message::CreateInterruptMessage2(m) = round_trip(&linux, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.body.int_desc.processor_count.get(), 2);
    assert_eq!(m.body.int_desc.processor_array[1].get(), 5);
    assert!(m.trailing.is_empty());
    let mut openvmm = linux.clone();
    openvmm.extend_from_slice(&[0, 0]);
    let Message::CreateInterruptMessage2(m) = round_trip(&openvmm, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.trailing.len(), 2);
    assert!(decode(&linux, Sender::Guest, ProtocolVersion::V1_1).is_err());
}

/// CREATE_INTERRUPT_MESSAGE3: 82 bytes (Linux) or 84 (OpenVMM), 32-bit vector.
#[test]
fn create_interrupt_message3_both_dialects() {
    let linux = B::ty(0x1B)
        .u32(slot(1, 0))
        .u32(0x2000) // vector
        .u8(0)
        .u8(0)
        .u16(1)
        .u16(1)
        .u16(3)
        .zeros(62)
        .done();
    assert_eq!(linux.len(), 82);
    let Message::CreateInterruptMessage3(m) = round_trip(&linux, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.body.int_desc.vector.get(), 0x2000);
    assert_eq!(m.body.int_desc.processor_array[0].get(), 3);
    let mut openvmm = linux.clone();
    openvmm.extend_from_slice(&[0, 0]);
    round_trip(&openvmm, Sender::Guest);
}

/// DELETE_INTERRUPT_MESSAGE (and 2): type, wslot, tran_int_desc (24 bytes).
#[test]
fn delete_interrupt_message() {
    for off in [0x15, 0x18] {
        let bytes = B::ty(off)
            .u32(slot(1, 0))
            .u16(0)
            .u16(1)
            .u32(0x4031)
            .u64(0xfee0_0000)
            .done();
        assert_eq!(bytes.len(), 24);
        let m = round_trip(&bytes, Sender::Guest);
        let (Message::DeleteInterruptMessage(m) | Message::DeleteInterruptMessage2(m)) = m else {
            panic!()
        };
        assert_eq!(m.body.int_desc.data.get(), 0x4031);
        assert_eq!(m.body.int_desc.address.get(), 0xfee0_0000);
    }
}

/// READ_BLOCK: type, block_id, wslot, bytes_requested (16 bytes; at most 128 requested).
#[test]
fn read_block() {
    let bytes = B::ty(0x09).u32(3).u32(slot(1, 0)).u32(128).done();
    let Message::ReadBlock(m) = round_trip(&bytes, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.body.block_id.get(), 3);
    assert_eq!(m.body.bytes_requested.get(), 128);
    let too_many = B::ty(0x09).u32(3).u32(slot(1, 0)).u32(129).done();
    let err = decode(&too_many, Sender::Guest, V).unwrap_err();
    assert!(
        matches!(err, DecodeError::CountTooLarge { offset: 12, .. }),
        "{err}"
    );
}

/// WRITE_BLOCK: type, block_id, wslot, byte_count, bytes (Linux adds 4 bytes after).
#[test]
fn write_block() {
    let bytes = B::ty(0x0A)
        .u32(1)
        .u32(slot(1, 0))
        .u32(3)
        .bytes(&[1, 2, 3])
        .zeros(4)
        .done();
    let Message::WriteBlock(m) = round_trip(&bytes, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.bytes, [1, 2, 3]);
    assert_eq!(m.trailing.len(), 4);
    let short = B::ty(0x0A).u32(1).u32(slot(1, 0)).u32(9).bytes(&[1]).done();
    assert!(matches!(
        decode(&short, Sender::Guest, V),
        Err(DecodeError::CountTooLarge { offset: 12, .. })
    ));
}

/// INVALIDATE_BLOCK: type, wslot, block_mask (16 bytes), from the host.
#[test]
fn invalidate_block() {
    let bytes = B::ty(0x12).u32(slot(1, 0)).u64(0b11).done();
    let Message::InvalidateBlock(m) = round_trip(&bytes, Sender::Host) else {
        panic!()
    };
    assert_eq!(m.body.block_mask.get(), 3);
}

/// TDISP_COMMAND: type, wslot, data_length u64, data.
#[test]
fn tdisp_command() {
    let bytes = B::ty(0x1D).u32(slot(1, 0)).u64(5).bytes(b"hello").done();
    let Message::TdispCommand(m) = round_trip(&bytes, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.data, b"hello");
    let lying = B::ty(0x1D).u32(slot(1, 0)).u64(u64::MAX).done();
    assert!(matches!(
        decode(&lying, Sender::Guest, V),
        Err(DecodeError::CountTooLarge { offset: 8, .. })
    ));
    assert!(decode(&bytes, Sender::Guest, ProtocolVersion::V1_6).is_err());
}

/// Every message type the spec lists has a vector in this file (a new type needs one).
#[test]
fn every_type_is_covered() {
    assert_eq!(MessageType::ALL.len(), 31);
    for ty in MessageType::ALL {
        assert!(rules(*ty).is_some(), "{ty}");
    }
}

/// A truncated payload of each fixed message names the offset where it ran out.
#[test]
fn truncation_names_the_offset() {
    let bytes = B::ty(0x14).u32(slot(1, 0)).zeros(10).done();
    let err = decode(&bytes, Sender::Guest, V).unwrap_err();
    assert_eq!(err.offset(), 4);
    assert!(err.to_string().contains("offset 4"), "{err}");
    let err = decode(&[0x19, 0, 0x49], Sender::Host, V).unwrap_err();
    assert!(matches!(err, DecodeError::Truncated { offset: 0, .. }));
}

/// A device_count larger than the packet is an error at the count's offset, and nothing
/// is allocated for it.
#[test]
fn oversized_count() {
    let bytes = B::ty(0x00).u32(u32::MAX).desc(1, 2, 0, 0).done();
    let err = decode(&bytes, Sender::Host, V).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::CountTooLarge {
                offset: 4,
                count: 0xffff_ffff,
                limit: 1,
                ..
            }
        ),
        "{err}"
    );
    let ra = B::ty(0x10).u32(0).zeros(120).u32(1000).u32(0).done();
    assert!(matches!(
        decode(&ra, Sender::Guest, V),
        Err(DecodeError::CountTooLarge { offset: 128, .. })
    ));
}

/// Reserved slot bits are an error at the slot's offset, also inside a description.
#[test]
fn reserved_slot_bits() {
    let bytes = B::ty(0x0B).u32(0x100).done();
    assert!(matches!(
        decode(&bytes, Sender::Host, V),
        Err(DecodeError::ReservedBitsSet { offset: 4, .. })
    ));
    let rel = B::ty(0x00)
        .u32(2)
        .desc(1, 2, 0, 0)
        .desc(1, 2, 0x8000_0000, 0)
        .done();
    assert!(matches!(
        decode(&rel, Sender::Host, V),
        Err(DecodeError::ReservedBitsSet { offset: 40, .. })
    ));
}

/// A message from the wrong side, or newer than the negotiated version, is refused.
#[test]
fn sender_and_version_rules() {
    let eject = B::ty(0x0B).u32(0).done();
    assert!(matches!(
        decode(&eject, Sender::Guest, V),
        Err(DecodeError::WrongSender { .. })
    ));
    let d0 = B::ty(0x07).zeros(12).done();
    assert!(matches!(
        decode(&d0, Sender::Host, V),
        Err(DecodeError::WrongSender { .. })
    ));
    let rel2 = B::ty(0x19).u32(0).done();
    assert!(matches!(
        decode(&rel2, Sender::Host, ProtocolVersion::V1_2),
        Err(DecodeError::VersionTooLow { .. })
    ));
    assert!(matches!(
        decode(&B::ty(0x1F).done(), Sender::Host, V),
        Err(DecodeError::UnknownType {
            message_type: 0x4249_001F
        })
    ));
}
