//! The device behind a function: config space and BARs, through a small trait, and
//! [`SimpleDevice`], a plain implementation built from a [`FunctionSpec`].

use crate::spec::{BarLayout, FunctionSpec, SpecError};
use inspect::Node;
use std::collections::BTreeMap;
use thiserror::Error;

/// Size of one function's config space.
pub const CONFIG_SPACE_SIZE: u16 = 4096;

/// Config-space offsets of the type-0 header fields the host reads.
pub mod cfg {
    /// Vendor id (low 16 bits) and device id (high 16 bits).
    pub const ID: u16 = 0x00;
    /// Command (low 16 bits) and status (high 16 bits).
    pub const COMMAND_STATUS: u16 = 0x04;
    /// Revision, programming interface, subclass, base class (low to high byte).
    pub const CLASS_REVISION: u16 = 0x08;
    /// The first BAR register; five more follow, 4 bytes apart.
    pub const BAR0: u16 = 0x10;
    /// Subsystem vendor id (low 16 bits) and subsystem id (high 16 bits).
    pub const SUBSYSTEM: u16 = 0x2c;
    /// Capabilities pointer (low byte).
    pub const CAP_PTR: u16 = 0x34;
    /// Interrupt line (low byte, writable) and pin.
    pub const INTERRUPT: u16 = 0x3c;
    /// Where [`super::SimpleDevice`] puts its MSI-X capability.
    pub const MSIX_CAP: u16 = 0x40;
    /// Command register bit: memory space decoding enabled.
    pub const COMMAND_MEMORY: u32 = 1 << 1;
    /// Command register bit: bus master.
    pub const COMMAND_BUS_MASTER: u32 = 1 << 2;
    /// Command register bit: INTx disabled.
    pub const COMMAND_INTX_DISABLE: u32 = 1 << 10;
    /// Status register bit (in the high half of the dword): a capability list exists.
    pub const STATUS_CAP_LIST: u32 = 1 << (16 + 4);
}

/// An access that reaches nothing: the caller turns it into a guest fault (or, for config
/// space, into all ones, as its policy says).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("unmapped access: {reason}")]
pub struct Unmapped {
    /// Why nothing answered.
    pub reason: UnmappedReason,
}

/// Why an access reached nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum UnmappedReason {
    /// No function is in the slot (never was, or it has been removed).
    #[error("no function in the slot")]
    NoFunction,
    /// The host has torn the function's BAR mapping down (eject in progress or done).
    #[error("the host has torn the BAR mapping down")]
    TornDown,
    /// The function has no BAR starting at that register.
    #[error("no such BAR")]
    NoSuchBar,
    /// The access does not fit in the BAR or the config space, or has a size other than
    /// 1, 2 or 4 bytes where only those are allowed.
    #[error("out of range")]
    OutOfRange,
    /// The config window is not backed (the bus is not in D0, or the host has torn it
    /// down).
    #[error("the config window is not mapped")]
    WindowUnmapped,
    /// No function's BAR and no config window decodes the address.
    #[error("no device decodes the address")]
    NoDevice,
}

impl From<UnmappedReason> for Unmapped {
    fn from(reason: UnmappedReason) -> Self {
        Self { reason }
    }
}

/// One function's device model, as the host sees it: config space at dword granularity and
/// BAR regions. The host adds slots, mapping and teardown around it.
pub trait Device: Send {
    /// Reads the config-space dword at `offset` (4-byte aligned, below 4096).
    fn config_read(&mut self, offset: u16) -> u32;

    /// Writes the bytes of `value` selected by `mask` (0xff per enabled byte) into the
    /// config-space dword at `offset` (4-byte aligned, below 4096).
    fn config_write(&mut self, offset: u16, value: u32, mask: u32);

    /// What each BAR register reads after the guest wrote all ones to it: the value
    /// QUERY_RESOURCE_REQUIREMENTS reports.
    fn probed_bars(&self) -> [u32; 6];

    /// Reads `data.len()` bytes at `offset` of the BAR starting in register `bar`.
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), Unmapped>;

    /// Writes `data` at `offset` of the BAR starting in register `bar`.
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), Unmapped>;

    /// The device's diagnostics tree (nothing by default).
    fn inspect_device(&self) -> Node {
        Node::none()
    }
}

const PAGE: u64 = 4096;

/// The most BAR pages a [`SimpleDevice`] keeps (16 MiB); writes that would need more are
/// dropped, so a guest cannot grow the host without bound.
pub const MAX_BAR_PAGES: usize = 4096;

