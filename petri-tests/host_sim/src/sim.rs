//! [`HostSim`]: several independent buses behind one sans-IO interface.

use crate::action::{ActionError, HostAction};
use crate::bus::HostBus;
use crate::config::{BusConfig, ConfigError};
use crate::event::HostEvent;
use inspect::{Inspect, Node};
use std::fmt;
use std::time::Duration;
use vmbus_channel::Packet;

/// A bus in a [`HostSim`], by the order it was added in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusId(pub usize);

impl fmt::Display for BusId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Several buses of one simulated host. Buses share nothing; outputs are drained bus by
/// bus in id order, so a run is deterministic.
#[derive(Debug, Default)]
pub struct HostSim {
    buses: Vec<HostBus>,
}

impl HostSim {
    /// A host with no buses.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a bus.
    pub fn add_bus(&mut self, config: BusConfig) -> Result<BusId, ConfigError> {
        self.buses.push(HostBus::new(config)?);
        Ok(BusId(self.buses.len() - 1))
    }

    /// The buses, by id.
    pub fn buses(&self) -> impl Iterator<Item = (BusId, &HostBus)> {
        self.buses.iter().enumerate().map(|(i, b)| (BusId(i), b))
    }

    /// One bus.
    pub fn bus(&self, id: BusId) -> Option<&HostBus> {
        self.buses.get(id.0)
    }

    /// One bus, to drive it directly.
    pub fn bus_mut(&mut self, id: BusId) -> Option<&mut HostBus> {
        self.buses.get_mut(id.0)
    }

    /// Hands a guest-side packet to bus `id`; `false` if there is no such bus.
    pub fn handle_packet(&mut self, id: BusId, now: Duration, packet: Packet) -> bool {
        match self.buses.get_mut(id.0) {
            Some(b) => {
                b.handle_packet(now, packet);
                true
            }
            None => false,
        }
    }

    /// Carries out a host action on bus `id`.
    pub fn act(&mut self, id: BusId, now: Duration, action: HostAction) -> Result<(), ActionError> {
        self.buses
            .get_mut(id.0)
            .ok_or(ActionError::NoSuchBus(id.0))?
            .act(now, action)
    }

    /// Lets virtual time pass to `now` on every bus.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.buses.iter_mut().for_each(|b| b.handle_timeout(now));
    }

    /// The earliest deadline of any bus.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.buses.iter().filter_map(HostBus::poll_timeout).min()
    }

    /// The next packet of the lowest-numbered bus that has one.
    pub fn poll_transmit(&mut self) -> Option<(BusId, Packet)> {
        self.buses
            .iter_mut()
            .enumerate()
            .find_map(|(i, b)| b.poll_transmit().map(|p| (BusId(i), p)))
    }

    /// The next event of the lowest-numbered bus that has one.
    pub fn poll_event(&mut self) -> Option<(BusId, HostEvent)> {
        self.buses
            .iter_mut()
            .enumerate()
            .find_map(|(i, b)| b.poll_event().map(|e| (BusId(i), e)))
    }
}

impl Inspect for HostSim {
    fn inspect(&self) -> Node {
        let mut dir = Node::dir();
        for (i, b) in self.buses.iter().enumerate() {
            dir = dir.field(i.to_string(), b);
        }
        dir.build()
    }
}
