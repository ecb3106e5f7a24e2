//! The config window: guest accesses to a function's config space, trapped by the
//! paravisor, and what the relay makes of them (guarantee 8's config half).

use super::{AccessId, BusRelay, HostLink};
use crate::events::RelayEvent;
use crate::function::{GuestState, HostState};
use vpci_protocol::WinSlot;

/// A guest access to a function's config space through the config window (trapped by the
/// paravisor). Offsets are within the function's 4 KiB config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigAccess {
    /// A read of `len` bytes (1, 2 or 4) at `offset`.
    Read {
        /// The function selected in the window's slot page.
        slot: WinSlot,
        /// Byte offset in config space.
        offset: u16,
        /// Access width in bytes.
        len: u8,
    },
    /// A write of `len` bytes at `offset`.
    Write {
        /// The function selected in the window's slot page.
        slot: WinSlot,
        /// Byte offset in config space.
        offset: u16,
        /// Access width in bytes.
        len: u8,
        /// The value written.
        value: u32,
    },
}

/// What the driver does with a config access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigAction {
    /// Carry it out on the device, then report it done with
    /// [`BusRelay::handle_config_done`] and this id (with a read's value): the guest waits on
    /// the device meanwhile, and the relay does not count the bus quiet.
    Forward(AccessId),
    /// Complete the read with this value; the device is not touched.
    Answer(u32),
    /// Drop the write; the device is not touched.
    Drop,
}

impl BusRelay {
    /// A guest access to the config window ([`BusRelay::handle_config_access`]).
    pub(super) fn config_access(&mut self, access: ConfigAccess) -> ConfigAction {
        let now = self.now;
        let (slot, offset, len, read) = match access {
            ConfigAccess::Read { slot, offset, len } => (slot, offset, len, true),
            ConfigAccess::Write {
                slot, offset, len, ..
            } => (slot, offset, len, false),
        };
        let host_up = self.host == HostLink::Up;
        let shield = self.safeguards.removal_shield;
        let limit = self.config.limits.max_config_cache;
        let in_flight_limit = self.config.limits.max_accesses_in_flight;
        self.guest.touch(now);
        match self.functions.get_mut(slot) {
            Some(f) if f.guest_visible() => {
                f.touched(now);
                if host_up && f.host == HostState::Listed || !shield {
                    match self.accesses.start(access, now, in_flight_limit) {
                        Some(id) => {
                            // The write lands in the relay's copy too, as the device takes it:
                            // should the host remove the function before the guest lets go
                            // (even with this write still in flight), the shield goes on from
                            // the state the guest left it in (a BAR sized here reads back its
                            // size mask there).
                            if let ConfigAccess::Write { value, .. } = access {
                                if shield {
                                    f.shadow_write(offset, len, value, limit);
                                }
                            }
                            ConfigAction::Forward(id)
                        }
                        // More in flight than the limit (a guest whose own driver serializes
                        // config accesses per bus never gets here): a master abort.
                        None => {
                            self.out.emit(RelayEvent::AccessRefused { slot });
                            if read {
                                ConfigAction::Answer(extract(u32::MAX, offset, len))
                            } else {
                                ConfigAction::Drop
                            }
                        }
                    }
                } else if read {
                    // Once the guest has been told to let go, the function reads as absent.
                    let dword = if f.guest == GuestState::Ejecting {
                        u32::MAX
                    } else {
                        f.config_copy(offset & !3)
                    };
                    ConfigAction::Answer(extract(dword, offset, len))
                } else {
                    // The device is gone: the write lands in the relay's copy, as the device
                    // would have taken it (a driver sizing its BARs reads the sizes back).
                    if let ConfigAccess::Write { value, .. } = access {
                        f.shadow_write(offset, len, value, limit);
                    }
                    ConfigAction::Drop
                }
            }
            // A function the guest was never shown (or already let go): nothing there.
            _ if read => ConfigAction::Answer(extract(u32::MAX, offset, len)),
            _ => ConfigAction::Drop,
        }
    }

    /// A forwarded access is done ([`BusRelay::handle_config_done`]): the guest acts on the
    /// answer from now, and a read's value is remembered for the removal shield. Returns what
    /// the guest reads for a read: the device's value, unless that says the device is gone
    /// (the access failed, or an identity register reads all ones: the host removed the
    /// function before the relay heard of it), when it is the shield's answer instead (the
    /// identity the host described, else what the guest last read, else all ones). `None`
    /// for a write, or an access not in flight.
    pub(super) fn config_done(&mut self, id: AccessId, result: Option<u32>) -> Option<u32> {
        let done = self.accesses.finish(id)?;
        let now = self.now;
        self.guest.touch(now);
        let slot = done.slot();
        let limit = self.config.limits.max_config_cache;
        let f = self.functions.get_mut(slot)?;
        f.touched(now);
        let ConfigAccess::Read { offset, len, .. } = done.access else {
            return None;
        };
        // Without the removal shield the guest reads what the device gave, gone or not.
        let gone = self.safeguards.removal_shield
            && match result {
                None => true,
                Some(value) => is_identity(offset) && value == extract(u32::MAX, offset, len),
            };
        match result {
            Some(value) if !gone => {
                f.remember_read(offset, len, value, limit);
                Some(value)
            }
            _ => {
                let value = extract(f.config_copy(offset & !3), offset, len);
                self.out.emit(RelayEvent::DeviceGoneRead { slot, offset });
                Some(value)
            }
        }
    }
}

/// Whether `offset` is in one of the identity dwords the host's description of a function
/// gives (vendor and device id; revision and class; subsystem ids): read-only registers
/// that read all ones only once the device is gone.
fn is_identity(offset: u16) -> bool {
    matches!(offset & !3, 0x00 | 0x08 | 0x2c)
}

/// The `len` bytes at `offset` of a config dword (an access wider than 4 bytes reads the
/// whole dword).
fn extract(dword: u32, offset: u16, len: u8) -> u32 {
    let shift = u32::from(offset & 3) * 8;
    let value = dword.checked_shr(shift).unwrap_or(0);
    match len {
        1 => value & 0xff,
        2 => value & 0xffff,
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::extract;

    /// Narrow reads take the addressed bytes of the dword.
    #[test]
    fn extract_takes_the_addressed_bytes() {
        assert_eq!(extract(0x1234_5678, 0, 4), 0x1234_5678);
        assert_eq!(extract(0x1234_5678, 2, 2), 0x1234);
        assert_eq!(extract(0x1234_5678, 1, 1), 0x56);
        assert_eq!(extract(u32::MAX, 0, 2), 0xffff);
    }
}
