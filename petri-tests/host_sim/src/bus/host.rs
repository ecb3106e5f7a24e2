//! Host actions: functions joining and leaving, relations, ejects and their 60-second wait,
//! rescind, and hostile packets.

use super::function::Function;
use super::{FunctionIdentity, HostBus, Out, PendingEject, identity_of};
use crate::action::{ActionError, HostAction, HostilePacket};
use crate::config::Teardown;
use crate::device::{Device, SimpleDevice, cfg};
use crate::event::{HostEventKind, RemovalReason};
use crate::script::Observation;
use crate::spec::FunctionSpec;
use vmbus_channel::{Packet, PacketFlags, PacketKind};
use vpci_protocol::wire::{FunctionDescription, FunctionDescription2, SlotBody};
use vpci_protocol::{BusRelations, Fixed, Message, MessageType, ProtocolVersion, WinSlot, encode};
use zerocopy::IntoBytes;

impl HostBus {
    pub(super) fn function_mut(&mut self, slot: WinSlot) -> Option<&mut Function> {
        self.functions.get_mut(&slot.raw())
    }

    pub(super) fn do_action(&mut self, action: HostAction) -> Result<(), ActionError> {
        if self.rescinded {
            return Err(ActionError::Rescinded);
        }
        match action {
            HostAction::HotAdd(spec) => {
                let device = SimpleDevice::new(&spec)?;
                self.add_function(identity_of(&spec), Some(spec), Box::new(device))
            }
            HostAction::Replace(spec) => self.replace(spec),
            HostAction::Reserial { slot, serial } => {
                let f = self
                    .functions
                    .get(&slot)
                    .ok_or(ActionError::NoSuchSlot(slot))?;
                let spec = f.spec.clone().ok_or(ActionError::NoSpec(slot))?;
                self.replace(spec.with_serial(serial))
            }
            HostAction::SurpriseRemove { slot } => {
                let f = self
                    .functions
                    .remove(&slot)
                    .ok_or(ActionError::NoSuchSlot(slot))?;
                self.removed(f, RemovalReason::Surprise);
                self.send_relations_if_negotiated();
                Ok(())
            }
            HostAction::Eject { slot } => self.eject(slot),
            HostAction::SendRelations {} => {
                let out = self.relations_out(None).ok_or(ActionError::NotNegotiated)?;
                self.send_out(out);
                Ok(())
            }
            HostAction::Rescind {} => {
                self.rescinded = true;
                if self.policy.teardown == Teardown::AtEject {
                    // An eager host pulls every mapping as it removes the bus.
                    let slots: Vec<WinSlot> = self
                        .functions
                        .values_mut()
                        .filter(|f| !f.torn_down)
                        .map(|f| {
                            f.torn_down = true;
                            f.identity.slot
                        })
                        .collect();
                    for slot in slots {
                        self.emit(HostEventKind::BarsTornDown { slot });
                    }
                }
                self.delayed.clear();
                self.ejects.clear();
                self.script.stop();
                self.emit(HostEventKind::Rescinded);
                Ok(())
            }
            HostAction::Hostile { packet } => self.hostile(packet),
        }
    }

    pub(super) fn add_function(
        &mut self,
        identity: FunctionIdentity,
        spec: Option<FunctionSpec>,
        device: Box<dyn Device>,
    ) -> Result<(), ActionError> {
        if self.rescinded {
            return Err(ActionError::Rescinded);
        }
        let raw = identity.slot.raw();
        if identity.slot.reserved() != 0 {
            return Err(crate::spec::SpecError::BadSlot(raw).into());
        }
        if self.functions.contains_key(&raw) {
            return Err(ActionError::SlotOccupied(raw));
        }
        self.insert(identity, spec, device);
        self.send_relations_if_negotiated();
        Ok(())
    }

    fn replace(&mut self, spec: FunctionSpec) -> Result<(), ActionError> {
        let slot = spec.slot;
        if !self.functions.contains_key(&slot) {
            return Err(ActionError::NoSuchSlot(slot));
        }
        let device = SimpleDevice::new(&spec)?;
        if let Some(old) = self.functions.remove(&slot) {
            self.removed(old, RemovalReason::Replaced);
        }
        self.insert(identity_of(&spec), Some(spec), Box::new(device));
        self.send_relations_if_negotiated();
        Ok(())
    }

    /// Reports a function that has left the bus (its device is dropped with it).
    fn removed(&mut self, f: Function, reason: RemovalReason) {
        let slot = f.identity.slot;
        if !f.torn_down {
            self.emit(HostEventKind::BarsTornDown { slot });
        }
        self.emit(HostEventKind::FunctionRemoved { slot, reason });
    }

