//! Byte vectors for every message, built by hand from the spec's field offsets (never from
//! the encoder), decoded, checked field by field, and re-encoded to the same bytes.

use vpci_protocol::*;

const V: ProtocolVersion = ProtocolVersion::V1_7;

/// Little-endian byte builder: pushes fields in the order the spec lists them.
#[derive(Default)]
struct B(Vec<u8>);

impl B {
    fn ty(off: u32) -> Self {
        B::default().u32(0x4249_0000 + off)
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn zeros(mut self, n: usize) -> Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn desc(self, v_id: u16, d_id: u16, wslot: u32, ser: u32) -> Self {
        self.u16(v_id)
            .u16(d_id)
            .u8(1) // rev
            .u8(0) // prog_intf
            .u8(2) // subclass
            .u8(1) // base_class
            .u32(0x1234_5678) // subsystem_id
            .u32(wslot)
            .u32(ser)
    }
    fn desc2(self, v_id: u16, d_id: u16, wslot: u32, numa: u16) -> Self {
        self.desc(v_id, d_id, wslot, 7).u32(1).u16(numa).u16(0)
    }
    fn done(self) -> Vec<u8> {
        self.0
    }
}

fn round_trip(bytes: &[u8], from: Sender) -> Message {
    let m = decode(bytes, from, V).unwrap_or_else(|e| panic!("{e}: {bytes:02x?}"));
    assert_eq!(encode(&m), bytes, "re-encoding {m:?}");
    m
}

fn slot(dev: u8, func: u8) -> u32 {
    u32::from(dev) | (u32::from(func) << 5)
}

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

// ---- completions ----

fn comp_round_trip(bytes: &[u8], request: MessageType) -> Completion {
    let c = decode_completion(bytes, request, V).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.encode(), bytes);
    c
}

/// QUERY_RESOURCE_REQUIREMENTS completion: status, probed_bar[6] (28 bytes).
#[test]
fn resource_requirements_completion() {
    let bytes = B::default()
        .u32(0)
        .u32(0xffff_c000)
        .u32(0xffff_ffff)
        .zeros(16)
        .done();
    assert_eq!(bytes.len(), 28);
    let c = comp_round_trip(&bytes, MessageType::QUERY_RESOURCE_REQUIREMENTS);
    let CompletionBody::ResourceRequirements(r) = c.body else {
        panic!()
    };
    assert_eq!(r.body.probed_bar[0].get(), 0xffff_c000);
    // A success that is too short is an error; a bare failure is fine.
    let short = B::default().u32(0).u32(1).done();
    assert!(decode_completion(&short, MessageType::QUERY_RESOURCE_REQUIREMENTS, V).is_err());
    let fail = B::default().u32(0xC000_0001).done();
    let c = comp_round_trip(&fail, MessageType::QUERY_RESOURCE_REQUIREMENTS);
    assert!(!c.status.is_success());
    let padded_fail = B::default().u32(0xC000_0001).zeros(4).done();
    let c = comp_round_trip(&padded_fail, MessageType::CREATE_INTERRUPT_MESSAGE2);
    assert!(matches!(c.body, CompletionBody::StatusOnly(_)));
}

/// CREATE_INTERRUPT_MESSAGE completion: status, reserved, tran_int_desc (24 bytes).
#[test]
fn create_interrupt_completion() {
    let bytes = B::default()
        .u32(0)
        .u32(0)
        .u16(0)
        .u16(1)
        .u32(0x4041)
        .u64(0xfee0_1000)
        .done();
    for ty in [
        MessageType::CREATE_INTERRUPT_MESSAGE,
        MessageType::CREATE_INTERRUPT_MESSAGE2,
        MessageType::CREATE_INTERRUPT_MESSAGE3,
    ] {
        let c = comp_round_trip(&bytes, ty);
        let CompletionBody::CreateInterrupt(r) = c.body else {
            panic!()
        };
        assert_eq!(r.body.int_desc.address.get(), 0xfee0_1000);
        assert_eq!(r.body.int_desc.data.get(), 0x4041);
    }
}

