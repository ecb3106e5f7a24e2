//! Direct guest accesses the runner routes to the host: config space by slot, BARs by slot
//! and register, and raw MMIO addresses (the config window or a programmed BAR).
//!
//! The config window is what Linux's pci-hyperv uses: the 8 KiB at the MMIO base given in
//! BUS_D0ENTRY; the guest writes a function's wslot to the dword at offset 0, then reads or
//! writes that function's config space at offset 0x1000 + register.

use super::HostBus;
use crate::config::{AbsentConfig, Teardown};
use crate::device::{self, Device, Unmapped, UnmappedReason, cfg};
use vpci_protocol::WinSlot;

/// Size of the config window.
pub const CONFIG_WINDOW_SIZE: u64 = 0x2000;
/// Offset of the selected function's config space in the window.
pub const CONFIG_WINDOW_SPACE: u64 = 0x1000;

/// What a guest MMIO address falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioTarget {
    /// The config window, at this offset.
    ConfigWindow(u64),
    /// A function's BAR: slot, BAR register, offset in the BAR.
    Bar(WinSlot, u8, u64),
}

impl HostBus {
    /// Whether the config window is backed: the bus is in D0, and (for a host that tears
    /// down eagerly) the channel has not been rescinded.
    pub fn window_mapped(&self) -> bool {
        self.d0.is_some() && !(self.rescinded && self.policy.teardown == Teardown::AtEject)
    }

    /// Reads `len` bytes (1, 2 or 4) at `offset` of `slot`'s config space, as a guest access
    /// through the config window. It faults while the window is not backed
    /// ([`HostBus::window_mapped`]); an absent function reads all ones or faults, as the
    /// policy says.
    pub fn config_read(&mut self, slot: WinSlot, offset: u16, len: u8) -> Result<u32, Unmapped> {
        if !self.window_mapped() {
            return Err(UnmappedReason::WindowUnmapped.into());
        }
        let multi_function = self.multi_function(slot);
        match self.functions.get_mut(&slot.raw()) {
            Some(f) => {
                let value = device::config_read_bytes(f.device.as_mut(), offset, len)?;
                Ok(with_multi_function_bit(value, offset, len, multi_function))
            }
            None => match self.policy.absent_config {
                AbsentConfig::AllOnes => Ok(match len {
                    1 => 0xff,
                    2 => 0xffff,
                    _ => 0xffff_ffff,
                }),
                AbsentConfig::Fault => Err(UnmappedReason::NoFunction.into()),
            },
        }
    }

    /// Whether `slot` is function 0 of a device that has other functions on the bus: its
    /// header type then says so (bit 7), or a PCI core scans only function 0 of each device.
    fn multi_function(&self, slot: WinSlot) -> bool {
        slot.function() == 0
            && self.functions.keys().any(|&raw| {
                let other = WinSlot::from_raw(raw);
                raw != slot.raw() && other.device() == slot.device()
            })
    }

    /// Writes `len` bytes (1, 2 or 4) of `value` at `offset` of `slot`'s config space,
    /// through the config window (see [`HostBus::config_read`]).
    pub fn config_write(
        &mut self,
        slot: WinSlot,
        offset: u16,
        len: u8,
        value: u32,
    ) -> Result<(), Unmapped> {
        if !self.window_mapped() {
            return Err(UnmappedReason::WindowUnmapped.into());
        }
        match self.functions.get_mut(&slot.raw()) {
            Some(f) => device::config_write_bytes(f.device.as_mut(), offset, len, value),
            None => match self.policy.absent_config {
                AbsentConfig::AllOnes => Ok(()),
                AbsentConfig::Fault => Err(UnmappedReason::NoFunction.into()),
            },
        }
    }

