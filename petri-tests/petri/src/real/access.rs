//! The real guest's device memory: config-window accesses go to their bus's host's config
//! space (through the relay's port when there is one), BAR accesses to the device as the
//! relay backs it (or straight to the device, direct); an access nothing backs is a failure.

use super::controller::RealController;
use vpci_protocol::WinSlot;
use vpci_relay::{Backing, ConfigAccess, ConfigAction};

impl RealController {
    pub(super) fn config_read(&mut self, bus: usize, slot: WinSlot, offset: u16, len: u8) -> u32 {
        let value = self.config_read_inner(bus, slot, offset, len);
        if let Some(bars) = self.bars.get_mut(bus) {
            bars.read(slot, offset, len, value);
        }
        value
    }

    fn config_read_inner(&mut self, bus: usize, slot: WinSlot, offset: u16, len: u8) -> u32 {
        let ones = if len >= 4 {
            u32::MAX
        } else {
            (1u32 << (8 * u32::from(len))) - 1
        };
        let Some(side) = self.sides.get_mut(bus) else {
            return ones;
        };
        let Some(relay) = side.relay.as_mut() else {
            return side.host.config_read(slot, offset, len).unwrap_or(ones);
        };
        side.relay_dirty = true;
        match relay.access(ConfigAccess::Read { slot, offset, len }) {
            Some(ConfigAction::Forward(id)) => {
                // The relay's answer, as the service gives it.
                let value = side.host.config_read(slot, offset, len).ok();
                relay.access_done(id, value).or(value).unwrap_or(ones)
            }
            Some(ConfigAction::Answer(value)) => value,
            _ => ones,
        }
    }

    pub(super) fn config_write(
        &mut self,
        bus: usize,
        slot: WinSlot,
        offset: u16,
        len: u8,
        value: u32,
    ) {
        if let Some(bars) = self.bars.get_mut(bus) {
            bars.write(slot, offset, len, value);
        }
        let Some(side) = self.sides.get_mut(bus) else {
            return;
        };
        let Some(relay) = side.relay.as_mut() else {
            let _ = side.host.config_write(slot, offset, len, value);
            return;
        };
        side.relay_dirty = true;
        let access = ConfigAccess::Write {
            slot,
            offset,
            len,
            value,
        };
        if let Some(ConfigAction::Forward(id)) = relay.access(access) {
            let _ = side.host.config_write(slot, offset, len, value);
            relay.access_done(id, None);
        }
    }

    /// A BAR access: through the relay's backing, or straight to the device. `Err` with the
    /// bus of the address (bus 0 if none has it) when nothing backs it (a fault on real
    /// hardware). The function is found where the guest programmed a BAR first, then where a
    /// host placed one.
    pub(super) fn bar(&mut self, addr: u64, data: &mut [u8], write: bool) -> Result<(), usize> {
        let programmed = self
            .bars
            .iter()
            .enumerate()
            .find_map(|(i, b)| Some((i, b.resolve(addr)?)));
        let found = programmed.or_else(|| {
            self.sides
                .iter_mut()
                .enumerate()
                .find_map(|(i, s)| Some((i, s.host.resolve_mmio(addr)?)))
        });
        let Some((bus, (slot, bar, offset))) = found else {
            return Err(0);
        };
        let Some(side) = self.sides.get_mut(bus) else {
            return Err(0);
        };
        let backing = match &side.relay {
            Some(relay) => relay.bars.get(slot),
            None => Backing::Device,
        };
        let backed = match backing {
            Backing::Device if write => side.host.bar_write(slot, bar, offset, data).is_ok(),
            Backing::Device => side.host.bar_read(slot, bar, offset, data).is_ok(),
            Backing::Shield => {
                if !write {
                    data.fill(0xff);
                }
                true
            }
            Backing::Released => false,
        };
        if backed { Ok(()) } else { Err(bus) }
    }

    /// An access nothing backs, on bus `bus`: the guest's failure.
    pub(super) fn unbacked(&mut self, bus: usize, what: String) {
        let context = self.context_name(self.current);
        self.observer.fail(
            bus,
            "unbacked_access",
            context,
            "readl/writel (the endpoint driver)".to_owned(),
            what,
        );
    }
}
