//! What a guest model did with devices, in the words a real driver's run uses
//! (`real::observe`): functions found with their identity, resources assigned and released,
//! functions let go. The transparency test compares it with and without the relay.

use vpci_protocol::{MessageType, WinSlot};

/// How many entries a run keeps: a long haul stops recording there (its memory stays flat).
const MAX_ENTRIES: usize = 4096;

/// A run's device history, bounded.
#[derive(Debug, Default)]
pub(super) struct DeviceHistory {
    lines: Vec<String>,
}

impl DeviceHistory {
    fn full(&self) -> bool {
        self.lines.len() >= MAX_ENTRIES
    }

    /// The guest of `bus` sent `payload`: a resources or ejection message is history.
    pub(super) fn sent(&mut self, bus: usize, payload: &[u8]) {
        if self.full() {
            return;
        }
        let word = |at: usize| {
            let bytes = payload.get(at..at + 4)?;
            Some(u32::from_le_bytes(bytes.try_into().ok()?))
        };
        let (Some(kind), Some(slot)) = (word(0), word(4)) else {
            return;
        };
        let what = match MessageType(kind) {
            MessageType::RESOURCES_ASSIGNED
            | MessageType::RESOURCES_ASSIGNED2
            | MessageType::RESOURCES_ASSIGNED3 => "resources assigned",
            MessageType::RESOURCES_RELEASED => "resources released",
            MessageType::EJECTION_COMPLETE => "let go",
            _ => return,
        };
        let slot = WinSlot::from_raw(slot);
        self.lines.push(format!("bus {bus}: {what} {slot}"));
    }

    /// The guest of `bus` found a function in its scan.
    pub(super) fn found(&mut self, bus: usize, d: guest_linux::ScannedDevice) {
        if self.full() {
            return;
        }
        self.lines.push(format!(
            "bus {bus}: found {} {:04x}:{:04x} serial {}",
            d.slot, d.vendor_id, d.device_id, d.serial
        ));
    }

    /// The history so far, taken.
    pub(super) fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lines)
    }
}
