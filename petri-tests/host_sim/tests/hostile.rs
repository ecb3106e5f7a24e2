//! Hostile modes produce what they promise, and a misbehaving guest gets typed errors.

mod common;

use common::*;
use host_sim::*;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::*;

fn with_rule(response: Response) -> Guest {
    let mut g = Guest::new(BusConfig {
        functions: vec![FunctionSpec::nic(1)],
        script: Script {
            steps: vec![],
            responses: vec![ResponseRule {
                message: MessagePattern::One(MessageType::QUERY_RESOURCE_REQUIREMENTS),
                slot: None,
                nth: None,
                response,
            }],
        },
        ..BusConfig::default()
    });
    let id = g.request(query_version(ProtocolVersion::V1_4));
    g.expect_completion(id);
    g
}

/// `duplicate` completes the same request twice, identically.
#[test]
fn duplicate_completion() {
    let mut g = with_rule(Response::Duplicate);
    let id = g.request(qrr(1));
    let out = g.take();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], out[1]);
    assert_eq!(out[0].transaction_id, id);
}

/// `truncate` cuts the completion (here below its status), `extend` pads it, `status`
/// replaces it by a bare failure status.
#[test]
fn wrong_sizes_and_statuses() {
    let mut g = with_rule(Response::Truncate(3));
    g.request(qrr(1));
    let out = g.take();
    assert_eq!(out[0].payload.len(), 3);
    assert!(g.has_event(|e| matches!(e, HostEventKind::Answered { status: None, .. })));

    let mut g = with_rule(Response::Extend(5));
    g.request(qrr(1));
    assert_eq!(g.take()[0].payload.len(), 28 + 5);

    let mut g = with_rule(Response::Status(Status::UNSUCCESSFUL.0));
    let id = g.request(qrr(1));
    let c = g.expect_completion(id);
    assert_eq!(c.status, Status::UNSUCCESSFUL);
    assert_eq!(c.body, CompletionBody::StatusOnly(vec![]));
}

/// `unknown_transaction_id` completes with an id the guest never used.
#[test]
fn completion_with_an_unknown_transaction_id() {
    let mut g = with_rule(Response::UnknownTransactionId);
    let id = g.request(qrr(1));
    let out = g.take();
    assert_eq!(out.len(), 1);
    assert_ne!(out[0].transaction_id, id);
    assert!(!g.requests.contains_key(&out[0].transaction_id));
}

