//! Interoperation with every real peer (issue 12): each dialect of a message that a real host
//! or guest sends must keep the bus up and cross the relay unchanged. The peers are OpenVMM's
//! vPCI server (whose replies the project's host simulator copies), OpenVMM's vPCI client and
//! Linux's pci-hyperv driver. Each test names the peer and the dialect it pins down.

mod common;

use common::*;
use std::time::Duration;
use vmbus_channel::PacketKind;
use vpci_protocol::wire::*;
use vpci_protocol::*;
use vpci_relay::*;
use zerocopy::{FromZeros, IntoBytes};

/// The bus survived: the host link is up and neither side's packets were counted malformed.
fn assert_bus_kept(bus: &Bus) {
    assert_eq!(bus.relay.host_link(), HostLink::Up, "the host lost its bus");
    assert_eq!(bus.relay.counters().malformed_host, 0, "{:?}", bus.events);
    assert_eq!(bus.relay.counters().malformed_guest, 0, "{:?}", bus.events);
    assert!(
        !bus.events
            .iter()
            .any(|e| matches!(e, RelayEvent::Malformed { .. })),
        "{:?}",
        bus.events
    );
}

/// The payload of the completion the guest got for its request `id`.
fn guest_reply(bus: &Bus, id: u64) -> Vec<u8> {
    bus.guest_completion(id)
        .unwrap_or_else(|| panic!("the guest's request {id} was not answered"))
        .payload
        .clone()
}

/// The relay forwarded the host's completion, not one of its own.
fn assert_not_answered_locally(bus: &Bus) {
    assert_eq!(bus.relay.counters().answered_locally, 0, "{:?}", bus.events);
}

/// Negotiates 1.4, surveys one function in slot `dev` and enters D0, as Linux does before it
/// assigns resources.
fn surveyed_in_d0(dev: u8) -> Bus {
    let mut bus = Bus::new();
    bus.survey(&[dev]);
    let id = bus.guest_requests(d0_entry());
    bus.host_completes(MessageType::BUS_D0ENTRY, status(Status::SUCCESS));
    assert!(bus.guest_completion(id).is_some());
    bus
}

/// A RESOURCES_ASSIGNED3 request with `count` MSI requests in the V3 resource format (80 bytes
/// each), as OpenVMM's server reads it.
fn resources_assigned3(dev: u8, count: u32) -> Vec<u8> {
    let mut head = ResourcesHead::new_zeroed();
    head.wslot = slot(dev);
    head.msi_descriptor_count = count.into();
    let mut msi = Vec::new();
    for vector in 0..count {
        let mut d = MsiDesc3::new_zeroed();
        d.vector = (0x40 + vector).into();
        d.vector_count = 1.into();
        d.processor_count = 1.into();
        let start = msi.len();
        msi.extend_from_slice(d.as_bytes());
        msi.resize(start + 80, 0);
    }
    encode(&Message::ResourcesAssigned3(ResourcesAssigned {
        head,
        msi_resources: msi,
        trailing: Vec::new(),
    }))
}

/// OpenVMM's answer to RESOURCES_ASSIGNED3: the status, the head echoed, and one translated
/// interrupt per request in the V2 resource format (72 bytes each), not the V3 one.
fn openvmm_resources_reply(dev: u8, count: u32) -> Vec<u8> {
    let mut reply = status(Status::SUCCESS);
    let mut head = ResourcesHead::new_zeroed();
    head.wslot = slot(dev);
    head.msi_descriptor_count = count.into();
    reply.extend_from_slice(head.as_bytes());
    for i in 0..count {
        let t = TranIntDesc {
            reserved: 0.into(),
            vector_count: 1.into(),
            data: (0x4040 + i).into(),
            address: 0xfee0_1000u64.into(),
        };
        let start = reply.len();
        reply.extend_from_slice(t.as_bytes());
        reply.resize(start + 72, 0);
    }
    reply
}

/// OpenVMM's server answers RESOURCES_ASSIGNED3 with 72-byte (V2 format) MSI entries: the
/// relay keeps the bus and hands the guest the host's completion byte for byte.
#[test]
fn resources_assigned3_reply_in_the_v2_msi_format_reaches_the_guest() {
    for count in [1, 2, 3] {
        let mut bus = surveyed_in_d0(1);
        let reply = openvmm_resources_reply(1, count);
        assert_eq!(reply.len(), 136 + 72 * count as usize);
        let id = bus.guest_requests(resources_assigned3(1, count));
        bus.host_completes(MessageType::RESOURCES_ASSIGNED3, reply.clone());
        assert_eq!(guest_reply(&bus, id), padded(reply));
        assert_not_answered_locally(&bus);
        assert_bus_kept(&bus);
    }
}

