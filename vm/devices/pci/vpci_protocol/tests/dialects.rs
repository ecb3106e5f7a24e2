//! The dialects real peers send: sizes from OpenVMM's vPCI structs (server `vpci`, client
//! `vpci_client`) and Linux's pci-hyperv. Each is a message one of them really sends, so
//! refusing it would cost a bus.

mod bytes;

use bytes::*;
use vpci_protocol::*;

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