    fn send_relations_if_negotiated(&mut self) {
        if let Some(out) = self.relations_out(None) {
            self.send_out(out);
        }
    }

    /// BUS_RELATIONS (below 1.3) or BUS_RELATIONS2 listing every function, built from each
    /// device's config space; `None` before a version is agreed.
    pub(super) fn relations_out(
        &mut self,
        answers: Option<(MessageType, Option<WinSlot>)>,
    ) -> Option<Out> {
        let version = self.version?;
        let mut d1 = Vec::new();
        let mut d2 = Vec::new();
        let mut slots = Vec::new();
        for f in self.functions.values_mut() {
            let d = describe(f);
            slots.push(f.identity.slot);
            let (flags, node) = match f.identity.numa_node {
                Some(n) => (1u32, n),
                None => (0, 0),
            };
            d2.push(FunctionDescription2 {
                v_id: d.v_id,
                d_id: d.d_id,
                rev: d.rev,
                prog_intf: d.prog_intf,
                subclass: d.subclass,
                base_class: d.base_class,
                subsystem_id: d.subsystem_id,
                wslot: d.wslot,
                ser: d.ser,
                flags: flags.into(),
                virtual_numa_node: node.into(),
                reserved: 0.into(),
            });
            d1.push(d);
        }
        let msg = if version >= ProtocolVersion::V1_3 {
            Message::BusRelations2(BusRelations {
                functions: d2,
                trailing: Vec::new(),
            })
        } else {
            Message::BusRelations(BusRelations {
                functions: d1,
                trailing: Vec::new(),
            })
        };
        self.emit(HostEventKind::RelationsSent {
            message: msg.message_type(),
            slots,
        });
        Some(Out {
            packet: Packet::in_band(0, encode(&msg)),
            answers,
        })
    }

    /// Sends EJECT for the function the host lists in `slot` now. An EJECT names the function
    /// the host listed last in its slot: one still unanswered for a function the host has
    /// since replaced stays outstanding beside it (one per incarnation).
    fn eject(&mut self, slot: u32) -> Result<(), ActionError> {
        let f = self
            .functions
            .get_mut(&slot)
            .ok_or(ActionError::NoSuchSlot(slot))?;
        let incarnation = f.incarnation;
        let pending = self.ejects.entry(slot).or_default();
        if pending.iter().any(|e| e.incarnation == incarnation) {
            return Err(ActionError::EjectOutstanding(slot));
        }
        let wslot = f.identity.slot;
        let tear_down = self.policy.teardown == Teardown::AtEject;
        if tear_down {
            f.torn_down = true;
        }
        pending.push(PendingEject {
            incarnation,
            sent_at: self.now,
            deadline: self.now.saturating_add(self.policy.eject_timeout.0),
        });
        self.send(eject_packet(wslot));
        self.emit(HostEventKind::EjectSent { slot: wslot });
        if tear_down {
            self.emit(HostEventKind::BarsTornDown { slot: wslot });
        }
        self.observations.push_back(Observation::EjectSent(wslot));
        Ok(())
    }

    /// The oldest outstanding eject of `slot`, taken off the list. An EJECTION_COMPLETE names
    /// only a slot: with ejects of two incarnations outstanding it answers the older one (the
    /// guest lets go in the order it was asked), and once all are answered each ejected
    /// function is gone, whatever order the answers came in.
    fn take_eject(&mut self, raw: u32) -> Option<PendingEject> {
        let pending = self.ejects.get_mut(&raw)?;
        let e = (!pending.is_empty()).then(|| pending.remove(0));
        if pending.is_empty() {
            self.ejects.remove(&raw);
        }
        e
    }

    /// Ends an outstanding eject on EJECTION_COMPLETE; `false` if none was outstanding.
    pub(super) fn ejection_complete(&mut self, slot: WinSlot) -> bool {
        let Some(e) = self.take_eject(slot.raw()) else {
            return false;
        };
        self.emit(HostEventKind::EjectCompleted {
            slot,
            waited: self.now.saturating_sub(e.sent_at),
        });
        self.finish_eject(slot, e, RemovalReason::Ejected);
        self.observations
            .push_back(Observation::EjectionCompleted(slot));
        true
    }

    /// The guest did not complete an eject in time: the host removes the function anyway.
    pub(super) fn eject_timed_out(&mut self, raw: u32) {
        let Some(e) = self.take_eject(raw) else {
            return;
        };
        let slot = WinSlot::from_raw(raw);
        self.emit(HostEventKind::EjectTimedOut { slot });
        self.finish_eject(slot, e, RemovalReason::EjectTimedOut);
    }