/// OpenVMM's server answers a successful POWER_STATE_CHANGE with its status alone (padded to
/// 8 bytes by VMBus): the relay keeps the bus and forwards that completion unchanged.
#[test]
fn power_state_change_reply_with_only_a_status_reaches_the_guest() {
    let mut bus = Bus::installed_with(&[1]);
    let request = encode(&Message::PowerStateChange(Fixed::new(PowerStateBody {
        wslot: slot(1),
        power_state: 4.into(),
    })));
    let id = bus.guest_requests(request);
    bus.host_completes(MessageType::POWER_STATE_CHANGE, status(Status::SUCCESS));
    assert_eq!(guest_reply(&bus, id), padded(status(Status::SUCCESS)));
    assert_not_answered_locally(&bus);
    assert_bus_kept(&bus);
}

/// OpenVMM's vPCI client answers an EJECT with an 8-byte EJECTION_COMPLETE (type and slot,
/// no status word): the relay takes it as the guest letting go of the function, keeps the
/// bus, and hands the host's EJECT that answer byte for byte.
#[test]
fn eight_byte_ejection_complete_answers_the_hosts_eject() {
    let mut bus = Bus::installed_with(&[1]);
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    let mut openvmm = MessageType::EJECTION_COMPLETE.0.to_le_bytes().to_vec();
    openvmm.extend_from_slice(&slot(1).raw().to_le_bytes());
    assert_eq!(openvmm.len(), 8);
    let sent = bus.to_host.len();
    bus.guest_sends(openvmm.clone());
    bus.advance(Duration::from_secs(1));
    let forwarded: Vec<_> = bus.to_host[sent..]
        .iter()
        .filter(|p| p.kind == PacketKind::InBand)
        .map(|p| p.payload.clone())
        .collect();
    assert_eq!(forwarded, [openvmm]);
    assert!(
        bus.relay
            .function(slot(1))
            .is_none_or(|f| !f.guest_visible() && f.backing() == Backing::Released),
        "the guest let go"
    );
    assert_bus_kept(&bus);
}

/// A DELETE_INTERRUPT_MESSAGE(2) request (built by `f`) for slot `dev`'s translated interrupt.
fn delete_interrupt(f: fn(Fixed<DeleteInterruptBody>) -> Message, dev: u8) -> Vec<u8> {
    let mut body = DeleteInterruptBody::new_zeroed();
    body.wslot = slot(dev);
    body.int_desc.vector_count = 1.into();
    body.int_desc.data = 0x4041.into();
    body.int_desc.address = 0xfee0_1000u64.into();
    encode(&f(Fixed::new(body)))
}

/// OpenVMM's vPCI client asks for a completion of DELETE_INTERRUPT_MESSAGE, and OpenVMM's
/// server gives one (a status): the relay tracks the request, keeps the bus, and forwards
/// the host's completion. The same holds for DELETE_INTERRUPT_MESSAGE2, which OpenVMM's
/// server handles alike.
#[test]
fn delete_interrupt_with_a_completion_requested_is_answered_by_the_host() {
    for (f, ty) in [
        (
            Message::DeleteInterruptMessage as fn(_) -> _,
            MessageType::DELETE_INTERRUPT_MESSAGE,
        ),
        (
            Message::DeleteInterruptMessage2,
            MessageType::DELETE_INTERRUPT_MESSAGE2,
        ),
    ] {
        let mut bus = Bus::installed_with(&[1]);
        let id = bus.guest_requests(delete_interrupt(f, 1));
        bus.host_completes(ty, status(Status::SUCCESS));
        assert_eq!(
            guest_reply(&bus, id),
            padded(status(Status::SUCCESS)),
            "{ty}"
        );
        assert_not_answered_locally(&bus);
        assert_bus_kept(&bus);
    }
}

/// A guest that asks for a completion of RESOURCES_RELEASED gets OpenVMM's server's status
/// through the relay, and the host keeps its bus.
#[test]
fn resources_released_with_a_completion_requested_is_answered_by_the_host() {
    let mut bus = Bus::installed_with(&[1]);
    let id = bus.guest_requests(slot_msg(Message::ResourcesReleased, 1));
    bus.host_completes(MessageType::RESOURCES_RELEASED, status(Status::SUCCESS));
    assert_eq!(guest_reply(&bus, id), padded(status(Status::SUCCESS)));
    assert_not_answered_locally(&bus);
    assert_bus_kept(&bus);
}
