//! Properties over arbitrary guest input.

mod common;

use common::*;
use host_sim::*;
use proptest::prelude::*;
use std::collections::HashMap;
use std::time::Duration;
use vmbus_channel::{Packet, PacketFlags, PacketKind};
use vpci_protocol::ProtocolVersion;

#[derive(Clone, Debug)]
enum Input {
    /// Any packet at all.
    Raw {
        kind: u16,
        flags: u16,
        payload: Vec<u8>,
    },
    /// A well-formed message with some bytes changed.
    Mutated {
        which: usize,
        dev: u8,
        flips: Vec<(usize, u8)>,
        completion: bool,
    },
    /// Time passes.
    Advance(u64),
    /// The host acts.
    Act(usize, u8),
}

fn valid(which: usize, dev: u8) -> Vec<u8> {
    match which % 10 {
        0 => query_version(ProtocolVersion::V1_4),
        1 => query_relations(),
        2 => qrr(dev),
        3 => d0_entry(0xfe00_0000),
        4 => resources_assigned2(dev, 0xfe00_0000, 1 << 20),
        5 => create_interrupt2(dev, 0x30, 1),
        6 => create_interrupt3(dev, 0x31, 2),
        7 => delete_interrupt(dev, 0xFEE0_1000, 0x30),
        8 => ejection_complete(dev),
        _ => create_interrupt(dev, 0x32, 0b10),
    }
}

fn action(which: usize, dev: u8) -> HostAction {
    let slot = u32::from(dev);
    match which % 6 {
        0 => HostAction::Eject { slot },
        1 => HostAction::HotAdd(FunctionSpec::nic(slot)),
        2 => HostAction::SurpriseRemove { slot },
        3 => HostAction::Reserial { slot, serial: 7 },
        4 => HostAction::SendRelations {},
        _ => HostAction::Rescind {},
    }
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => (
            prop_oneof![Just(6u16), Just(11), Just(9), any::<u16>()],
            any::<u16>(),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(kind, flags, payload)| Input::Raw {
                kind,
                flags,
                payload
            }),
        4 => (
            0usize..10,
            0u8..4,
            prop::collection::vec((0usize..210, any::<u8>()), 0..4),
            any::<bool>(),
        )
            .prop_map(|(which, dev, flips, completion)| Input::Mutated {
                which,
                dev,
                flips,
                completion
            }),
        1 => (0u64..70_000).prop_map(Input::Advance),
        1 => (0usize..6, 0u8..4).prop_map(|(w, d)| Input::Act(w, d)),
    ]
}

