//! What a function looks like, as a bus configuration or a scenario file describes it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A PCI function the host can put on a bus: its slot, identity, BARs and MSI-X table.
///
/// Every field has a default (that of [`FunctionSpec::nic`]`(0)`: a small network function
/// with a 64-bit BAR holding its MSI-X table, serial 0), so a scenario file may write only
/// what it cares about: `{ slot = 1, serial = 7 }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionSpec {
    /// The slot as vPCI encodes it (`device | function << 5`; for function 0, the device
    /// number).
    pub slot: u32,
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Revision id.
    pub revision: u8,
    /// Base class code.
    pub class: u8,
    /// Subclass code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subsystem vendor id.
    pub subsystem_vendor_id: u16,
    /// Subsystem id.
    pub subsystem_id: u16,
    /// The serial number BUS_RELATIONS reports (Linux matches children on it).
    pub serial: u32,
    /// The virtual NUMA node BUS_RELATIONS2 reports, if any.
    pub numa_node: Option<u16>,
    /// The BARs in register order; a 64-bit BAR takes two registers.
    pub bars: Vec<BarSpec>,
    /// The MSI-X capability, if the function has one.
    pub msix: Option<MsixSpec>,
}

/// One memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BarSpec {
    /// Size in bytes: a power of two, at least 16.
    pub size: u64,
    /// A 64-bit BAR (takes this register and the next).
    #[serde(default)]
    pub bits64: bool,
    /// Prefetchable memory.
    #[serde(default)]
    pub prefetchable: bool,
}

/// An MSI-X capability: where its table and pending-bit array live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsixSpec {
    /// Table entries (1 to 2048).
    pub table_size: u16,
    /// The BAR register index holding the table and the pending-bit array.
    pub bar: u8,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// Offset of the pending-bit array in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl Default for FunctionSpec {
    fn default() -> Self {
        Self::nic(0)
    }
}

impl FunctionSpec {
    /// A Mellanox-like virtual function at `slot`: one 64-bit prefetchable 1 MiB BAR with an
    /// 8-entry MSI-X table at 0x2000 and its pending bits at 0x3000; serial = slot.
    pub fn nic(slot: u32) -> Self {
        Self {
            slot,
            vendor_id: 0x15b3,
            device_id: 0x101a,
            revision: 0,
            class: 0x02,
            subclass: 0x00,
            prog_if: 0,
            subsystem_vendor_id: 0x15b3,
            subsystem_id: 0x0001,
            serial: slot,
            numa_node: None,
            bars: vec![BarSpec {
                size: 1 << 20,
                bits64: true,
                prefetchable: true,
            }],
            msix: Some(MsixSpec {
                table_size: 8,
                bar: 0,
                table_offset: 0x2000,
                pba_offset: 0x3000,
            }),
        }
    }

    /// The same function with another serial number.
    pub fn with_serial(mut self, serial: u32) -> Self {
        self.serial = serial;
        self
    }

    /// Checks the spec and lays its BARs out in registers.
    pub fn layout(&self) -> Result<BarLayout, SpecError> {
        if self.slot & 0xFFFF_FF00 != 0 {
            return Err(SpecError::BadSlot(self.slot));
        }
        let mut regs: [Option<BarReg>; 6] = [None; 6];
        let mut index = 0usize;
        for (n, bar) in self.bars.iter().enumerate() {
            let max = if bar.bits64 { 1u64 << 63 } else { 1u64 << 31 };
            if !bar.size.is_power_of_two() || bar.size < 16 || bar.size > max {
                return Err(SpecError::BadBarSize {
                    bar: n,
                    size: bar.size,
                });
            }
            let needed = if bar.bits64 { 2 } else { 1 };
            if index + needed > 6 {
                return Err(SpecError::TooManyBars);
            }
            if let Some(reg) = regs.get_mut(index) {
                *reg = Some(BarReg { spec: *bar });
            }
            index += needed;
        }
        if let Some(msix) = &self.msix {
            let size = regs
                .get(usize::from(msix.bar))
                .copied()
                .flatten()
                .map(|r| r.spec.size)
                .ok_or(SpecError::MsixBar(msix.bar))?;
            let table_end = u64::from(msix.table_offset) + u64::from(msix.table_size) * 16;
            let pba_end = u64::from(msix.pba_offset) + u64::from(msix.table_size).div_ceil(64) * 8;
            if msix.table_size == 0
                || msix.table_size > 2048
                || msix.table_offset % 8 != 0
                || msix.pba_offset % 8 != 0
                || table_end > size
                || pba_end > size
            {
                return Err(SpecError::MsixLayout);
            }
        }
        Ok(BarLayout { regs })
    }
}

