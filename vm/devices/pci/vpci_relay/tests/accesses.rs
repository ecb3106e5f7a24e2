//! Config accesses in flight (guarantee 2's wait): a guest whose vCPU sits in a config access
//! the relay forwarded to the device waits on the host, however long the host takes, so the
//! bus is not quiet and no EJECT or relations change reaches it until the access is done. Each
//! promise has a twin with the safeguard switched off, showing the race it closes.

mod common;

use common::*;
use std::time::Duration;
use vpci_relay::*;

fn off(f: impl FnOnce(&mut Safeguards)) -> Safeguards {
    let mut s = Safeguards::ALL_ON;
    f(&mut s);
    s
}

/// A 4-byte read of the vendor/device dword of `dev`.
fn vendor(dev: u8) -> ConfigAccess {
    ConfigAccess::Read {
        slot: slot(dev),
        offset: 0,
        len: 4,
    }
}

/// Starts a config read of `dev` that the relay forwards to the device.
fn start_read(bus: &mut Bus, dev: u8) -> AccessId {
    let action = bus.relay.handle_config_access(bus.now, vendor(dev));
    bus.drain();
    match action {
        ConfigAction::Forward(id) => id,
        other => panic!("a listed function's read goes to the device, got {other:?}"),
    }
}

fn done(bus: &mut Bus, id: AccessId, value: Option<u32>) {
    bus.relay.handle_config_done(bus.now, id, value);
    bus.drain();
}

/// The guest, still in its read, has not been sent an EJECT.
fn no_eject_mid_read(bus: &Bus) {
    assert!(
        bus.guest_ejects().is_empty(),
        "EJECT reached a guest mid-read"
    );
}

/// Reports the access done with `value`; a second later the held EJECT of function 1 has
/// reached the guest.
fn done_then_eject_goes_out(bus: &mut Bus, id: AccessId, value: Option<u32>) {
    done(bus, id, value);
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
}

/// `bus`'s relay serviced: saved, and restored at the same time on a fresh bus.
fn serviced(bus: &Bus) -> Bus {
    let saved = bus.relay.save();
    let mut restored = Bus::new();
    restored.now = bus.now;
    restored.relay = BusRelay::restore(RelayConfig::default(), &saved, bus.now)
        .expect("the relay's own state restores");
    restored
}

/// The guest's driver is probing function 1 (reading its config space through the window)
/// when the host ejects it, and the device is slow to answer the read.
fn eject_during_slow_read(safeguards: Safeguards) -> (Bus, AccessId) {
    let mut bus = Bus::with(RelayConfig::default(), safeguards);
    bus.survey(&[1, 2]);
    bus.finish_probe(&[1, 2]);
    let id = start_read(&mut bus, 2);
    bus.host_sends(eject(1));
    // Far past the settle window: only the read keeps the guest busy.
    bus.advance(Duration::from_secs(1));
    (bus, id)
}

/// A read in flight keeps an EJECT from the guest, well past the settle window; once the
/// device answers, the EJECT goes after the settle window counted from the answer.
#[test]
fn an_access_in_flight_holds_an_eject() {
    let (mut bus, id) = eject_during_slow_read(Safeguards::ALL_ON);
    no_eject_mid_read(&bus);
    assert_eq!(bus.relay.accesses_in_flight(), 1);
    done(&mut bus, id, Some(0x1234_1414));
    assert_eq!(bus.relay.accesses_in_flight(), 0);
    bus.advance(Duration::from_millis(50));
    assert!(
        bus.guest_ejects().is_empty(),
        "the guest acts on the answer first"
    );
    bus.advance(Duration::from_secs(1));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
}

/// Teeth: without the wait, the EJECT reaches the guest while it is in the read.
#[test]
fn an_access_in_flight_holds_an_eject_teeth() {
    let (bus, _) = eject_during_slow_read(off(|s| s.accesses_hold_the_bus = false));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
}