/// Hostile packets: each decodes (or fails to decode) as promised.
#[test]
fn hostile_packets() {
    let mut g = Guest::with_functions(&[1, 2]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    let v = ProtocolVersion::V1_4;
    let hostile = |g: &mut Guest, packet| {
        g.act(HostAction::Hostile { packet }).unwrap();
        let out = g.take();
        assert_eq!(out.len(), 1);
        out.into_iter().next().unwrap()
    };

    let p = hostile(&mut g, HostilePacket::TruncatedRelations {});
    assert!(matches!(
        decode(&p.payload, Sender::Host, v),
        Err(DecodeError::CountTooLarge { .. })
    ));
    assert_eq!(p.payload.len(), 8 + 2 * 28 + 14);

    let p = hostile(
        &mut g,
        HostilePacket::RelationsCountOverflow { claimed: 1000 },
    );
    assert!(matches!(
        decode(&p.payload, Sender::Host, v),
        Err(DecodeError::CountTooLarge { count: 1000, .. })
    ));

    let p = hostile(
        &mut g,
        HostilePacket::UnknownMessageType {
            message_type: 0x4249_00ff,
        },
    );
    assert!(matches!(
        decode(&p.payload, Sender::Host, v),
        Err(DecodeError::UnknownType { .. })
    ));

    let p = hostile(&mut g, HostilePacket::Empty {});
    assert!(p.payload.is_empty());

    let p = hostile(
        &mut g,
        HostilePacket::CompletionForUnknownTransaction {
            transaction_id: 0xdead,
            status: 0,
        },
    );
    assert_eq!((p.kind, p.transaction_id), (PacketKind::Completion, 0xdead));

    let p = hostile(&mut g, HostilePacket::EjectUnknownSlot { slot: 9 });
    assert!(matches!(
        decode(&p.payload, Sender::Host, v),
        Ok(Message::Eject(e)) if e.body.wslot == slot(9)
    ));
    assert!(!g.bus.eject_outstanding(slot(9)));

    let p = hostile(
        &mut g,
        HostilePacket::Raw {
            kind: 7,
            flags: 1,
            transaction_id: 5,
            payload: HexBytes(vec![1, 2, 3]),
        },
    );
    assert_eq!(p.kind.to_raw(), 7);
    assert_eq!(p.payload, [1, 2, 3]);
}

/// `repeat_last_completion` sends the last completion again, byte for byte; with none yet
/// it is an error.
#[test]
fn repeat_last_completion() {
    let mut g = Guest::with_functions(&[1]);
    assert_eq!(
        g.act(HostAction::Hostile {
            packet: HostilePacket::RepeatLastCompletion {}
        }),
        Err(ActionError::NothingToRepeat)
    );
    let id = g.request(query_version(ProtocolVersion::V1_4));
    let first = g.take();
    g.act(HostAction::Hostile {
        packet: HostilePacket::RepeatLastCompletion {},
    })
    .unwrap();
    let again = g.take();
    assert_eq!(first, again);
    assert_eq!(again[0].transaction_id, id);
}

/// A misbehaving guest: completions, foreign packet types and undecodable payloads are
/// typed errors; an undecodable request that asked for a completion gets BAD_DATA.
#[test]
fn guest_errors_are_typed() {
    let mut g = Guest::with_functions(&[1]);
    let id = g.request(query_version(ProtocolVersion::V1_4));
    g.expect_completion(id);
    g.bus
        .handle_packet(g.now, Packet::completion(3, vec![0; 8]));
    g.bus.handle_packet(
        g.now,
        Packet {
            kind: PacketKind::GpaDirect,
            ..Packet::in_band(0, qrr(1))
        },
    );
    g.drain();
    assert!(g.take().is_empty());
    assert!(g.has_event(|e| matches!(
        e,
        HostEventKind::GuestError(GuestError::UnexpectedCompletion(3))
    )));
    assert!(g.has_event(|e| matches!(e, HostEventKind::GuestError(GuestError::UnexpectedKind(9)))));
    // RESOURCES_ASSIGNED2 cut short (still a whole number of 8-byte units).
    let id = g.request(resources_assigned2(1, 0, 0)[..40].to_vec());
    assert_eq!(g.expect_status(id), Status::BAD_DATA);
    // A host-only message from the guest.
    let id = g.request(slot_msg(Message::Eject, 1));
    assert_eq!(g.expect_status(id), Status::BAD_DATA);
    assert_eq!(g.bus.counters().guest_errors, 4);
}

/// The host knows whether it broke the protocol: a hostile packet or a tampered answer does;
/// a late or repeated EJECT of a slot it once had, a slow or failing answer do not.
#[test]
fn broke_protocol_is_recorded() {
    let mut g = Guest::with_functions(&[1, 2]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    assert!(!g.bus.broke_protocol());
    g.act(HostAction::Eject { slot: 1 }).unwrap();
    g.act(HostAction::Hostile {
        packet: HostilePacket::EjectUnknownSlot { slot: 1 },
    })
    .unwrap();
    g.act(HostAction::SurpriseRemove { slot: 2 }).unwrap();
    g.act(HostAction::Hostile {
        packet: HostilePacket::EjectUnknownSlot { slot: 2 },
    })
    .unwrap();
    assert!(!g.bus.broke_protocol(), "ejects of slots it once had");
    g.act(HostAction::Hostile {
        packet: HostilePacket::EjectUnknownSlot { slot: 9 },
    })
    .unwrap();
    assert!(g.bus.broke_protocol(), "an EJECT of a slot it never had");

    let mut g = Guest::with_functions(&[1]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.act(HostAction::Hostile {
        packet: HostilePacket::Empty {},
    })
    .unwrap();
    assert!(g.bus.broke_protocol());

    let mut g = with_rule(Response::Status(Status::UNSUCCESSFUL.0));
    g.request(qrr(1));
    assert!(!g.bus.broke_protocol(), "a failure status is an answer");
    for r in [
        Response::Duplicate,
        Response::Truncate(3),
        Response::Extend(5),
        Response::UnknownTransactionId,
    ] {
        let mut g = with_rule(r);
        g.request(qrr(1));
        assert!(g.bus.broke_protocol(), "{r:?}");
    }
}