/// QUERY_PROTOCOL_VERSION completion: status alone, or status and version (OpenVMM).
#[test]
fn protocol_version_completion() {
    let short = B::default().u32(0xC000_0059).done();
    let c = comp_round_trip(&short, MessageType::QUERY_PROTOCOL_VERSION);
    assert_eq!(c.status, Status::REVISION_MISMATCH);
    let long = B::default().u32(0).u32(0x0001_0004).done();
    let c = comp_round_trip(&long, MessageType::QUERY_PROTOCOL_VERSION);
    let CompletionBody::ProtocolVersion(v) = c.body else {
        panic!()
    };
    assert_eq!(v.body.protocol_version.get(), 0x0001_0004);
}

/// POWER_STATE_CHANGE completion: status, wslot, resultant_state, reserved (16 bytes).
#[test]
fn power_completion() {
    let bytes = B::default().u32(0).u32(slot(1, 0)).u32(1).u32(0).done();
    let c = comp_round_trip(&bytes, MessageType::POWER_STATE_CHANGE);
    let CompletionBody::PowerStateChange(p) = c.body else {
        panic!()
    };
    assert_eq!(p.body.resultant_state.get(), 1);
}

/// RESOURCES_ASSIGNED completion: Linux reads a status; OpenVMM sends translated resources.
#[test]
fn resources_assigned_completion() {
    let status = B::default().u32(0).done();
    let c = comp_round_trip(&status, MessageType::RESOURCES_ASSIGNED2);
    assert!(matches!(c.body, CompletionBody::StatusOnly(_)));
    // As VMBus delivers it: padded to 8 bytes.
    let padded = B::default().u32(0).zeros(4).done();
    let c = comp_round_trip(&padded, MessageType::RESOURCES_ASSIGNED2);
    assert_eq!(c.body, CompletionBody::StatusOnly(vec![0; 4]));
    let full = B::default()
        .u32(0)
        .u32(slot(1, 0))
        .zeros(120)
        .u32(1)
        .u32(0)
        .bytes(&[7; 72])
        .done();
    let c = comp_round_trip(&full, MessageType::RESOURCES_ASSIGNED2);
    let CompletionBody::ResourcesAssigned(r) = c.body else {
        panic!()
    };
    assert_eq!(r.msi_resources.len(), 72);
}

/// Generic completions (D0 entry/exit, reset, write block, and the interrupt deletes and
/// resource release that OpenVMM answers) carry a status; fire-and-forget requests have none.
#[test]
fn generic_and_absent_completions() {
    let ok = B::default().u32(0).done();
    for ty in [
        MessageType::BUS_D0ENTRY,
        MessageType::BUS_D0EXIT,
        MessageType::RESET_DEVICE,
        MessageType::WRITE_BLOCK,
        MessageType::DELETE_INTERRUPT_MESSAGE,
        MessageType::DELETE_INTERRUPT_MESSAGE2,
        MessageType::RESOURCES_RELEASED,
    ] {
        assert!(comp_round_trip(&ok, ty).status.is_success());
    }
    for ty in [
        MessageType::QUERY_BUS_RELATIONS,
        MessageType::EJECTION_COMPLETE,
        MessageType::EJECT,
    ] {
        assert!(matches!(
            decode_completion(&ok, ty, V),
            Err(DecodeError::NoCompletion { .. })
        ));
    }
    assert!(decode_completion(&[0, 0], MessageType::BUS_D0ENTRY, V).is_err());
}

/// READ_BLOCK completion: status then the bytes read.
#[test]
fn read_block_completion() {
    let bytes = B::default().u32(0).bytes(&[9, 8, 7, 6]).done();
    let c = comp_round_trip(&bytes, MessageType::READ_BLOCK);
    assert_eq!(c.body, CompletionBody::ReadBlock(vec![9, 8, 7, 6]));
}

/// QUERY_ISOLATED_RESOURCES completion: status, six BAR isolations, DMA isolation (32).
#[test]
fn isolated_resources_completion() {
    let bytes = B::default().u32(0).u32(1).u32(2).zeros(16).u32(2).done();
    assert_eq!(bytes.len(), 32);
    let c = comp_round_trip(&bytes, MessageType::QUERY_ISOLATED_RESOURCES);
    let CompletionBody::IsolatedResources(r) = c.body else {
        panic!()
    };
    assert_eq!(r.body.bar_isolation[1].get(), 2);
    assert_eq!(r.body.dma_isolation.get(), 2);
}

