//! One test per guarantee of the relay, named after it, and for each safeguard a twin that
//! switches it off and shows the failure it prevents.

mod common;

use common::*;
use std::time::Duration;
use vmbus_channel::Packet;
use vpci_protocol::*;
use vpci_relay::*;

fn off(f: impl FnOnce(&mut Safeguards)) -> Safeguards {
    let mut s = Safeguards::ALL_ON;
    f(&mut s);
    s
}

// ---- 1. one change at a time ----

fn two_ejects(safeguards: Safeguards) -> Bus {
    let mut bus = Bus::with(RelayConfig::default(), safeguards);
    bus.survey(&[1, 2]);
    bus.finish_probe(&[1, 2]);
    bus.host_sends(eject(1));
    bus.host_sends(eject(2));
    bus.advance(Duration::from_secs(1));
    bus
}

/// A second eject waits until the guest has completed the first.
#[test]
fn g1_one_change_at_a_time() {
    let mut bus = two_ejects(Safeguards::ALL_ON);
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    assert_eq!(
        bus.relay.outstanding_change(),
        Some(ChangeKind::Eject(slot(1)))
    );
    bus.guest_sends(ejection_complete(1));
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1), slot(2)]);
    // The guest's completion reached the host.
    assert!(
        bus.host_messages()
            .iter()
            .any(|m| matches!(m, Message::EjectionComplete(_)))
    );
}

/// Teeth: without the safeguard both ejects reach the guest at once.
#[test]
fn g1_teeth() {
    let bus = two_ejects(off(|s| s.one_change_at_a_time = false));
    assert_eq!(bus.guest_ejects(), [slot(1), slot(2)]);
}

/// A second relations update (a hot-add) is held behind the guest's probe path (C1, C4).
#[test]
fn g1_relations_wait_for_the_probe_path() {
    let mut bus = Bus::new();
    bus.survey(&[1]);
    bus.host_sends(relations2(&[1, 2]));
    assert_eq!(bus.guest_relations().len(), 1, "hot-add held during probe");
    bus.finish_probe(&[1]);
    assert_eq!(
        bus.guest_relations(),
        [vec![slot(1)], vec![slot(1), slot(2)]]
    );
}

/// A repeated identical BUS_RELATIONS (Hyper-V sends one after D0 entry) neither stalls the
/// bus nor counts as a change.
#[test]
fn g1_identical_relations_are_not_a_change() {
    let mut bus = Bus::new();
    bus.survey(&[1]);
    bus.guest_requests(d0_entry());
    bus.host_sends(relations2(&[1]));
    bus.host_completes(MessageType::BUS_D0ENTRY, status(Status::SUCCESS));
    bus.guest_requests(resources_assigned2(1));
    bus.host_completes(MessageType::RESOURCES_ASSIGNED2, status(Status::SUCCESS));
    bus.advance(Duration::from_secs(1));
    assert!(bus.relay.installed());
    assert_eq!(bus.relay.outstanding_change(), None);
    // And an eject still flows.
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
}

// ---- 2. no eject during probe ----

fn eject_after_requirements(safeguards: Safeguards) -> Bus {
    let mut bus = Bus::with(RelayConfig::default(), safeguards);
    bus.survey(&[1]);
    // C3: EJECT right after QUERY_RESOURCE_REQUIREMENTS completes, before root-bus creation.
    bus.host_sends(eject(1));
    bus
}

/// An eject is held until the function is settled and the probe path is done (C3).
#[test]
fn g2_no_eject_during_probe() {
    let mut bus = eject_after_requirements(Safeguards::ALL_ON);
    bus.advance(Duration::from_secs(1));
    assert!(bus.guest_ejects().is_empty());
    assert!(
        bus.events
            .contains(&RelayEvent::EjectHeld { slot: slot(1) })
    );
    bus.finish_probe(&[1]);
    assert_eq!(bus.guest_ejects(), [slot(1)]);
}

/// Teeth: without the hold the eject lands in the middle of the probe.
#[test]
fn g2_teeth() {
    let bus = eject_after_requirements(off(|s| s.hold_eject_until_settled = false));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
}

