//! Scripts: host actions at virtual times and at milestones on the wire, and per-message
//! response delays.

mod common;

use common::*;
use host_sim::*;
use std::time::Duration;
use vmbus_channel::PacketKind;
use vpci_protocol::*;

fn scripted(slots: &[u8], script: Script) -> Guest {
    Guest::new(BusConfig {
        functions: slots.iter().map(|&s| FunctionSpec::nic(s.into())).collect(),
        script,
        ..BusConfig::default()
    })
}

fn step(when: Trigger, action: HostAction) -> ScriptStep {
    ScriptStep {
        when,
        after: Time::default(),
        action,
        optional: false,
    }
}

/// "Eject slot 1 when the guest has sent QUERY_RESOURCE_REQUIREMENTS for it": the EJECT
/// follows the requirements' completion at once, before the guest can do anything else.
#[test]
fn eject_when_the_guest_queries_requirements() {
    let mut g = scripted(
        &[1, 2],
        Script {
            steps: vec![step(
                Trigger::Received(MessageMatch::first(
                    MessageType::QUERY_RESOURCE_REQUIREMENTS,
                    Some(1),
                )),
                HostAction::Eject { slot: 1 },
            )],
            responses: vec![],
        },
    );
    let id = g.request(query_version(ProtocolVersion::V1_4));
    g.expect_completion(id);
    g.send(query_relations());
    g.take();
    let id = g.request(qrr(2));
    g.expect_completion(id);
    let id = g.request(qrr(1));
    let out = g.take();
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].transaction_id, id);
    assert_eq!(out[0].kind, PacketKind::Completion);
    assert!(matches!(g.decode_message(&out[1]), Message::Eject(e) if e.body.wslot == slot(1)));
    assert!(g.has_event(|e| matches!(e, HostEventKind::ScriptStepFired { step: 0 })));
}

/// A step at a virtual time is the bus's next deadline and fires when time gets there.
#[test]
fn hot_add_at_a_virtual_time() {
    let mut g = scripted(
        &[1],
        Script {
            steps: vec![step(
                Trigger::At(Time(2 * SEC)),
                HostAction::HotAdd(FunctionSpec::nic(3)),
            )],
            responses: vec![],
        },
    );
    g.probe_to_survey(ProtocolVersion::V1_4);
    assert_eq!(g.bus.poll_timeout(), Some(2 * SEC));
    g.advance(2 * SEC - MS);
    assert!(g.take().is_empty());
    g.advance(MS);
    let out = g.take();
    assert_eq!(
        relation_slots(&g.decode_message(&out[0])),
        [slot(1), slot(3)]
    );
    let added = g
        .events
        .iter()
        .find(|e| matches!(e.kind, HostEventKind::FunctionAdded { slot: s, .. } if s == slot(3)))
        .unwrap();
    assert_eq!(added.at, 2 * SEC);
}

/// "Re-add slot 2 with a new serial 1 ms after its EJECT went out": a step triggered by
/// another step's milestone, with a delay.
#[test]
fn reserial_while_the_eject_is_outstanding() {
    let mut g = scripted(
        &[2],
        Script {
            steps: vec![
                step(Trigger::Negotiated, HostAction::Eject { slot: 2 }),
                ScriptStep {
                    when: Trigger::EjectSent { slot: 2 },
                    after: Time(MS),
                    action: HostAction::Reserial {
                        slot: 2,
                        serial: 99,
                    },
                    optional: false,
                },
            ],
            responses: vec![],
        },
    );
    let id = g.request(query_version(ProtocolVersion::V1_4));
    let out = g.take();
    assert_eq!(out[0].transaction_id, id);
    assert!(matches!(g.decode_message(&out[1]), Message::Eject(_)));
    assert_eq!(g.bus.poll_timeout(), Some(MS));
    g.advance(MS);
    let out = g.take();
    assert_eq!(relation_serials(&g.decode_message(&out[0])), [99]);
    assert!(g.bus.eject_outstanding(slot(2)));
}

