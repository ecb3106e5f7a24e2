//! Config accesses that take the device time: the guest starts one (the relay decides at
//! once), and when the relay forwards it the guest's vCPU sits in it until the device
//! answers, in a separate action that the model schedules like any host action (at once,
//! after an EJECT or relations change of that function, or, for a slow device, after time
//! has passed, or never within the bound).
//!
//! Each context that touches config space makes a short, fixed series of accesses
//! ([`Reader::plan`]): a read at offset 0 first, then, while the bound's budget
//! ([`Bounds::accesses`](super::Bounds::accesses)) lasts, the others of its plan (BAR sizing
//! in the root-bus scan, the command register in a driver's probe and remove). With a budget
//! of 0 each context makes only its first read, as the model did before it had writes.
//!
//! Linux 6.2 accesses config space under the bus's config lock (`hv_pcifront_read_config`,
//! `hv_pcifront_write_config`, and the PCI core's own lock around them), so the guest has at
//! most one access in flight: a context whose next step touches config space waits while
//! another context's access is in flight.

use super::Step;
use super::guest::{Driver, Failure, Probe};
use super::wire::{Acc, Ident, Input};
use super::work::Running;
use std::collections::BTreeSet;
use vpci_relay::ConfigAction;

/// The guest context whose vCPU sits in a config access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reader {
    /// The probe path's root-bus creation, scanning the slot.
    RootBus,
    /// The function's driver, probing.
    Driver,
    /// The eject work, removing the function's driver.
    Eject,
}

impl Reader {
    /// The accesses the context makes, in order: the first always, each later one only while
    /// the bound's budget lasts. The root-bus scan reads the vendor and device id and sizes
    /// BAR0 (writes all ones, reads the mask back); a driver's probe reads config space and
    /// enables memory decoding and bus mastering; its remove path reads config space and
    /// turns them off.
    pub fn plan(self) -> &'static [Acc] {
        match self {
            Reader::RootBus => &[Acc::Vendor, Acc::BarSize, Acc::BarRead],
            Reader::Driver => &[Acc::Vendor, Acc::Command(0x0006)],
            Reader::Eject => &[Acc::Vendor, Acc::Command(0)],
        }
    }
}

/// A config access the relay forwarded to the device and the device has not answered yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Read {
    /// The slot accessed.
    pub slot: u8,
    /// The access.
    pub acc: Acc,
    /// Where in its context's plan the access is (the next one follows when it is done).
    pub step: u8,
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
    /// The guest accesses slot `s`'s config space on behalf of `by`, from access `from` of its
    /// plan on. Returns whether an access went to the device and the context now waits in it.
    pub(super) fn config_read(&mut self, s: u8, by: Reader, from: u8) -> bool {
        for (step, &acc) in by.plan().iter().enumerate().skip(usize::from(from)) {
            if step > 0 {
                if self.s.guest.extra_accesses >= self.accesses {
                    break;
                }
                self.s.guest.extra_accesses += 1;
            }
            let step = u8::try_from(step).unwrap_or(u8::MAX);
            if self.config_access(s, by, acc, step) {
                return true;
            }
        }
        false
    }

    /// One access of a context's plan. Returns whether it went to the device.
    fn config_access(&mut self, s: u8, by: Reader, acc: Acc, step: u8) -> bool {
        let ident = self.child_ident(s);
        let present = ident.is_some_and(|i| self.s.host.mapped(s, i));
        let action = self.input(Input::Config(s, acc));
        let id = match action {
            Some(ConfigAction::Forward(id)) => id,
            Some(ConfigAction::Answer(value)) => {
                if acc.is_write() {
                    self.s.seen.access_misanswered.get_or_insert((s, acc));
                }
                if !present {
                    self.s.seen.shielded_read |= acc == Acc::BarRead;
                }
                self.read_back(s, acc, value);
                return false;
            }
            Some(ConfigAction::Drop) | None => {
                if !acc.is_write() {
                    self.s.seen.access_misanswered.get_or_insert((s, acc));
                }
                if !present {
                    self.s.seen.write_shielded = true;
                }
                return false;
            }
        };
        if !present {
            if acc.is_write() {
                // The host's device (or the one that replaced it in the slot) would take it.
                self.s.seen.write_to_removed.get_or_insert(s);
            } else {
                self.s.guest.fail(Failure::C7ConfigFault(s));
            }
        }
        self.s.seen.write_forwarded |= acc.is_write();
        self.note(format!("guest {acc:?} of {s} (to the device)"));
        self.s.guest.read = Some(Read {
            slot: s,
            acc,
            step,
            ident,
            by,
            id: id.to_raw(),
            slow: false,
        });
        true
    }

    /// What the guest read back from BAR0 after its sizing write (whoever answered it: the
    /// device or the relay's copy) is the size mask the function's requirements answer gave
    /// the guest (0 for no BAR), as a device would answer, unless the guest has been told to
    /// let go of the function (which then reads as absent).
    fn read_back(&mut self, s: u8, acc: Acc, value: u32) {
        if acc != Acc::BarRead {
            return;
        }
        let child = self.s.guest.children.get(&s);
        if child.is_some_and(|c| c.bar0 == value) {
            return;
        }
        let letting_go = child.is_none_or(|c| c.ejecting);
        if !(letting_go && value == u32::MAX) {
            self.s.seen.bar_read_back.get_or_insert(format!(
                "BAR0 of {s} read back {value:#x}, its requirements said {:#x?}",
                child.map(|c| c.bar0)
            ));
        }
    }

    /// The device answers the access in flight (a read with what the function's device
    /// holds, or all ones if the host removed it meanwhile); the relay is told, and the
    /// waiting context resumes with the answer and carries on with its plan and its step.
    pub(super) fn device_answers(&mut self) {
        let Some(r) = self.s.guest.read.take() else {
            return;
        };
        let present = r.device_present(&self.s.host);
        if !present {
            self.s.seen.read_outlived_device = true;
        }
        let value = r.ident.filter(|_| present).map(|i| r.acc.device_answer(i));
        self.note(format!("device answers the {:?} of {}", r.acc, r.slot));
        self.input(Input::ConfigDone { id: r.id, value });
        if let Some(v) = value {
            self.read_back(r.slot, r.acc, v);
        }
        let g = &self.s.guest;
        if g.closed || g.failure.is_some() {
            return;
        }
        let next = r.step.saturating_add(1);
        match r.by {
            Reader::RootBus => {
                if g.probe == Probe::RootBusRead(r.slot) {
                    if self.config_read(r.slot, r.by, next) {
                        return;
                    }
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
                    if self.config_read(r.slot, r.by, next) {
                        return;
                    }
                    self.driver_after_read(r.slot);
                }
            }
            Reader::Eject => {
                if g.running == Some(Running::EjectReading(r.slot)) {
                    if self.config_read(r.slot, r.by, next) {
                        return;
                    }
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
            if self.config_read(s, Reader::RootBus, 0) {
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
