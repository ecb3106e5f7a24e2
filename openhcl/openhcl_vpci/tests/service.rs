//! The service runs buses on their own threads with real time: a bus whose guest is silent
//! does not keep another from working, inspect sees both, a rescind ends a bus, and the
//! backing the caller hands in follows each function's life.
//!
//! Waits here are bounded loops on real time (a bus is on another thread), never timing
//! assertions: each only gives up after a generous limit.

use futures::FutureExt;
use futures::executor::block_on;
use openhcl_vpci::RelayService;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmbus_channel::{Channel, ChannelExt, MemoryChannel, Packet, PacketKind, channel_pair};
use vpci_protocol::wire::{
    D0EntryBody, EjectionCompleteBody, Empty, FunctionDescription2, SlotBody, VersionBody,
};
use vpci_protocol::{
    BusRelations, Fixed, Message, MessageType, ProtocolVersion, Sender, Status, WinSlot, decode,
    encode,
};
use vpci_relay::{BarControl, DriverExit, RelayConfig};
use zerocopy::FromZeros;

/// How long any wait for the bus's thread may take before the test gives up.
const LIMIT: Duration = Duration::from_secs(5);

/// One call the service's bus made on the caller's backing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BarCall {
    MapDevice(WinSlot),
    MapShield(WinSlot),
    Unmap(WinSlot),
}

/// A caller's backing that records its calls (standing in for a VMM's mapping code).
#[derive(Clone, Debug, Default)]
struct Recorder(Arc<Mutex<Vec<BarCall>>>);

impl Recorder {
    fn calls(&self) -> Vec<BarCall> {
        self.0.lock().unwrap().clone()
    }
}

impl BarControl for Recorder {
    fn map_device(&mut self, slot: WinSlot) {
        self.0.lock().unwrap().push(BarCall::MapDevice(slot));
    }

    fn map_shield(&mut self, slot: WinSlot) {
        self.0.lock().unwrap().push(BarCall::MapShield(slot));
    }

    fn unmap(&mut self, slot: WinSlot) {
        self.0.lock().unwrap().push(BarCall::Unmap(slot));
    }
}

struct Ends {
    host: MemoryChannel,
    guest: MemoryChannel,
    bars: Recorder,
}