    /// Removes the ejected function, unless the slot has since been given a new one.
    fn finish_eject(&mut self, slot: WinSlot, e: PendingEject, reason: RemovalReason) {
        let same = self
            .functions
            .get(&slot.raw())
            .is_some_and(|f| f.incarnation == e.incarnation);
        if same {
            if let Some(f) = self.functions.remove(&slot.raw()) {
                self.removed(f, reason);
            }
            if self.policy.relations_after_removal {
                self.send_relations_if_negotiated();
            }
        }
    }

    fn hostile(&mut self, packet: HostilePacket) -> Result<(), ActionError> {
        let mut breaks = !matches!(packet, HostilePacket::EjectUnknownSlot { .. });
        let (what, p) = match packet {
            HostilePacket::Raw {
                kind,
                flags,
                transaction_id,
                payload,
            } => (
                "raw",
                Packet {
                    kind: PacketKind::from_raw(kind),
                    flags: PacketFlags(flags),
                    transaction_id,
                    payload: payload.0,
                },
            ),
            HostilePacket::Empty {} => ("empty", Packet::in_band(0, Vec::new())),
            HostilePacket::UnknownMessageType { message_type } => (
                "unknown_message_type",
                Packet::in_band(0, message_type.to_le_bytes().to_vec()),
            ),
            HostilePacket::TruncatedRelations {} => {
                let (mut payload, size) = self.raw_relations(1);
                payload.extend(std::iter::repeat_n(0u8, size / 2));
                ("truncated_relations", Packet::in_band(0, payload))
            }
            HostilePacket::RelationsCountOverflow { claimed } => {
                let (mut payload, _) = self.raw_relations(0);
                if let Some(count) = payload.get_mut(4..8) {
                    count.copy_from_slice(&claimed.to_le_bytes());
                }
                ("relations_count_overflow", Packet::in_band(0, payload))
            }
            HostilePacket::CompletionForUnknownTransaction {
                transaction_id,
                status,
            } => (
                "completion_for_unknown_transaction",
                Packet::completion(transaction_id, status.to_le_bytes().to_vec()),
            ),
            HostilePacket::RepeatLastCompletion {} => (
                "repeat_last_completion",
                self.last_completion
                    .clone()
                    .ok_or(ActionError::NothingToRepeat)?,
            ),
            HostilePacket::EjectUnknownSlot { slot } => {
                // An EJECT of a slot the host once had is a late or repeated eject, within the
                // protocol (the host keeps no record of it); of any other slot, a mistake.
                breaks = !self.ever_held.contains(&slot);
                let slot = WinSlot::from_raw(slot);
                ("eject_unknown_slot", eject_packet(slot))
            }
        };
        self.broke_protocol |= breaks;
        self.send(p);
        self.emit(HostEventKind::HostileSent { what });
        Ok(())
    }

    /// The relations message for the current functions with `extra` more claimed than
    /// listed, and the size of one description.
    fn raw_relations(&mut self, extra: u32) -> (Vec<u8>, usize) {
        let v2 = self.version.is_some_and(|v| v >= ProtocolVersion::V1_3);
        let (t, size) = if v2 {
            (MessageType::BUS_RELATIONS2, FunctionDescription2::SIZE)
        } else {
            (MessageType::BUS_RELATIONS, FunctionDescription::SIZE)
        };
        let count = (self.functions.len() as u32).saturating_add(extra);
        let mut payload = Vec::new();
        payload.extend_from_slice(&t.0.to_le_bytes());
        payload.extend_from_slice(&count.to_le_bytes());
        for f in self.functions.values_mut() {
            let d = describe(f);
            payload.extend_from_slice(d.as_bytes());
            if v2 {
                payload.extend_from_slice(&[0u8; 8]);
            }
        }
        (payload, size)
    }
}

fn eject_packet(slot: WinSlot) -> Packet {
    Packet::in_band(
        0,
        encode(&Message::Eject(Fixed::new(SlotBody { wslot: slot }))),
    )
}

/// A function's description, from its device's config space and the host's identity.
fn describe(f: &mut Function) -> FunctionDescription {
    let id = f.device.config_read(cfg::ID);
    let class = f.device.config_read(cfg::CLASS_REVISION);
    let subsystem = f.device.config_read(cfg::SUBSYSTEM);
    FunctionDescription {
        v_id: (id as u16).into(),
        d_id: ((id >> 16) as u16).into(),
        rev: class as u8,
        prog_intf: (class >> 8) as u8,
        subclass: (class >> 16) as u8,
        base_class: (class >> 24) as u8,
        subsystem_id: subsystem.into(),
        wslot: f.identity.slot,
        ser: f.identity.serial.into(),
    }
}
