//! The bus table: for each bus instance id, where its host offer and its guest offer stand.
//! Sans-IO: each input returns the [`Action`]s the service must carry out, in order.
//!
//! The guest side follows OpenVMM's vmbus_server (`ChannelState`): an offer the guest has
//! not released after a rescind is `Revoked`; the host offering the same id again then makes
//! it `Reoffered`, and the new offer is held until the guest's release, when it is sent
//! (`Offered` again). A rescind while `Reoffered` withdraws the held offer (`Revoked`).
//!
//! The host side: `Offered` (the service has not opened it), `Open` (a relay runs the bus),
//! `Rescinded` (the host rescinded the open bus; the service releases it once the relay has
//! stopped), `Released` (nothing of it left at the host).

use crate::control::{ControlError, Message};
use inspect::Node;
use std::collections::BTreeMap;

/// Where the guest's offer of a bus stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestSide {
    /// Not offered (no guest connected when the host offered it).
    NotOffered,
    /// Offered, not open.
    Offered,
    /// Open: a relay runs the bus.
    Open,
    /// Rescinded; the guest has not released it yet.
    Revoked,
    /// Rescinded and offered again by the host; the new offer waits for the guest's release.
    Reoffered,
}

/// Where the host's offer of a bus stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostSide {
    /// Offered by the host, not opened by the service.
    Offered,
    /// Opened: a relay runs the bus.
    Open,
    /// Rescinded by the host while open; released once the relay stops.
    Rescinded,
    /// Nothing left at the host (released, or the host is gone).
    Released,
}

/// What the service must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send to the guest.
    ToGuest(Message),
    /// Send to the host.
    ToHost(Message),
    /// Open the host's ring and start a relay between it and the guest's ring (generation
    /// numbers tell a stopped relay's report from a later one's).
    Start {
        /// The bus.
        bus: String,
        /// The bus's generation.
        generation: u64,
    },
    /// The host rescinded a running bus: end the relay's host channel.
    RevokeHost {
        /// The bus.
        bus: String,
    },
}

/// One bus's two sides and counts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) guest: GuestSide,
    pub(crate) host: HostSide,
    pub(crate) generation: u64,
    pub(crate) rescinds: u64,
    pub(crate) held_reoffers: u64,
}

/// The bus table. See the [module documentation](self).
#[derive(Debug, Default)]
pub struct BusTable {
    buses: BTreeMap<String, Entry>,
    guest_connected: bool,
    all_offers_delivered: bool,
    next_generation: u64,
}

fn unexpected(what: &str, bus: &str, e: Option<&Entry>) -> ControlError {
    ControlError::Unexpected(format!(
        "{what} for bus {bus} in state {:?}",
        e.map(|e| (e.guest, e.host))
    ))
}

impl BusTable {
    /// An empty table, no guest connected.
    pub fn new() -> Self {
        Self::default()
    }

    /// The running bus's generation, if `bus` runs.
    pub fn running(&self, bus: &str) -> Option<u64> {
        self.buses
            .get(bus)
            .filter(|e| e.guest == GuestSide::Open)
            .map(|e| e.generation)
    }

    /// The ids of the running buses.
    pub fn running_buses(&self) -> Vec<String> {
        let open = |e: &&Entry| e.guest == GuestSide::Open;
        self.buses
            .iter()
            .filter(|(_, e)| open(e))
            .map(|(b, _)| b.clone())
            .collect()
    }

    /// The host offered `bus`.
    pub fn host_offer(&mut self, bus: &str) -> Result<Vec<Action>, ControlError> {
        let guest = self.guest_connected;
        match self.buses.get_mut(bus) {
            None => {
                let side = if guest {
                    GuestSide::Offered
                } else {
                    GuestSide::NotOffered
                };
                self.buses.insert(
                    bus.to_owned(),
                    Entry {
                        guest: side,
                        host: HostSide::Offered,
                        generation: 0,
                        rescinds: 0,
                        held_reoffers: 0,
                    },
                );
                Ok(if guest { vec![offer(bus)] } else { vec![] })
            }
            Some(e) if e.host == HostSide::Released && e.guest == GuestSide::Revoked => {
                e.guest = GuestSide::Reoffered;
                e.host = HostSide::Offered;
                e.held_reoffers += 1;
                tracing::info!(bus, "re-offer held until the guest releases the bus");
                Ok(vec![])
            }
            Some(e) => Err(unexpected("offer", bus, Some(e))),
        }
    }

    /// The host rescinded `bus`.
    pub fn host_rescind(&mut self, bus: &str) -> Result<Vec<Action>, ControlError> {
        let e = self.buses.get_mut(bus);
        let Some(e) = e else {
            return Err(unexpected("rescind", bus, None));
        };
        e.rescinds += 1;
        let release = Action::ToHost(Message::Release {
            bus: bus.to_owned(),
        });
        match (e.host, e.guest) {
            (HostSide::Open, _) => {
                e.host = HostSide::Rescinded;
                Ok(vec![Action::RevokeHost {
                    bus: bus.to_owned(),
                }])
            }
            (HostSide::Offered, GuestSide::Offered) => {
                e.host = HostSide::Released;
                e.guest = GuestSide::Revoked;
                Ok(vec![rescind(bus), release])
            }
            (HostSide::Offered, GuestSide::Reoffered) => {
                e.host = HostSide::Released;
                e.guest = GuestSide::Revoked;
                Ok(vec![release])
            }
            (HostSide::Offered, GuestSide::NotOffered) => {
                self.buses.remove(bus);
                Ok(vec![release])
            }
            _ => Err(unexpected("rescind", bus, Some(e))),
        }
    }