/// A host slower than `max_hold` to answer the read never opens the window: the relay
/// answers the host's EJECT at its deadline itself and still holds the guest's EJECT until
/// the read is done.
#[test]
fn a_slow_host_never_opens_the_window() {
    let (mut bus, id) = eject_during_slow_read(Safeguards::ALL_ON);
    bus.advance(Duration::from_secs(40));
    no_eject_mid_read(&bus);
    assert_eq!(bus.relay.counters().ejects_answered_at_deadline, 1);
    assert_eq!(
        ejection_completes_to_host(&bus, 1),
        1,
        "the host is answered"
    );
    done_then_eject_goes_out(&mut bus, id, Some(0x1234_1414));
}

/// The probe path does not count as done while the guest reads a function's config space.
#[test]
fn an_access_in_flight_keeps_the_probe_path_open() {
    let mut bus = Bus::new();
    bus.survey(&[1]);
    let id = start_read(&mut bus, 1);
    let d0 = bus.guest_requests(d0_entry());
    bus.host_completes(
        vpci_protocol::MessageType::BUS_D0ENTRY,
        status(vpci_protocol::Status::SUCCESS),
    );
    assert!(bus.guest_completion(d0).is_some());
    let ra = bus.guest_requests(resources_assigned2(1));
    bus.host_completes(
        vpci_protocol::MessageType::RESOURCES_ASSIGNED2,
        status(vpci_protocol::Status::SUCCESS),
    );
    assert!(bus.guest_completion(ra).is_some());
    bus.advance(Duration::from_secs(1));
    assert!(
        !bus.relay.installed(),
        "installed while the guest is in a read"
    );
    // A hot-add waits too.
    bus.host_sends(relations2(&[1, 2]));
    bus.advance(Duration::from_secs(1));
    assert_eq!(
        bus.guest_relations().len(),
        1,
        "relations reached a guest mid-read"
    );
    done(&mut bus, id, Some(0x1234_1414));
    bus.advance(Duration::from_secs(1));
    assert!(bus.relay.installed());
    assert_eq!(bus.guest_relations().len(), 2);
}

/// A read of a function the host has removed, which the device never answers, stops holding
/// the bus after `departed_request_timeout` (counted), as a request for it would.
#[test]
fn an_unanswered_access_to_a_departed_function_is_given_up() {
    let mut bus = Bus::installed_with(&[1]);
    let id = start_read(&mut bus, 1);
    bus.host_sends(eject(1));
    bus.advance(Duration::from_millis(900));
    assert!(bus.guest_ejects().is_empty());
    bus.advance(Duration::from_secs(2));
    assert!(
        bus.events
            .contains(&RelayEvent::AccessAbandoned { slot: slot(1) })
    );
    assert_eq!(bus.relay.counters().accesses_abandoned, 1);
    assert_eq!(bus.relay.accesses_in_flight(), 0);
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    // The device's very late answer changes nothing.
    done(&mut bus, id, Some(0xffff_ffff));
    assert_eq!(bus.guest_ejects(), [slot(1)]);
}

/// Function 1 installed, the guest in a read of it that went to the device, and the host
/// lost.
fn read_then_host_lost() -> (Bus, AccessId) {
    let mut bus = Bus::installed_with(&[1]);
    let id = start_read(&mut bus, 1);
    bus.relay.handle_host_closed(bus.now);
    bus.drain();
    (bus, id)
}

/// A lost host answers nothing more, but the guest still sits in its read: the access holds
/// the bus (its function departed with the host) until it is done, or until
/// `departed_request_timeout` after the loss; then the functions are ejected at safe points
/// and the guest channel closes, long before `max_hold`.
#[test]
fn host_loss_keeps_the_guest_in_its_read() {
    let (mut bus, id) = read_then_host_lost();
    assert_eq!(bus.relay.accesses_in_flight(), 1);
    bus.advance(Duration::from_millis(500));
    no_eject_mid_read(&bus);
    done_then_eject_goes_out(&mut bus, id, None);
    bus.guest_sends(ejection_complete(1));
    bus.advance(Duration::from_secs(1));
    assert!(bus.closed, "the guest channel closes at the safe point");
}

