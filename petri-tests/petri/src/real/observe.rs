//! What the controller learns from the real guest's messages and events: the config window,
//! which functions it was told to use and has let go, which it holds and with what identity
//! (the ids its PCI core read, the serial number of the relations that listed the slot), and
//! the first thing that went wrong (a bound driver on a function it had given back, a driver on a function
//! without resources, a BUG or WARN, a leak).

use crate::outcome::{Identity, Outcome};
use kernel_shim::host::ConfigWindow;
use kernel_shim::protocol::EventKind;
use std::collections::{BTreeMap, BTreeSet};
use vpci_protocol::{MessageType, WinSlot};

/// The guest's state as its messages and events show it.
#[derive(Debug, Default)]
pub(crate) struct Observer {
    /// The guest's config window (learned from BUS_D0ENTRY).
    pub(crate) window: ConfigWindow,
    /// Slots the guest sent RESOURCES_ASSIGNED for (and has not released since).
    assigned: BTreeSet<u32>,
    /// Slots the guest sent EJECTION_COMPLETE for and has not asked about since.
    ejected: BTreeSet<u32>,
    /// Slots the guest's PCI core found a device in and has not given back (no
    /// EJECTION_COMPLETE since), with the identity it found there.
    held: BTreeMap<u32, Identity>,
    /// The serial number the last relations delivered to the guest gave each slot.
    listed: BTreeMap<u32, u32>,
    /// The first failure seen.
    pub(crate) failure: Option<Outcome>,
    /// Allocations left at module exit.
    pub(crate) leaks: Vec<String>,
    /// The guest's log and events, in order.
    pub(crate) guest_trace: Vec<String>,
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

/// `[vvvv:dddd]` as vendor and device ids.
fn parse_ids(text: &str) -> Option<(u16, u16)> {
    let (vendor, device) = text.strip_prefix('[')?.strip_suffix(']')?.split_once(':')?;
    Some((
        u16::from_str_radix(vendor, 16).ok()?,
        u16::from_str_radix(device, 16).ok()?,
    ))
}

impl Observer {
    /// Records a guest message to the host.
    pub(crate) fn guest_sent(&mut self, payload: &[u8]) {
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
            // The function is gone with its resources: a function the relations re-create in
            // the slot is a new one, resourced only by a RESOURCES_ASSIGNED of its own.
            MessageType::EJECTION_COMPLETE => {
                self.ejected.insert(slot);
                self.assigned.remove(&slot);
                self.held.remove(&slot);
            }
            // The guest learns the slot afresh (a new child from relations).
            MessageType::QUERY_RESOURCE_REQUIREMENTS => {
                self.ejected.remove(&slot);
            }
            _ => {}
        }
    }