/// "When the guest has completed RESOURCES_ASSIGNED for slot 2" waits for the host's
/// answer to leave: with that answer delayed 5 ms, the eject waits 5 ms too.
#[test]
fn eject_when_resources_assigned_is_answered() {
    let mut g = scripted(
        &[2],
        Script {
            steps: vec![step(
                Trigger::Answered(MessageMatch::first(
                    MessageType::RESOURCES_ASSIGNED2,
                    Some(2),
                )),
                HostAction::Eject { slot: 2 },
            )],
            responses: vec![ResponseRule {
                message: MessagePattern::One(MessageType::RESOURCES_ASSIGNED2),
                slot: None,
                nth: None,
                response: Response::Delay(Time(5 * MS)),
            }],
        },
    );
    g.probe_to_survey(ProtocolVersion::V1_4);
    let id = g.request(resources_assigned2(2, 0xfe00_0000, 1 << 20));
    assert!(g.take().is_empty(), "the answer is delayed");
    assert_eq!(g.bus.poll_timeout(), Some(5 * MS));
    g.advance(5 * MS);
    let out = g.take();
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].transaction_id, id);
    assert!(matches!(g.decode_message(&out[1]), Message::Eject(_)));
}

/// "After the n-th message of type T": the step waits for the second interrupt request.
#[test]
fn trigger_on_the_nth_message() {
    let mut g = scripted(
        &[1],
        Script {
            steps: vec![step(
                Trigger::Received(MessageMatch {
                    message: MessagePattern::One(MessageType::CREATE_INTERRUPT_MESSAGE2),
                    slot: None,
                    nth: 2,
                }),
                HostAction::Eject { slot: 1 },
            )],
            responses: vec![],
        },
    );
    g.probe_to_survey(ProtocolVersion::V1_4);
    let id = g.request(create_interrupt2(1, 0x30, 0));
    g.expect_completion(id);
    g.request(create_interrupt2(1, 0x31, 0));
    let out = g.take();
    assert_eq!(out.len(), 2);
    assert!(matches!(g.decode_message(&out[1]), Message::Eject(_)));
}

/// A step whose action fails is reported, not fatal.
#[test]
fn failing_step_is_reported() {
    let mut g = scripted(
        &[1],
        Script {
            steps: vec![step(Trigger::Negotiated, HostAction::Eject { slot: 9 })],
            responses: vec![],
        },
    );
    let id = g.request(query_version(ProtocolVersion::V1_4));
    g.expect_completion(id);
    assert!(g.has_event(|e| matches!(
        e,
        HostEventKind::ScriptStepFailed {
            step: 0,
            error: ActionError::NoSuchSlot(9)
        }
    )));
}

/// A per-message delay holds the completion; `never` holds it forever while the host's
/// state still changes.
#[test]
fn response_delay_and_never() {
    let mut g = scripted(
        &[1],
        Script {
            steps: vec![],
            responses: vec![
                ResponseRule {
                    message: MessagePattern::One(MessageType::QUERY_RESOURCE_REQUIREMENTS),
                    slot: Some(1),
                    nth: None,
                    response: Response::Delay(Time(7 * MS)),
                },
                ResponseRule {
                    message: MessagePattern::One(MessageType::CREATE_INTERRUPT_MESSAGE2),
                    slot: None,
                    nth: None,
                    response: Response::Never,
                },
            ],
        },
    );
    let id = g.request(query_version(ProtocolVersion::V1_4));
    g.expect_completion(id);
    let id = g.request(qrr(1));
    g.advance(6 * MS);
    assert!(g.take().is_empty());
    g.advance(MS);
    assert!(g.expect_completion(id).status.is_success());
    g.request(create_interrupt2(1, 0x30, 0));
    g.advance(SEC);
    assert!(g.take().is_empty());
    assert_eq!(g.bus.interrupts(slot(1)).len(), 1, "created all the same");
    assert!(g.has_event(|e| matches!(e, HostEventKind::ResponseWithheld { .. })));
}

/// A delayed QUERY_BUS_RELATIONS delays its relations; a delayed D0 entry delays both the
/// second relations and the completion, in order.
#[test]
fn delays_cover_every_packet_an_answer_makes() {
    let mut g = scripted(
        &[1],
        Script {
            steps: vec![],
            responses: vec![
                ResponseRule {
                    message: MessagePattern::One(MessageType::QUERY_BUS_RELATIONS),
                    slot: None,
                    nth: None,
                    response: Response::Delay(Time(MS)),
                },
                ResponseRule {
                    message: MessagePattern::One(MessageType::BUS_D0ENTRY),
                    slot: None,
                    nth: None,
                    response: Response::Delay(Time(2 * MS)),
                },
            ],
        },
    );
    let id = g.request(query_version(ProtocolVersion::V1_4));
    g.expect_completion(id);
    g.send(query_relations());
    assert!(g.take().is_empty());
    g.advance(MS);
    assert_eq!(g.take().len(), 1);
    let id = g.request(d0_entry(0xfe00_0000));
    g.advance(2 * MS);
    let out = g.take();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].kind, PacketKind::InBand);
    assert_eq!(out[1].transaction_id, id);
}