fn policy() -> impl Strategy<Value = HostPolicy> {
    (any::<bool>(), any::<bool>(), 1usize..4).prop_map(|(at_eject, ignore, max)| HostPolicy {
        teardown: if at_eject {
            Teardown::AtEject
        } else {
            Teardown::AtEjectionComplete
        },
        unknown_slot: if ignore {
            UnknownSlot::Ignore
        } else {
            UnknownSlot::default()
        },
        max_interrupts_per_function: max,
        relations_after_removal: ignore,
        ..HostPolicy::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary guest bytes, mutated messages, host actions and time never panic the host;
    /// the host completes only requests that asked, each at most once; one input makes at
    /// most three packets; no deadline is left behind; interrupt tables stay bounded.
    #[test]
    fn arbitrary_guest_input_never_panics(
        inputs in prop::collection::vec(input(), 0..60),
        policy in policy(),
    ) {
        let mut bus = HostBus::new(BusConfig {
            functions: vec![FunctionSpec::nic(1), FunctionSpec::nic(2)],
            policy,
            ..BusConfig::default()
        }).unwrap();
        let mut now = Duration::ZERO;
        let mut asked: HashMap<u64, u32> = HashMap::new();
        for (i, input) in inputs.into_iter().enumerate() {
            let txid = 1000 + i as u64;
            match input {
                Input::Raw { kind, flags, payload } => {
                    if kind == 6 && flags & 1 != 0 {
                        asked.insert(txid, 0);
                    }
                    bus.handle_packet(now, Packet {
                        kind: PacketKind::from_raw(kind),
                        flags: PacketFlags(flags),
                        transaction_id: txid,
                        payload,
                    });
                }
                Input::Mutated { which, dev, flips, completion } => {
                    let mut payload = valid(which, dev);
                    for (at, byte) in flips {
                        if let Some(b) = payload.get_mut(at) {
                            *b ^= byte;
                        }
                    }
                    let p = if completion {
                        asked.insert(txid, 0);
                        Packet::request(txid, padded(payload))
                    } else {
                        Packet::in_band(txid, padded(payload))
                    };
                    bus.handle_packet(now, p);
                }
                Input::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    bus.handle_timeout(now);
                }
                Input::Act(w, d) => {
                    let _ = bus.act(now, action(w, d));
                }
            }
            let mut sent = 0;
            while let Some(p) = bus.poll_transmit() {
                sent += 1;
                if p.kind == PacketKind::Completion {
                    let n = asked.get_mut(&p.transaction_id);
                    prop_assert!(n.is_some(), "completion for {:#x}, which asked for none", p.transaction_id);
                    if let Some(n) = n {
                        *n += 1;
                        prop_assert!(*n <= 1, "second completion for {:#x}", p.transaction_id);
                    }
                }
            }
            prop_assert!(sent <= 3, "one input made {} packets", sent);
            while bus.poll_event().is_some() {}
            if let Some(t) = bus.poll_timeout() {
                prop_assert!(t > now, "deadline {:?} left behind at {:?}", t, now);
            }
            for s in bus.slots() {
                prop_assert!(bus.interrupts(s).len() <= policy.max_interrupts_per_function);
            }
        }
    }
}

fn rule(which: usize, message: usize) -> ResponseRule {
    let types = [
        vpci_protocol::MessageType::QUERY_PROTOCOL_VERSION,
        vpci_protocol::MessageType::QUERY_BUS_RELATIONS,
        vpci_protocol::MessageType::QUERY_RESOURCE_REQUIREMENTS,
        vpci_protocol::MessageType::BUS_D0ENTRY,
        vpci_protocol::MessageType::CREATE_INTERRUPT_MESSAGE2,
    ];
    let response = match which % 7 {
        0 => Response::Delay(Time(Duration::from_millis(3))),
        1 => Response::Never,
        2 => Response::Duplicate,
        3 => Response::Truncate(2),
        4 => Response::Extend(9),
        5 => Response::Status(0xC000_0001),
        _ => Response::UnknownTransactionId,
    };
    ResponseRule {
        message: MessagePattern::One(types[message % types.len()]),
        slot: None,
        nth: None,
        response,
    }
}

fn hostile(which: usize) -> HostilePacket {
    match which % 7 {
        0 => HostilePacket::Empty {},
        1 => HostilePacket::TruncatedRelations {},
        2 => HostilePacket::RelationsCountOverflow { claimed: u32::MAX },
        3 => HostilePacket::CompletionForUnknownTransaction {
            transaction_id: 1,
            status: 0,
        },
        4 => HostilePacket::RepeatLastCompletion {},
        5 => HostilePacket::EjectUnknownSlot { slot: 0xff },
        _ => HostilePacket::UnknownMessageType { message_type: 0 },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// With response rules, a latency, timed and milestone steps and hostile actions in play,
    /// arbitrary input still never panics the host, and the delayed queue stays bounded.
    #[test]
    fn hostile_modes_never_panic(
        inputs in prop::collection::vec(input(), 0..60),
        rules in prop::collection::vec((0usize..7, 0usize..5), 0..4),
        hostiles in prop::collection::vec((0u64..200, 0usize..7), 0..4),
        latency in 0u64..3,
    ) {
        let mut steps: Vec<ScriptStep> = hostiles
            .into_iter()
            .map(|(at, w)| ScriptStep {
                when: Trigger::At(Time(Duration::from_millis(at))),
                after: Time::default(),
                action: HostAction::Hostile { packet: hostile(w) },
                optional: false,
            })
            .collect();
        steps.push(ScriptStep {
            when: Trigger::Negotiated,
            after: Time(Duration::from_millis(1)),
            action: HostAction::Eject { slot: 1 },
            optional: false,
        });
        let mut bus = HostBus::new(BusConfig {
            functions: vec![FunctionSpec::nic(1), FunctionSpec::nic(2)],
            policy: HostPolicy {
                latency: Time(Duration::from_millis(latency)),
                max_delayed_responses: 8,
                ..HostPolicy::default()
            },
            script: Script {
                steps,
                responses: rules.into_iter().map(|(w, m)| rule(w, m)).collect(),
            },
            ..BusConfig::default()
        }).unwrap();
        let mut now = Duration::ZERO;
        for (i, input) in inputs.into_iter().enumerate() {
            let txid = 1000 + i as u64;
            match input {
                Input::Raw { kind, flags, payload } => bus.handle_packet(now, Packet {
                    kind: PacketKind::from_raw(kind),
                    flags: PacketFlags(flags),
                    transaction_id: txid,
                    payload,
                }),
                Input::Mutated { which, dev, flips, .. } => {
                    let mut payload = valid(which, dev);
                    for (at, byte) in flips {
                        if let Some(b) = payload.get_mut(at) {
                            *b ^= byte;
                        }
                    }
                    bus.handle_packet(now, Packet::request(txid, padded(payload)));
                }
                Input::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    bus.handle_timeout(now);
                }
                Input::Act(w, d) => {
                    let _ = bus.act(now, action(w, d));
                }
            }
            while bus.poll_transmit().is_some() {}
            while bus.poll_event().is_some() {}
            if let Some(t) = bus.poll_timeout() {
                prop_assert!(t > now);
            }
            let tree = inspect::Inspect::inspect(&bus);
            let delayed = tree.query("delayed_responses").unwrap().to_json();
            prop_assert!(delayed.as_u64().unwrap() <= 8);
        }
    }
}
