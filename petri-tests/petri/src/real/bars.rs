//! Where the real guest put each function's BARs, learned from its config-space traffic (the
//! PCI core sizes a BAR by writing all ones and reading the mask back, then programs the
//! address). The host may never hear of the addresses (the relay answers RESOURCES_ASSIGNED
//! itself for a function being removed), but a BAR access must still find its function.

use std::collections::BTreeMap;
use vpci_protocol::WinSlot;

const BAR0: u16 = 0x10;
const BARS: u16 = 6;

/// One function's BAR registers as the guest wrote and sized them.
#[derive(Clone, Copy, Debug, Default)]
struct Regs {
    value: [u32; 6],
    mask: [u32; 6],
    sizing: [bool; 6],
}

/// Every function's BARs.
#[derive(Debug, Default)]
pub(crate) struct GuestBars {
    slots: BTreeMap<u32, Regs>,
}

fn index(offset: u16, len: u8) -> Option<usize> {
    let i = offset.checked_sub(BAR0)? / 4;
    (len == 4 && offset % 4 == 0 && i < BARS).then_some(usize::from(i))
}

impl GuestBars {
    /// A config write of the guest.
    pub(crate) fn write(&mut self, slot: WinSlot, offset: u16, len: u8, value: u32) {
        let Some(i) = index(offset, len) else {
            return;
        };
        let regs = self.slots.entry(slot.raw()).or_default();
        if let (Some(v), Some(s)) = (regs.value.get_mut(i), regs.sizing.get_mut(i)) {
            *s = value == u32::MAX;
            if value != u32::MAX {
                *v = value;
            }
        }
    }

    /// A config read's result: the size mask right after a sizing write.
    pub(crate) fn read(&mut self, slot: WinSlot, offset: u16, len: u8, value: u32) {
        let Some(i) = index(offset, len) else {
            return;
        };
        let regs = self.slots.entry(slot.raw()).or_default();
        if let (Some(m), Some(s)) = (regs.mask.get_mut(i), regs.sizing.get_mut(i)) {
            if *s {
                *m = value;
                *s = false;
            }
        }
    }

    /// The function, BAR and offset an address falls in.
    pub(crate) fn resolve(&self, addr: u64) -> Option<(WinSlot, u8, u64)> {
        for (&slot, regs) in &self.slots {
            let mut i = 0;
            while i < 6 {
                let (Some(&value), Some(&mask)) = (regs.value.get(i), regs.mask.get(i)) else {
                    break;
                };
                let wide = mask & 1 == 0 && (mask >> 1) & 3 == 2;
                let (base, size_mask) = if wide {
                    let hi = u64::from(regs.value.get(i + 1).copied().unwrap_or(0));
                    let hi_mask = u64::from(regs.mask.get(i + 1).copied().unwrap_or(u32::MAX));
                    (
                        (hi << 32) | u64::from(value & !0xf),
                        (hi_mask << 32) | u64::from(mask & !0xf),
                    )
                } else {
                    (
                        u64::from(value & !0xf),
                        0xffff_ffff_0000_0000 | u64::from(mask & !0xf),
                    )
                };
                let size = (!size_mask).wrapping_add(1);
                if mask & 1 == 0 && mask != 0 && size > 0 && base != 0 {
                    if let Some(offset) = addr.checked_sub(base).filter(|&o| o < size) {
                        let bar = u8::try_from(i).unwrap_or(0);
                        return Some((WinSlot::from_raw(slot), bar, offset));
                    }
                }
                i += if wide { 2 } else { 1 };
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit BAR sized and programmed through config space resolves addresses inside it,
    /// and only those.
    #[test]
    fn sized_bar_resolves() {
        let mut b = GuestBars::default();
        let slot = WinSlot::from_raw(1);
        b.write(slot, 0x10, 4, u32::MAX);
        b.read(slot, 0x10, 4, 0xffff_c004); // 16 KiB, 64-bit memory
        b.write(slot, 0x14, 4, u32::MAX);
        b.read(slot, 0x14, 4, u32::MAX);
        b.write(slot, 0x10, 4, 0x0000_4004);
        b.write(slot, 0x14, 4, 0x10);
        assert_eq!(b.resolve(0x10_0000_401c), Some((slot, 0, 0x1c)));
        assert_eq!(b.resolve(0x10_0000_8000), None);
        assert_eq!(b.resolve(0x4000), None);
    }
}