/// TDISP completion: status, wslot, data_length, data.
#[test]
fn tdisp_completion() {
    let bytes = B::default()
        .u32(0)
        .u32(slot(1, 0))
        .u64(2)
        .bytes(&[1, 2])
        .done();
    let c = comp_round_trip(&bytes, MessageType::TDISP_COMMAND);
    let CompletionBody::Tdisp(t) = c.body else {
        panic!()
    };
    assert_eq!(t.data, [1, 2]);
}

// ---- the dialects real peers send (issue 12) ----
//
// Sizes from OpenVMM's vPCI structs (server `vpci`, client `vpci_client`) and Linux's
// pci-hyperv: each is a message one of them really sends, so refusing it would cost a bus.

/// EJECTION_COMPLETE from OpenVMM's client: type and slot only (8 bytes, already a multiple
/// of 8, so VMBus adds nothing). It decodes with its status marked absent and re-encodes to
/// the same 8 bytes; Linux's 12-byte form reports its status.
#[test]
fn ejection_complete_without_status() {
    let openvmm = B::ty(0x0F).u32(slot(2, 0)).done();
    assert_eq!(openvmm.len(), 8);
    let Message::EjectionComplete(m) = round_trip(&openvmm, Sender::Guest) else {
        panic!()
    };
    assert_eq!(m.body.wslot.device(), 2);
    assert_eq!(m.omitted, 4);
    assert_eq!(m.status(), None);
    assert!(m.trailing.is_empty());
    let linux = B::ty(0x0F).u32(slot(2, 0)).u32(7).done();
    let Message::EjectionComplete(m) = round_trip(&linux, Sender::Guest) else {
        panic!()
    };
    assert_eq!((m.omitted, m.status()), (0, Some(7)));
}

/// An EJECTION_COMPLETE between the two dialects (a partial status word) or without a slot
/// is truncated, and reserved slot bits are still refused in the short form.
#[test]
fn ejection_complete_that_fits_no_dialect() {
    for extra in 1..4 {
        let bytes = B::ty(0x0F).u32(slot(2, 0)).zeros(extra).done();
        assert!(
            matches!(
                decode(&bytes, Sender::Guest, V),
                Err(DecodeError::Truncated {
                    offset: 8,
                    needed: 4,
                    ..
                })
            ),
            "{extra} status bytes"
        );
    }
    assert!(matches!(
        decode(&B::ty(0x0F).done(), Sender::Guest, V),
        Err(DecodeError::Truncated { offset: 4, .. })
    ));
    assert!(matches!(
        decode(&B::ty(0x0F).u32(0x100).done(), Sender::Guest, V),
        Err(DecodeError::ReservedBitsSet { offset: 4, .. })
    ));
}

/// The completion OpenVMM's server sends for RESOURCES_ASSIGNED3: status, the 132-byte head
/// echoed, then one translated interrupt per MSI resource in the version 2 format (72 bytes:
/// a 16-byte remapped interrupt and zeros), not the 80-byte version 3 format of the request.
fn resources3_reply(count: u32, entry: usize) -> Vec<u8> {
    let mut b = B::default()
        .u32(0)
        .u32(slot(1, 0))
        .zeros(120)
        .u32(count)
        .u32(0);
    for i in 0..count {
        b = b
            .u16(0)
            .u16(1)
            .u32(0x4040 + i)
            .u64(0xfee0_1000)
            .zeros(entry - 16);
    }
    b.done()
}

/// RESOURCES_ASSIGNED3 completion with 72-byte MSI resources (OpenVMM's server, and the host
/// simulator) decodes, resource by resource, and re-encodes to the same bytes; the 80-byte
/// form decodes too.
#[test]
fn resources_assigned3_completion_in_either_msi_size() {
    for count in [1u32, 2, 3, 7] {
        for entry in [72, 80] {
            let bytes = resources3_reply(count, entry);
            assert_eq!(bytes.len(), 136 + entry * count as usize);
            let c = comp_round_trip(&bytes, MessageType::RESOURCES_ASSIGNED3);
            let CompletionBody::ResourcesAssigned(r) = c.body else {
                panic!("{count} x {entry}")
            };
            assert_eq!(r.msi_resource_size(), Some(entry), "{count} x {entry}");
            assert_eq!(r.msi_resources.len(), entry * count as usize);
            assert!(r.trailing.is_empty());
            let last = &r.msi_resources[entry * (count as usize - 1)..];
            assert_eq!(&last[4..8], &(0x4040 + count - 1).to_le_bytes());
        }
    }
    // No MSI resources: the head alone.
    let c = comp_round_trip(&resources3_reply(0, 72), MessageType::RESOURCES_ASSIGNED3);
    let CompletionBody::ResourcesAssigned(r) = c.body else {
        panic!()
    };
    assert_eq!(r.msi_resource_size(), None);
}