/// A lost host's access the device never finishes is given up `departed_request_timeout`
/// after the loss (counted), and the bus winds down.
#[test]
fn host_loss_gives_up_an_unfinished_access_in_time() {
    let (mut bus, _id) = read_then_host_lost();
    bus.advance(Duration::from_millis(900));
    no_eject_mid_read(&bus);
    bus.advance(Duration::from_secs(2));
    assert_eq!(bus.relay.counters().accesses_abandoned, 1);
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    bus.guest_sends(ejection_complete(1));
    bus.advance(Duration::from_secs(1));
    assert!(bus.closed, "the guest channel closes well before max_hold");
}

/// Beyond `max_accesses_in_flight` an access is answered as a master abort (counted); an
/// id reported twice, or never issued, is ignored.
#[test]
fn accesses_in_flight_are_bounded_and_done_once() {
    let mut config = RelayConfig::default();
    config.limits.max_accesses_in_flight = 2;
    let mut bus = Bus::with(config, Safeguards::ALL_ON);
    bus.survey(&[1]);
    bus.finish_probe(&[1]);
    let a = start_read(&mut bus, 1);
    let _b = start_read(&mut bus, 1);
    assert_eq!(
        bus.relay.handle_config_access(bus.now, vendor(1)),
        ConfigAction::Answer(u32::MAX)
    );
    bus.drain();
    assert!(
        bus.events
            .contains(&RelayEvent::AccessRefused { slot: slot(1) })
    );
    assert_eq!(bus.relay.counters().accesses_refused, 1);
    done(&mut bus, a, Some(1));
    done(&mut bus, a, Some(1));
    done(&mut bus, AccessId::from_raw(12_345), None);
    assert_eq!(bus.relay.accesses_in_flight(), 1);
}

/// An access in flight is carried across servicing with its id: the restored relay still
/// holds the EJECT, and the caller's report of the same id ends the wait.
#[test]
fn an_access_in_flight_survives_servicing() {
    let (bus, id) = eject_during_slow_read(Safeguards::ALL_ON);
    let mut restored = serviced(&bus);
    assert_eq!(restored.relay.accesses_in_flight(), 1);
    restored.advance(Duration::from_secs(1));
    no_eject_mid_read(&restored);
    done_then_eject_goes_out(&mut restored, id, Some(0x1234_1414));
}

/// Function 1 installed, the guest 5 s into a read of it that went to the device, when the
/// host ejects it.
fn slow_read_then_ejected() -> (Bus, AccessId) {
    let mut bus = Bus::installed_with(&[1]);
    let id = start_read(&mut bus, 1);
    bus.advance(Duration::from_secs(5));
    bus.host_sends(eject(1));
    (bus, id)
}

/// A read the device was slow on before the host removed its function still holds the bus
/// for `departed_request_timeout` counted from the removal, not from when the read began: the
/// host's EJECT of a function the guest has been reading for a long time must not reach the
/// guest mid-read at once. (Found by the model check with slow reads: a root-bus scan read
/// slow for 60 s, the host ejects that function, the relay gave the read up at once and
/// delivered a held EJECT into the probe path: C3.)
#[test]
fn a_slow_access_holds_for_the_timeout_after_its_function_departs() {
    let (mut bus, id) = slow_read_then_ejected();
    assert!(
        bus.guest_ejects().is_empty(),
        "EJECT reached a guest mid-read the moment its function departed"
    );
    assert_eq!(bus.relay.accesses_in_flight(), 1);
    bus.advance(Duration::from_millis(900));
    no_eject_mid_read(&bus);
    assert_eq!(bus.relay.accesses_in_flight(), 1);
    // A second after the departure the relay gives the read up (the host may never answer
    // for a device it removed), as it answers requests for departed functions.
    bus.advance(Duration::from_secs(2));
    assert_eq!(bus.relay.counters().accesses_abandoned, 1);
    assert_eq!(bus.guest_ejects(), [slot(1)]);
    done(&mut bus, id, None);
}

