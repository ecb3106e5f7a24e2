//! The guest's config-space and BAR accesses (the service's `mmio` requests) on a host_sim
//! bus. An access the bus refuses (an unmapped function, a bad length) answers `None`.

use openhcl_vpci::control::MmioOp;
use vpci_protocol::WinSlot;

/// Carries out `op` on `bus`: the value read (0 for a write), or `None` for a fault.
pub(super) fn access(bus: &mut host_sim::HostBus, op: MmioOp) -> Option<u32> {
    match op {
        MmioOp::ConfigRead { slot, offset, len } => {
            bus.config_read(WinSlot::from_raw(slot), offset, len).ok()
        }
        MmioOp::ConfigWrite {
            slot,
            offset,
            len,
            value,
        } => bus
            .config_write(WinSlot::from_raw(slot), offset, len, value)
            .ok()
            .map(|_| 0),
        MmioOp::BarRead {
            slot,
            bar,
            offset,
            len,
        } => {
            let mut data = [0u8; 4];
            let buf = data.get_mut(..usize::from(len))?;
            bus.bar_read(WinSlot::from_raw(slot), bar, offset, buf)
                .ok()?;
            Some(u32::from_le_bytes(data))
        }
        MmioOp::BarWrite {
            slot,
            bar,
            offset,
            len,
            value,
        } => {
            let bytes = value.to_le_bytes();
            let data = bytes.get(..usize::from(len))?;
            bus.bar_write(WinSlot::from_raw(slot), bar, offset, data)
                .ok()
                .map(|_| 0)
        }
    }
}
