//! Dynamic MSI-X (issue 12, item 4): since 2025 Linux may create and delete interrupts at any
//! time after probe, not only while a driver binds. CREATE_INTERRUPT_MESSAGE and
//! DELETE_INTERRUPT_MESSAGE are legal in every state of a function, each request gets exactly
//! one completion, and they are serialized against the function's EJECT: a held EJECT waits
//! for an interrupt request at the host, a request for a function the host is removing is
//! answered by the relay and never reaches the host, and nothing is refused or counted as
//! malformed.

mod common;

use common::*;
use std::time::Duration;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::wire::{DeleteInterruptBody, TranIntDesc};
use vpci_protocol::*;
use vpci_relay::*;
use zerocopy::FromZeros;

fn delete_interrupt(dev: u8) -> Vec<u8> {
    let mut body = DeleteInterruptBody::new_zeroed();
    body.wslot = slot(dev);
    body.int_desc = TranIntDesc::new_zeroed();
    body.int_desc.vector_count = 1.into();
    encode(&Message::DeleteInterruptMessage(Fixed::new(body)))
}

fn interrupt_reply() -> Vec<u8> {
    let mut v = status(Status::SUCCESS);
    v.extend_from_slice(&[0; 4]); // reserved
    v.extend_from_slice(&[0; 2]); // reserved
    v.extend_from_slice(&1u16.to_le_bytes()); // vector_count
    v.extend_from_slice(&0x4041u32.to_le_bytes()); // data
    v.extend_from_slice(&0xfee0_0000u64.to_le_bytes()); // address
    v
}

/// Messages of `ty` the relay sent the host.
fn to_host_of(bus: &Bus, ty: MessageType) -> usize {
    bus.to_host
        .iter()
        .filter(|p| p.kind == PacketKind::InBand && message_type(p) == Some(ty))
        .count()
}

/// Completions the guest got for transaction `txid`.
fn completions_for(bus: &Bus, txid: u64) -> Vec<&Packet> {
    bus.to_guest
        .iter()
        .filter(|p| p.kind == PacketKind::Completion && p.transaction_id == txid)
        .collect()
}

/// The guest creates an interrupt for `dev` and the relay answers it itself: exactly one
/// successful completion, nothing sent to the host; then the guest deletes it, and nothing
/// reaches the host either.
/// The guest reads `dev`'s config space (the device answers at once): the function is busy.
fn read_config(bus: &mut Bus, dev: u8) {
    let action = bus.relay.handle_config_access(
        bus.now,
        ConfigAccess::Read {
            slot: slot(dev),
            offset: 0,
            len: 4,
        },
    );
    if let ConfigAction::Forward(id) = action {
        bus.relay.handle_config_done(bus.now, id, Some(0x1234_1414));
    }
}

fn create_and_delete_answered_locally(bus: &mut Bus, dev: u8) {
    let creates = to_host_of(bus, MessageType::CREATE_INTERRUPT_MESSAGE2);
    let deletes = to_host_of(bus, MessageType::DELETE_INTERRUPT_MESSAGE);
    let id = bus.guest_requests(create_interrupt2(dev, 0x51));
    let answers = completions_for(bus, id);
    assert_eq!(answers.len(), 1, "exactly one completion");
    let c = decode_completion(
        &answers[0].payload,
        MessageType::CREATE_INTERRUPT_MESSAGE2,
        ProtocolVersion::V1_4,
    )
    .expect("a well-formed answer");
    assert!(c.status.is_success(), "never a failure (race C2)");
    bus.guest_sends(delete_interrupt(dev));
    assert_eq!(
        to_host_of(bus, MessageType::CREATE_INTERRUPT_MESSAGE2),
        creates
    );
    assert_eq!(
        to_host_of(bus, MessageType::DELETE_INTERRUPT_MESSAGE),
        deletes
    );
    assert_eq!(bus.relay.counters().malformed_guest, 0);
}

/// The guest creates an interrupt for `dev` and the host answers it: forwarded, one
/// completion; the delete is forwarded too.
fn create_and_delete_forwarded(bus: &mut Bus, dev: u8) {
    let creates = to_host_of(bus, MessageType::CREATE_INTERRUPT_MESSAGE2);
    let deletes = to_host_of(bus, MessageType::DELETE_INTERRUPT_MESSAGE);
    let id = bus.guest_requests(create_interrupt2(dev, 0x52));
    assert_eq!(
        to_host_of(bus, MessageType::CREATE_INTERRUPT_MESSAGE2),
        creates + 1
    );
    bus.host_completes(MessageType::CREATE_INTERRUPT_MESSAGE2, interrupt_reply());
    assert_eq!(completions_for(bus, id).len(), 1);
    bus.guest_sends(delete_interrupt(dev));
    assert_eq!(
        to_host_of(bus, MessageType::DELETE_INTERRUPT_MESSAGE),
        deletes + 1
    );
    assert_eq!(bus.relay.counters().malformed_guest, 0);
}

/// Long after probe, a bound function creates and deletes interrupts again and again: every
/// request reaches the host and is answered once, and the bus stays quiet of changes.
#[test]
fn interrupts_come_and_go_after_probe() {
    let mut bus = Bus::installed_with(&[1]);
    for _ in 0..20 {
        bus.advance(Duration::from_secs(7));
        create_and_delete_forwarded(&mut bus, 1);
    }
    assert_eq!(bus.relay.requests_outstanding(), 0);
    assert!(bus.relay.outstanding_change().is_none());
}

