//! Servicing during a real-guest run: each bus's relay saved, dropped and restored at every
//! scheduling point when the run asks for it.

use super::*;
use crate::scenario::Servicing;

impl RealController {
    /// Services every bus's relay when the run does so at every scheduling point (then
    /// pumps, so the restored relays do what they have to).
    pub(super) fn service_relays(&mut self) -> Result<(), String> {
        if self.servicing != Servicing::EveryStep {
            return Ok(());
        }
        let mut serviced = false;
        for (bus, side) in self.sides.iter_mut().enumerate() {
            serviced |= side.service(bus, self.now, self.trace.as_mut())?;
        }
        if serviced {
            self.pump();
        }
        Ok(())
    }
}
