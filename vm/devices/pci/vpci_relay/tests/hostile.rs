//! Properties over random, partly hostile sequences of host and guest packets: the relay never
//! panics, its outstanding requests stay within their limit, every guest request is answered
//! exactly once (by the host or the relay) once the host is gone, and at most one host change
//! is ever outstanding at the guest. (Functions need no check here: the relay keeps one entry
//! per slot, so the wire's 256 slots bound them by construction.)

mod common;

use common::*;
use proptest::prelude::*;
use std::collections::HashMap;
use std::time::Duration;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::*;
use vpci_relay::*;

#[derive(Clone, Debug)]
enum Step {
    HostRelations(Vec<u8>),
    HostEject(u8),
    HostCompletes { pick: usize, len: usize, fail: bool },
    HostGarbage(Vec<u8>),
    GuestRequest(u8, u8),
    GuestEjectionComplete(u8),
    GuestGarbage(Vec<u8>),
    Config(u8, u16),
    Advance(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => proptest::collection::vec(0u8..4, 0..4).prop_map(Step::HostRelations),
        2 => (0u8..4).prop_map(Step::HostEject),
        4 => (any::<usize>(), 0usize..40, any::<bool>())
            .prop_map(|(pick, len, fail)| Step::HostCompletes { pick, len, fail }),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Step::HostGarbage),
        5 => (0u8..7, 0u8..4).prop_map(|(k, d)| Step::GuestRequest(k, d)),
        2 => (0u8..4).prop_map(Step::GuestEjectionComplete),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Step::GuestGarbage),
        1 => (0u8..4, 0u16..64).prop_map(|(d, o)| Step::Config(d, o * 4)),
        2 => (0u16..2000).prop_map(Step::Advance),
    ]
}

fn guest_request(kind: u8, dev: u8) -> Vec<u8> {
    match kind {
        0 => query_version(ProtocolVersion::V1_4),
        1 => query_relations(),
        2 => qrr(dev),
        3 => d0_entry(),
        4 => resources_assigned2(dev),
        5 => create_interrupt2(dev, 0x30),
        _ => slot_msg(vpci_protocol::Message::ResourcesReleased, dev),
    }
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let config = RelayConfig {
        limits: Limits {
            max_functions: 3,
            max_outstanding_requests: 8,
            ..Limits::default()
        },
        ..RelayConfig::default()
    };
    let mut bus = Bus::with(config, Safeguards::ALL_ON);
    // Requests the guest sent that must be answered: txid -> request type.
    let mut asked: HashMap<u64, MessageType> = HashMap::new();
    for s in steps {
        match s {
            Step::HostRelations(devs) => bus.host_sends(relations2(devs)),
            Step::HostEject(d) => bus.host_sends(eject(*d)),
            Step::HostCompletes { pick, len, fail } => {
                let forwarded: Vec<&Packet> = bus
                    .to_host
                    .iter()
                    .filter(|p| p.completion_requested())
                    .collect();
                if !forwarded.is_empty() {
                    let id = forwarded[pick % forwarded.len()].transaction_id;
                    let mut payload = vec![0u8; (*len).max(4)];
                    if *fail {
                        payload[..4].copy_from_slice(&Status::UNSUCCESSFUL.0.to_le_bytes());
                    }
                    bus.relay
                        .handle_host(bus.now, Packet::completion(id, padded(payload)));
                    bus.drain();
                }
            }
            Step::HostGarbage(b) => {
                bus.relay
                    .handle_host(bus.now, Packet::in_band(0, b.clone()));
                bus.drain();
            }
            Step::GuestRequest(k, d) => {
                let payload = guest_request(*k, *d);
                let ty = message_type(&Packet::in_band(0, payload.clone()));
                // Once the relay has closed the guest channel, nothing the guest sends
                // arrives (a closed VMBus channel carries nothing).
                let open = !bus.closed;
                let id = bus.guest_requests(payload);
                if let Some(ty) = ty.filter(|t| open && gets_completion(*t)) {
                    asked.insert(id, ty);
                }
            }
            Step::GuestEjectionComplete(d) => bus.guest_sends(ejection_complete(*d)),
            Step::GuestGarbage(b) => {
                bus.relay
                    .handle_guest(bus.now, Packet::request(1, b.clone()));
                bus.drain();
            }
            Step::Config(d, offset) => {
                let access = ConfigAccess::Read {
                    slot: slot(*d),
                    offset: *offset,
                    len: 4,
                };
                let _ = bus.relay.handle_config_access(bus.now, access);
                bus.drain();
            }
            Step::Advance(ms) => bus.advance(Duration::from_millis(u64::from(*ms))),
        }
        prop_assert!(bus.relay.requests_outstanding() <= 8);
        // Guarantee 1, observed from outside: never two ejects for which the guest has not
        // yet sent its EJECTION_COMPLETE... counted as ejects delivered minus completions
        // the relay accepted.
        let pending_ejects = bus
            .relay
            .functions()
            .filter(|f| f.guest() == GuestState::Ejecting)
            .count();
        prop_assert!(pending_ejects <= 1, "two ejects outstanding at the guest");
    }
    // The host goes away; after the relay's holds run out, every request was answered once.
    bus.relay.handle_host_closed(bus.now);
    bus.drain();
    bus.advance(Duration::from_secs(120));
    for (id, ty) in &asked {
        let n = bus
            .to_guest
            .iter()
            .filter(|p| p.kind == PacketKind::Completion && p.transaction_id == *id)
            .count();
        prop_assert_eq!(n, 1, "request {} ({}) answered {} times", id, ty, n);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// No panic, bounded memory, one change at a time, and every request answered once.
    #[test]
    fn hostile_sequences(steps in proptest::collection::vec(step(), 0..60)) {
        run(&steps)?;
    }
}
