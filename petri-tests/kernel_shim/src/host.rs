//! Host-side helpers for a [`Controller`](crate::guest::Controller): decoding what the real
//! driver does through its config window and its retarget hypercall, so that a host model
//! (host_sim, or the relay's config handling) can answer in vPCI terms.

use thiserror::Error;

/// `PCI_BUS_D0ENTRY`: the message that tells the host where the guest put its config window.
const BUS_D0ENTRY: u32 = 0x4249_0007;
/// The config window's size: a slot-select register page, then one 4 KB config page.
pub const CONFIG_WINDOW_SIZE: u64 = 0x2000;
/// Where the selected function's config space starts inside the window.
pub const CONFIG_PAGE_OFFSET: u64 = 0x1000;

/// What an MMIO access of the guest means for the vPCI host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowAccess {
    /// The slot-select register (offset 0): a write chooses the function whose config space
    /// the second page shows.
    SlotSelect,
    /// Config space of the selected function.
    Config {
        /// The selected function's VMBus slot (as the driver wrote it), if any was selected.
        slot: Option<u32>,
        /// The offset in its config space.
        offset: u16,
    },
    /// Elsewhere in the window (the rest of the register page).
    WindowOther,
    /// Not in the config window (a BAR, or nothing).
    Outside,
}

/// The driver's config window as the host sees it: where it is (learned from the guest's
/// `BUS_D0ENTRY`) and which function is selected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigWindow {
    base: Option<u64>,
    selected: Option<u32>,
}

impl ConfigWindow {
    /// A window not yet announced.
    pub fn new() -> Self {
        Self::default()
    }

    /// The window's base address, once the guest announced it.
    pub fn base(&self) -> Option<u64> {
        self.base
    }

    /// Learns the window's base from a guest packet, if it is a `BUS_D0ENTRY`
    /// (`{ u32 type; u32 reserved; u64 mmio_base; }`).
    pub fn observe_guest_message(&mut self, payload: &[u8]) {
        let (Some(kind), Some(base)) = (payload.get(0..4), payload.get(8..16)) else {
            return;
        };
        let (Ok(kind), Ok(base)) = (<[u8; 4]>::try_from(kind), <[u8; 8]>::try_from(base)) else {
            return;
        };
        if u32::from_le_bytes(kind) == BUS_D0ENTRY {
            self.base = Some(u64::from_le_bytes(base));
            self.selected = None;
        }
    }

    /// Classifies an access of `size` bytes at `addr`.
    pub fn decode(&self, addr: u64, size: u32) -> WindowAccess {
        let Some(base) = self.base else {
            return WindowAccess::Outside;
        };
        let Some(offset) = addr.checked_sub(base).filter(|&o| o < CONFIG_WINDOW_SIZE) else {
            return WindowAccess::Outside;
        };
        if offset >= CONFIG_PAGE_OFFSET {
            let offset = offset - CONFIG_PAGE_OFFSET;
            if offset + u64::from(size) > CONFIG_WINDOW_SIZE - CONFIG_PAGE_OFFSET {
                return WindowAccess::WindowOther;
            }
            return WindowAccess::Config {
                slot: self.selected,
                // The page is 4 KB, so the offset fits.
                offset: u16::try_from(offset).unwrap_or(u16::MAX),
            };
        }
        if offset == 0 && size == 4 {
            WindowAccess::SlotSelect
        } else {
            WindowAccess::WindowOther
        }
    }

    /// Applies a guest write: a slot-select write changes the selected function. Returns how
    /// the write decodes.
    pub fn write(&mut self, addr: u64, size: u32, value: u64) -> WindowAccess {
        let access = self.decode(addr, size);
        if access == WindowAccess::SlotSelect {
            self.selected = u32::try_from(value & 0xffff_ffff).ok();
        }
        access
    }
}

/// A retarget-interrupt hypercall that does not decode.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HypercallError {
    /// Not `HvCallRetargetDeviceInterrupt` (0x7e).
    #[error("hypercall code {0:#x} is not RetargetDeviceInterrupt")]
    NotRetarget(u16),
    /// The input is shorter than its header and variable part.
    #[error("retarget input of {0} bytes is too short")]
    TooShort(usize),
}

/// How a retarget names its target processors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetargetTarget {
    /// A 64-bit VP mask (protocol 1.1).
    VpMask(u64),
    /// A sparse VP set: the valid-bank mask and the banks (protocol 1.2 and later).
    VpSet {
        /// Which 64-VP banks follow.
        valid_bank_mask: u64,
        /// The banks.
        banks: Vec<u64>,
    },
}

/// `HvCallRetargetDeviceInterrupt`'s input (Hyper-V TLFS), as the driver's `hv_irq_unmask`
/// fills it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetargetRequest {
    /// The partition (`HV_PARTITION_ID_SELF`).
    pub partition_id: u64,
    /// The logical device id (from the bus GUID and the function number).
    pub device_id: u64,
    /// The interrupt source (1 = MSI).
    pub source: u32,
    /// The MSI address the host returned at CREATE_INTERRUPT (low 32 bits).
    pub msi_address: u32,
    /// The MSI data.
    pub msi_data: u32,
    /// The vector on the target processors.
    pub vector: u32,
    /// Target flags (2 = processor set).
    pub flags: u32,
    /// The target processors.
    pub target: RetargetTarget,
}