/// A script written as a scenario file would write it (JSON here) runs the same way.
#[test]
fn script_from_a_scenario_file() {
    let script: Script = serde_json::from_str(
        r#"{
          "steps": [
            {"when": {"received": {"message": "QUERY_RESOURCE_REQUIREMENTS", "slot": 1}},
             "action": {"kind": "eject", "slot": 1}},
            {"when": {"ejection_completed": {"slot": 1}},
             "action": {"kind": "hot_add", "slot": 1, "serial": 42}}
          ],
          "responses": [{"message": "PCI_QUERY_RESOURCE_REQUIREMENTS", "response": "duplicate"}]
        }"#,
    )
    .unwrap();
    let mut g = scripted(&[1], script);
    let id = g.request(query_version(ProtocolVersion::V1_4));
    g.expect_completion(id);
    let id = g.request(qrr(1));
    let out = g.take();
    assert_eq!(out.len(), 3, "two completions and the EJECT: {out:?}");
    assert_eq!((out[0].transaction_id, out[1].transaction_id), (id, id));
    g.send(ejection_complete(1));
    let out = g.take();
    assert_eq!(relation_serials(&g.decode_message(&out[0])), [42]);
}

/// The policy's latency holds every answer; a rule's delay replaces it rather than adding.
#[test]
fn latency_holds_every_answer() {
    let mut g = Guest::new(BusConfig {
        functions: vec![FunctionSpec::nic(1)],
        policy: HostPolicy {
            latency: Time(MS),
            ..HostPolicy::default()
        },
        script: Script {
            steps: vec![],
            responses: vec![ResponseRule {
                message: MessagePattern::One(MessageType::QUERY_RESOURCE_REQUIREMENTS),
                slot: None,
                nth: None,
                response: Response::Delay(Time(5 * MS)),
            }],
        },
        ..BusConfig::default()
    });
    let id = g.request(query_version(ProtocolVersion::V1_4));
    assert!(g.take().is_empty());
    g.advance(MS);
    g.expect_completion(id);
    let id = g.request(qrr(1));
    g.advance(5 * MS - Duration::from_nanos(1));
    assert!(g.take().is_empty());
    g.advance(Duration::from_nanos(1));
    g.expect_completion(id);
}

/// Delayed answers are bounded: past the bound they are dropped and reported.
#[test]
fn delayed_answers_are_bounded() {
    let mut g = Guest::new(BusConfig {
        functions: vec![FunctionSpec::nic(1)],
        policy: HostPolicy {
            latency: Time(MS),
            max_delayed_responses: 1,
            ..HostPolicy::default()
        },
        ..BusConfig::default()
    });
    g.request(query_version(ProtocolVersion::V1_4));
    g.request(query_version(ProtocolVersion::V1_4));
    g.advance(MS);
    assert_eq!(g.take().len(), 1);
    assert!(g.has_event(|e| matches!(e, HostEventKind::DelayedResponseDropped { .. })));
}

/// The channel is FIFO: with host latency, a relations message the host sends on its own
/// (a hot-add scripted when BUS_D0ENTRY arrives) leaves after the answers it queued before,
/// so the newest relations the guest reads list what the host has.
#[test]
fn latency_keeps_host_sends_in_order() {
    let mut g = Guest::new(BusConfig {
        functions: vec![FunctionSpec::nic(1)],
        policy: HostPolicy {
            latency: Time(MS),
            ..HostPolicy::default()
        },
        script: Script {
            steps: vec![step(
                Trigger::Received(MessageMatch::first(MessageType::BUS_D0ENTRY, None)),
                HostAction::HotAdd(FunctionSpec::nic(2)),
            )],
            responses: vec![],
        },
        ..BusConfig::default()
    });
    let id = g.request(query_version(ProtocolVersion::V1_4));
    g.advance(MS);
    g.expect_completion(id);
    g.request(d0_entry(0xf800_0000));
    g.advance(5 * MS);
    let relations: Vec<Vec<WinSlot>> = g
        .take()
        .iter()
        .filter(|p| p.kind == PacketKind::InBand)
        .map(|p| relation_slots(&g.decode_message(p)))
        .collect();
    assert_eq!(
        relations.last(),
        Some(&vec![slot(1), slot(2)]),
        "{relations:?}"
    );
}

