//! The relay fed an arbitrary sequence of host packets, guest packets, config accesses, timer
//! ticks and a rescind: no panic, and outstanding requests stay within the configured limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use vmbus_channel::{Packet, PacketFlags, PacketKind};
use vpci_protocol::WinSlot;
use vpci_relay::{BusRelay, ConfigAccess, Limits, RelayConfig};

fuzz_target!(|data: &[u8]| {
    let config = RelayConfig {
        limits: Limits {
            max_functions: 8,
            max_outstanding_requests: 16,
            ..Limits::default()
        },
        ..RelayConfig::default()
    };
    let mut relay = BusRelay::new(config);
    let mut now = Duration::ZERO;
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(n);
        rest = next;
        now += Duration::from_millis(u64::from(op >> 4) * 10);
        let packet = Packet {
            kind: if op & 1 == 0 {
                PacketKind::InBand
            } else {
                PacketKind::Completion
            },
            flags: PacketFlags(u16::from(op & 2 != 0)),
            transaction_id: u64::from(*len % 8),
            payload: payload.to_vec(),
        };
        match (op >> 2) & 3 {
            0 => relay.handle_host(now, packet),
            1 => relay.handle_guest(now, packet),
            2 => {
                let slot = WinSlot::new(*len & 0x1f, 0);
                let _ = relay.handle_config_access(
                    now,
                    ConfigAccess::Read {
                        slot,
                        offset: 0,
                        len: 4,
                    },
                );
            }
            _ if *op == 0xff => relay.handle_host_closed(now),
            _ => relay.handle_timeout(now),
        }
        while relay.poll_transmit().is_some() {}
        while relay.poll_backing().is_some() {}
        while relay.poll_event().is_some() {}
        assert!(relay.requests_outstanding() <= 16);
    }
});
