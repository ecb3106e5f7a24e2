//! A BAR sizing that straddles the host's removal of the function (found by the model check,
//! `model_check_all_safeguards_on` with config writes: property "a BAR reads back its size
//! mask after the sizing write").
//!
//! Linux sizes a BAR in three config accesses (`__pci_read_base`): write all ones, read the
//! size mask back, write the address back. Once the host has removed a function the guest
//! still holds, the relay shields it: writes land in the relay's copy as the device would take
//! them, so the read-back gives the size mask (`held_eject_keeps_bar_sizing_working` in
//! `regressions.rs`). But a sizing write the relay forwarded to the device while the host
//! still had it is not kept in that copy: when the host removes the function between the
//! write and the read-back, the relay answers the read-back from a copy that never saw the
//! write, with all ones, which Linux takes for an unimplemented BAR, although the guest has
//! not been told to let go of the function.

mod common;

use common::*;
use vpci_protocol::WinSlot;
use vpci_relay::*;

const BAR0: u16 = 0x10;
/// What `requirements_reply()` probes BAR0 as: 16 KiB of 32-bit memory.
const BAR0_MASK: u32 = 0xffff_c000;

fn size_bar0() -> ConfigAccess {
    ConfigAccess::Write {
        slot: slot(1),
        offset: BAR0,
        len: 4,
        value: u32::MAX,
    }
}

fn read_bar0() -> ConfigAccess {
    ConfigAccess::Read {
        slot: slot(1),
        offset: BAR0,
        len: 4,
    }
}

/// The guest writes all ones to BAR0 of function 1 while the host has it (the relay forwards
/// the write); `removed_before_done` says whether the host ejects function 1 while the write
/// is in flight (the device then never finishes it) or after the device took it. Returns
/// what the guest reads back from BAR0, the eject still held from the guest.
fn read_back_after_eject(removed_before_done: bool) -> ConfigAction {
    let mut bus = Bus::installed_with(&[1]);
    let now = bus.now;
    let ConfigAction::Forward(id) = bus.relay.handle_config_access(now, size_bar0()) else {
        panic!("a write to a listed function goes to the device");
    };
    bus.drain();
    if removed_before_done {
        bus.host_sends(eject(1));
        // The host tore the device down: the write fails.
        bus.relay.handle_config_done(bus.now, id, None);
    } else {
        // The device took it.
        bus.relay.handle_config_done(bus.now, id, Some(0));
        bus.drain();
        // Keep the function busy so the eject is held.
        bus.guest_requests(qrr(1));
        bus.host_sends(eject(1));
    }
    bus.drain();
    assert_eq!(
        bus.guest_ejects(),
        Vec::<WinSlot>::new(),
        "the eject is held: the guest still holds function 1 and has not been told to let go"
    );
    let action = bus.relay.handle_config_access(bus.now, read_bar0());
    bus.drain();
    action
}

/// The host ejects function 1 while the guest's sizing write of BAR0 is in flight; the guest's
/// read-back, shielded, should be the size mask, as when the write itself had been shielded.
#[test]
#[ignore = "relay bug found by the model check: a forwarded config write is not kept in the \
            removal shield's copy, so a BAR sizing that straddles the removal reads back all ones"]
fn forwarded_bar_sizing_write_is_lost_at_removal_in_flight() {
    assert_eq!(read_back_after_eject(true), ConfigAction::Answer(BAR0_MASK));
}

/// The same when the device took the sizing write before the host ejected the function.
#[test]
#[ignore = "relay bug found by the model check: a forwarded config write is not kept in the \
            removal shield's copy, so a BAR sizing that straddles the removal reads back all ones"]
fn forwarded_bar_sizing_write_is_lost_at_removal_after_done() {
    assert_eq!(
        read_back_after_eject(false),
        ConfigAction::Answer(BAR0_MASK)
    );
}
