//! The config accesses of the promises harness ([`super::promises`]): the guest starts reads
//! and writes through the config window when the fuzzer's bytes say so, and the device
//! reports each one the relay forwarded done at a later step the bytes choose, or never
//! within the program (then only when the program ends).
//!
//! A device whose function departed (as the relay saw the host's packets) is gone by the
//! time it answers: a read fails or reads all ones (the host tore it down before the relay
//! heard), as a real host's device would.
//!
//! The promise checked after every step: no EJECT and no relations change reaches the guest
//! while an access the relay forwarded is still in flight, unless the host is lost or the
//! access's function departed (as the relay saw the host's packets) at least
//! `departed_request_timeout` ago; the relay gives an access up only then (`AccessAbandoned`);
//! every access is done or given up, so the relay counts exactly those still waited on; and
//! the table never holds more than its limit.

use super::Source;
use std::collections::BTreeMap;
use std::time::Duration;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::*;
use vpci_relay::*;

/// One access the relay forwarded that the device has not reported done.
#[derive(Debug)]
struct Tracked {
    slot: u8,
    /// The identity (serial) listed in the slot when it was forwarded.
    ident: Option<u32>,
    /// When the relay received the host's packet that took that function away.
    departed: Option<Duration>,
    /// The step at which the device reports it done (`None`: not within the program).
    due: Option<usize>,
    /// A read's value, as the device reports it while present.
    value: Option<u32>,
    /// The offset and width of a read.
    read: Option<(u16, u8)>,
}

