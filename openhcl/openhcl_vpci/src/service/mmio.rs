//! The guest's config-space and BAR accesses, which reach the service over the control plane
//! as the paravisor's intercepts would: answered from the relay's decision or the bus's
//! backing where it can, forwarded to the host otherwise (bounded by [`MAX_PENDING_MMIO`]).

use super::{MAX_PENDING_MMIO, Pending, Service};
use crate::control::{Message, MmioOp};
use futures::executor::block_on;
use vpci_protocol::WinSlot;
use vpci_relay::{Backing, ConfigAccess, ConfigAction};

/// A read of `len` bytes answered as by an absent device.
fn all_ones(len: u8) -> u32 {
    match len {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
}

/// PCI's master abort, the answer to an access no device takes: a read reads all ones, a
/// write is dropped. Never a fault: what the host does to its device must not crash the
/// guest.
fn master_abort_value(op: MmioOp) -> u32 {
    match op {
        MmioOp::ConfigRead { len, .. } | MmioOp::BarRead { len, .. } => all_ones(len),
        MmioOp::ConfigWrite { .. } | MmioOp::BarWrite { .. } => 0,
    }
}

impl Service {
    pub(super) fn mmio(&mut self, id: u64, bus: String, op: MmioOp) {
        let reply = |value| Message::MmioDone { id, value };
        // A bus the service does not run (any more): its relay closed it, or the host went,
        // and the guest may still be in a driver touching its device before its rescind
        // path lets the functions go. A master abort, as the shield would answer, never a
        // fault.
        let Some(running) = self.running.get(&bus) else {
            self.send_guest(&reply(Some(master_abort_value(op))));
            return;
        };
        let generation = running.generation;
        let port = self.relays.port(&bus);
        // The relay's id for a config access it lets through to the device.
        let mut access_id = None;
        let local = match op {
            MmioOp::ConfigRead { slot, offset, len } => {
                let slot = WinSlot::from_raw(slot);
                let access = ConfigAccess::Read { slot, offset, len };
                match port.clone().and_then(|mut p| block_on(p.access(access))) {
                    Some(ConfigAction::Forward(id)) => {
                        access_id = Some(id);
                        None
                    }
                    Some(ConfigAction::Answer(v)) => Some(Some(v)),
                    Some(ConfigAction::Drop) | None => Some(Some(all_ones(len))),
                }
            }
            MmioOp::ConfigWrite {
                slot,
                offset,
                len,
                value,
            } => {
                let slot = WinSlot::from_raw(slot);
                let access = ConfigAccess::Write {
                    slot,
                    offset,
                    len,
                    value,
                };
                match port.clone().and_then(|mut p| block_on(p.access(access))) {
                    Some(ConfigAction::Forward(id)) => {
                        access_id = Some(id);
                        None
                    }
                    _ => Some(Some(0)),
                }
            }
            MmioOp::BarRead { slot, len, .. } => match running.bars.get(WinSlot::from_raw(slot)) {
                Backing::Device => None,
                Backing::Shield => Some(Some(all_ones(len))),
                Backing::Released => Some(None),
            },
            MmioOp::BarWrite { slot, .. } => match running.bars.get(WinSlot::from_raw(slot)) {
                Backing::Device => None,
                Backing::Shield => Some(Some(0)),
                Backing::Released => Some(None),
            },
        };
        // A guest cannot make the service remember more accesses than this for a host that
        // does not answer: beyond it they fault (config reads: all ones).
        let local = match local {
            None if self.pending.len() >= MAX_PENDING_MMIO => {
                tracing::warn!(bus = %bus, "too many accesses outstanding at the host");
                Some(match op {
                    MmioOp::ConfigRead { len, .. } => Some(all_ones(len)),
                    _ => None,
                })
            }
            other => other,
        };
        // An access the relay forwarded but the service answers itself (too many at the
        // host) is done at once.
        if let (Some(_), Some(id), Some(mut port)) = (&local, access_id, port) {
            block_on(port.access_done(id, None));
        }
        match local {
            Some(value) => self.send_guest(&reply(value)),
            None => {
                let host_id = self.next_mmio;
                self.next_mmio += 1;
                self.pending.insert(
                    host_id,
                    Pending {
                        guest_id: id,
                        bus: bus.clone(),
                        generation,
                        op,
                        access: access_id,
                    },
                );
                self.send_host(&Message::Mmio {
                    id: host_id,
                    bus,
                    op,
                });
            }
        }
    }

    /// The host's answer to a forwarded access. A fault from the host (nothing backs the
    /// access: it pulled the device's memory, in the window before the relay reads the
    /// EJECT or relations that say so, or out of turn) reaches the guest as a master abort,
    /// as the removal shield would answer it, never as a fault; the relay hears that the
    /// access failed.
    pub(super) fn mmio_done(&mut self, id: u64, value: Option<u32>) {
        let Some(p) = self.pending.remove(&id) else {
            tracing::warn!(id, "host answered an access nobody asked");
            return;
        };
        // A config read's answer is the relay's: the device's value, or the shield's if the
        // device turned out gone before the relay heard of it.
        let value = self.finish_access(&p, value).or(value);
        let value = value.unwrap_or_else(|| {
            self.mmio_host_faults += 1;
            tracing::warn!(
                bus = %p.bus,
                op = ?p.op,
                "the host faulted a forwarded access: answered as a master abort"
            );
            master_abort_value(p.op)
        });
        self.send_guest(&Message::MmioDone {
            id: p.guest_id,
            value: Some(value),
        });
    }

    /// The accesses of a bus that stopped that are still at the host: the guest must not
    /// wait on a bus that is gone, so each is answered now as a master abort (the host's late
    /// answer then matches nothing and is ignored).
    pub(super) fn abort_bus_accesses(&mut self, bus: &str, generation: u64) {
        let stopped: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.bus == bus && p.generation == generation)
            .map(|(&id, _)| id)
            .collect();
        for id in stopped {
            if let Some(p) = self.pending.remove(&id) {
                self.master_abort(&p);
            }
        }
    }

    /// Answers an access the host will not answer (any more) as a master abort: a read
    /// reads all ones, a write is dropped (the host's loss must not fault the guest).
    pub(super) fn master_abort(&mut self, p: &Pending) {
        let value = self
            .finish_access(p, None)
            .unwrap_or_else(|| master_abort_value(p.op));
        self.send_guest(&Message::MmioDone {
            id: p.guest_id,
            value: Some(value),
        });
    }

    /// Tells the bus's relay that a config access it forwarded is done (`value`: a read's
    /// value; `None` if it failed), if the bus still runs the relay that forwarded it; what
    /// the guest must read, for a read the relay answered.
    fn finish_access(&mut self, p: &Pending, value: Option<u32>) -> Option<u32> {
        let id = p.access?;
        let current = self
            .running
            .get(&p.bus)
            .is_some_and(|r| r.generation == p.generation);
        match (current, self.relays.port(&p.bus)) {
            (true, Some(mut port)) => block_on(port.access_done(id, value)),
            _ => None,
        }
    }
}
