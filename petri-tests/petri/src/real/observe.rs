//! What the controller learns from the real guest's messages and events: the config window,
//! which functions it was told to use and has let go, which it holds, and the first thing
//! that went wrong (a bound driver on a function it had given back, a driver on a function
//! without resources, a BUG or WARN, a leak).

use crate::outcome::Outcome;
use kernel_shim::host::ConfigWindow;
use kernel_shim::protocol::EventKind;
use std::collections::BTreeSet;
use vpci_protocol::{MessageType, WinSlot};

/// The guest's state as its messages and events show it.
#[derive(Debug, Default)]
pub(super) struct Observer {
    /// The guest's config window (learned from BUS_D0ENTRY).
    pub(super) window: ConfigWindow,
    /// Slots the guest sent RESOURCES_ASSIGNED for (and has not released since).
    assigned: BTreeSet<u32>,
    /// Slots the guest sent EJECTION_COMPLETE for and has not asked about since.
    ejected: BTreeSet<u32>,
    /// Slots the guest's PCI core found a device in and has not given back (no
    /// EJECTION_COMPLETE since).
    held: BTreeSet<u32>,
    /// The first failure seen.
    pub(super) failure: Option<Outcome>,
    /// Allocations left at module exit.
    pub(super) leaks: Vec<String>,
    /// The guest's log and events, in order.
    pub(super) guest_trace: Vec<String>,
}

fn word(payload: &[u8], at: usize) -> Option<u32> {
    payload
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
}

/// `SS.F` (device and function, hex and decimal) as a raw slot number.
fn parse_devfn(text: &str) -> Option<u32> {
    let (dev, func) = text.split_once('.')?;
    let dev = u32::from_str_radix(dev, 16).ok()?;
    let func: u32 = func.get(..1)?.parse().ok()?;
    Some((dev & 0x1f) | ((func & 0x7) << 5))
}

impl Observer {
    /// Records a guest message to the host.
    pub(super) fn guest_sent(&mut self, payload: &[u8]) {
        self.window.observe_guest_message(payload);
        let (Some(kind), slot) = (word(payload, 0), word(payload, 4)) else {
            return;
        };
        let Some(slot) = slot else {
            return;
        };
        match MessageType(kind) {
            MessageType::RESOURCES_ASSIGNED
            | MessageType::RESOURCES_ASSIGNED2
            | MessageType::RESOURCES_ASSIGNED3 => {
                self.assigned.insert(slot);
            }
            MessageType::RESOURCES_RELEASED => {
                self.assigned.remove(&slot);
            }
            MessageType::EJECTION_COMPLETE => {
                self.ejected.insert(slot);
                self.held.remove(&slot);
            }
            // The guest learns the slot afresh (a new child from relations).
            MessageType::QUERY_RESOURCE_REQUIREMENTS => {
                self.ejected.remove(&slot);
            }
            _ => {}
        }
    }

    /// Whether the guest's PCI core holds a device for `slot`.
    pub(super) fn holds(&self, slot: WinSlot) -> bool {
        self.held.contains(&slot.raw())
    }

    /// The slots the guest's PCI core holds a device for.
    pub(super) fn held_slots(&self) -> Vec<WinSlot> {
        self.held
            .iter()
            .map(|&slot| WinSlot::from_raw(slot))
            .collect()
    }

    /// Records the first failure.
    pub(super) fn fail(&mut self, kind: &str, context: String, function: String, message: String) {
        if self.failure.is_none() {
            self.failure = Some(Outcome::Guest {
                bus: 0,
                failure: kind.to_owned(),
                context,
                function,
                message,
            });
        }
    }

    /// Records a runtime event of the guest.
    pub(super) fn event(&mut self, kind: EventKind, context: String, text: &str) {
        match kind {
            EventKind::Bug => self.fail("bug", context, "BUG".to_owned(), text.to_owned()),
            EventKind::Warn => self.fail("bug", context, "WARN".to_owned(), text.to_owned()),
            EventKind::Leak => self.leaks.push(text.to_owned()),
            EventKind::Note | EventKind::Other(_) => self.note(context, text),
        }
    }

    fn note(&mut self, context: String, text: &str) {
        // "pci 0001:00:01.0 [1414:00a9] found"
        if let Some(rest) = text.strip_prefix("pci ") {
            if let Some(slot) = rest
                .split_whitespace()
                .next()
                .and_then(|bdf| bdf.rsplit(':').next())
                .and_then(parse_devfn)
            {
                if text.ends_with(" found") {
                    self.held.insert(slot);
                }
            }
            return;
        }
        if let Some(slot) = text.strip_prefix("endpoint probe ").and_then(parse_devfn) {
            let wslot = WinSlot::from_raw(slot);
            if self.ejected.contains(&slot) {
                self.fail(
                    "ejected_device_access",
                    context,
                    "pci_bus_add_devices (driver probe)".to_owned(),
                    format!("a driver binds to {wslot}, which the guest already ejected"),
                );
            } else if !self.assigned.contains(&slot) {
                self.fail(
                    "unresourced_device",
                    context,
                    "pci_bus_add_devices (driver probe)".to_owned(),
                    format!("a driver binds to {wslot}, never sent RESOURCES_ASSIGNED"),
                );
            }
            return;
        }
        if text.contains("can't enable device") {
            self.fail(
                "unresourced_device",
                context,
                "pci_enable_device".to_owned(),
                text.to_owned(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest's `SS.F` notation names the slot the wire uses (device in bits 0-4,
    /// function in 5-7).
    #[test]
    fn devfn_parses_to_wire_slots() {
        assert_eq!(parse_devfn("01.0"), Some(1));
        assert_eq!(parse_devfn("1f.2"), Some(0x1f | (2 << 5)));
        assert_eq!(parse_devfn("x"), None);
    }

    /// A driver binding to a function the guest ejected, or that it never assigned, is a
    /// failure of its kind; the first one wins.
    #[test]
    fn binding_checks() {
        let mut o = Observer::default();
        let msg = |t: MessageType, slot: u32| {
            let mut p = t.0.to_le_bytes().to_vec();
            p.extend_from_slice(&slot.to_le_bytes());
            p
        };
        o.guest_sent(&msg(MessageType::RESOURCES_ASSIGNED2, 1));
        o.event(
            EventKind::Note,
            "p".into(),
            "pci 0001:00:01.0 [15b3:101a] found",
        );
        o.event(EventKind::Note, "p".into(), "endpoint probe 01.0");
        assert_eq!(o.failure, None);
        assert!(o.holds(WinSlot::from_raw(1)));
        o.guest_sent(&msg(MessageType::EJECTION_COMPLETE, 1));
        assert!(!o.holds(WinSlot::from_raw(1)));
        o.event(EventKind::Note, "p".into(), "endpoint probe 01.0");
        assert_eq!(
            o.failure.as_ref().map(|f| f.kind().to_owned()),
            Some("ejected_device_access".to_owned())
        );
        o.event(EventKind::Bug, "p".into(), "double free");
        assert_eq!(
            o.failure.as_ref().map(|f| f.kind().to_owned()),
            Some("ejected_device_access".to_owned())
        );
    }
}