/// An eject waits while an interrupt request is outstanding, then for the settle window (C2).
#[test]
fn g2_interrupt_outstanding_holds_eject() {
    let mut bus = Bus::installed_with(&[1]);
    bus.guest_requests(create_interrupt2(1, 0x30));
    bus.host_sends(eject(1));
    bus.advance(Duration::from_millis(500));
    assert!(bus.guest_ejects().is_empty());
    bus.host_completes(MessageType::CREATE_INTERRUPT_MESSAGE2, {
        let mut v = status(Status::SUCCESS);
        v.extend_from_slice(&[0; 20]);
        v
    });
    assert!(bus.guest_ejects().is_empty(), "quiet window not over yet");
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
}

/// A guest that never settles cannot hold the host's eject forever.
#[test]
fn g2_hold_is_bounded() {
    let mut bus = eject_after_requirements(Safeguards::ALL_ON);
    bus.advance(Duration::from_secs(31));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
}

// ---- 3. coalescing ----

fn add_then_remove(safeguards: Safeguards) -> Bus {
    let mut bus = Bus::with(RelayConfig::default(), safeguards);
    bus.survey(&[1]);
    // Hot-add of 2 during the probe (held), then the host takes it back.
    bus.host_sends(relations2(&[1, 2]));
    bus.host_sends(eject(2));
    bus.host_sends(relations2(&[1]));
    bus.finish_probe(&[1]);
    bus.advance(Duration::from_secs(1));
    bus
}

/// A function added and removed before the guest was told never reaches it; the relay
/// completes the host's eject itself.
#[test]
fn g3_coalescing() {
    let bus = add_then_remove(Safeguards::ALL_ON);
    assert!(bus.guest_relations().iter().all(|r| !r.contains(&slot(2))));
    assert!(bus.guest_ejects().is_empty());
    assert!(
        bus.host_messages()
            .iter()
            .any(|m| matches!(m, Message::EjectionComplete(e) if e.body.wslot == slot(2)))
    );
    assert_eq!(bus.relay.counters().coalesced, 1);
}

/// Teeth: without coalescing the guest is shown the doomed function.
#[test]
fn g3_teeth() {
    let bus = add_then_remove(off(|s| s.coalesce = false));
    assert!(bus.guest_relations().iter().any(|r| r.contains(&slot(2))));
}

/// A storm of add/remove leaves the relay's memory bounded by functions.
#[test]
fn g3_storm_is_bounded() {
    let mut bus = Bus::installed_with(&[1]);
    for _ in 0..10_000 {
        bus.host_sends(relations2(&[1, 2]));
        bus.host_sends(eject(2));
        bus.host_sends(relations2(&[1]));
    }
    assert!(bus.relay.functions().count() <= 2);
    bus.to_guest.clear();
    bus.advance(Duration::from_secs(1));
    assert!(bus.to_guest.len() <= 2);
}

// ---- 4. local answers for the departed ----

fn interrupt_during_held_eject(safeguards: Safeguards) -> (Bus, u64) {
    let mut bus = Bus::with(RelayConfig::default(), safeguards);
    bus.survey(&[1]);
    bus.finish_probe(&[1]);
    bus.guest_requests(qrr(1)); // keep the function busy so the eject is held
    bus.host_sends(eject(1));
    bus.to_host.clear();
    let id = bus.guest_requests(create_interrupt2(1, 0x41));
    (bus, id)
}

/// While an eject is held, interrupt requests are answered locally with success and a
/// plausible address/data pair, and never reach the host (C2).
#[test]
fn g4_local_answers_for_the_departed() {
    let (bus, id) = interrupt_during_held_eject(Safeguards::ALL_ON);
    let c = bus.guest_completion(id).expect("answered");
    let c = decode_completion(
        &c.payload,
        MessageType::CREATE_INTERRUPT_MESSAGE2,
        ProtocolVersion::V1_4,
    )
    .unwrap();
    assert!(c.status.is_success());
    let CompletionBody::CreateInterrupt(r) = c.body else {
        panic!()
    };
    assert_eq!(r.body.int_desc.data.get(), 0x41);
    assert_eq!(r.body.int_desc.address.get() & 0xfff0_0000, 0xfee0_0000);
    assert!(bus.to_host.is_empty());
}

/// Teeth: without local answers the request goes to a host that is removing the device.
#[test]
fn g4_teeth() {
    let (bus, id) = interrupt_during_held_eject(off(|s| s.local_answers = false));
    assert!(bus.guest_completion(id).is_none());
    assert_eq!(bus.to_host.len(), 1);
}