/// A plain device: a type-0 header with the identity of its [`FunctionSpec`], writable BAR
/// registers that size themselves, an optional MSI-X capability, and BAR memory that reads
/// back what was written (zero elsewhere).
#[derive(Debug)]
pub struct SimpleDevice {
    spec: FunctionSpec,
    layout: BarLayout,
    bar_regs: [u32; 6],
    command: u32,
    interrupt_line: u8,
    msix_control: u16,
    /// BAR memory by (register, page number); pages appear when first written.
    memory: BTreeMap<(u8, u64), Box<[u8]>>,
}

impl SimpleDevice {
    /// A device as `spec` describes it.
    pub fn new(spec: &FunctionSpec) -> Result<Self, SpecError> {
        let layout = spec.layout()?;
        let mut bar_regs = [0u32; 6];
        for (reg, bar) in bar_regs.iter_mut().zip(layout.regs.iter()) {
            if let Some(bar) = bar {
                *reg = bar.flag_bits();
            }
        }
        Ok(Self {
            spec: spec.clone(),
            layout,
            bar_regs,
            command: 0,
            interrupt_line: 0,
            msix_control: 0,
            memory: BTreeMap::new(),
        })
    }

    /// The spec the device was built from.
    pub fn spec(&self) -> &FunctionSpec {
        &self.spec
    }

    /// Puts bytes into a BAR as if the device had them there (a register a driver will
    /// read); errors like a guest access.
    pub fn preset(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), Unmapped> {
        self.bar_write(bar, offset, data)
    }

    fn bar_size(&self, bar: u8) -> Result<u64, Unmapped> {
        self.layout
            .regs
            .get(usize::from(bar))
            .copied()
            .flatten()
            .map(|r| r.spec.size)
            .ok_or(UnmappedReason::NoSuchBar.into())
    }

    fn check_range(&self, bar: u8, offset: u64, len: usize) -> Result<(), Unmapped> {
        let size = self.bar_size(bar)?;
        let end = offset
            .checked_add(len as u64)
            .ok_or(Unmapped::from(UnmappedReason::OutOfRange))?;
        if end > size {
            return Err(UnmappedReason::OutOfRange.into());
        }
        Ok(())
    }

    fn msix_dword(&self, offset: u16) -> u32 {
        let Some(msix) = &self.spec.msix else {
            return 0;
        };
        match offset - cfg::MSIX_CAP {
            0 => {
                let control = u32::from(msix.table_size.saturating_sub(1) & 0x7ff)
                    | u32::from(self.msix_control & 0xc000);
                0x11 | (control << 16)
            }
            4 => msix.table_offset | u32::from(msix.bar & 7),
            8 => msix.pba_offset | u32::from(msix.bar & 7),
            _ => 0,
        }
    }
}

impl Device for SimpleDevice {
    fn config_read(&mut self, offset: u16) -> u32 {
        let s = &self.spec;
        let has_msix = s.msix.is_some();
        match offset {
            cfg::ID => u32::from(s.vendor_id) | u32::from(s.device_id) << 16,
            cfg::COMMAND_STATUS => self.command | if has_msix { cfg::STATUS_CAP_LIST } else { 0 },
            cfg::CLASS_REVISION => {
                u32::from(s.revision)
                    | u32::from(s.prog_if) << 8
                    | u32::from(s.subclass) << 16
                    | u32::from(s.class) << 24
            }
            0x10..=0x27 => {
                let i = usize::from((offset - cfg::BAR0) / 4);
                self.bar_regs.get(i).copied().unwrap_or(0)
            }
            cfg::SUBSYSTEM => u32::from(s.subsystem_vendor_id) | u32::from(s.subsystem_id) << 16,
            cfg::CAP_PTR if has_msix => u32::from(cfg::MSIX_CAP),
            cfg::INTERRUPT => u32::from(self.interrupt_line),
            0x40..=0x4b => self.msix_dword(offset),
            _ => 0,
        }
    }

    fn config_write(&mut self, offset: u16, value: u32, mask: u32) {
        let merge = |old: u32| (old & !mask) | (value & mask);
        match offset {
            cfg::COMMAND_STATUS => {
                let writable =
                    cfg::COMMAND_MEMORY | cfg::COMMAND_BUS_MASTER | cfg::COMMAND_INTX_DISABLE;
                self.command = merge(self.command) & writable;
            }
            0x10..=0x27 => {
                let i = usize::from((offset - cfg::BAR0) / 4);
                let probed = self.layout.probed();
                let (Some(reg), Some(&probe)) = (self.bar_regs.get_mut(i), probed.get(i)) else {
                    return;
                };
                let starts_bar = self.layout.regs.get(i).copied().flatten();
                let fixed = starts_bar.map_or(0, |b| b.flag_bits());
                let address_bits = if starts_bar.is_some() {
                    probe & !0xf
                } else {
                    probe
                };
                *reg = (merge(*reg) & address_bits) | fixed;
            }
            cfg::INTERRUPT => self.interrupt_line = merge(u32::from(self.interrupt_line)) as u8,
            cfg::MSIX_CAP if self.spec.msix.is_some() => {
                let control = merge(u32::from(self.msix_control) << 16) >> 16;
                self.msix_control = (control as u16) & 0xc000;
            }
            _ => {}
        }
    }

