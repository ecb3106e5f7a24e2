//! A removed function's config space as the relay answers it (guarantee 8's config half):
//! the description's identity registers, what the guest read through the window before, and
//! what it wrote since, as the device would have kept it.

use super::Function;

/// What BAR register `bar` holds after `value` is written to it, given the probed BARs (what
/// each register read after all ones were written: its size mask and type bits).
fn bar_register(probed: &[u32; 6], bar: usize, value: u32) -> u32 {
    let Some(&p) = probed.get(bar) else {
        return value;
    };
    // The upper half of a 64-bit memory BAR (the register before it says so) keeps the
    // address bits its size allows.
    let upper = bar
        .checked_sub(1)
        .and_then(|b| probed.get(b))
        .is_some_and(|&lower| lower & 0x1 == 0 && lower & 0x6 == 0x4);
    if p == 0 {
        0 // not implemented
    } else if upper {
        value & p
    } else if p & 0x1 == 0x1 {
        (value & p & !0x3) | (p & 0x3) // I/O
    } else {
        (value & p & !0xf) | (p & 0xf) // memory
    }
}

impl Function {
    /// A guest write to config space once the host has removed the function: kept in the
    /// relay's copy as the device would take it, so that what the guest reads back is what a
    /// device would answer. A BAR keeps only its address bits and its type bits, as the
    /// probed BARs of QUERY_RESOURCE_REQUIREMENTS say (so BAR sizing works: write all ones,
    /// read the size mask); the identity registers are read-only. At most `limit` dwords are
    /// kept.
    pub(crate) fn shadow_write(&mut self, offset: u16, len: u8, value: u32, limit: usize) {
        let dword = offset & !3;
        if matches!(dword, 0x00 | 0x08 | 0x2c) {
            return;
        }
        let shift = u32::from(offset & 3) * 8;
        let width: u32 = match len {
            1 => 0xff,
            2 => 0xffff,
            _ => u32::MAX,
        };
        let mask = width.checked_shl(shift).unwrap_or(0);
        let merged =
            (self.config_copy(dword) & !mask) | (value.checked_shl(shift).unwrap_or(0) & mask);
        let stored = match (
            dword.checked_sub(0x10).map(|d| usize::from(d / 4)),
            self.probed_bars,
        ) {
            (Some(bar), Some(probed)) if bar < 6 => bar_register(&probed, bar, merged),
            _ => merged,
        };
        if self.config.len() < limit || self.config.contains_key(&dword) {
            self.config.insert(dword, stored);
        }
    }

    /// The config dword at `offset` (dword-aligned) as the relay answers it once the host
    /// has removed the function: the description's identity fields, else what the guest last
    /// read through the window, else all ones.
    pub fn config_copy(&self, offset: u16) -> u32 {
        let d = &self.desc;
        match offset {
            0x00 => u32::from(d.v_id.get()) | (u32::from(d.d_id.get()) << 16),
            0x08 => {
                u32::from(d.rev)
                    | (u32::from(d.prog_intf) << 8)
                    | (u32::from(d.subclass) << 16)
                    | (u32::from(d.base_class) << 24)
            }
            0x2c => d.subsystem_id.get(),
            _ => self.config.get(&offset).copied().unwrap_or(u32::MAX),
        }
    }

    /// A forwarded config read's result, kept (at most `limit` dwords) so the relay can keep
    /// answering it once the host has removed the function.
    pub(crate) fn remember_read(&mut self, offset: u16, len: u8, value: u32, limit: usize) {
        if len == 4
            && offset % 4 == 0
            && (self.config.len() < limit || self.config.contains_key(&offset))
        {
            self.config.insert(offset, value);
        }
    }
}
