//! A real driver stalled on one bus (`[guest] stall`), and the scenario's checks of the
//! relay's inspect trees (`[[check]]`) in a real run.
//!
//! While the stall holds, the controller offers none of that bus's kernel contexts (its
//! channel tasklet, its workqueue's worker, its rescind handler) and delivers nothing to it:
//! the driver on that bus makes no progress, as if its CPU were wedged there, while the other
//! buses' contexts and the shared process context go on. Virtual time runs on, so the host's
//! and the relay's deadlines fall due. A stall with a duration ends on time; one without
//! ends when the run has otherwise settled, so the teardown can remove the bus. The checks
//! are taken when the run first settles, before a stall without end is lifted: what the
//! relay shows of the stall is what they see.

use super::*;
use crate::vm::GuestStall;

/// The stall and the checks of one real run.
pub(super) struct StallState {
    /// The stall, if the scenario has one.
    spec: Option<GuestStall>,
    /// The run settled (or the teardown began): a stall is over.
    lifted: bool,
    /// The checks were taken.
    checked: bool,
    /// The scenario's checks: (bus, path, JSON value).
    checks: Vec<(usize, String, serde_json::Value)>,
    /// The PCI domain each bus's driver takes (its workqueue is named after it).
    domains: Vec<u16>,
    /// Each bus-specific context's bus, from the name the runtime gave it.
    ctx_bus: BTreeMap<u32, usize>,
}

impl StallState {
    pub(super) fn new(
        spec: Option<GuestStall>,
        checks: Vec<(usize, String, serde_json::Value)>,
        domains: Vec<u16>,
    ) -> Self {
        Self {
            spec,
            lifted: false,
            checked: false,
            checks,
            domains,
            ctx_bus: BTreeMap::new(),
        }
    }

    /// A new guest context: `tasklet:busN` and `vmbus_onoffer_rescind:busN` name their bus;
    /// a workqueue is `wq:hv_pci_D`, D the bus's PCI domain in hex.
    pub(super) fn context(&mut self, id: u32, name: &str) {
        let by_index = ["tasklet:bus", "vmbus_onoffer_rescind:bus"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .and_then(|n| n.parse::<usize>().ok());
        let by_domain = name
            .strip_prefix("wq:hv_pci_")
            .and_then(|d| u16::from_str_radix(d, 16).ok())
            .and_then(|d| self.domains.iter().position(|&x| x == d));
        if let Some(bus) = by_index.or(by_domain) {
            self.ctx_bus.insert(id, bus);
        }
    }

    /// The bus stalled at `now`, if any.
    pub(super) fn stalled_bus(&self, now: Duration) -> Option<usize> {
        let spec = self.spec.filter(|_| !self.lifted)?;
        spec.holds(spec.bus, now).then_some(spec.bus)
    }

    /// Whether context `ctx` is held back at `now`.
    pub(super) fn withholds(&self, now: Duration, ctx: u32) -> bool {
        self.stalled_bus(now)
            .is_some_and(|b| self.ctx_bus.get(&ctx) == Some(&b))
    }

    /// The next moment the stall starts or ends, in nanoseconds.
    pub(super) fn next_change_ns(&self, now: Duration) -> Option<u64> {
        let spec = self.spec.filter(|_| !self.lifted)?;
        let t = spec.next_change(now)?;
        u64::try_from(t.as_nanos()).ok()
    }
}

impl RealController {
    /// The run settled: take the checks (what the host sees, then the relay's trees) the
    /// first time (a failure ends the run with it), then lift a stall that still holds and
    /// let the run go on (the teardown still finds crashes and leaks). `None` when there is
    /// nothing to lift.
    pub(super) fn settle_stall(&mut self, sched: &Sched) -> Option<Action> {
        if !self.stall.checked && (self.stall.spec.is_some() || !self.stall.checks.is_empty()) {
            self.stall.checked = true;
            let mut verdict = self.host_visible_now();
            if verdict == Outcome::Ok {
                let checks = std::mem::take(&mut self.stall.checks);
                let sides = &mut self.sides;
                verdict = crate::vm::inspect_checks(&checks, |bus| {
                    sides.get_mut(bus)?.relay.as_mut()?.inspect()
                });
            }
            // What failed here is the run's finding; what a lifted stall would bring after
            // (a driver answering an EJECT its host gave up on) only follows from it.
            if verdict != Outcome::Ok {
                return Some(self.stop(verdict));
            }
        }
        let bus = self.stall.stalled_bus(self.now)?;
        self.stall.lifted = true;
        self.note(
            Lane::Guest,
            Lane::Guest,
            format!("bus {bus}: the stalled driver goes on (the run settled)"),
            Mark::None,
        );
        self.world_changed();
        Some(self.schedule(sched))
    }

    /// The teardown begins: no stall outlasts it.
    pub(super) fn lift_stall(&mut self) {
        self.stall.lifted = true;
    }
}
