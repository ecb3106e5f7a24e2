//! The host-side orderings of the race catalogue (linux-guest.md), written as scripts: each
//! test pins down that the script puts the host's messages in the order the race needs.

mod common;

use common::*;
use host_sim::*;
use vmbus_channel::PacketKind;
use vpci_protocol::*;

fn script_from(json: &str, policy: HostPolicy) -> Guest {
    Guest::new(BusConfig {
        functions: vec![FunctionSpec::nic(1)],
        policy,
        script: serde_json::from_str(json).unwrap(),
        ..BusConfig::default()
    })
}

/// C1: the host rescinds while the guest waits for the survey, after the relations went
/// out: the guest receives the relations, then nothing more.
#[test]
fn c1_rescind_after_the_survey_answer() {
    let mut g = script_from(
        r#"{"steps": [{"when": {"received": {"message": "QUERY_BUS_RELATIONS"}},
                        "action": {"kind": "rescind"}}]}"#,
        HostPolicy::default(),
    );
    let id = g.request(query_version(ProtocolVersion::V1_4));
    g.expect_completion(id);
    g.send(query_relations());
    let out = g.take();
    assert_eq!(out.len(), 1);
    assert!(matches!(
        g.decode_message(&out[0]),
        Message::BusRelations2(_)
    ));
    assert!(g.bus.rescinded());
}

/// C2: EJECT arrives between CREATE_INTERRUPT_MESSAGE and its completion; the host still
/// completes the request (the function is assigned until EJECTION_COMPLETE).
#[test]
fn c2_eject_while_an_interrupt_is_composed() {
    let mut g = script_from(
        r#"{"steps": [{"when": {"received": {"message": "CREATE_INTERRUPT_MESSAGE2", "slot": 1}},
                        "action": {"kind": "eject", "slot": 1}}],
            "responses": [{"message": "CREATE_INTERRUPT_MESSAGE2", "response": {"delay": "1ms"}}]}"#,
        HostPolicy::default(),
    );
    g.probe_to_survey(ProtocolVersion::V1_4);
    let id = g.request(create_interrupt2(1, 0x30, 0));
    let out = g.take();
    assert!(matches!(g.decode_message(&out[0]), Message::Eject(_)));
    g.advance(MS);
    assert_eq!(g.expect_completion(id).status, Status::SUCCESS);
}

/// C3: EJECT right after the function's QUERY_RESOURCE_REQUIREMENTS completes.
#[test]
fn c3_eject_after_requirements() {
    let mut g = script_from(
        r#"{"steps": [{"when": {"answered": {"message": "QUERY_RESOURCE_REQUIREMENTS", "slot": 1}},
                        "action": {"kind": "eject", "slot": 1}}]}"#,
        HostPolicy::default(),
    );
    let id = g.request(query_version(ProtocolVersion::V1_4));
    g.expect_completion(id);
    g.send(query_relations());
    g.take();
    let id = g.request(qrr(1));
    let out = g.take();
    assert_eq!(
        (out[0].kind, out[0].transaction_id),
        (PacketKind::Completion, id)
    );
    assert!(matches!(g.decode_message(&out[1]), Message::Eject(_)));
}

/// C4: a function is hot-added once D0 entry is complete, before resources are assigned.
#[test]
fn c4_hot_add_after_d0_entry() {
    let mut g = script_from(
        r#"{"steps": [{"when": {"answered": {"message": "BUS_D0ENTRY"}},
                        "action": {"kind": "hot_add", "slot": 2, "serial": 2}}]}"#,
        HostPolicy::default(),
    );
    g.probe_to_survey(ProtocolVersion::V1_4);
    let id = g.request(d0_entry(0xfe00_0000));
    let out = g.take();
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(relation_slots(&g.decode_message(&out[0])), [slot(1)]);
    assert_eq!(out[1].transaction_id, id);
    assert_eq!(
        relation_slots(&g.decode_message(&out[2])),
        [slot(1), slot(2)]
    );
}

/// C5: the host never completes D0 entry and rescinds 10 ms later; the held answer is
/// dropped with the bus.
#[test]
fn c5_rescind_during_probe() {
    let mut g = script_from(
        r#"{"steps": [{"when": {"received": {"message": "BUS_D0ENTRY"}}, "after": "10ms",
                        "action": {"kind": "rescind"}}],
            "responses": [{"message": "BUS_D0ENTRY", "response": "never"}]}"#,
        HostPolicy::default(),
    );
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.request(d0_entry(0xfe00_0000));
    g.advance(10 * MS);
    assert!(g.take().is_empty());
    assert!(g.bus.rescinded());
}

/// C7: with teardown at EJECT, the BARs fault as soon as EJECT goes out, while the guest's
/// remove path may still read them.
#[test]
fn c7_bars_pulled_at_eject() {
    let mut g = script_from(
        r#"{"steps": [{"when": {"answered": {"message": "RESOURCES_ASSIGNED2", "slot": 1}},
                        "after": "1s", "action": {"kind": "eject", "slot": 1}}]}"#,
        HostPolicy {
            teardown: Teardown::AtEject,
            ..HostPolicy::default()
        },
    );
    g.probe_to_survey(ProtocolVersion::V1_4);
    let id = g.request(resources_assigned2(1, 0xfe10_0000, 1 << 20));
    g.expect_completion(id);
    let mut reg = [0u8; 1];
    assert!(g.bus.mmio_read(0xfe10_0000, &mut reg).is_ok());
    g.advance(SEC);
    let out = g.take();
    assert!(matches!(g.decode_message(&out[0]), Message::Eject(_)));
    assert_eq!(
        g.bus.mmio_read(0xfe10_0000, &mut reg).unwrap_err().reason,
        UnmappedReason::TornDown
    );
}