/// A family trigger (`CREATE_INTERRUPT_MESSAGE*`) fires on whichever version the guest sends,
/// and its `nth` counts the family's members together; the bus reports which steps fired.
#[test]
fn family_trigger_and_fired_steps() {
    let family = |nth| {
        Trigger::Received(MessageMatch {
            message: MessagePattern::Family(MessageType::CREATE_INTERRUPT_MESSAGE),
            slot: Some(1),
            nth,
        })
    };
    let mut g = scripted(
        &[1],
        Script {
            steps: vec![
                step(family(2), HostAction::Eject { slot: 1 }),
                step(
                    Trigger::Received(MessageMatch::first(
                        MessageType::CREATE_INTERRUPT_MESSAGE3,
                        Some(1),
                    )),
                    HostAction::SendRelations {},
                ),
            ],
            responses: vec![],
        },
    );
    assert_eq!(g.bus.script_steps_fired(), [false, false]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    let id = g.request(create_interrupt(1, 0x30, 1));
    g.expect_completion(id);
    assert_eq!(
        g.bus.script_steps_fired(),
        [false, false],
        "the first of two"
    );
    g.request(create_interrupt2(1, 0x31, 0));
    let out = g.take();
    assert_eq!(out.len(), 2);
    assert!(matches!(g.decode_message(&out[1]), Message::Eject(_)));
    assert_eq!(
        g.bus.script_steps_fired(),
        [true, false],
        "a 1.2-style guest never sends CREATE_INTERRUPT_MESSAGE3"
    );
}

/// A family response rule answers every version of the message.
#[test]
fn family_response_rule() {
    let mut g = scripted(
        &[1],
        Script {
            steps: vec![],
            responses: vec![ResponseRule {
                message: MessagePattern::Family(MessageType::CREATE_INTERRUPT_MESSAGE),
                slot: None,
                nth: Some(2),
                response: Response::Status(0xC000_0001),
            }],
        },
    );
    g.probe_to_survey(ProtocolVersion::V1_4);
    let id = g.request(create_interrupt2(1, 0x30, 0));
    assert!(g.expect_status(id).is_success());
    let id = g.request(create_interrupt3(1, 0x31, 0));
    assert_eq!(g.expect_status(id), Status(0xC000_0001));
}

/// A trigger or a response with a key it does not know, or with two, is refused, naming
/// the key; the string forms still parse.
#[test]
fn strict_triggers_and_responses() {
    let err = |json: &str| {
        serde_json::from_str::<ScriptStep>(json)
            .unwrap_err()
            .to_string()
    };
    let e = err(r#"{"when": {"at": "1s", "after": "2ms"}, "action": {"kind": "rescind"}}"#);
    assert!(e.contains("unknown field `after`"), "{e}");
    let e = err(r#"{"when": {"at": "1s", "negotiated": {}}, "action": {"kind": "rescind"}}"#);
    assert!(
        e.contains("exactly one of") && e.contains("at and negotiated"),
        "{e}"
    );
    let e = err(r#"{"when": {}, "action": {"kind": "rescind"}}"#);
    assert!(e.contains("needs one of"), "{e}");
    let e = err(r#"{"when": "soon", "action": {"kind": "rescind"}}"#);
    assert!(e.contains("unknown trigger \"soon\""), "{e}");
    let rule = |json: &str| serde_json::from_str::<ResponseRule>(json);
    let e = rule(r#"{"message": "BUS_D0ENTRY", "response": {"delay": "5ms", "jitter": 1}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `jitter`"), "{e}");
    let e = rule(r#"{"message": "BUS_D0ENTRY", "response": {"delay": "5ms", "truncate": 1}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("delay and truncate"), "{e}");
    assert_eq!(
        rule(r#"{"message": "BUS_D0ENTRY", "response": "never"}"#)
            .unwrap()
            .response,
        Response::Never
    );
    assert_eq!(
        rule(r#"{"message": "BUS_D0ENTRY", "response": {"status": 5}}"#)
            .unwrap()
            .response,
        Response::Status(5)
    );
    let s: ScriptStep =
        serde_json::from_str(r#"{"when": "negotiated", "action": {"kind": "rescind"}}"#).unwrap();
    assert_eq!(s.when, Trigger::Negotiated);
    let s: ScriptStep = serde_json::from_str(
        r#"{"when": {"eject_sent": {"slot": 2}}, "action": {"kind": "rescind"}, "optional": true}"#,
    )
    .unwrap();
    assert_eq!(s.when, Trigger::EjectSent { slot: 2 });
    assert!(s.optional);
    assert_eq!(s.when.to_string(), "eject_sent for slot 2");
}