/// A host failure of an interrupt request for a function it is removing becomes a local
/// success (the other C2 path).
#[test]
fn g4_host_failure_for_departed_interrupt_becomes_success() {
    let mut bus = Bus::installed_with(&[1]);
    let id = bus.guest_requests(create_interrupt2(1, 0x50));
    bus.host_sends(eject(1));
    bus.host_completes(
        MessageType::CREATE_INTERRUPT_MESSAGE2,
        status(Status::UNSUCCESSFUL),
    );
    let c = bus.guest_completion(id).unwrap();
    assert_eq!(&c.payload[..4], &[0, 0, 0, 0]);
}

// ---- 5. rescind at a safe point ----

fn rescind_during_probe(safeguards: Safeguards) -> Bus {
    let mut bus = Bus::with(RelayConfig::default(), safeguards);
    bus.survey(&[1]);
    bus.relay.handle_host_closed(bus.now);
    bus.drain();
    bus
}

/// A rescind during the probe reaches the guest only after its probe path, as ejects first.
#[test]
fn g5_rescind_at_a_safe_point() {
    let mut bus = rescind_during_probe(Safeguards::ALL_ON);
    assert!(!bus.closed);
    // The probe path goes on against the relay's local answers.
    let d0 = bus.guest_requests(d0_entry());
    assert!(bus.guest_completion(d0).is_some());
    let ra = bus.guest_requests(resources_assigned2(1));
    assert!(bus.guest_completion(ra).is_some());
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    assert!(!bus.closed);
    bus.guest_sends(ejection_complete(1));
    bus.advance(Duration::from_secs(1));
    assert!(bus.closed);
}

/// Teeth: without the safe point the channel closes under the probing guest.
#[test]
fn g5_teeth() {
    let bus = rescind_during_probe(off(|s| s.rescind_at_safe_point = false));
    assert!(bus.closed);
}

// ---- 7. nothing lost ----

/// Every guest request gets exactly one completion, even when the host vanishes.
#[test]
fn g7_nothing_lost() {
    let mut bus = Bus::installed_with(&[1, 2]);
    let ids: Vec<u64> = (0..5)
        .map(|i| bus.guest_requests(create_interrupt2(1 + (i % 2), i)))
        .collect();
    bus.relay.handle_host_closed(bus.now);
    bus.drain();
    bus.advance(Duration::from_secs(60));
    for id in ids {
        let n = bus
            .to_guest
            .iter()
            .filter(|p| p.transaction_id == id)
            .count();
        assert_eq!(n, 1, "request {id}");
    }
}

/// A host that removed a device and never answers its pending request cannot hang the guest.
#[test]
fn g7_departed_request_times_out_locally() {
    let mut bus = Bus::installed_with(&[1]);
    let id = bus.guest_requests(create_interrupt2(1, 7));
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(2));
    assert!(bus.guest_completion(id).is_some());
    // The late host completion is dropped, not delivered twice.
    bus.host_completes(
        MessageType::CREATE_INTERRUPT_MESSAGE2,
        status(Status::SUCCESS),
    );
    assert_eq!(
        bus.to_guest
            .iter()
            .filter(|p| p.transaction_id == id)
            .count(),
        1
    );
    assert_eq!(
        bus.relay.counters().late_completions,
        1,
        "{:#?}",
        bus.events
    );
}

// ---- 8. removal shield ----

fn host_tears_down(safeguards: Safeguards) -> Bus {
    let mut bus = Bus::with(RelayConfig::default(), safeguards);
    bus.survey(&[1]);
    bus.finish_probe(&[1]);
    let read = ConfigAccess::Read {
        slot: slot(1),
        offset: 0x10,
        len: 4,
    };
    let ConfigAction::Forward(id) = bus.relay.handle_config_access(bus.now, read) else {
        panic!("a listed function's config read goes to the device");
    };
    bus.relay.handle_config_done(bus.now, id, Some(0xfe00_000c));
    bus.host_sends(eject(1));
    bus
}

