//! The PCI core's side: scanning the root bus, adding devices (drivers bind), and stopping and
//! removing devices (drivers unbind).

use crate::driver::DriverState;
use crate::guest::LinuxGuest;
use crate::objects::{Fault, PciDev};
use crate::{ContextId, DriverConfig, FailureKind, GuestEnv};
use vpci_protocol::WinSlot;

/// PCI_COMMAND.
pub(crate) const PCI_COMMAND: u16 = 0x04;
/// PCI_HEADER_TYPE.
const PCI_HEADER_TYPE: u16 = 0x0e;
/// PCI_BASE_ADDRESS_0.
const PCI_BASE_ADDRESS_0: u16 = 0x10;

/// A function the scan found: its slot, the ids it read, and the serial number of the child
/// it was found for (the guest's device history, as the host cannot see it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedDevice {
    /// The function's slot.
    pub slot: WinSlot,
    /// The vendor id the scan read.
    pub vendor_id: u16,
    /// The device id the scan read.
    pub device_id: u16,
    /// The serial number of the child the `pci_dev` was made for.
    pub serial: u32,
}

impl LinuxGuest {
    /// The functions the scan found since the last call, in order. A caller that keeps the
    /// device history takes them after every step; they are kept until taken.
    pub fn take_scanned(&mut self) -> Vec<ScannedDevice> {
        std::mem::take(&mut self.scanned)
    }

    /// Models one `pci_scan_single_device` of `pci_scan_child_bus`: finds the lowest slot with
    /// a linked child and no `pci_dev` yet, reads its header through `hv_pcifront_read_config`
    /// (ids come from the child's description, the rest through the config window) and
    /// registers a `pci_dev`. Returns whether a device was scanned.
    pub(crate) fn scan_one_device(
        &mut self,
        env: &mut dyn GuestEnv,
        ctx: ContextId,
        function: &'static str,
    ) -> bool {
        let mut candidates: Vec<(u32, usize)> = self
            .bus
            .children
            .iter()
            .filter_map(|&id| self.objs.hpdevs.get(id).map(|h| (h.desc.slot.raw(), id)))
            .filter(|(raw, _)| !self.pci_devs.contains_key(raw))
            .collect();
        candidates.sort_by_key(|(raw, _)| (*raw & 0x1f, *raw >> 5));
        let Some((raw, id)) = candidates.first().copied() else {
            return false;
        };
        let r = self.objs.hpdev(id).map(|h| h.desc);
        let Some(desc) = self.check(ctx, function, r) else {
            return false;
        };
        let slot = WinSlot::from_raw(raw);
        let _header = self.config_read(env, ctx, function, slot, PCI_HEADER_TYPE, 1);
        // BAR sizing of BAR0: save, write all ones, read back, restore.
        let bar0 = self.config_read(env, ctx, function, slot, PCI_BASE_ADDRESS_0, 4);
        self.config_write(env, (ctx, function), slot, PCI_BASE_ADDRESS_0, 4, u32::MAX);
        let _size = self.config_read(env, ctx, function, slot, PCI_BASE_ADDRESS_0, 4);
        self.config_write(env, (ctx, function), slot, PCI_BASE_ADDRESS_0, 4, bar0);
        self.pci_devs.insert(
            raw,
            PciDev {
                slot,
                hpdev: id,
                vendor: desc.vendor,
                device: desc.device,
                added: false,
                bound: false,
                irqs: Vec::new(),
            },
        );
        self.scanned.push(ScannedDevice {
            slot,
            vendor_id: desc.vendor,
            device_id: desc.device,
            serial: desc.serial,
        });
        crate::tlog!(
            self,
            ctx,
            function,
            "pci_dev {slot} ({:04x}:{:04x}) scanned",
            desc.vendor,
            desc.device
        );
        true
    }

    /// Models `hv_pci_assign_slots`: every linked child gets its sysfs slot.
    pub(crate) fn assign_slots(&mut self) {
        for id in self.bus.children.clone() {
            if let Ok(h) = self.objs.hpdev_mut(id) {
                h.has_slot = true;
            }
        }
    }

    /// Models driver matching (`pci_bus_match` over the id tables): the driver that binds to
    /// a device with these ids, if any.
    fn match_driver(&self, vendor: u16, device: u16) -> Option<DriverConfig> {
        self.cfg
            .drivers
            .iter()
            .find(|b| {
                b.vendor_id.is_none_or(|v| v == vendor) && b.device_id.is_none_or(|d| d == device)
            })
            .map(|b| b.driver.clone())
    }

    /// Models one device of `pci_bus_add_devices`: marks the lowest not-yet-added device added
    /// and, if a driver matches, starts its probe on behalf of `ctx`. Returns the slot whose
    /// driver probe started (the caller waits for it), or `None` when every device is added.
    pub(crate) fn add_next_device(
        &mut self,
        ctx: ContextId,
        function: &'static str,
    ) -> Option<Option<u32>> {
        let raw = self
            .pci_devs
            .values()
            .filter(|d| !d.added)
            .map(|d| d.slot.raw())
            .min_by_key(|raw| (*raw & 0x1f, *raw >> 5))?;
        let (vendor, device, hpdev) = {
            let d = self.pci_devs.get_mut(&raw)?;
            d.added = true;
            (d.vendor, d.device, d.hpdev)
        };
        let slot = WinSlot::from_raw(raw);
        let Some(driver) = self.match_driver(vendor, device) else {
            crate::tlog!(self, ctx, function, "pci_dev {slot} added, no driver");
            return Some(None);
        };
        let resourced = self
            .objs
            .hpdevs
            .get(hpdev)
            .is_some_and(|h| h.resources_assigned);
        if !resourced {
            self.fail(
                ctx,
                function,
                Fault::new(
                    FailureKind::UnresourcedDevice,
                    format!(
                        "driver {} binds to {slot}, but RESOURCES_ASSIGNED was never completed \
                         for it (its BARs were not in the survey either)",
                        driver.name
                    ),
                ),
            );
            return Some(None);
        }
        crate::tlog!(
            self,
            ctx,
            function,
            "pci_dev {slot} added: driver {} probes",
            driver.name
        );
        self.drivers
            .insert(raw, DriverState::probe(slot, driver, ctx));
        Some(Some(raw))
    }

    /// Models the driver-unbind half of `pci_stop_and_remove_bus_device` (and of
    /// `pci_stop_root_bus`): if a driver is bound, its remove starts on behalf of `ctx`.
    /// Returns whether the caller must wait for it.
    pub(crate) fn stop_device(&mut self, ctx: ContextId, slot: WinSlot) -> bool {
        let Some(dev) = self.pci_devs.get(&slot.raw()) else {
            return false;
        };
        if !dev.bound {
            return false;
        }
        let driver = self
            .match_driver(dev.vendor, dev.device)
            .unwrap_or_default();
        crate::tlog!(
            self,
            ctx,
            "pci_stop_bus_device",
            "driver {} removes {slot}",
            driver.name
        );
        self.drivers
            .insert(slot.raw(), DriverState::remove(slot, driver, ctx));
        true
    }

    /// Models the removal half of `pci_stop_and_remove_bus_device`: the `pci_dev` goes away.
    pub(crate) fn remove_device(&mut self, ctx: ContextId, function: &'static str, slot: WinSlot) {
        if self.pci_devs.remove(&slot.raw()).is_some() {
            crate::tlog!(self, ctx, function, "pci_dev {slot} removed");
        }
    }
}