/// A RESOURCES_ASSIGNED3 completion too short for its count even in 72-byte resources fits
/// no dialect: refused at the count's offset, naming how many 72-byte resources fit.
#[test]
fn resources_assigned3_completion_that_fits_no_dialect() {
    let mut bytes = resources3_reply(2, 72);
    bytes.truncate(bytes.len() - 1);
    assert!(
        matches!(
            decode_completion(&bytes, MessageType::RESOURCES_ASSIGNED3, V),
            Err(DecodeError::CountTooLarge {
                offset: 128,
                count: 2,
                limit: 1,
                ..
            })
        ),
        "{:?}",
        decode_completion(&bytes, MessageType::RESOURCES_ASSIGNED3, V)
    );
    // RESOURCES_ASSIGNED2's completion keeps to 72 bytes and the request to 80.
    let mut ra3 = B::ty(0x1A)
        .u32(slot(1, 0))
        .zeros(120)
        .u32(1)
        .u32(0)
        .zeros(72)
        .done();
    assert!(matches!(
        decode(&ra3, Sender::Guest, V),
        Err(DecodeError::CountTooLarge { .. })
    ));
    ra3.extend_from_slice(&[0; 8]);
    round_trip(&ra3, Sender::Guest);
}

/// POWER_STATE_CHANGE completion as OpenVMM's server sends it: the status alone, success or
/// not, bare or padded to 8 bytes. The 16-byte body form still decodes as a body.
#[test]
fn power_completion_with_only_a_status() {
    for status in [0, 0xC000_090B] {
        for padding in [0, 4] {
            let bytes = B::default().u32(status).zeros(padding).done();
            let c = comp_round_trip(&bytes, MessageType::POWER_STATE_CHANGE);
            assert_eq!(c.status, Status(status));
            assert_eq!(c.body, CompletionBody::StatusOnly(vec![0; padding]));
        }
    }
    let body = B::default().u32(0).u32(slot(1, 0)).u32(4).u32(0).done();
    let c = comp_round_trip(&body, MessageType::POWER_STATE_CHANGE);
    assert!(matches!(c.body, CompletionBody::PowerStateChange(_)));
}

/// A successful POWER_STATE_CHANGE completion with more than padding but less than the body
/// after its status fits no dialect and is refused.
#[test]
fn power_completion_that_fits_no_dialect() {
    for after in 8..12 {
        let bytes = B::default().u32(0).zeros(after).done();
        assert!(
            matches!(
                decode_completion(&bytes, MessageType::POWER_STATE_CHANGE, V),
                Err(DecodeError::Truncated { offset: 4, .. })
            ),
            "{after} bytes after the status"
        );
    }
}

/// DELETE_INTERRUPT_MESSAGE(2) and RESOURCES_RELEASED get a completion when they ask for one
/// (OpenVMM's client asks for DELETE_INTERRUPT_MESSAGE's): a status, bare or padded.
/// QUERY_BUS_RELATIONS and EJECTION_COMPLETE, which no guest asks about, still get none.
#[test]
fn fire_and_forget_requests_that_ask_get_a_status() {
    for ty in [
        MessageType::DELETE_INTERRUPT_MESSAGE,
        MessageType::DELETE_INTERRUPT_MESSAGE2,
        MessageType::RESOURCES_RELEASED,
    ] {
        assert!(gets_completion(ty), "{ty}");
        let padded = B::default().u32(0).zeros(4).done();
        let c = comp_round_trip(&padded, ty);
        assert_eq!(c.body, CompletionBody::StatusOnly(vec![0; 4]));
        let failed = B::default().u32(0xC000_090B).done();
        assert_eq!(comp_round_trip(&failed, ty).status, Status::BAD_DATA);
        assert!(decode_completion(&[0, 0], ty, V).is_err());
    }
    for ty in [
        MessageType::QUERY_BUS_RELATIONS,
        MessageType::EJECTION_COMPLETE,
    ] {
        assert!(!gets_completion(ty), "{ty}");
    }
}

