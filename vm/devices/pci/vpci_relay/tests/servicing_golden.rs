//! Golden saved states: relay states at interesting points, as a version of the relay wrote
//! them, committed under `tests/saved_state/golden/` (`<name>.bin`) with the inspect tree
//! each restores to beside it (`<name>.json`). Each must still restore to exactly that tree:
//! a change that breaks reading an older state fails here.
//!
//! **Bless mode**: `VPCI_BLESS=1 cargo test -p vpci_relay --test servicing_golden` rewrites
//! every golden file from its scenario below with the current writer (and the restore fuzz
//! target's seeds, `fuzz/corpus/restore/golden-<name>`). Bless only for a deliberate format
//! change, and keep the old files of a format still read: a golden file rewritten to make a
//! failure go away hides exactly the break this test is for.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vpci_protocol::MessageType;
use vpci_relay::*;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/saved_state/golden")
}

/// The guest is probing: it negotiated, surveyed, and waits for the host's answer to
/// QUERY_RESOURCE_REQUIREMENTS of function 1 (a live request); function 2 is not queried.
fn mid_probe() -> Bus {
    let mut bus = Bus::new();
    let v = bus.guest_requests(query_version(vpci_protocol::ProtocolVersion::V1_4));
    bus.host_completes(
        MessageType::QUERY_PROTOCOL_VERSION,
        status(vpci_protocol::Status::SUCCESS),
    );
    assert!(bus.guest_completion(v).is_some());
    bus.guest_sends(query_relations());
    bus.host_sends(relations2(&[1, 2]));
    bus.guest_requests(qrr(1));
    bus
}

/// An installed bus; the guest waits for an interrupt for function 1 when the host ejects
/// it: the EJECT is held (the host is owed its answer).
fn eject_held() -> Bus {
    let mut bus = Bus::installed_with(&[1]);
    bus.guest_requests(create_interrupt2(1, 3));
    bus.host_sends(eject(1));
    assert!(bus.guest_ejects().is_empty());
    bus
}

/// The guest works on the EJECT of function 1 when the host adds function 2: the relations
/// wait behind the outstanding change.
fn relations_pending() -> Bus {
    let mut bus = Bus::installed_with(&[1]);
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), vec![slot(1)]);
    bus.host_sends(relations2(&[2]));
    bus
}

/// The host rescinded the channel of an installed bus with functions 1 and 2: the relay
/// ejects both from the guest, one at a time, before it closes the guest channel.
fn host_rescinded() -> Bus {
    let mut bus = Bus::installed_with(&[1, 2]);
    bus.relay.handle_host_closed(bus.now);
    bus.drain();
    assert!(!bus.closed);
    bus
}

/// An installed bus with functions 1 and 2; the guest reads function 2's config space and the
/// device has not answered when the host ejects function 1: the EJECT is held (format 1.1,
/// which added the accesses in flight).
fn access_in_flight() -> Bus {
    let mut bus = Bus::installed_with(&[1, 2]);
    let read = ConfigAccess::Read {
        slot: slot(2),
        offset: 0,
        len: 4,
    };
    assert!(matches!(
        bus.relay.handle_config_access(bus.now, read),
        ConfigAction::Forward(_)
    ));
    bus.host_sends(eject(1));
    bus.advance(Duration::from_secs(1));
    assert!(bus.guest_ejects().is_empty());
    bus
}

/// A named scenario that leaves a bus at an interesting point.
type Scenario = (&'static str, fn() -> Bus);

/// The golden files of the first four were written by format 1.0 and are kept as written
/// (their trees gained the fields added since, at their defaults); `access-in-flight` by 1.1.
const SCENARIOS: [Scenario; 5] = [
    ("mid-probe", mid_probe),
    ("eject-held", eject_held),
    ("relations-pending", relations_pending),
    ("host-rescinded", host_rescinded),
    ("access-in-flight", access_in_flight),
];

fn inspect_json(relay: &BusRelay) -> String {
    let mut json = inspect::Inspect::inspect(relay).to_json_pretty();
    json.push('\n');
    json
}

fn bless() {
    for (name, scenario) in SCENARIOS {
        let bytes = scenario().relay.to_bytes();
        let relay = BusRelay::restore_bytes(RelayConfig::default(), &bytes, Duration::ZERO)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::write(dir().join(format!("{name}.bin")), &bytes).unwrap();
        std::fs::write(dir().join(format!("{name}.json")), inspect_json(&relay)).unwrap();
        // The restore fuzz target's seed: mode 0 (the state as it is), its length, the state.
        let mut seed = vec![0u8];
        seed.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_le_bytes());
        seed.extend_from_slice(&bytes);
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../../fuzz/corpus/restore");
        std::fs::write(corpus.join(format!("golden-{name}")), seed).unwrap();
    }
}

/// Every golden state restores to the inspect tree committed beside it.
#[test]
fn golden_states_restore_to_their_inspect_trees() {
    if std::env::var_os("VPCI_BLESS").is_some() {
        bless();
    }
    for (name, _) in SCENARIOS {
        let bytes = std::fs::read(dir().join(format!("{name}.bin")))
            .unwrap_or_else(|e| panic!("{name}.bin: {e} (VPCI_BLESS=1 writes it)"));
        let expected = std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap();
        let relay = BusRelay::restore_bytes(RelayConfig::default(), &bytes, Duration::ZERO)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            inspect_json(&relay),
            expected,
            "{name} restores to another tree"
        );
    }
}

/// Each scenario is what its name says (so a golden file blessed from it is too), and the
/// current writer's state of it restores to the same tree as its golden file: if this fails
/// while the test above passes, the writer changed, and the goldens need a new format's
/// files beside the old.
#[test]
fn the_scenarios_are_what_they_say() {
    let probing = mid_probe();
    assert_eq!(probing.relay.requests_outstanding(), 1);
    assert!(!probing.relay.installed());
    let held = eject_held();
    assert_eq!(
        held.relay.function(slot(1)).unwrap().host(),
        HostState::Ejecting
    );
    assert_eq!(held.relay.outstanding_change(), None);
    let pending = relations_pending();
    assert_eq!(
        pending.relay.outstanding_change(),
        Some(ChangeKind::Eject(slot(1)))
    );
    assert!(
        pending
            .relay
            .function(slot(2))
            .is_some_and(|f| f.guest() == GuestState::Hidden)
    );
    let reading = access_in_flight();
    assert_eq!(reading.relay.accesses_in_flight(), 1);
    assert_eq!(
        reading.relay.function(slot(1)).unwrap().host(),
        HostState::Ejecting
    );
    let rescinded = host_rescinded();
    assert!(matches!(
        rescinded.relay.host_link(),
        HostLink::Lost {
            rescinded: true,
            ..
        }
    ));
    for (name, scenario) in SCENARIOS {
        let Ok(expected) = std::fs::read_to_string(dir().join(format!("{name}.json"))) else {
            continue;
        };
        let bytes = scenario().relay.to_bytes();
        let relay =
            BusRelay::restore_bytes(RelayConfig::default(), &bytes, Duration::ZERO).unwrap();
        assert_eq!(inspect_json(&relay), expected, "{name}: the writer changed");
    }
}
