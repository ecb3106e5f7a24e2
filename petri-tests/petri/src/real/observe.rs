//! What the controller learns from the real guest's messages and events: the config window,
//! which functions it was told to use and has let go, which it holds and with what identity
//! (the ids its PCI core read, the serial number of the relations that listed the slot), and
//! the first thing that went wrong (a bound driver on a function it had given back, a driver on a function
//! without resources, a BUG or WARN, a leak).

use super::choice_points::ChoicePoints;
use crate::outcome::{Identity, Outcome};
use crate::wire::WireLog;
use kernel_shim::host::ConfigWindow;
use kernel_shim::protocol::EventKind;
use std::collections::{BTreeMap, BTreeSet};
use vpci_protocol::{MessageType, WinSlot};

/// One bus of the guest as its messages and events show it.
#[derive(Debug, Default)]
pub(crate) struct BusView {
    /// The PCI domain the bus's driver was asked to take (bytes 4-5 of its instance GUID);
    /// the guest's notes name a function by it.
    domain: u16,
    /// The bus's config window (learned from its BUS_D0ENTRY).
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
}

/// The guest's state as its messages and events show it: each bus's, and the guest's own.
#[derive(Debug)]
pub(crate) struct Observer {
    /// Each bus, by index.
    pub(crate) buses: Vec<BusView>,
    /// The first failure seen.
    pub(crate) failure: Option<Outcome>,
    /// Allocations left at module exit.
    pub(crate) leaks: Vec<kernel_shim::forensics::Leak>,
    /// The guest's log and events, in order.
    pub(crate) guest_trace: Vec<String>,
    /// What the guest did with devices, in order: each function its PCI core found (with
    /// the identity it found), each RESOURCES_ASSIGNED and RESOURCES_RELEASED, and each
    /// EJECTION_COMPLETE, as `bus N: ...` lines. Timing and interleaving do not show in it,
    /// so runs of the same guest with and without the relay can be compared.
    pub(crate) device_history: Vec<String>,
    /// Where each context stands at the scheduling points, for a replay's choice points.
    pub(crate) choice_points: ChoicePoints,
    /// The packets across the guest's channels, the newest ring's worth per bus and
    /// direction, when recording (None: not kept).
    pub(crate) wire: Option<WireLog>,
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

/// The domain a note ends with (`... (domain DDDD)`), if any.
fn note_domain(text: &str) -> Option<u16> {
    let rest = text.rsplit_once("(domain ")?.1.strip_suffix(')')?;
    u16::from_str_radix(rest, 16).ok()
}

/// `[vvvv:dddd]` as vendor and device ids.
fn parse_ids(text: &str) -> Option<(u16, u16)> {
    let (vendor, device) = text.strip_prefix('[')?.strip_suffix(']')?.split_once(':')?;
    Some((
        u16::from_str_radix(vendor, 16).ok()?,
        u16::from_str_radix(device, 16).ok()?,
    ))
}

impl Default for Observer {
    /// An observer of one bus in domain 1.
    fn default() -> Self {
        Self::new(&[1])
    }
}

impl BusView {
    /// Records a guest message to the host on this bus.
    fn guest_sent(&mut self, payload: &[u8]) {
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

    /// Records a packet delivered to the guest on this bus: relations tell which serial
    /// number each slot's function has (the driver's children carry it).
    fn guest_received(&mut self, payload: &[u8]) {
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
}

impl Observer {
    /// An observer of buses whose drivers take these PCI domains, by bus index.
    pub(crate) fn new(domains: &[u16]) -> Self {
        Self {
            buses: domains
                .iter()
                .map(|&domain| BusView {
                    domain,
                    ..BusView::default()
                })
                .collect(),
            failure: None,
            leaks: Vec::new(),
            guest_trace: Vec::new(),
            device_history: Vec::new(),
            choice_points: ChoicePoints::default(),
            wire: None,
        }
    }

    /// A packet crossed bus `bus`'s channel (to the guest, or from it): kept when recording.
    pub(crate) fn wire(&mut self, bus: usize, to_guest: bool, packet: &vmbus_channel::Packet) {
        if let Some(wire) = &mut self.wire {
            wire.push(bus, to_guest, packet.clone());
        }
    }

    /// Records a guest message to the host on bus `bus`.
    pub(crate) fn guest_sent(&mut self, bus: usize, payload: &[u8]) {
        if let Some(view) = self.buses.get_mut(bus) {
            view.guest_sent(payload);
        }
        if let (Some(kind), Some(slot)) = (word(payload, 0), word(payload, 4)) {
            let what = match MessageType(kind) {
                MessageType::RESOURCES_ASSIGNED
                | MessageType::RESOURCES_ASSIGNED2
                | MessageType::RESOURCES_ASSIGNED3 => Some("resources assigned"),
                MessageType::RESOURCES_RELEASED => Some("resources released"),
                MessageType::EJECTION_COMPLETE => Some("let go"),
                _ => None,
            };
            if let Some(what) = what {
                let slot = WinSlot::from_raw(slot);
                self.device_history
                    .push(format!("bus {bus}: {what} {slot}"));
            }
        }
    }

    /// Records a packet delivered to the guest on bus `bus`.
    pub(crate) fn guest_received(&mut self, bus: usize, payload: &[u8]) {
        if let Some(view) = self.buses.get_mut(bus) {
            view.guest_received(payload);
        }
    }

    /// The bus whose driver took PCI domain `domain` (bus 0 if none did).
    fn bus_of(&self, domain: Option<u16>) -> usize {
        domain
            .and_then(|d| self.buses.iter().position(|b| b.domain == d))
            .unwrap_or(0)
    }

    /// Whether the guest's PCI core holds a device for `slot` on bus `bus`.
    pub(crate) fn holds(&self, bus: usize, slot: WinSlot) -> bool {
        self.buses
            .get(bus)
            .is_some_and(|b| b.held.contains_key(&slot.raw()))
    }

    /// What the guest's PCI core holds on bus `bus`: each slot and the identity it found.
    pub(crate) fn held(&self, bus: usize) -> Vec<(WinSlot, Identity)> {
        self.buses
            .get(bus)
            .map(|b| {
                b.held
                    .iter()
                    .map(|(&slot, &id)| (WinSlot::from_raw(slot), id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Records the first failure, on bus `bus`.
    pub(crate) fn fail(
        &mut self,
        bus: usize,
        kind: &str,
        context: String,
        function: String,
        message: String,
    ) {
        if self.failure.is_none() {
            self.failure = Some(Outcome::Guest {
                bus,
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
            EventKind::Bug => self.fail(0, "bug", context, "BUG".to_owned(), text.to_owned()),
            EventKind::Warn => self.fail(0, "bug", context, "WARN".to_owned(), text.to_owned()),
            EventKind::Leak => self.leaks.push(kernel_shim::forensics::Leak::new(text)),
            // The runtime sends a leak's stack right after the leak.
            EventKind::LeakStack => {
                if let Some(leak) = self.leaks.last_mut() {
                    leak.set_stack(text);
                }
            }
            EventKind::Note | EventKind::Other(_) => self.note(context, text),
        }
    }

    fn note(&mut self, context: String, text: &str) {
        // "pci 0001:00:01.0 [1414:00a9] found"
        if let Some(rest) = text.strip_prefix("pci ") {
            let mut words = rest.split_whitespace();
            let bdf = words.next().unwrap_or_default();
            let domain = bdf
                .split(':')
                .next()
                .and_then(|d| u16::from_str_radix(d, 16).ok());
            let slot = bdf.rsplit(':').next().and_then(parse_devfn);
            let bus = self.bus_of(domain);
            if let (Some(slot), true, Some(view)) =
                (slot, text.ends_with(" found"), self.buses.get_mut(bus))
            {
                let (vendor_id, device_id) = words.next().and_then(parse_ids).unwrap_or_default();
                let serial = view.listed.get(&slot).copied().unwrap_or_default();
                let id = Identity {
                    vendor_id,
                    device_id,
                    serial,
                };
                view.held.insert(slot, id);
                self.device_history.push(format!(
                    "bus {bus}: found {} {vendor_id:04x}:{device_id:04x} serial {serial}",
                    WinSlot::from_raw(slot)
                ));
            }
            return;
        }
        let bus = self.bus_of(note_domain(text));
        if let Some(slot) = text.strip_prefix("endpoint probe ").and_then(parse_devfn) {
            let wslot = WinSlot::from_raw(slot);
            let (ejected, assigned) = self.buses.get(bus).map_or((false, false), |b| {
                (b.ejected.contains(&slot), b.assigned.contains(&slot))
            });
            if ejected {
                self.fail(
                    bus,
                    "ejected_device_access",
                    context,
                    "pci_bus_add_devices (driver probe)".to_owned(),
                    format!("a driver binds to {wslot}, which the guest already ejected"),
                );
            } else if !assigned {
                self.fail(
                    bus,
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
                bus,
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
        o.guest_sent(0, &msg(MessageType::RESOURCES_ASSIGNED2, 1));
        o.event(
            EventKind::Note,
            "p".into(),
            "pci 0001:00:01.0 [15b3:101a] found",
        );
        o.event(EventKind::Note, "p".into(), "endpoint probe 01.0");
        assert_eq!(o.failure, None);
        assert!(o.holds(0, WinSlot::from_raw(1)));
        o.guest_sent(0, &msg(MessageType::EJECTION_COMPLETE, 1));
        assert!(!o.holds(0, WinSlot::from_raw(1)));
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
        o.guest_sent(0, &msg(MessageType::RESOURCES_ASSIGNED2, 1));
        o.guest_sent(0, &msg(MessageType::EJECTION_COMPLETE, 1));
        // Relations list the slot again: the guest asks about the new function.
        o.guest_sent(0, &msg(MessageType::QUERY_RESOURCE_REQUIREMENTS, 1));
        o.event(EventKind::Note, "p".into(), "endpoint probe 01.0");
        assert_eq!(
            o.failure.as_ref().map(|f| f.kind().to_owned()),
            Some("unresourced_device".to_owned())
        );
    }
}

#[cfg(test)]
mod bus_tests {
    use super::*;

    /// With several buses in one guest, a note names its bus by the PCI domain its driver
    /// took: a function found, and a driver bound, on bus 1 are bus 1's, checked against
    /// what the guest sent on bus 1.
    #[test]
    fn notes_find_their_bus_by_domain() {
        let mut o = Observer::new(&[1, 2]);
        let msg = |t: MessageType, slot: u32| {
            let mut p = t.0.to_le_bytes().to_vec();
            p.extend_from_slice(&slot.to_le_bytes());
            p
        };
        o.guest_sent(1, &msg(MessageType::RESOURCES_ASSIGNED2, 1));
        o.event(
            EventKind::Note,
            "p".into(),
            "pci 0002:00:01.0 [15b3:101a] found",
        );
        assert!(o.holds(1, WinSlot::from_raw(1)));
        assert!(!o.holds(0, WinSlot::from_raw(1)));
        o.event(
            EventKind::Note,
            "p".into(),
            "endpoint probe 01.0 (domain 0002)",
        );
        assert_eq!(o.failure, None);
        // Bus 0 never assigned its slot 1: a driver bound there is unresourced, on bus 0.
        o.event(
            EventKind::Note,
            "p".into(),
            "endpoint probe 01.0 (domain 0001)",
        );
        assert!(
            matches!(&o.failure, Some(Outcome::Guest { bus: 0, failure, .. }) if failure == "unresourced_device"),
            "{:?}",
            o.failure
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
        o.guest_received(0, &relations(&[(1, 5), (2, 6)]));
        o.event(
            EventKind::Note,
            "p".into(),
            "pci 0001:00:01.0 [15b3:101a] found",
        );
        // A later listing of a new serial does not change what the guest already holds.
        o.guest_received(0, &relations(&[(1, 9)]));
        assert_eq!(
            o.held(0),
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
        o.guest_received(0, &cut);
        o.event(
            EventKind::Note,
            "p".into(),
            "pci 0001:00:01.0 [15b3:101a] found",
        );
        assert_eq!(o.held(0)[0].1.serial, 9);
    }
}