/// The same across servicing: the departure's time is saved, so a restored relay gives the
/// read up a second after the departure, not a second after the restore or at once.
#[test]
fn a_departed_access_keeps_its_departure_time_across_servicing() {
    let (mut bus, _id) = slow_read_then_ejected();
    bus.advance(Duration::from_millis(600));
    let mut restored = serviced(&bus);
    assert_eq!(restored.relay.accesses_in_flight(), 1);
    restored.advance(Duration::from_millis(300));
    assert_eq!(restored.relay.accesses_in_flight(), 1, "given up early");
    restored.advance(Duration::from_millis(200));
    assert_eq!(
        restored.relay.accesses_in_flight(),
        0,
        "a second after the departure, not after the restore"
    );
}

/// A read the relay forwarded while it still saw the function listed comes back saying the
/// device is gone: the host removed it (a surprise removal, or its teardown at an EJECT)
/// before the relations or EJECT reached the relay. The guest is never shown the function
/// vanish that it was not told to let go: an identity register reading all ones is answered
/// with the identity the host described (Linux 6.2 polls the vendor id while it composes an
/// MSI and gives the interrupt up when it reads all ones, then dereferences the missing
/// descriptor at unmask: C2, found with a chaotic host across processes), and a failed read
/// with the shield's copy; a live device's values pass through. Teeth: without the removal
/// shield the guest reads the all ones.
#[test]
fn a_read_that_finds_the_device_gone_is_answered_from_the_shield() {
    let read = |bus: &mut Bus, offset: u16, len: u8, device: Option<u32>| {
        let access = ConfigAccess::Read {
            slot: slot(1),
            offset,
            len,
        };
        let ConfigAction::Forward(id) = bus.relay.handle_config_access(bus.now, access) else {
            panic!("a listed function's read goes to the device");
        };
        let value = bus.relay.handle_config_done(bus.now, id, device);
        bus.drain();
        value
    };
    let identity = |safeguards: Safeguards| {
        let mut bus = Bus::with(RelayConfig::default(), safeguards);
        bus.survey(&[1]);
        bus.finish_probe(&[1]);
        // As `survey` lists it: vendor 0x1414, device 0x00b1.
        let desc = desc2(1, 0x1414);
        let vendor = u32::from(desc.v_id.get());
        let ids = vendor | (u32::from(desc.d_id.get()) << 16);
        (bus, vendor, ids)
    };
    let (mut bus, vendor, ids) = identity(Safeguards::ALL_ON);
    // A live device: its values.
    assert_eq!(read(&mut bus, 0, 4, Some(ids)), Some(ids));
    assert_eq!(
        read(&mut bus, 0x10, 4, Some(0xfe00_000c)),
        Some(0xfe00_000c)
    );
    // Gone: the vendor id (narrow and whole dword) reads as described.
    assert_eq!(read(&mut bus, 0, 2, Some(0xffff)), Some(vendor));
    assert_eq!(read(&mut bus, 0, 4, Some(u32::MAX)), Some(ids));
    // A failed read: the shield's copy (the BAR read before), all ones for what was never read.
    assert_eq!(read(&mut bus, 0x10, 4, None), Some(0xfe00_000c));
    assert_eq!(read(&mut bus, 0x40, 4, None), Some(u32::MAX));
    // All ones in a register that is not an identity one is the device's to say.
    assert_eq!(read(&mut bus, 0x10, 4, Some(u32::MAX)), Some(u32::MAX));
    // A write has no value to give.
    let write = ConfigAccess::Write {
        slot: slot(1),
        offset: 4,
        len: 2,
        value: 6,
    };
    let ConfigAction::Forward(id) = bus.relay.handle_config_access(bus.now, write) else {
        panic!("a listed function's write goes to the device");
    };
    assert_eq!(bus.relay.handle_config_done(bus.now, id, None), None);

    let (mut bus, _, _) = identity(off(|s| s.removal_shield = false));
    assert_eq!(read(&mut bus, 0, 2, Some(0xffff)), Some(0xffff));
}
