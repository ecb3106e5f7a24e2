//! Config reads that take the device time: the guest starts one (the relay decides at once),
//! and when the relay forwards it the guest's vCPU sits in it until the device answers, in
//! a separate action that the model schedules like any host action (at once, after an EJECT
//! or relations change of that function, or, for a slow device, after time has passed, or
//! never within the bound).
//!
//! Linux 6.2 reads config space under the bus's config lock (`hv_pcifront_read_config`, and
//! the PCI core's own lock around it), so the guest has at most one read in flight: a context
//! whose next step reads config space waits while another context's read is in flight.

use super::Step;
use super::guest::{Driver, Failure, Probe};
use super::wire::{Ident, Input, vendor_dword};
use super::work::Running;
use std::collections::BTreeSet;
use vpci_relay::ConfigAction;

/// The guest context whose vCPU sits in a config read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reader {
    /// The probe path's root-bus creation, scanning the slot.
    RootBus,
    /// The function's driver, probing.
    Driver,
    /// The eject work, removing the function's driver.
    Eject,
}

/// A config read the relay forwarded to the device and the device has not answered yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Read {
    /// The slot read.
    pub slot: u8,
    /// The identity of the guest's function in that slot when the read began (the device
    /// answering it is that function's).
    pub ident: Option<Ident>,
    /// Who waits in it.
    pub by: Reader,
    /// The relay's id of the forwarded access (`AccessId::to_raw`).
    pub id: u64,
    /// The device takes its time (time may pass while it is in flight).
    pub slow: bool,
}

impl Read {
    /// Whether the device still owes a prompt answer (time does not pass meanwhile): a read
    /// the device is not slow on, or one whose device the host has removed since (a removed
    /// device's config space answers at once, with all ones).
    pub fn owed_promptly(&self, host: &super::Host) -> bool {
        !self.slow || !self.device_present(host)
    }

    /// Whether the host still has the device the read went to.
    pub fn device_present(&self, host: &super::Host) -> bool {
        self.ident.is_some_and(|i| host.mapped(self.slot, i))
    }
}

impl Step {
    /// The guest reads slot `s`'s config space on behalf of `by`. Returns whether the read
    /// went to the device and the context now waits in it.
    pub(super) fn config_read(&mut self, s: u8, by: Reader) -> bool {
        let ident = self.child_ident(s);
        let action = self.input(Input::ConfigRead(s));
        let Some(ConfigAction::Forward(id)) = action else {
            return false;
        };
        if !ident.is_some_and(|i| self.s.host.mapped(s, i)) {
            self.s.guest.fail(Failure::C7ConfigFault(s));
        }
        self.note(format!("guest reads {s} (to the device)"));
        self.s.guest.read = Some(Read {
            slot: s,
            ident,
            by,
            id: id.to_raw(),
            slow: false,
        });
        true
    }

    /// The device answers the read in flight (with the function's vendor and device id, or
    /// all ones if the host removed it meanwhile); the relay is told, and the waiting context
    /// resumes with the answer and carries on with its step.
    pub(super) fn device_answers(&mut self) {
        let Some(r) = self.s.guest.read.take() else {
            return;
        };
        let present = r.device_present(&self.s.host);
        if !present {
            self.s.seen.read_outlived_device = true;
        }
        let value = r.ident.filter(|_| present).map(vendor_dword);
        self.note(format!("device answers the read of {}", r.slot));
        self.input(Input::ConfigDone { id: r.id, value });
        let g = &self.s.guest;
        if g.closed || g.failure.is_some() {
            return;
        }
        match r.by {
            Reader::RootBus => {
                if g.probe == Probe::RootBusRead(r.slot) {
                    if let Some(c) = self.s.guest.children.get_mut(&r.slot) {
                        c.driver = Driver::Probe;
                    }
                    self.scan_root_bus(Some(r.slot));
                }
            }
            Reader::Driver => {
                if g.children
                    .get(&r.slot)
                    .is_some_and(|c| c.driver == Driver::Reading)
                {
                    self.driver_after_read(r.slot);
                }
            }
            Reader::Eject => {
                if g.running == Some(Running::EjectReading(r.slot)) {
                    self.s.guest.running = Some(Running::EjectRemoved(r.slot));
                }
            }
        }
    }

    /// Root-bus creation scans each slot after `after` (all, if `None`): reads its config
    /// space and starts its driver. A read that goes to the device leaves the probe path
    /// waiting in it.
    pub(super) fn scan_root_bus(&mut self, after: Option<u8>) {
        let mut slots: BTreeSet<u8> = self.s.guest.children.keys().copied().collect();
        slots.extend(self.s.guest.probe_children.iter().copied());
        for s in slots.into_iter().filter(|&s| after.is_none_or(|a| s > a)) {
            if self.s.guest.ejected_early.contains(&s) {
                self.s.guest.fail(Failure::C3TouchedEjected(s));
                return;
            }
            if self.config_read(s, Reader::RootBus) {
                self.s.guest.probe = Probe::RootBusRead(s);
                return;
            }
            if let Some(c) = self.s.guest.children.get_mut(&s) {
                c.driver = Driver::Probe;
            }
        }
        self.s.guest.probe = Probe::Done;
    }

    /// A change (an EJECT, or relations that change what the guest has) reaches the guest.
    /// If a vCPU sits in a config read the relay still counts as in flight, the probe or
    /// driver work that read belongs to is mid-way: the 6.2 guest is not ready for the change.
    /// (After the relay forgot the access, the host being lost, the change is the relay's
    /// documented way out, noted but not a failure.)
    pub(super) fn change_during_read(&mut self) {
        let Some(r) = self.s.guest.read else {
            return;
        };
        if self.s.relay.relay.accesses_in_flight() > 0 {
            self.s.guest.fail(Failure::ChangeDuringAccess(r.slot));
        } else {
            self.s.seen.change_in_forgotten_read = true;
        }
    }
}