/// A read of `len` bytes of a device that is gone.
pub fn all_ones(len: u8) -> u32 {
    match len {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
}

/// A forwarded access the device reports done: what it answered, and what was read.
pub struct Done {
    /// The relay's id.
    pub id: AccessId,
    /// The device's answer (`None`: the access failed).
    pub value: Option<u32>,
    /// The slot's device number.
    pub slot: u8,
    /// The offset and width of a read (`None` for a write).
    pub read: Option<(u16, u8)>,
}

/// What the harness knows of the accesses in flight and of what the host listed.
#[derive(Default)]
pub struct Accesses {
    in_flight: BTreeMap<u64, Tracked>,
    /// Slot -> the identity the host's packets delivered to the relay list there.
    listed: BTreeMap<u8, u32>,
    /// How many the relay forwarded.
    pub forwarded: usize,
    /// How many the device reported done.
    pub done: usize,
    /// How many the relay gave up.
    pub abandoned: usize,
}

impl Accesses {
    /// Whether any access is in flight.
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// A host packet is about to reach the relay: an EJECT of a slot, or relations that no
    /// longer list an access's function with its identity, make that function departed.
    pub fn host_packet(&mut self, now: Duration, p: &Packet) {
        if p.kind != PacketKind::InBand {
            return;
        }
        let Ok(m) = decode(&p.payload, Sender::Host, ProtocolVersion::V1_4) else {
            return;
        };
        match m {
            Message::Eject(e) => {
                let dev = e.body.wslot.device();
                for a in self.in_flight.values_mut().filter(|a| a.slot == dev) {
                    a.departed.get_or_insert(now);
                }
            }
            Message::BusRelations2(r) => {
                self.listed = r
                    .functions
                    .iter()
                    .map(|d| (d.wslot.device(), d.ser.get()))
                    .collect();
                for a in self.in_flight.values_mut() {
                    if self.listed.get(&a.slot) != a.ident.as_ref() {
                        a.departed.get_or_insert(now);
                    }
                }
            }
            _ => {}
        }
    }

    /// The guest starts an access (the bytes choose its kind, slot, offset, width, value
    /// and when the device reports it done). Returns what the relay decided.
    pub fn start(
        &mut self,
        relay: &mut BusRelay,
        now: Duration,
        step: usize,
        b: u8,
        src: &mut Source<'_>,
    ) -> ConfigAction {
        let dev = (b >> 4) % super::promises::SLOTS;
        let slot = WinSlot::new(dev, 0);
        let offset = src.pick(&[0u16, 4, 0x10, 0x2c, 0x40]);
        let len = src.pick(&[4u8, 2, 1]);
        let read = b & 1 == 0;
        let access = if read {
            ConfigAccess::Read { slot, offset, len }
        } else {
            ConfigAccess::Write {
                slot,
                offset,
                len,
                value: src.u32(),
            }
        };
        // 0: not within the program; else that many steps on.
        let due = match src.below(8) {
            0 => None,
            k => Some(step + k),
        };
        let action = relay.handle_config_access(now, access);
        if let ConfigAction::Forward(id) = action {
            let ident = self.listed.get(&dev).copied();
            assert!(
                ident.is_some(),
                "{id} forwarded to slot {dev}, which the host does not list"
            );
            let value = read.then(|| 0x00b1_1414 | ident.unwrap_or(0) << 24);
            let fresh = self.in_flight.insert(
                id.to_raw(),
                Tracked {
                    slot: dev,
                    ident,
                    departed: None,
                    due,
                    value,
                    read: read.then_some((offset, len)),
                },
            );
            assert!(fresh.is_none(), "{id} issued twice while in flight");
            self.forwarded += 1;
        }
        action
    }

    /// The accesses the device reports done at `step` (all of them once the program ends:
    /// `None`), with their answers (a departed function's device is gone: its read fails,
    /// or reads all ones, by the id's parity); they are forgotten here.
    pub fn due(&mut self, step: Option<usize>) -> Vec<Done> {
        let ids: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, a)| step.is_none_or(|s| a.due.is_some_and(|d| d <= s)))
            .map(|(&id, _)| id)
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let a = self.in_flight.remove(&id)?;
                self.done += 1;
                let value = match (a.departed, a.read) {
                    (None, _) => a.value,
                    (Some(_), Some((_, len))) if id % 2 == 1 => Some(all_ones(len)),
                    (Some(_), _) => None,
                };
                Some(Done {
                    id: AccessId::from_raw(id),
                    value,
                    slot: a.slot,
                    read: a.read,
                })
            })
            .collect()
    }

    /// The relay gave up an access to `slot`: only one whose function departed at least
    /// `timeout` ago may be given up.
    pub fn abandoned(&mut self, now: Duration, slot: WinSlot, timeout: Duration) {
        let dev = slot.device();
        let id = self
            .in_flight
            .iter()
            .filter(|(_, a)| a.slot == dev)
            .find(|(_, a)| a.departed.is_some_and(|d| now >= d + timeout))
            .map(|(&id, _)| id)
            .unwrap_or_else(|| {
                panic!(
                    "the relay gave up an access to slot {dev} early at {now:?}: {:?}",
                    self.in_flight
                )
            });
        self.in_flight.remove(&id);
        self.abandoned += 1;
    }

    /// A change (`what`) reaches the guest: no access the relay forwarded may still be in
    /// flight, unless the host is lost or its function departed `timeout` ago.
    pub fn change_reaches_guest(
        &self,
        now: Duration,
        what: &str,
        host_up: bool,
        timeout: Duration,
    ) {
        if !host_up {
            return;
        }
        let held: Vec<_> = self
            .in_flight
            .iter()
            .filter(|(_, a)| a.departed.is_none_or(|d| now < d + timeout))
            .collect();
        assert!(
            held.is_empty(),
            "{what} reached the guest at {now:?} while accesses were in flight: {held:?}"
        );
    }

    /// The relay counts exactly the accesses neither done nor given up, within its limit.
    pub fn check_table(&self, relay: &BusRelay, limit: usize) {
        let counted = relay.accesses_in_flight();
        assert!(
            counted <= limit,
            "{counted} accesses in flight, limit {limit}"
        );
        if relay.host_link() == HostLink::Up {
            assert_eq!(
                counted,
                self.in_flight.len(),
                "the relay counts {counted} accesses in flight, the device owes {:?}",
                self.in_flight
            );
        }
    }
}