/// A host EJECT that arrives while an interrupt request is at the host waits for it: the
/// guest gets the host's answer first, and the EJECT only once the function has been quiet
/// for the settle window after it.
#[test]
fn eject_waits_for_an_interrupt_request_at_the_host() {
    let mut bus = Bus::installed_with(&[1]);
    bus.advance(Duration::from_secs(5));
    let id = bus.guest_requests(create_interrupt2(1, 0x60));
    bus.host_sends(eject(1));
    bus.advance(Duration::from_millis(900));
    assert!(
        bus.guest_ejects().is_empty(),
        "held while the request is out"
    );
    bus.host_completes(MessageType::CREATE_INTERRUPT_MESSAGE2, interrupt_reply());
    assert_eq!(completions_for(&bus, id).len(), 1);
    assert!(bus.guest_ejects().is_empty(), "not in the same breath");
    bus.advance(RelayConfig::default().settle);
    assert_eq!(bus.guest_ejects(), [slot(1)]);
}

/// While a function's EJECT is held (the host is removing it), the guest's interrupt
/// requests for it are answered by the relay, and the EJECT stays held until the function
/// is quiet again.
#[test]
fn interrupts_during_a_held_eject_are_answered_by_the_relay() {
    let mut bus = Bus::installed_with(&[1]);
    read_config(&mut bus, 1);
    bus.host_sends(eject(1));
    assert!(bus.guest_ejects().is_empty(), "held: the function is busy");
    bus.advance(Duration::from_millis(50));
    create_and_delete_answered_locally(&mut bus, 1);
    bus.advance(Duration::from_millis(50));
    assert!(bus.guest_ejects().is_empty(), "still busy");
    bus.advance(RelayConfig::default().settle);
    assert_eq!(bus.guest_ejects(), [slot(1)]);
}

/// Once the guest has its EJECT (it may still tear down interrupts while it lets go), its
/// interrupt requests are answered by the relay and never reach the host.
#[test]
fn interrupts_after_a_delivered_eject_are_answered_by_the_relay() {
    let mut bus = Bus::installed_with(&[1]);
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    create_and_delete_answered_locally(&mut bus, 1);
    bus.guest_sends(ejection_complete(1));
    let completes = bus
        .host_messages()
        .iter()
        .filter(|m| matches!(m, Message::EjectionComplete(_)))
        .count();
    assert_eq!(completes, 1);
}

/// The host's EJECT answered at its deadline while the guest, busy, still holds the
/// function: interrupts for it are answered by the relay.
#[test]
fn interrupts_after_the_host_deadline_are_answered_by_the_relay() {
    let mut bus = Bus::new();
    bus.survey(&[1]);
    let _d0 = bus.guest_requests(d0_entry());
    bus.host_sends(eject(1));
    bus.advance(RelayConfig::default().max_hold + Duration::from_secs(1));
    assert_eq!(
        bus.relay.function(slot(1)).map(|f| f.host()),
        Some(HostState::Ejected)
    );
    create_and_delete_answered_locally(&mut bus, 1);
    assert!(bus.guest_ejects().is_empty(), "D0 entry is still out");
}

/// A function the host dropped from its relations (the relay ejects it by itself): the
/// guest's interrupt requests for it are answered by the relay, before and after its EJECT.
#[test]
fn interrupts_of_a_dropped_function_are_answered_by_the_relay() {
    let mut bus = Bus::installed_with(&[1, 2]);
    read_config(&mut bus, 1);
    bus.host_sends(relations2(&[2]));
    assert!(bus.guest_ejects().is_empty());
    create_and_delete_answered_locally(&mut bus, 1);
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    create_and_delete_answered_locally(&mut bus, 1);
    // The other function is untouched.
    create_and_delete_forwarded(&mut bus, 2);
}

/// After the guest let go of an ejected function, a request naming it (a guest bug) is still
/// answered exactly once, by the relay.
#[test]
fn interrupts_of_a_released_function_are_answered_by_the_relay() {
    let mut bus = Bus::installed_with(&[1]);
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    bus.guest_sends(ejection_complete(1));
    create_and_delete_answered_locally(&mut bus, 1);
}

/// The teeth of the tests above: without the hold, the EJECT overtakes an interrupt request
/// at the host; without local answers, a request for a function the host is removing reaches
/// the host.
#[test]
fn the_safeguards_are_what_serializes_interrupts() {
    let no_hold = Safeguards {
        hold_eject_until_settled: false,
        ..Safeguards::ALL_ON
    };
    let mut bus = Bus::with(RelayConfig::default(), no_hold);
    bus.survey(&[1]);
    bus.finish_probe(&[1]);
    bus.guest_requests(create_interrupt2(1, 0x60));
    bus.host_sends(eject(1));
    assert_eq!(bus.guest_ejects(), [slot(1)], "delivered mid-request");

    let no_local = Safeguards {
        local_answers: false,
        ..Safeguards::ALL_ON
    };
    let mut bus = Bus::with(RelayConfig::default(), no_local);
    bus.survey(&[1]);
    bus.finish_probe(&[1]);
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    let before = to_host_of(&bus, MessageType::CREATE_INTERRUPT_MESSAGE2);
    bus.guest_requests(create_interrupt2(1, 0x61));
    assert_eq!(
        to_host_of(&bus, MessageType::CREATE_INTERRUPT_MESSAGE2),
        before + 1,
        "forwarded to a host that is removing the function"
    );
}
