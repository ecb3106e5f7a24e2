//! The real guest's device memory: config-window accesses go to the host's config space
//! (through the relay's port when there is one), BAR accesses to the device as the relay
//! backs it (or straight to the device, direct); an access nothing backs is a failure.

use super::controller::RealController;
use vpci_protocol::WinSlot;
use vpci_relay::{Backing, ConfigAccess, ConfigAction};

impl RealController {
    pub(super) fn config_read(&mut self, slot: WinSlot, offset: u16, len: u8) -> u32 {
        let value = self.config_read_inner(slot, offset, len);
        self.bars.read(slot, offset, len, value);
        value
    }

    fn config_read_inner(&mut self, slot: WinSlot, offset: u16, len: u8) -> u32 {
        let ones = if len >= 4 {
            u32::MAX
        } else {
            (1u32 << (8 * u32::from(len))) - 1
        };
        let Some(relay) = self.side.relay.as_mut() else {
            return self
                .side
                .host
                .config_read(slot, offset, len)
                .unwrap_or(ones);
        };
        self.side.relay_dirty = true;
        match relay.access(ConfigAccess::Read { slot, offset, len }) {
            Some(ConfigAction::Forward) => {
                let value = self
                    .side
                    .host
                    .config_read(slot, offset, len)
                    .unwrap_or(ones);
                relay.read_result(slot, offset, len, value);
                value
            }
            Some(ConfigAction::Answer(value)) => value,
            _ => ones,
        }
    }

    pub(super) fn config_write(&mut self, slot: WinSlot, offset: u16, len: u8, value: u32) {
        self.bars.write(slot, offset, len, value);
        let Some(relay) = self.side.relay.as_mut() else {
            let _ = self.side.host.config_write(slot, offset, len, value);
            return;
        };
        self.side.relay_dirty = true;
        let access = ConfigAccess::Write {
            slot,
            offset,
            len,
            value,
        };
        if let Some(ConfigAction::Forward) = relay.access(access) {
            let _ = self.side.host.config_write(slot, offset, len, value);
        }
    }

    /// A BAR access: through the relay's backing, or straight to the device. `false` when
    /// nothing backs the address (a fault on real hardware).
    pub(super) fn bar(&mut self, addr: u64, data: &mut [u8], write: bool) -> bool {
        let Some((slot, bar, offset)) = self
            .bars
            .resolve(addr)
            .or_else(|| self.side.host.resolve_mmio(addr))
        else {
            return false;
        };
        let backing = match &self.side.relay {
            Some(relay) => relay.bars.get(slot),
            None => Backing::Device,
        };
        match backing {
            Backing::Device if write => self.side.host.bar_write(slot, bar, offset, data).is_ok(),
            Backing::Device => self.side.host.bar_read(slot, bar, offset, data).is_ok(),
            Backing::Shield => {
                if !write {
                    data.fill(0xff);
                }
                true
            }
            Backing::Released => false,
        }
    }

    pub(super) fn unbacked(&mut self, what: String) {
        let context = self.context_name(self.current);
        self.observer.fail(
            "unbacked_access",
            context,
            "readl/writel (the endpoint driver)".to_owned(),
            what,
        );
    }
}