    /// The host has offered every boot-time bus.
    pub fn host_all_offers_delivered(&mut self) -> Vec<Action> {
        self.all_offers_delivered = true;
        if self.guest_connected {
            vec![Action::ToGuest(Message::AllOffersDelivered {})]
        } else {
            vec![]
        }
    }

    /// The host connection is gone: every bus is rescinded as far as the host goes.
    pub fn host_gone(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut remove = Vec::new();
        for (bus, e) in &mut self.buses {
            match (e.host, e.guest) {
                (HostSide::Open, _) => {
                    e.host = HostSide::Rescinded;
                    actions.push(Action::RevokeHost { bus: bus.clone() });
                }
                (HostSide::Offered, GuestSide::Offered) => {
                    e.guest = GuestSide::Revoked;
                    actions.push(rescind(bus));
                }
                (_, GuestSide::Reoffered) => e.guest = GuestSide::Revoked,
                (_, GuestSide::NotOffered) => remove.push(bus.clone()),
                _ => {}
            }
            if e.host != HostSide::Rescinded {
                e.host = HostSide::Released;
            }
        }
        for bus in remove {
            self.buses.remove(&bus);
        }
        actions
    }

    /// A guest connected: it gets every bus the host offers, then all-offers-delivered if the
    /// host sent it.
    pub fn guest_connected(&mut self) -> Result<Vec<Action>, ControlError> {
        if self.guest_connected {
            return Err(ControlError::Unexpected("a second guest".into()));
        }
        self.guest_connected = true;
        let mut actions = Vec::new();
        for (bus, e) in &mut self.buses {
            if e.guest == GuestSide::NotOffered && e.host == HostSide::Offered {
                e.guest = GuestSide::Offered;
                actions.push(offer(bus));
            }
        }
        if self.all_offers_delivered {
            actions.push(Action::ToGuest(Message::AllOffersDelivered {}));
        }
        Ok(actions)
    }

    /// The guest connection is gone; running buses stop on their own (their rings end).
    pub fn guest_gone(&mut self) -> Vec<Action> {
        self.guest_connected = false;
        self.buses.retain(|_, e| {
            if e.guest != GuestSide::Open {
                e.guest = GuestSide::NotOffered;
            }
            e.host != HostSide::Released
        });
        vec![]
    }

    /// The guest opened `bus` (its ring has arrived).
    pub fn guest_open(&mut self, bus: &str) -> Result<Vec<Action>, ControlError> {
        match self.buses.get_mut(bus) {
            Some(e) if e.guest == GuestSide::Offered && e.host == HostSide::Offered => {
                self.next_generation += 1;
                e.generation = self.next_generation;
                e.guest = GuestSide::Open;
                e.host = HostSide::Open;
                Ok(vec![Action::Start {
                    bus: bus.to_owned(),
                    generation: e.generation,
                }])
            }
            e => Err(unexpected("open", bus, e.as_deref())),
        }
    }

    /// The guest closed its ring of `bus` (the relay sees that on the ring itself).
    pub fn guest_close(&mut self, bus: &str) -> Result<Vec<Action>, ControlError> {
        match self.buses.get(bus) {
            Some(_) => Ok(vec![]),
            None => Err(unexpected("close", bus, None)),
        }
    }

    /// The guest released `bus` after a rescind.
    pub fn guest_release(&mut self, bus: &str) -> Result<Vec<Action>, ControlError> {
        match self.buses.get_mut(bus) {
            Some(e) if e.guest == GuestSide::Revoked => {
                if e.host == HostSide::Released {
                    self.buses.remove(bus);
                } else {
                    e.guest = GuestSide::NotOffered;
                }
                Ok(vec![])
            }
            Some(e) if e.guest == GuestSide::Reoffered => {
                e.guest = GuestSide::Offered;
                tracing::info!(bus, "guest released the bus: held re-offer sent");
                Ok(vec![offer(bus)])
            }
            e => Err(unexpected("release", bus, e.as_deref())),
        }
    }

