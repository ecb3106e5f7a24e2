//! Servicing during a model run: each bus's relay saved, dropped and restored at every
//! scheduling point when the run asks for it, and the bus views the comparison of a
//! serviced run with a plain one reads.

use super::{Vm, guest_functions, host_functions};
use crate::outcome::{BusView, Outcome};
use crate::scenario::Servicing;

impl Vm {
    /// Services every bus's relay as `servicing` says (a direct run has none to service).
    pub fn with_servicing(mut self, servicing: Servicing) -> Self {
        self.servicing = servicing;
        for bus in &mut self.buses {
            bus.side.servicing = servicing == Servicing::EveryStep;
        }
        self
    }

    /// Test-only: a lossy servicing, `tamper` changing every saved state before it is
    /// restored (so a test can show that servicing's checks catch a loss).
    pub fn set_service_tamper(&mut self, tamper: Option<vpci_relay::sim::Tamper>) {
        for bus in &mut self.buses {
            if let Some(relay) = &mut bus.side.relay {
                relay.set_tamper(tamper);
            }
        }
    }

    /// Services every bus's relay if the run does so at every step; a servicing that fails
    /// is the harness's error (never the guest's outcome).
    pub(super) fn service_relays(&mut self) -> Option<Outcome> {
        if self.servicing != Servicing::EveryStep {
            return None;
        }
        let mut serviced = false;
        for (i, bus) in self.buses.iter_mut().enumerate() {
            match bus.side.service(i, self.now, self.trace.as_mut()) {
                Ok(s) => serviced |= s,
                Err(reason) => return Some(Outcome::HarnessError { reason }),
            }
        }
        if serviced {
            self.pump();
        }
        None
    }

    /// What the guest holds and the host has on every bus now.
    pub(super) fn views(&mut self) -> Vec<BusView> {
        self.buses
            .iter_mut()
            .enumerate()
            .map(|(bus, b)| {
                let mut guest = guest_functions(&b.guest.devices());
                guest.sort_by_key(|(slot, id)| (slot.raw(), *id));
                BusView {
                    bus,
                    guest,
                    host: host_functions(&mut b.side.host),
                }
            })
            .collect()
    }
}
