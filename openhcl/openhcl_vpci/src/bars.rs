//! A [`BarControl`] that records the backing the relay asks for, per slot, and logs each call.
//!
//! The service has no VMM behind it yet: it cannot map or unmap guest memory. Instead it keeps
//! the backing the relay decided for each function and applies it to the BAR accesses the
//! guest sends over the control plane ([`crate::control::MmioOp::BarRead`] and `BarWrite`):
//! `Device` forwards them to the host, `Shield` reads all ones and drops writes, `Released`
//! faults. A paravisor with a VMM would map the device's BARs, a shield page or nothing.

use inspect::Node;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use vpci_protocol::WinSlot;
use vpci_relay::{Backing, BarControl};

/// The backing of each slot of one bus, shared between the bus's thread and the service.
#[derive(Clone, Debug)]
pub struct RecordingBars {
    bus: String,
    slots: Arc<Mutex<BTreeMap<u32, Backing>>>,
}

impl RecordingBars {
    /// No slot backed yet.
    pub fn new(bus: &str) -> Self {
        Self {
            bus: bus.to_owned(),
            slots: Arc::default(),
        }
    }

    /// The backing of `slot` now (`Released` if the relay never mapped it).
    pub fn get(&self, slot: WinSlot) -> Backing {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&slot.raw())
            .copied()
            .unwrap_or(Backing::Released)
    }

    fn set(&self, slot: WinSlot, backing: Backing) {
        tracing::debug!(bus = %self.bus, slot = %slot, ?backing, "bar backing");
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if backing == Backing::Released {
            slots.remove(&slot.raw());
        } else {
            slots.insert(slot.raw(), backing);
        }
    }

    /// Every mapped slot's backing, for a saved state.
    pub fn snapshot(&self) -> Vec<(WinSlot, Backing)> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .iter()
            .map(|(slot, backing)| (WinSlot::from_raw(*slot), *backing))
            .collect()
    }

    /// Backing read back from a saved state (nothing is logged: the mapping did not change).
    pub fn restored(bus: &str, slots: impl IntoIterator<Item = (WinSlot, Backing)>) -> Self {
        let bars = Self::new(bus);
        {
            let mut map = bars.slots.lock().unwrap_or_else(PoisonError::into_inner);
            for (slot, backing) in slots {
                if backing != Backing::Released {
                    map.insert(slot.raw(), backing);
                }
            }
        }
        bars
    }

    /// The backing of every mapped slot, for inspect.
    pub fn inspect(&self) -> Node {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut dir = Node::dir();
        for (slot, backing) in slots.iter() {
            dir = dir.child(format!("{slot:#x}"), Node::debug(backing));
        }
        dir.build()
    }
}

impl BarControl for RecordingBars {
    fn map_device(&mut self, slot: WinSlot) {
        self.set(slot, Backing::Device);
    }

    fn map_shield(&mut self, slot: WinSlot) {
        self.set(slot, Backing::Shield);
    }

    fn unmap(&mut self, slot: WinSlot) {
        self.set(slot, Backing::Released);
    }
}