    /// The relay of `bus` (generation `generation`) stopped. The guest's offer is rescinded
    /// if the host rescinded the bus, else the host's ring is closed and the bus can be opened
    /// again.
    pub fn bus_stopped(&mut self, bus: &str, generation: u64) -> Vec<Action> {
        let Some(e) = self.buses.get_mut(bus) else {
            return vec![];
        };
        if e.generation != generation || e.guest != GuestSide::Open {
            return vec![];
        }
        let guest_connected = self.guest_connected;
        match e.host {
            HostSide::Rescinded | HostSide::Released => {
                let host_alive = e.host == HostSide::Rescinded;
                e.host = HostSide::Released;
                let mut actions = Vec::new();
                if guest_connected {
                    e.guest = GuestSide::Revoked;
                    actions.push(rescind(bus));
                } else {
                    self.buses.remove(bus);
                }
                if host_alive {
                    actions.push(Action::ToHost(Message::Release {
                        bus: bus.to_owned(),
                    }));
                }
                actions
            }
            HostSide::Open | HostSide::Offered => {
                e.host = HostSide::Offered;
                e.guest = if guest_connected {
                    GuestSide::Offered
                } else {
                    GuestSide::NotOffered
                };
                vec![Action::ToHost(Message::Close {
                    bus: bus.to_owned(),
                })]
            }
        }
    }

    /// Everything the table holds, for its saved state (destructured so that a new field
    /// cannot be left out).
    pub(crate) fn parts(&self) -> (impl Iterator<Item = (&str, &Entry)>, bool, bool, u64) {
        let Self {
            buses,
            guest_connected,
            all_offers_delivered,
            next_generation,
        } = self;
        (
            buses.iter().map(|(b, e)| (b.as_str(), e)),
            *guest_connected,
            *all_offers_delivered,
            *next_generation,
        )
    }

    /// Adds a bus read from a saved state; a bus named twice is an error.
    pub(crate) fn insert_restored(
        &mut self,
        bus: &str,
        guest: GuestSide,
        host: HostSide,
        generation: u64,
        rescinds: u64,
        held_reoffers: u64,
    ) -> Result<(), String> {
        if self.buses.contains_key(bus) {
            return Err(format!("bus {bus} saved twice"));
        }
        self.buses.insert(
            bus.to_owned(),
            Entry {
                guest,
                host,
                generation,
                rescinds,
                held_reoffers,
            },
        );
        Ok(())
    }

    /// Sets the table-wide flags read from a saved state.
    pub(crate) fn set_restored_flags(
        &mut self,
        guest_connected: bool,
        all_offers_delivered: bool,
        next_generation: u64,
    ) {
        self.guest_connected = guest_connected;
        self.all_offers_delivered = all_offers_delivered;
        self.next_generation = next_generation;
    }

    /// Each bus's states and counts.
    pub fn inspect_bus(&self, bus: &str) -> Option<Node> {
        let e = self.buses.get(bus)?;
        Some(
            Node::dir()
                .child("guest_state", Node::debug(&e.guest))
                .child("host_state", Node::debug(&e.host))
                .child("generation", Node::display(&e.generation))
                .child("rescinds", Node::display(&e.rescinds))
                .child("held_reoffers", Node::display(&e.held_reoffers))
                .build(),
        )
    }

    /// The ids of every bus in the table.
    pub fn buses(&self) -> Vec<String> {
        self.buses.keys().cloned().collect()
    }

    /// Whether a guest is connected.
    pub fn has_guest(&self) -> bool {
        self.guest_connected
    }
}

fn offer(bus: &str) -> Action {
    Action::ToGuest(Message::Offer {
        bus: bus.to_owned(),
    })
}

fn rescind(bus: &str) -> Action {
    Action::ToGuest(Message::Rescind {
        bus: bus.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(t: &mut BusTable, bus: &str) -> u64 {
        match t.guest_open(bus).unwrap().as_slice() {
            [Action::Start { generation, .. }] => *generation,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reoffer_is_held_until_release() {
        let mut t = BusTable::new();
        t.guest_connected().unwrap();
        assert_eq!(t.host_offer("b").unwrap(), vec![offer("b")]);
        let g = start(&mut t, "b");
        assert_eq!(
            t.host_rescind("b").unwrap(),
            vec![Action::RevokeHost { bus: "b".into() }]
        );
        let stopped = t.bus_stopped("b", g);
        assert_eq!(stopped.first(), Some(&rescind("b")));
        // The host offers it again before the guest let go: held.
        assert_eq!(t.host_offer("b").unwrap(), vec![]);
        assert!(t.guest_open("b").is_err());
        assert_eq!(t.guest_release("b").unwrap(), vec![offer("b")]);
        start(&mut t, "b");
    }

    #[test]
    fn rescind_while_reoffered_withdraws_the_held_offer() {
        let mut t = BusTable::new();
        t.guest_connected().unwrap();
        t.host_offer("b").unwrap();
        t.host_rescind("b").unwrap();
        t.host_offer("b").unwrap();
        let a = t.host_rescind("b").unwrap();
        assert_eq!(
            a,
            vec![Action::ToHost(Message::Release { bus: "b".into() })]
        );
        assert_eq!(t.guest_release("b").unwrap(), vec![]);
        assert!(t.buses().is_empty());
    }

    #[test]
    fn stale_reports_and_duplicates() {
        let mut t = BusTable::new();
        t.guest_connected().unwrap();
        t.host_offer("b").unwrap();
        assert!(t.host_offer("b").is_err());
        let g = start(&mut t, "b");
        assert!(t.bus_stopped("b", g + 1).is_empty());
        assert!(t.guest_release("b").is_err());
        assert!(t.host_rescind("nope").is_err());
    }
}