    fn probed_bars(&self) -> [u32; 6] {
        self.layout.probed()
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), Unmapped> {
        self.check_range(bar, offset, data.len())?;
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *byte = self
                .memory
                .get(&(bar, at / PAGE))
                .and_then(|page| page.get((at % PAGE) as usize))
                .copied()
                .unwrap_or(0);
        }
        Ok(())
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), Unmapped> {
        self.check_range(bar, offset, data.len())?;
        for (i, &byte) in data.iter().enumerate() {
            let at = offset + i as u64;
            let key = (bar, at / PAGE);
            if !self.memory.contains_key(&key) {
                if byte == 0 || self.memory.len() >= MAX_BAR_PAGES {
                    // Unwritten bytes read as zero already; past the bound, writes drop.
                    continue;
                }
                self.memory
                    .insert(key, vec![0u8; PAGE as usize].into_boxed_slice());
            }
            if let Some(slot) = self
                .memory
                .get_mut(&key)
                .and_then(|page| page.get_mut((at % PAGE) as usize))
            {
                *slot = byte;
            }
        }
        Ok(())
    }

    fn inspect_device(&self) -> Node {
        let mut bars = Node::dir();
        for (i, reg) in self.bar_regs.iter().enumerate() {
            bars = bars.hex(i.to_string(), u64::from(*reg));
        }
        Node::dir()
            .hex("vendor_id", u64::from(self.spec.vendor_id))
            .hex("device_id", u64::from(self.spec.device_id))
            .hex("command", u64::from(self.command))
            .child("bar_registers", bars.build())
            .hex("msix_control", u64::from(self.msix_control))
            .field("pages_written", &self.memory.len())
            .build()
    }
}

/// Reads `len` bytes (1, 2 or 4) at any `offset` of a device's config space through its
/// dword interface; bytes beyond the config space are an error.
pub(crate) fn config_read_bytes(
    device: &mut dyn Device,
    offset: u16,
    len: u8,
) -> Result<u32, Unmapped> {
    check_config_range(offset, len)?;
    let mut value = 0u32;
    for i in 0..u16::from(len) {
        let at = offset + i;
        let dword = device.config_read(at & !3);
        let byte = (dword >> (8 * (at & 3))) & 0xff;
        value |= byte << (8 * i);
    }
    Ok(value)
}

/// Writes `len` bytes (1, 2 or 4) of `value` at any `offset` of a device's config space,
/// through its masked dword interface.
pub(crate) fn config_write_bytes(
    device: &mut dyn Device,
    offset: u16,
    len: u8,
    value: u32,
) -> Result<(), Unmapped> {
    check_config_range(offset, len)?;
    let mut i = 0u16;
    while i < u16::from(len) {
        let at = offset + i;
        let base = at & !3;
        let mut mask = 0u32;
        let mut data = 0u32;
        while i < u16::from(len) && (offset + i) & !3 == base {
            let lane = (offset + i) & 3;
            let byte = (value >> (8 * i)) & 0xff;
            mask |= 0xff << (8 * lane);
            data |= byte << (8 * lane);
            i += 1;
        }
        device.config_write(base, data, mask);
    }
    Ok(())
}