/// A CREATE_INTERRUPT_MESSAGE2 request with a recognisable processor list, `extra` bytes
/// after Linux's packed 78.
fn create_interrupt2(extra: usize) -> Vec<u8> {
    B::ty(0x17)
        .u32(slot(1, 0))
        .u8(0x40) // vector
        .u8(1) // delivery mode
        .u16(1) // vector_count
        .u16(2) // processor_count
        .u16(4)
        .u16(5)
        .zeros(60)
        .zeros(extra)
        .done()
}

/// A CREATE_INTERRUPT_MESSAGE3 request, `extra` bytes after Linux's packed 82.
fn create_interrupt3(extra: usize) -> Vec<u8> {
    B::ty(0x1B)
        .u32(slot(1, 0))
        .u32(0x2000) // vector
        .u8(0) // delivery mode
        .u8(0) // reserved
        .u16(1) // vector_count
        .u16(1) // processor_count
        .u16(3)
        .zeros(62)
        .zeros(extra)
        .done()
}

/// CREATE_INTERRUPT_MESSAGE2 is 78 bytes packed (Linux) and 80 naturally aligned (OpenVMM's
/// client, whose descriptor ends in a reserved u16); as VMBus pads them both arrive as 80.
/// Each decodes to the same request and re-encodes to its own bytes.
#[test]
fn create_interrupt2_sizes_pinned() {
    // (payload length, bytes after the packed layout): Linux's 78, then OpenVMM's 80, which
    // is also Linux's 78 as VMBus pads it (the two extra bytes are zero either way).
    for (len, extra) in [(78, 0), (80, 2)] {
        let bytes = create_interrupt2(extra);
        assert_eq!(bytes.len(), len);
        let Message::CreateInterruptMessage2(m) = round_trip(&bytes, Sender::Guest) else {
            panic!()
        };
        assert_eq!(m.body.int_desc.vector, 0x40);
        assert_eq!(m.body.int_desc.delivery_mode, 1);
        assert_eq!(m.body.int_desc.processor_count.get(), 2);
        assert_eq!(m.body.int_desc.processor_array[0].get(), 4);
        assert_eq!(m.body.int_desc.processor_array[1].get(), 5);
        assert_eq!(m.trailing.len(), extra);
    }
    assert_eq!(create_interrupt2(0).len().div_ceil(8) * 8, 80);
    assert_eq!(create_interrupt2(2).len().div_ceil(8) * 8, 80);
    // One byte short of Linux's layout is truncated.
    let mut short = create_interrupt2(0);
    short.pop();
    assert!(matches!(
        decode(&short, Sender::Guest, V),
        Err(DecodeError::Truncated { offset: 4, .. })
    ));
}

/// CREATE_INTERRUPT_MESSAGE3 is 82 bytes packed (Linux) and 84 naturally aligned (OpenVMM);
/// VMBus pads both to 88. Each decodes to the same request and re-encodes to its own bytes.
#[test]
fn create_interrupt3_sizes_pinned() {
    // Linux's 82, OpenVMM's 84, and either as VMBus pads it: 88.
    for (len, extra) in [(82, 0), (84, 2), (88, 6)] {
        let bytes = create_interrupt3(extra);
        assert_eq!(bytes.len(), len);
        let Message::CreateInterruptMessage3(m) = round_trip(&bytes, Sender::Guest) else {
            panic!()
        };
        assert_eq!(m.body.int_desc.vector.get(), 0x2000);
        assert_eq!(m.body.int_desc.processor_count.get(), 1);
        assert_eq!(m.body.int_desc.processor_array[0].get(), 3);
        assert_eq!(m.trailing.len(), extra);
    }
    assert_eq!(create_interrupt3(0).len().div_ceil(8) * 8, 88);
    assert_eq!(create_interrupt3(2).len().div_ceil(8) * 8, 88);
    let mut short = create_interrupt3(0);
    short.pop();
    assert!(matches!(
        decode(&short, Sender::Guest, V),
        Err(DecodeError::Truncated { offset: 4, .. })
    ));
}