/// After the host removes a function the guest holds, BARs are shielded and config reads come
/// from the relay's copy (the real ids until EJECT reaches the guest, all ones after); the
/// backing is released only at EJECTION_COMPLETE (C7).
#[test]
fn g8_removal_shield() {
    let mut bus = host_tears_down(Safeguards::ALL_ON);
    assert!(bus.backing.contains(&(slot(1), Backing::Shield)));
    let now = bus.now;
    let vendor = ConfigAccess::Read {
        slot: slot(1),
        offset: 0,
        len: 2,
    };
    let bar = ConfigAccess::Read {
        slot: slot(1),
        offset: 0x10,
        len: 4,
    };
    let write = ConfigAccess::Write {
        slot: slot(1),
        offset: 4,
        len: 2,
        value: 0,
    };
    assert_eq!(
        bus.relay.handle_config_access(now, vendor),
        ConfigAction::Answer(0x1414)
    );
    assert_eq!(
        bus.relay.handle_config_access(now, bar),
        ConfigAction::Answer(0xfe00_000c)
    );
    assert_eq!(
        bus.relay.handle_config_access(now, write),
        ConfigAction::Drop
    );
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    assert_eq!(
        bus.relay.handle_config_access(bus.now, vendor),
        ConfigAction::Answer(0xffff)
    );
    assert!(!bus.backing.contains(&(slot(1), Backing::Released)));
    bus.guest_sends(ejection_complete(1));
    assert_eq!(bus.backing.last(), Some(&(slot(1), Backing::Released)));
}

/// Teeth: without the shield, accesses still go to a device the host has pulled.
#[test]
fn g8_teeth() {
    let mut bus = host_tears_down(off(|s| s.removal_shield = false));
    assert!(!bus.backing.contains(&(slot(1), Backing::Shield)));
    let vendor = ConfigAccess::Read {
        slot: slot(1),
        offset: 0,
        len: 2,
    };
    assert!(matches!(
        bus.relay.handle_config_access(bus.now, vendor),
        ConfigAction::Forward(_)
    ));
}

// ---- 9. hostile input ----