    /// Records a packet delivered to the guest: relations tell which serial number each
    /// slot's function has (the driver's children carry it).
    pub(crate) fn guest_received(&mut self, payload: &[u8]) {
        let stride = match word(payload, 0).map(MessageType) {
            Some(MessageType::BUS_RELATIONS) => 20,
            Some(MessageType::BUS_RELATIONS2) => 28,
            _ => return,
        };
        let Some(count) = word(payload, 4) else {
            return;
        };
        // Linux takes the relations whole or not at all; a cut one is refused.
        let Some(fits) = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(stride))
            .and_then(|n| n.checked_add(8))
            .map(|end| end <= payload.len())
        else {
            return;
        };
        if !fits {
            return;
        }
        let mut listed = BTreeMap::new();
        for i in 0..usize::try_from(count).unwrap_or(0) {
            let at = 8 + i * stride;
            if let (Some(slot), Some(serial)) = (word(payload, at + 12), word(payload, at + 16)) {
                listed.insert(slot, serial);
            }
        }
        self.listed = listed;
    }

    /// Whether the guest's PCI core holds a device for `slot`.
    pub(crate) fn holds(&self, slot: WinSlot) -> bool {
        self.held.contains_key(&slot.raw())
    }

    /// What the guest's PCI core holds: each slot and the identity it found there.
    pub(crate) fn held(&self) -> Vec<(WinSlot, Identity)> {
        self.held
            .iter()
            .map(|(&slot, &id)| (WinSlot::from_raw(slot), id))
            .collect()
    }

    /// Records the first failure.
    pub(crate) fn fail(&mut self, kind: &str, context: String, function: String, message: String) {
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
    pub(crate) fn event(&mut self, kind: EventKind, context: String, text: &str) {
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
            let mut words = rest.split_whitespace();
            let slot = words
                .next()
                .and_then(|bdf| bdf.rsplit(':').next())
                .and_then(parse_devfn);
            if let (Some(slot), true) = (slot, text.ends_with(" found")) {
                let (vendor_id, device_id) = words.next().and_then(parse_ids).unwrap_or_default();
                let serial = self.listed.get(&slot).copied().unwrap_or_default();
                let id = Identity {
                    vendor_id,
                    device_id,
                    serial,
                };
                self.held.insert(slot, id);
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

    /// A function re-created in a slot after its EJECTION_COMPLETE is a new function: the old
    /// one's RESOURCES_ASSIGNED does not resource it, so a driver binding to it before its own
    /// is `unresourced_device`.
    #[test]
    fn re_created_function_needs_its_own_resources() {
        let mut o = Observer::default();
        let msg = |t: MessageType, slot: u32| {
            let mut p = t.0.to_le_bytes().to_vec();
            p.extend_from_slice(&slot.to_le_bytes());
            p
        };
        o.guest_sent(&msg(MessageType::RESOURCES_ASSIGNED2, 1));
        o.guest_sent(&msg(MessageType::EJECTION_COMPLETE, 1));
        // Relations list the slot again: the guest asks about the new function.
        o.guest_sent(&msg(MessageType::QUERY_RESOURCE_REQUIREMENTS, 1));
        o.event(EventKind::Note, "p".into(), "endpoint probe 01.0");
        assert_eq!(
            o.failure.as_ref().map(|f| f.kind().to_owned()),
            Some("unresourced_device".to_owned())
        );
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;
    use vpci_protocol::wire::FunctionDescription2;
    use vpci_protocol::{BusRelations, Message, encode};

    fn relations(functions: &[(u32, u32)]) -> Vec<u8> {
        let functions = functions
            .iter()
            .map(|&(slot, serial)| FunctionDescription2 {
                v_id: 0x15b3.into(),
                d_id: 0x101a.into(),
                rev: 0,
                prog_intf: 0,
                subclass: 0,
                base_class: 2,
                subsystem_id: 0.into(),
                wslot: WinSlot::from_raw(slot),
                ser: serial.into(),
                flags: 0.into(),
                virtual_numa_node: 0.into(),
                reserved: 0.into(),
            })
            .collect();
        encode(&Message::BusRelations2(BusRelations {
            functions,
            trailing: Vec::new(),
        }))
    }

    /// The observer records the identity the guest found in a slot: the ids its PCI core
    /// read and the serial number of the relations that listed the slot.
    #[test]
    fn held_identity() {
        let mut o = Observer::default();
        o.guest_received(&relations(&[(1, 5), (2, 6)]));
        o.event(
            EventKind::Note,
            "p".into(),
            "pci 0001:00:01.0 [15b3:101a] found",
        );
        // A later listing of a new serial does not change what the guest already holds.
        o.guest_received(&relations(&[(1, 9)]));
        assert_eq!(
            o.held(),
            [(
                WinSlot::from_raw(1),
                Identity {
                    vendor_id: 0x15b3,
                    device_id: 0x101a,
                    serial: 5
                }
            )]
        );
        // A cut relations message is not taken.
        let mut cut = relations(&[(1, 3)]);
        cut.truncate(20);
        o.guest_received(&cut);
        o.event(
            EventKind::Note,
            "p".into(),
            "pci 0001:00:01.0 [15b3:101a] found",
        );
        assert_eq!(o.held()[0].1.serial, 9);
    }
}