/// The BARs of a function by register index: `Some` at the register a BAR starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarLayout {
    /// Register `i` starts BAR `regs[i]`; the high half of a 64-bit BAR is `None`.
    pub regs: [Option<BarReg>; 6],
}

/// A BAR as laid out in its first register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarReg {
    /// The BAR.
    pub spec: BarSpec,
}

impl BarLayout {
    /// What the guest reads back from each register after writing all ones (the probed
    /// value QUERY_RESOURCE_REQUIREMENTS reports).
    pub fn probed(&self) -> [u32; 6] {
        let mut out = [0u32; 6];
        for (i, reg) in self.regs.iter().enumerate() {
            let Some(reg) = reg else { continue };
            let mask = !(reg.spec.size - 1);
            if let Some(low) = out.get_mut(i) {
                *low = (mask as u32 & !0xf) | reg.flag_bits();
            }
            if reg.spec.bits64 {
                if let Some(high) = out.get_mut(i + 1) {
                    *high = (mask >> 32) as u32;
                }
            }
        }
        out
    }
}

impl BarReg {
    /// The read-only type bits of the BAR's low register (memory, 32/64-bit, prefetchable).
    pub fn flag_bits(&self) -> u32 {
        let mut bits = 0;
        if self.spec.bits64 {
            bits |= 0b100;
        }
        if self.spec.prefetchable {
            bits |= 0b1000;
        }
        bits
    }
}

/// Why a [`FunctionSpec`] cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SpecError {
    /// The slot has bits above 7 set.
    #[error("slot {0:#x} is not a vPCI slot (device | function << 5, below 0x100)")]
    BadSlot(u32),
    /// A BAR size is not a power of two of at least 16 bytes, or too large for its width.
    #[error(
        "BAR {bar} has size {size:#x}: expected a power of two from 16 bytes (32-bit BARs up to 2 GiB)"
    )]
    BadBarSize {
        /// The BAR's position in the list.
        bar: usize,
        /// The size given.
        size: u64,
    },
    /// The BARs need more than six registers.
    #[error("the BARs need more than six registers")]
    TooManyBars,
    /// The MSI-X capability names a register where no BAR starts.
    #[error("MSI-X names BAR register {0}, where no BAR starts")]
    MsixBar(u8),
    /// The MSI-X table or pending-bit array does not fit its BAR, or is misaligned.
    #[error("the MSI-X table or pending-bit array is misaligned or does not fit its BAR")]
    MsixLayout,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit BAR probes as a 64-bit size mask over two registers, with its type bits.
    #[test]
    fn probed_64bit_bar() {
        let probed = FunctionSpec::nic(1).layout().unwrap().probed();
        assert_eq!(probed[0], 0xfff0_0000 | 0b1100);
        assert_eq!(probed[1], 0xffff_ffff);
        assert_eq!(&probed[2..], &[0; 4]);
    }

    /// A 32-bit BAR after a 64-bit one lands in register 2.
    #[test]
    fn registers_are_assigned_in_order() {
        let mut spec = FunctionSpec::nic(0);
        spec.bars.push(BarSpec {
            size: 0x4000,
            bits64: false,
            prefetchable: false,
        });
        let probed = spec.layout().unwrap().probed();
        assert_eq!(probed[2], 0xffff_c000);
    }

    /// Bad sizes, too many registers and MSI-X outside its BAR are typed errors.
    #[test]
    fn bad_specs_are_rejected() {
        let mut spec = FunctionSpec::nic(0);
        spec.bars[0].size = 3000;
        assert!(matches!(spec.layout(), Err(SpecError::BadBarSize { .. })));
        let mut spec = FunctionSpec::nic(0);
        spec.bars = vec![spec.bars[0]; 4];
        assert_eq!(spec.layout(), Err(SpecError::TooManyBars));
        let mut spec = FunctionSpec::nic(0);
        spec.msix.as_mut().unwrap().bar = 1;
        assert_eq!(spec.layout(), Err(SpecError::MsixBar(1)));
        let mut spec = FunctionSpec::nic(0);
        spec.msix.as_mut().unwrap().table_offset = 0xff000;
        spec.msix.as_mut().unwrap().table_size = 2048;
        assert_eq!(spec.layout(), Err(SpecError::MsixLayout));
        let spec = FunctionSpec::nic(0x100);
        assert_eq!(spec.layout(), Err(SpecError::BadSlot(0x100)));
    }

    /// A scenario file may give only some fields; unknown fields are errors.
    #[test]
    fn deserializes_with_defaults() {
        let spec: FunctionSpec = serde_json::from_str(r#"{"slot": 2, "serial": 9}"#).unwrap();
        assert_eq!(spec, FunctionSpec::nic(2).with_serial(9));
        assert!(serde_json::from_str::<FunctionSpec>(r#"{"slto": 2}"#).is_err());
    }
}