/// A host that sends garbage loses its bus: the guest gets its functions ejected and the
/// channel closed; the relay does not panic.
#[test]
fn g9_hostile_host_loses_its_bus() {
    let mut bus = Bus::installed_with(&[1]);
    bus.host_sends(vec![0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(bus.relay.counters().malformed_host, 1);
    assert!(matches!(
        bus.relay.host_link(),
        HostLink::Lost {
            rescinded: false,
            ..
        }
    ));
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    bus.guest_sends(ejection_complete(1));
    bus.advance(Duration::from_secs(1));
    assert!(bus.closed);
    // The guest's completion for the synthesized eject is not sent to the lost host.
    assert!(
        !bus.host_messages()
            .iter()
            .any(|m| matches!(m, Message::EjectionComplete(_)))
    );
}

/// A malformed guest request is counted and answered with a failure; the bus goes on.
#[test]
fn g9_malformed_guest_request() {
    let mut bus = Bus::installed_with(&[1]);
    bus.relay
        .handle_guest(bus.now, Packet::request(77, vec![0x14, 0, 0x49, 0x42, 1]));
    bus.drain();
    assert_eq!(bus.relay.counters().malformed_guest, 1);
    assert!(bus.guest_completion(77).is_some());
    assert_eq!(bus.relay.host_link(), HostLink::Up);
}

/// A completion for a transaction the relay never started is a protocol violation.
#[test]
fn g9_unknown_completion() {
    let mut bus = Bus::installed_with(&[1]);
    bus.relay
        .handle_host(bus.now, Packet::completion(0xdead, status(Status::SUCCESS)));
    bus.drain();
    assert!(matches!(bus.relay.host_link(), HostLink::Lost { .. }));
}

/// Requests beyond the outstanding limit are refused, not queued without bound.
#[test]
fn g9_outstanding_requests_are_bounded() {
    let config = RelayConfig {
        limits: Limits {
            max_outstanding_requests: 4,
            ..Limits::default()
        },
        ..RelayConfig::default()
    };
    let mut bus = Bus::with(config, Safeguards::ALL_ON);
    bus.survey(&[1]);
    bus.finish_probe(&[1]);
    for v in 0..10 {
        bus.guest_requests(create_interrupt2(1, v));
    }
    assert_eq!(bus.relay.requests_outstanding(), 4);
    assert_eq!(bus.relay.counters().malformed_guest, 6);
}

// ---- inspection ----

/// Every bus, function (both states), held eject, outstanding request and counter shows in
/// the inspect tree.
#[test]
fn inspect_shows_the_bus() {
    use inspect::Inspect;
    let (bus, _) = interrupt_during_held_eject(Safeguards::ALL_ON);
    let tree = bus.relay.inspect();
    let json = tree.to_json();
    assert_eq!(json["version"], "1.4");
    assert_eq!(json["host"], "up");
    assert_eq!(json["functions"]["01.0"]["host"], "Ejecting");
    assert_eq!(json["functions"]["01.0"]["guest"], "Announced");
    assert_eq!(json["functions"]["01.0"]["desc"]["vendor_id"], "0x1414");
    assert_eq!(json["changes"]["held_ejects"]["0"], "01.0");
    assert_eq!(json["guest"]["phase"], "installed");
    assert_eq!(json["counters"]["answered_locally"], 1);
    let requests = tree.query("requests/live").unwrap().to_json();
    assert_eq!(requests.as_object().unwrap().len(), 1, "{requests}");
    assert!(tree.query("functions/01.0/interrupts_pending").is_ok());
}

// ---- configuration and pass-through ----

/// A function off the allow-list never reaches the guest, its requests never reach the host,
/// and the relay completes its eject itself.
#[test]
fn allow_list_hides_functions() {
    let config = RelayConfig {
        allow: vec![AllowRule {
            vendor_id: Some(0x1414),
            ..AllowRule::ANY
        }],
        ..RelayConfig::default()
    };
    let mut bus = Bus::with(config, Safeguards::ALL_ON);
    let v = bus.guest_requests(query_version(ProtocolVersion::V1_4));
    bus.host_completes(MessageType::QUERY_PROTOCOL_VERSION, status(Status::SUCCESS));
    assert!(bus.guest_completion(v).is_some());
    bus.guest_sends(query_relations());
    let mut hidden = desc2(2, 0x8086);
    hidden.d_id = 0x1234.into();
    bus.host_sends(encode(&Message::BusRelations2(BusRelations {
        functions: vec![desc2(1, 0x1414), hidden],
        trailing: Vec::new(),
    })));
    assert_eq!(bus.guest_relations(), [vec![slot(1)]]);
    bus.to_host.clear();
    let id = bus.guest_requests(qrr(2));
    assert!(bus.guest_completion(id).is_some(), "answered locally");
    assert!(bus.to_host.is_empty());
    bus.host_sends(eject(2));
    assert!(
        bus.host_messages()
            .iter()
            .any(|m| matches!(m, Message::EjectionComplete(e) if e.body.wslot == slot(2)))
    );
    assert!(bus.guest_ejects().is_empty());
}

/// What the relay forwards goes byte for byte: a guest request in OpenVMM's padded dialect,
/// the host's completion, and the host's relations with trailing bytes.
#[test]
fn pass_through_is_byte_for_byte() {
    let mut bus = Bus::new();
    let v = bus.guest_requests(query_version(ProtocolVersion::V1_4));
    bus.host_completes(MessageType::QUERY_PROTOCOL_VERSION, status(Status::SUCCESS));
    assert!(bus.guest_completion(v).is_some());
    bus.guest_sends(query_relations());
    let mut relations = relations2(&[1]);
    relations.extend_from_slice(&[0xaa; 8]);
    bus.host_sends(relations.clone());
    assert_eq!(bus.to_guest.last().unwrap().payload, padded(relations));
    bus.guest_requests(qrr(1));
    bus.host_completes(
        MessageType::QUERY_RESOURCE_REQUIREMENTS,
        requirements_reply(),
    );
    bus.finish_probe(&[1]);
    let mut ci = create_interrupt2(1, 0x33);
    ci.extend_from_slice(&[0x5a, 0xa5]); // OpenVMM's two reserved bytes, non-zero on purpose
    let id = bus.guest_requests(ci.clone());
    let forwarded = bus.to_host.last().unwrap().clone();
    assert_eq!(forwarded.payload, padded(ci));
    let mut reply = status(Status::SUCCESS);
    reply.extend_from_slice(&[
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
    ]);
    bus.relay.handle_host(
        bus.now,
        vmbus_channel::Packet::completion(forwarded.transaction_id, reply.clone()),
    );
    bus.drain();
    assert_eq!(bus.guest_completion(id).unwrap().payload, reply);
}

/// A slot the host drops without an eject and lists again at once: the guest first lets go
/// of the old function (a relay-made eject), then is shown the new one; and if the host takes
/// the new one back before that, the relay completes that eject itself.
#[test]
fn re_add_while_the_old_function_leaves() {
    let mut bus = Bus::installed_with(&[1]);
    bus.host_sends(relations2(&[])); // surprise removal
    bus.host_sends(relations2(&[1])); // and back at once
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    bus.guest_sends(ejection_complete(1));
    assert!(
        !bus.host_messages()
            .iter()
            .any(|m| matches!(m, Message::EjectionComplete(_))),
        "the host never asked for that eject"
    );
    // The relay arms its own timer for the announcement: nothing else would wake it.
    let wake = bus
        .relay
        .poll_timeout()
        .expect("a timer for the re-added function");
    bus.now = wake;
    bus.relay.handle_timeout(wake);
    bus.drain();
    assert_eq!(bus.guest_relations().last(), Some(&vec![slot(1)]));
    assert_eq!(
        bus.relay.function(slot(1)).unwrap().guest(),
        GuestState::Announced
    );

    // Again, with the host's re-listing absorbed before the eject goes out (the guest is busy
    // with an interrupt request the host never answers): only the relay's own timer can
    // announce the successor once the guest lets go.
    let mut bus = Bus::installed_with(&[1]);
    bus.guest_requests(create_interrupt2(1, 0x30));
    bus.host_sends(relations2(&[]));
    bus.host_sends(relations2(&[1]));
    bus.advance(Duration::from_secs(2));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    bus.guest_sends(ejection_complete(1));
    let wake = bus
        .relay
        .poll_timeout()
        .expect("a timer for the re-added function");
    bus.now = wake;
    bus.relay.handle_timeout(wake);
    bus.drain();
    assert_eq!(bus.guest_relations().last(), Some(&vec![slot(1)]));

    // Again, but the host ejects the re-added function before the guest saw it.
    let mut bus = Bus::installed_with(&[1]);
    bus.host_sends(relations2(&[]));
    bus.host_sends(relations2(&[1]));
    bus.host_sends(eject(1));
    assert!(
        bus.host_messages()
            .iter()
            .any(|m| matches!(m, Message::EjectionComplete(e) if e.body.wslot == slot(1)))
    );
    bus.advance(Duration::from_secs(1));
    bus.guest_sends(ejection_complete(1));
    bus.advance(Duration::from_secs(1));
    let f = bus
        .relay
        .function(slot(1))
        .expect("the slot remembers the ejected function");
    assert_eq!(
        (f.guest(), f.host()),
        (GuestState::Hidden, HostState::Ejected),
        "only the memory of the ejected successor, so a stale listing of it stays stale"
    );
    assert_eq!(bus.guest_relations().len(), 1, "nothing new to announce");
}

/// A host that keeps asking for completions the guest never gives cannot grow the relay's
/// table: past the limit the relay answers the host itself.
#[test]
fn g9_host_requests_are_bounded() {
    let config = RelayConfig {
        limits: Limits {
            max_outstanding_requests: 4,
            ..Limits::default()
        },
        ..RelayConfig::default()
    };
    let mut bus = Bus::with(config, Safeguards::ALL_ON);
    bus.survey(&[1]);
    bus.finish_probe(&[1]);
    bus.to_host.clear();
    let invalidate = encode(&Message::InvalidateBlock(Fixed::new(
        vpci_protocol::wire::InvalidateBlockBody {
            wslot: slot(1),
            block_mask: 1.into(),
        },
    )));
    for id in 0..10 {
        bus.relay.handle_host(
            bus.now,
            Packet::request(100 + id, padded(invalidate.clone())),
        );
        bus.drain();
    }
    let answered: Vec<u64> = bus.to_host.iter().map(|p| p.transaction_id).collect();
    assert_eq!(answered, (104..110).collect::<Vec<_>>());
    assert_eq!(bus.relay.counters().malformed_host, 6);
    assert_eq!(bus.relay.host_link(), HostLink::Up);
}
