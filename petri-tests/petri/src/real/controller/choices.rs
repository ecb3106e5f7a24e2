//! The controller's choice points in the trace: each scheduling step stamped, and at each
//! choice what ran and what else could have, in the kernel's words (see
//! `super::super::choice_points`).

use super::{Pick, RealController};
use crate::host_side::Delivery;
use kernel_shim::guest::Sched;

impl RealController {
    /// A scheduling point: the offering context's site is noted, later trace lines are
    /// stamped with the step it leads to.
    pub(super) fn note_point(&mut self, sched: &Sched) {
        if let Some(trace) = &mut self.trace {
            self.observer.choice_points.offered(sched);
            trace.begin_step(self.steps + 1);
        }
    }

    /// The choice among `options`: `index` ran.
    pub(super) fn note_choice(&mut self, options: &[Pick], index: usize) {
        if self.trace.is_none() {
            return;
        }
        let labels: Vec<String> = options.iter().map(|&o| self.pick_label(o)).collect();
        if let Some(trace) = &mut self.trace {
            trace.choice(self.now, index, &labels);
        }
    }

    /// An option in a replay's words: the context and where it stands, or the delivery.
    fn pick_label(&mut self, pick: Pick) -> String {
        match pick {
            Pick::Run(c) => {
                let name = self.context_name(c);
                match self.observer.choice_points.doing(c) {
                    doing if doing.is_empty() => name,
                    doing => format!("{name}: {doing}"),
                }
            }
            Pick::Deliver(bus) => {
                let what = match self.sides.get(bus).and_then(|s| s.next_in_flight()) {
                    Some(Delivery::Packet(p, _)) => crate::labels::packet(p),
                    Some(Delivery::Rescind(_)) => "the rescind".to_owned(),
                    None => "nothing".to_owned(),
                };
                format!("delivery of {what} to bus {bus}'s channel")
            }
        }
    }
}
