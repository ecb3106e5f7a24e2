//! The guest's view of everything outside it during one step: the channel, the config
//! window (through the relay's port, or straight to the host's devices), BARs (as the relay
//! backs them, or the host's), and the retarget hypercall.

use crate::trace::{Lane, Mark, Trace};
use guest_linux::GuestEnv;
use host_sim::HostBus;
use std::time::Duration;
use vmbus_channel::Packet;
use vpci_protocol::WinSlot;
use vpci_relay::sim::RelayRig;
use vpci_relay::{Backing, ConfigAccess, ConfigAction};

/// The guest's view of everything outside it during one step.
pub(super) struct Env<'a> {
    pub(super) now: Duration,
    pub(super) bus: usize,
    pub(super) host: &'a mut HostBus,
    pub(super) relay: Option<&'a mut RelayRig>,
    pub(super) outbox: &'a mut Vec<Packet>,
    pub(super) trace: Option<&'a mut Trace>,
    /// The step asked the relay about a config access (the relay may have acted on it).
    pub(super) touched_relay: bool,
}

fn all_ones(len: u8) -> u32 {
    match len {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
}

impl GuestEnv for Env<'_> {
    fn now(&self) -> Duration {
        self.now
    }

    fn send(&mut self, packet: Packet) {
        self.outbox.push(packet);
    }

    fn config_read(&mut self, slot: WinSlot, offset: u16, len: u8) -> Option<u32> {
        let Some(relay) = self.relay.as_deref_mut() else {
            return self.host.config_read(slot, offset, len).ok();
        };
        self.touched_relay = true;
        match relay.access(ConfigAccess::Read { slot, offset, len }) {
            Some(ConfigAction::Forward(id)) => {
                // The relay's answer, as the service gives it: the device's value, or the
                // shield's if the device turned out gone.
                let value = self.host.config_read(slot, offset, len).ok();
                relay.access_done(id, value).or(value)
            }
            Some(ConfigAction::Answer(value)) => Some(value),
            // A stopped relay (or a dropped read) leaves nothing there: a master abort.
            Some(ConfigAction::Drop) | None => Some(all_ones(len)),
        }
    }

    fn config_write(&mut self, slot: WinSlot, offset: u16, len: u8, value: u32) -> bool {
        let Some(relay) = self.relay.as_deref_mut() else {
            return self.host.config_write(slot, offset, len, value).is_ok();
        };
        self.touched_relay = true;
        let access = ConfigAccess::Write {
            slot,
            offset,
            len,
            value,
        };
        match relay.access(access) {
            Some(ConfigAction::Forward(id)) => {
                let done = self.host.config_write(slot, offset, len, value).is_ok();
                relay.access_done(id, None);
                done
            }
            _ => true,
        }
    }

    fn bar_read(&mut self, slot: WinSlot, bar: u8, offset: u64, len: u8) -> Option<u32> {
        let direct = |host: &mut HostBus| {
            let mut data = [0u8; 4];
            let n = usize::from(len.clamp(1, 4));
            let buf = data.get_mut(..n)?;
            host.bar_read(slot, bar, offset, buf).ok()?;
            Some(u32::from_le_bytes(data))
        };
        let Some(relay) = self.relay.as_deref_mut() else {
            return direct(self.host);
        };
        match relay.bars.get(slot) {
            Backing::Device => direct(self.host),
            Backing::Shield => Some(all_ones(len)),
            Backing::Released => None,
        }
    }

    fn bar_write(&mut self, slot: WinSlot, bar: u8, offset: u64, len: u8, value: u32) -> bool {
        let bytes = value.to_le_bytes();
        let n = usize::from(len.clamp(1, 4));
        let data = bytes.get(..n).unwrap_or(&bytes);
        let Some(relay) = self.relay.as_deref_mut() else {
            return self.host.bar_write(slot, bar, offset, data).is_ok();
        };
        match relay.bars.get(slot) {
            Backing::Device => self.host.bar_write(slot, bar, offset, data).is_ok(),
            Backing::Shield => true,
            Backing::Released => false,
        }
    }

    fn retarget_interrupt(&mut self, slot: WinSlot, vector: u32) {
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.push(
                self.now,
                Lane::Guest,
                Lane::Guest,
                format!(
                    "bus {}: retarget interrupt {slot} vector {vector:#x}",
                    self.bus
                ),
                Mark::None,
            );
        }
    }
}