fn check_config_range(offset: u16, len: u8) -> Result<(), Unmapped> {
    let end = u32::from(offset) + u32::from(len);
    if !matches!(len, 1 | 2 | 4) || end > u32::from(CONFIG_SPACE_SIZE) {
        return Err(UnmappedReason::OutOfRange.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic() -> SimpleDevice {
        SimpleDevice::new(&FunctionSpec::nic(1)).unwrap()
    }

    /// The header carries the spec's identity, and the capability list leads to MSI-X.
    #[test]
    fn header_identity_and_msix() {
        let mut d = nic();
        assert_eq!(d.config_read(cfg::ID), 0x101a_15b3);
        assert_eq!(d.config_read(cfg::CLASS_REVISION) >> 24, 0x02);
        assert_ne!(d.config_read(cfg::COMMAND_STATUS) & cfg::STATUS_CAP_LIST, 0);
        assert_eq!(d.config_read(cfg::CAP_PTR), 0x40);
        let cap = d.config_read(cfg::MSIX_CAP);
        assert_eq!(cap & 0xff, 0x11);
        assert_eq!((cap >> 16) & 0x7ff, 7, "table size 8 is encoded as 7");
        assert_eq!(d.config_read(cfg::MSIX_CAP + 4), 0x2000);
        assert_eq!(d.config_read(cfg::MSIX_CAP + 8), 0x3000);
        // Enable MSI-X with a word write at 0x42; the table size stays read-only.
        config_write_bytes(&mut d, 0x42, 2, 0xffff).unwrap();
        assert_eq!(d.config_read(cfg::MSIX_CAP) >> 16, 0xc007);
    }

    /// BAR sizing: all ones reads back the size mask with the type bits; an address sticks.
    #[test]
    fn bar_sizing_and_programming() {
        let mut d = nic();
        d.config_write(cfg::BAR0, 0xffff_ffff, 0xffff_ffff);
        d.config_write(cfg::BAR0 + 4, 0xffff_ffff, 0xffff_ffff);
        assert_eq!(d.config_read(cfg::BAR0), 0xfff0_000c);
        assert_eq!(d.config_read(cfg::BAR0 + 4), 0xffff_ffff);
        d.config_write(cfg::BAR0, 0xfe10_0000, 0xffff_ffff);
        d.config_write(cfg::BAR0 + 4, 0x1, 0xffff_ffff);
        assert_eq!(d.config_read(cfg::BAR0), 0xfe10_000c);
        assert_eq!(d.config_read(cfg::BAR0 + 4), 1);
        // Registers without a BAR stay zero.
        d.config_write(cfg::BAR0 + 8, 0xffff_ffff, 0xffff_ffff);
        assert_eq!(d.config_read(cfg::BAR0 + 8), 0);
    }

    /// Byte and word accesses extract from and merge into dwords, across a dword boundary.
    #[test]
    fn byte_and_word_accesses() {
        let mut d = nic();
        assert_eq!(config_read_bytes(&mut d, 0, 2).unwrap(), 0x15b3);
        assert_eq!(config_read_bytes(&mut d, 2, 2).unwrap(), 0x101a);
        assert_eq!(config_read_bytes(&mut d, 0x0b, 1).unwrap(), 0x02);
        assert_eq!(config_read_bytes(&mut d, 3, 2).unwrap(), 0x0010);
        config_write_bytes(&mut d, 0x3c, 1, 0x2a).unwrap();
        assert_eq!(d.config_read(cfg::INTERRUPT), 0x2a);
        config_write_bytes(&mut d, 4, 2, 0x0006).unwrap();
        assert_eq!(d.config_read(cfg::COMMAND_STATUS) & 0xffff, 0x6);
        assert!(config_read_bytes(&mut d, 4095, 2).is_err());
        assert!(config_read_bytes(&mut d, 0, 3).is_err());
    }

    /// BAR memory reads back what was written, and accesses outside a BAR are unmapped.
    #[test]
    fn bar_memory() {
        let mut d = nic();
        d.bar_write(0, 0xffe, &[1, 2, 3, 4]).unwrap();
        let mut buf = [0u8; 6];
        d.bar_read(0, 0xffd, &mut buf).unwrap();
        assert_eq!(buf, [0, 1, 2, 3, 4, 0]);
        assert_eq!(
            d.bar_read(0, (1 << 20) - 2, &mut buf).unwrap_err().reason,
            UnmappedReason::OutOfRange
        );
        assert_eq!(
            d.bar_read(1, 0, &mut buf).unwrap_err().reason,
            UnmappedReason::NoSuchBar
        );
        assert_eq!(
            d.bar_write(0, u64::MAX, &[1]).unwrap_err().reason,
            UnmappedReason::OutOfRange
        );
    }

    /// BAR memory is bounded: zeros allocate nothing, and past the page bound writes drop.
    #[test]
    fn bar_memory_is_bounded() {
        let mut spec = FunctionSpec::nic(0);
        spec.bars[0].size = 1 << 40;
        spec.msix = None;
        let mut d = SimpleDevice::new(&spec).unwrap();
        d.bar_write(0, 0, &[0; 64]).unwrap();
        assert_eq!(d.memory.len(), 0);
        for page in 0..(MAX_BAR_PAGES as u64 + 10) {
            d.bar_write(0, page * PAGE, &[7]).unwrap();
        }
        assert_eq!(d.memory.len(), MAX_BAR_PAGES);
        let mut b = [0u8];
        d.bar_read(0, (MAX_BAR_PAGES as u64 + 5) * PAGE, &mut b)
            .unwrap();
        assert_eq!(b, [0]);
        d.bar_read(0, 5 * PAGE, &mut b).unwrap();
        assert_eq!(b, [7]);
    }
}
