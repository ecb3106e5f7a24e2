//! A guest stalled on one bus, and the scenario's checks of the relay's inspect trees: what a
//! model run and a real-driver run share of them.

use crate::outcome::Outcome;
use std::time::Duration;

/// A guest that stops on one bus: none of its contexts runs and nothing reaches it from
/// `from` on, until `until` if set (else for the rest of a model run, or until a real
/// driver's run has settled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestStall {
    /// The bus (its index among the scenario's buses).
    pub bus: usize,
    /// When the guest stops on it.
    pub from: Duration,
    /// When it goes on again, if it does.
    pub until: Option<Duration>,
}

impl GuestStall {
    /// Whether the guest of `bus` is stalled at `now`.
    pub fn holds(&self, bus: usize, now: Duration) -> bool {
        bus == self.bus && now >= self.from && self.until.is_none_or(|u| now < u)
    }

    /// The next moment after `now` the stall starts or ends: a moment of its own.
    pub fn next_change(&self, now: Duration) -> Option<Duration> {
        [Some(self.from), self.until]
            .into_iter()
            .flatten()
            .filter(|&t| t > now)
            .min()
    }
}

/// The scenario's checks of the relay's inspect trees: the first that does not hold, as
/// `check_failed`; a bus without a relay (a direct run) has nothing to check.
pub(crate) fn inspect_checks(
    checks: &[(usize, String, serde_json::Value)],
    mut tree_of: impl FnMut(usize) -> Option<inspect::Node>,
) -> Outcome {
    for (bus, path, expected) in checks {
        let Some(tree) = tree_of(*bus) else {
            continue;
        };
        let got = match tree.query(path) {
            Ok(node) => node.to_json(),
            Err(e) => serde_json::Value::String(format!("nothing ({e})")),
        };
        if got != *expected {
            return Outcome::CheckFailed {
                bus: *bus,
                path: path.clone(),
                expected: expected.to_string(),
                got: got.to_string(),
            };
        }
    }
    Outcome::Ok
}
