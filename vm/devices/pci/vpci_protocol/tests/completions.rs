//! Byte vectors for every completion, built by hand from the spec's field offsets, decoded
//! knowing the request they answer, and re-encoded to the same bytes.

mod bytes;

use bytes::*;
use vpci_protocol::*;

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