    /// Reads from the BAR starting in register `bar` of `slot`; an error is a guest fault.
    pub fn bar_read(
        &mut self,
        slot: WinSlot,
        bar: u8,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Unmapped> {
        self.mapped(slot)?.bar_read(bar, offset, data)
    }

    /// Writes to the BAR starting in register `bar` of `slot`; an error is a guest fault.
    pub fn bar_write(
        &mut self,
        slot: WinSlot,
        bar: u8,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Unmapped> {
        self.mapped(slot)?.bar_write(bar, offset, data)
    }

    /// Reads a little-endian value of `len` bytes (1, 2 or 4) from a BAR, as a register
    /// read (`ioread8/16/32`); an error is a guest fault.
    pub fn bar_read_value(
        &mut self,
        slot: WinSlot,
        bar: u8,
        offset: u64,
        len: u8,
    ) -> Result<u32, Unmapped> {
        let len = checked_len(usize::from(len))?;
        let mut bytes = [0u8; 4];
        let buf = bytes
            .get_mut(..usize::from(len))
            .ok_or(Unmapped::from(UnmappedReason::OutOfRange))?;
        self.bar_read(slot, bar, offset, buf)?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// Writes the low `len` bytes (1, 2 or 4) of `value` to a BAR, little-endian, as a
    /// register write; an error is a guest fault.
    pub fn bar_write_value(
        &mut self,
        slot: WinSlot,
        bar: u8,
        offset: u64,
        len: u8,
        value: u32,
    ) -> Result<(), Unmapped> {
        let len = checked_len(usize::from(len))?;
        let bytes = value.to_le_bytes();
        let data = bytes
            .get(..usize::from(len))
            .ok_or(Unmapped::from(UnmappedReason::OutOfRange))?;
        self.bar_write(slot, bar, offset, data)
    }

    /// Which function's BAR a guest physical address falls in, from the BAR registers the
    /// guest (or RESOURCES_ASSIGNED) programmed: (slot, BAR register, offset in the BAR).
    /// Torn-down functions still resolve (their accesses then fault); removed ones do not.
    pub fn resolve_mmio(&mut self, address: u64) -> Option<(WinSlot, u8, u64)> {
        for f in self.functions.values_mut() {
            let probed = f.device.probed_bars();
            let mut i = 0usize;
            while i < 6 {
                let mask = probed.get(i).copied().unwrap_or(0);
                if mask == 0 {
                    i += 1;
                    continue;
                }
                let bits64 = mask & 0b110 == 0b100;
                let reg = |d: &mut dyn Device, k: usize| d.config_read(cfg::BAR0 + 4 * k as u16);
                let mut base = u64::from(reg(f.device.as_mut(), i) & !0xf);
                let mut size_mask = u64::from(mask & !0xf) | 0xffff_ffff_0000_0000;
                if bits64 {
                    base |= u64::from(reg(f.device.as_mut(), i + 1)) << 32;
                    let high = probed.get(i + 1).copied().unwrap_or(0);
                    size_mask = (u64::from(high) << 32) | u64::from(mask & !0xf);
                }
                let size = (!size_mask).wrapping_add(1);
                if base != 0 && address >= base && address - base < size {
                    return Some((f.identity.slot, i as u8, address - base));
                }
                i += if bits64 { 2 } else { 1 };
            }
        }
        None
    }

    fn mapped(&mut self, slot: WinSlot) -> Result<&mut dyn Device, Unmapped> {
        let f = self
            .functions
            .get_mut(&slot.raw())
            .ok_or(Unmapped::from(UnmappedReason::NoFunction))?;
        if f.torn_down {
            return Err(UnmappedReason::TornDown.into());
        }
        Ok(f.device.as_mut())
    }

    /// What a guest MMIO address falls in: the config window (while in D0) or a BAR the
    /// guest programmed.
    pub fn mmio_target(&mut self, address: u64) -> Option<MmioTarget> {
        if let Some(base) = self.d0.filter(|_| self.window_mapped()) {
            if address >= base && address - base < CONFIG_WINDOW_SIZE {
                return Some(MmioTarget::ConfigWindow(address - base));
            }
        }
        self.resolve_mmio(address)
            .map(|(slot, bar, offset)| MmioTarget::Bar(slot, bar, offset))
    }

    /// A guest MMIO read: the config window or a BAR. An error is a guest fault.
    pub fn mmio_read(&mut self, address: u64, data: &mut [u8]) -> Result<(), Unmapped> {
        match self.mmio_target(address) {
            Some(MmioTarget::ConfigWindow(offset)) => {
                let value = self.window_read(offset, data.len())?;
                let bytes = value.to_le_bytes();
                data.copy_from_slice(bytes.get(..data.len()).unwrap_or(&[]));
                Ok(())
            }
            Some(MmioTarget::Bar(slot, bar, offset)) => self.bar_read(slot, bar, offset, data),
            None => Err(UnmappedReason::NoDevice.into()),
        }
    }

    /// A guest MMIO write: the config window or a BAR. An error is a guest fault.
    pub fn mmio_write(&mut self, address: u64, data: &[u8]) -> Result<(), Unmapped> {
        match self.mmio_target(address) {
            Some(MmioTarget::ConfigWindow(offset)) => {
                let mut bytes = [0u8; 4];
                let len = data.len();
                if len > 4 {
                    return Err(UnmappedReason::OutOfRange.into());
                }
                bytes
                    .get_mut(..len)
                    .ok_or(Unmapped::from(UnmappedReason::OutOfRange))?
                    .copy_from_slice(data);
                self.window_write(offset, len, u32::from_le_bytes(bytes))
            }
            Some(MmioTarget::Bar(slot, bar, offset)) => self.bar_write(slot, bar, offset, data),
            None => Err(UnmappedReason::NoDevice.into()),
        }
    }

    fn window_read(&mut self, offset: u64, len: usize) -> Result<u32, Unmapped> {
        let len = checked_len(len)?;
        if offset >= CONFIG_WINDOW_SPACE {
            let slot = WinSlot::from_raw(self.window_slot);
            let register = u16::try_from(offset - CONFIG_WINDOW_SPACE)
                .map_err(|_| Unmapped::from(UnmappedReason::OutOfRange))?;
            return self.config_read(slot, register, len);
        }
        // The selector page: the selected slot at offset 0, zeros elsewhere.
        let selector = u64::from(self.window_slot);
        let shifted = if offset < 4 {
            selector >> (8 * offset)
        } else {
            0
        };
        Ok((shifted & mask(len)) as u32)
    }

    fn window_write(&mut self, offset: u64, len: usize, value: u32) -> Result<(), Unmapped> {
        let len = checked_len(len)?;
        if offset >= CONFIG_WINDOW_SPACE {
            let slot = WinSlot::from_raw(self.window_slot);
            let register = u16::try_from(offset - CONFIG_WINDOW_SPACE)
                .map_err(|_| Unmapped::from(UnmappedReason::OutOfRange))?;
            return self.config_write(slot, register, len, value);
        }
        if offset == 0 && len == 4 {
            self.window_slot = value;
        }
        Ok(())
    }
}

fn checked_len(len: usize) -> Result<u8, Unmapped> {
    match len {
        1 | 2 | 4 => Ok(len as u8),
        _ => Err(UnmappedReason::OutOfRange.into()),
    }
}

fn mask(len: u8) -> u64 {
    (1u64 << (8 * u32::from(len))) - 1
}

/// The header type's multi-function bit (bit 7 of the byte at 0x0E), set in a `len`-byte
/// read at `offset` that covers that byte.
fn with_multi_function_bit(value: u32, offset: u16, len: u8, multi_function: bool) -> u32 {
    const HEADER_TYPE: u16 = 0x0e;
    match HEADER_TYPE.checked_sub(offset) {
        Some(at) if multi_function && at < u16::from(len) => value | 0x80 << (8 * at),
        _ => value,
    }
}
