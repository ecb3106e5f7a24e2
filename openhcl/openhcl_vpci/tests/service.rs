//! The service runs buses on their own threads with real time: a bus whose guest is silent
//! does not keep another from working, inspect sees both, and a rescind ends a bus.

use futures::FutureExt;
use futures::executor::block_on;
use openhcl_vpci::RelayService;
use std::time::{Duration, Instant};
use vmbus_channel::{Channel, ChannelExt, MemoryChannel, Packet, channel_pair};
use vpci_protocol::wire::VersionBody;
use vpci_protocol::{Fixed, Message, ProtocolVersion, encode};
use vpci_relay::{DriverExit, RelayConfig};

struct Ends {
    host: MemoryChannel,
    guest: MemoryChannel,
}

fn add(service: &mut RelayService, name: &str, max_hold: Duration) -> Ends {
    let (host, relay_host) = channel_pair();
    let (relay_guest, guest) = channel_pair();
    let config = RelayConfig {
        name: name.into(),
        max_hold,
        ..RelayConfig::default()
    };
    service.add_bus(config, relay_host, relay_guest).unwrap();
    Ends { host, guest }
}

fn recv_within(ch: &mut MemoryChannel, limit: Duration) -> Option<Packet> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(Ok(p)) = ch.recv().now_or_never() {
            return Some(p);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// Two buses on their own threads: one guest never speaks, the other negotiates; inspect
/// shows both; revoking the host ends the quiet bus at its safe point.
#[test]
fn buses_run_independently() {
    let mut service = RelayService::new();
    // The quiet bus gives its silent guest 200 ms to start probing after a rescind.
    let mut quiet = add(&mut service, "quiet", Duration::from_millis(200));
    let mut busy = add(&mut service, "busy", Duration::from_secs(30));
    let version = encode(&Message::QueryProtocolVersion(Fixed::new(VersionBody {
        protocol_version: ProtocolVersion::V1_4.0.into(),
    })));
    block_on(busy.guest.send(&Packet::request(5, version))).unwrap();
    let forwarded = recv_within(&mut busy.host, Duration::from_secs(5)).expect("forwarded");
    block_on(
        busy.host
            .send(&Packet::completion(forwarded.transaction_id, vec![0; 4])),
    )
    .unwrap();
    let done = recv_within(&mut busy.guest, Duration::from_secs(5)).expect("completed");
    assert_eq!(done.transaction_id, 5);

    let tree = service.inspect().to_json();
    assert_eq!(tree["busy"]["version"], "1.4");
    assert_eq!(tree["quiet"]["version"], "1.0");

    // The quiet bus never had guest traffic: a rescind closes it once max_hold has passed.
    quiet.host.revoke();
    busy.guest.close();
    let exits = service.join();
    assert!(exits.contains(&("quiet".into(), Some(DriverExit::GuestClosedByRelay))));
    assert!(exits.contains(&("busy".into(), Some(DriverExit::GuestGone))));
}