/// `HVCALL_RETARGET_INTERRUPT`.
pub const HVCALL_RETARGET_INTERRUPT: u16 = 0x7e;
const PROCESSOR_SET: u32 = 2;
const HEADER: usize = 56;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl RetargetRequest {
    /// Decodes a hypercall's control word and input.
    pub fn decode(control: u64, input: &[u8]) -> Result<Self, HypercallError> {
        let code = (control & 0xffff) as u16;
        if code != HVCALL_RETARGET_INTERRUPT {
            return Err(HypercallError::NotRetarget(code));
        }
        let short = || HypercallError::TooShort(input.len());
        let var_words = ((control >> 17) & 0x3ff) as usize;
        if input.len() < HEADER + 8 * var_words {
            return Err(short());
        }
        let flags = u32_at(input, 44).ok_or_else(short)?;
        let target = if flags & PROCESSOR_SET != 0 {
            let banks = (1..var_words)
                .map(|i| u64_at(input, HEADER + 8 * i).ok_or_else(short))
                .collect::<Result<Vec<_>, _>>()?;
            RetargetTarget::VpSet {
                valid_bank_mask: if var_words > 0 {
                    u64_at(input, HEADER).ok_or_else(short)?
                } else {
                    0
                },
                banks,
            }
        } else {
            RetargetTarget::VpMask(u64_at(input, 48).ok_or_else(short)?)
        };
        Ok(Self {
            partition_id: u64_at(input, 0).ok_or_else(short)?,
            device_id: u64_at(input, 8).ok_or_else(short)?,
            source: u32_at(input, 16).ok_or_else(short)?,
            msi_address: u32_at(input, 24).ok_or_else(short)?,
            msi_data: u32_at(input, 28).ok_or_else(short)?,
            vector: u32_at(input, 40).ok_or_else(short)?,
            flags,
            target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d0_entry(base: u64) -> Vec<u8> {
        let mut p = BUS_D0ENTRY.to_le_bytes().to_vec();
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&base.to_le_bytes());
        p
    }

    /// The window is unknown until D0 entry; then offset 0 selects a slot and the second page
    /// is that slot's config space.
    #[test]
    fn window_decodes_after_d0_entry() {
        let mut w = ConfigWindow::new();
        assert_eq!(w.decode(0xc000_1010, 4), WindowAccess::Outside);
        w.observe_guest_message(&d0_entry(0xc000_0000));
        assert_eq!(
            w.decode(0xc000_1010, 4),
            WindowAccess::Config {
                slot: None,
                offset: 0x10
            }
        );
        assert_eq!(w.write(0xc000_0000, 4, 0x21), WindowAccess::SlotSelect);
        assert_eq!(
            w.decode(0xc000_1ffe, 2),
            WindowAccess::Config {
                slot: Some(0x21),
                offset: 0xffe
            }
        );
        assert_eq!(w.decode(0xc000_1fff, 2), WindowAccess::WindowOther);
        assert_eq!(w.decode(0xc000_0004, 4), WindowAccess::WindowOther);
        assert_eq!(w.decode(0xc000_2000, 4), WindowAccess::Outside);
        assert_eq!(w.decode(0xbfff_fffc, 4), WindowAccess::Outside);
        // A short or different message changes nothing.
        w.observe_guest_message(&[7, 0, 0x49, 0x42]);
        assert_eq!(w.base(), Some(0xc000_0000));
    }

    /// A processor-set retarget decodes its banks; a short input is an error, not a panic.
    #[test]
    fn retarget_decodes() {
        let mut input = vec![0u8; 72];
        input[8..16].copy_from_slice(&0x1234_0600u64.to_le_bytes());
        input[16..20].copy_from_slice(&1u32.to_le_bytes());
        input[24..28].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        input[40..44].copy_from_slice(&0x21u32.to_le_bytes());
        input[44..48].copy_from_slice(&2u32.to_le_bytes());
        input[56..64].copy_from_slice(&1u64.to_le_bytes());
        input[64..72].copy_from_slice(&3u64.to_le_bytes());
        let control = 0x7e | (2 << 17);
        let r = RetargetRequest::decode(control, &input).unwrap();
        assert_eq!(r.device_id, 0x1234_0600);
        assert_eq!(r.vector, 0x21);
        assert_eq!(
            r.target,
            RetargetTarget::VpSet {
                valid_bank_mask: 1,
                banks: vec![3]
            }
        );
        assert_eq!(
            RetargetRequest::decode(control, &input[..60]),
            Err(HypercallError::TooShort(60))
        );
        assert_eq!(
            RetargetRequest::decode(0x7f, &input),
            Err(HypercallError::NotRetarget(0x7f))
        );
    }
}