fn add(service: &mut RelayService, config: RelayConfig) -> Ends {
    let (host, relay_host) = channel_pair();
    let (relay_guest, guest) = channel_pair();
    let bars = Recorder::default();
    service
        .add_bus(config, relay_host, relay_guest, bars.clone())
        .unwrap();
    Ends { host, guest, bars }
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

fn send(ch: &mut MemoryChannel, p: Packet) {
    block_on(ch.send(&p)).unwrap();
}

/// The next packet on `ch`, which must come within the limit and carry a `ty` message.
fn expect(ch: &mut MemoryChannel, ty: MessageType) -> Packet {
    let p = recv_within(ch, LIMIT).unwrap_or_else(|| panic!("no {ty} within {LIMIT:?}"));
    assert_eq!(message_type(&p), Some(ty));
    p
}

/// The next packet on `ch`, which must be the completion of `txid`.
fn expect_completion(ch: &mut MemoryChannel, txid: u64) -> Packet {
    let p = recv_within(ch, LIMIT).unwrap_or_else(|| panic!("no completion of {txid}"));
    assert_eq!((p.kind, p.transaction_id), (PacketKind::Completion, txid));
    p
}

fn message_type(p: &Packet) -> Option<MessageType> {
    let bytes: [u8; 4] = p.payload.get(..4)?.try_into().ok()?;
    Some(MessageType(u32::from_le_bytes(bytes)))
}

fn slot(dev: u8) -> WinSlot {
    WinSlot::new(dev, 0)
}

fn query_version() -> Vec<u8> {
    encode(&Message::QueryProtocolVersion(Fixed::new(VersionBody {
        protocol_version: ProtocolVersion::V1_4.0.into(),
    })))
}

fn query_relations() -> Vec<u8> {
    encode(&Message::QueryBusRelations(Fixed::new(Empty {})))
}

fn relations2(devs: &[u8]) -> Vec<u8> {
    let functions = devs
        .iter()
        .map(|&dev| {
            let mut d = FunctionDescription2::new_zeroed();
            d.v_id = 0x1414.into();
            d.d_id = 0x00b1.into();
            d.base_class = 2;
            d.wslot = slot(dev);
            d
        })
        .collect();
    encode(&Message::BusRelations2(BusRelations {
        functions,
        trailing: Vec::new(),
    }))
}

fn d0_entry() -> Vec<u8> {
    encode(&Message::BusD0Entry(Fixed::new(D0EntryBody {
        reserved: 0.into(),
        mmio_base: 0xf_e000_0000.into(),
    })))
}

fn qrr(dev: u8) -> Vec<u8> {
    encode(&Message::QueryResourceRequirements(Fixed::new(SlotBody {
        wslot: slot(dev),
    })))
}

fn eject(dev: u8) -> Vec<u8> {
    encode(&Message::Eject(Fixed::new(SlotBody { wslot: slot(dev) })))
}

fn ejection_complete(dev: u8) -> Vec<u8> {
    encode(&Message::EjectionComplete(Fixed::new(
        EjectionCompleteBody {
            wslot: slot(dev),
            status: 0.into(),
        },
    )))
}

fn status(s: Status) -> Vec<u8> {
    s.0.to_le_bytes().to_vec()
}

fn requirements_reply() -> Vec<u8> {
    let mut v = status(Status::SUCCESS);
    v.extend_from_slice(&0xffff_c000u32.to_le_bytes());
    v.extend_from_slice(&[0; 20]);
    v
}

/// The guest sends request `txid`; the host gets it forwarded as `ty` and answers `reply`;
/// the guest gets the completion.
fn round_trip(ends: &mut Ends, txid: u64, request: Vec<u8>, ty: MessageType, reply: Vec<u8>) {
    send(&mut ends.guest, Packet::request(txid, request));
    let fwd = expect(&mut ends.host, ty);
    send(
        &mut ends.host,
        Packet::completion(fwd.transaction_id, reply),
    );
    expect_completion(&mut ends.guest, txid);
}

/// The slots of the BUS_RELATIONS2 message in `p`.
fn relations_slots(p: &Packet) -> Vec<WinSlot> {
    match decode(&p.payload, Sender::Host, ProtocolVersion::V1_4) {
        Ok(Message::BusRelations2(r)) => r.functions.iter().map(|f| f.wslot).collect(),
        other => panic!("not BUS_RELATIONS2: {other:?}"),
    }
}

/// Two buses on their own threads: one guest never speaks, the other negotiates; inspect
/// shows both, each with the driver's counters; revoking the host ends the quiet bus at its
/// safe point. The relay's timers run on the bus threads' own loops.
#[test]
fn buses_run_independently() {
    let mut service = RelayService::new();
    // The quiet bus gives its silent guest 200 ms to start probing after a rescind.
    let mut quiet = add(
        &mut service,
        RelayConfig {
            name: "quiet".into(),
            max_hold: Duration::from_millis(200),
            ..RelayConfig::default()
        },
    );
    let mut busy = add(
        &mut service,
        RelayConfig {
            name: "busy".into(),
            ..RelayConfig::default()
        },
    );
    round_trip(
        &mut busy,
        5,
        query_version(),
        MessageType::QUERY_PROTOCOL_VERSION,
        vec![0; 4],
    );

    let tree = service.inspect().to_json();
    assert_eq!(tree["busy"]["version"], "1.4");
    assert_eq!(tree["quiet"]["version"], "1.0");
    assert_eq!(tree["busy"]["driver"]["guest_recv_rejected"], 0);

    // The quiet bus never had guest traffic: a rescind closes it once max_hold has passed.
    quiet.host.revoke();
    busy.guest.close();
    let exits = service.join();
    assert!(exits.contains(&("quiet".into(), Some(DriverExit::GuestClosedByRelay))));
    assert!(exits.contains(&("busy".into(), Some(DriverExit::GuestGone))));
    assert!(quiet.bars.calls().is_empty() && busy.bars.calls().is_empty());
    // The quiet bus's max_hold was its thread's own loop timeout: nothing in this process
    // started a `futures-timer` thread for it.
    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect();
    assert!(!threads.is_empty());
    assert!(!threads.iter().any(|t| t == "futures-timer"), "{threads:?}");
}

/// A bus started with the caller's backing maps a function hot-added after the probe to the
/// device, shields it as soon as the host ejects it, and unmaps it once the guest has
/// completed the eject: map_device, map_shield, unmap, in that order and nothing else.
#[test]
fn caller_backing_follows_a_hot_plug_cycle() {
    let mut service = RelayService::new();
    let mut bus = add(
        &mut service,
        RelayConfig {
            name: "hotplug".into(),
            settle: Duration::from_millis(20),
            ..RelayConfig::default()
        },
    );

    // Probe an empty bus: version, survey, D0 entry.
    round_trip(
        &mut bus,
        1,
        query_version(),
        MessageType::QUERY_PROTOCOL_VERSION,
        status(Status::SUCCESS),
    );
    send(&mut bus.guest, Packet::in_band(0, query_relations()));
    expect(&mut bus.host, MessageType::QUERY_BUS_RELATIONS);
    send(&mut bus.host, Packet::in_band(0, relations2(&[])));
    let empty = expect(&mut bus.guest, MessageType::BUS_RELATIONS2);
    assert!(relations_slots(&empty).is_empty());
    round_trip(
        &mut bus,
        2,
        d0_entry(),
        MessageType::BUS_D0ENTRY,
        status(Status::SUCCESS),
    );
    assert!(bus.bars.calls().is_empty(), "nothing to back yet");

    // Hot-add slot 1 (delivered once the probe has settled); the guest queries it.
    send(&mut bus.host, Packet::in_band(0, relations2(&[1])));
    let added = expect(&mut bus.guest, MessageType::BUS_RELATIONS2);
    assert_eq!(relations_slots(&added), [slot(1)]);
    assert_eq!(bus.bars.calls(), [BarCall::MapDevice(slot(1))]);
    round_trip(
        &mut bus,
        3,
        qrr(1),
        MessageType::QUERY_RESOURCE_REQUIREMENTS,
        requirements_reply(),
    );

    // The host ejects it; the guest gets the eject once the function is settled and lets go.
    send(&mut bus.host, Packet::in_band(0, eject(1)));
    expect(&mut bus.guest, MessageType::EJECT);
    assert_eq!(
        bus.bars.calls(),
        [BarCall::MapDevice(slot(1)), BarCall::MapShield(slot(1))],
        "shielded before the guest hears of the eject"
    );
    send(&mut bus.guest, Packet::in_band(0, ejection_complete(1)));
    expect(&mut bus.host, MessageType::EJECTION_COMPLETE);
    let start = Instant::now();
    while bus.bars.calls().len() < 3 && start.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        bus.bars.calls(),
        [
            BarCall::MapDevice(slot(1)),
            BarCall::MapShield(slot(1)),
            BarCall::Unmap(slot(1)),
        ]
    );

    bus.guest.close();
    assert_eq!(
        service.join(),
        [("hotplug".to_owned(), Some(DriverExit::GuestGone))]
    );
}
