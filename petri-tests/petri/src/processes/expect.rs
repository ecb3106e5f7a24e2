//! Whether the runs of a scenario across processes met what the scenario expects of its guest
//! through the relay. Runs across processes always go through the service, so only the
//! expectations with `relay = true` apply; one of a failure there is met only by runs that
//! failed as it says (the relay exists so that none does), never by runs that passed.

use crate::scenario::{Expectation, Expected};

/// What the runs showed against the expectation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// No expectation through the relay is stated: nothing to meet.
    Unstated,
    /// The expectation is met.
    Met,
    /// The expectation is not met.
    Unmet,
}

impl Judgement {
    /// Nothing was expected that the runs did not show.
    pub fn ok(self) -> bool {
        self != Self::Unmet
    }

    /// How the summary line says it, for an expectation of `expected`.
    pub fn describe(self, expected: Option<Expected>) -> &'static str {
        match (self, expected) {
            (Self::Unstated, _) | (_, None) => "no expectation stated through the relay",
            (Self::Met, Some(Expected::Pass)) => "as expected through the relay",
            (Self::Unmet, Some(Expected::Pass)) => "NOT AS EXPECTED: the relay's runs must pass",
            (Self::Met, Some(Expected::Fail)) => "as expected: the runs failed through the relay",
            (Self::Unmet, Some(Expected::Fail)) => {
                "NOT AS EXPECTED: a failure was expected through the relay and no run showed it"
            }
        }
    }
}

/// Judges the failure kinds of the runs (one per failed run) against `expectation` (the
/// scenario's for this guest through the relay).
pub fn judge(expectation: Option<&Expectation>, failures: &[String]) -> Judgement {
    let Some(e) = expectation else {
        return Judgement::Unstated;
    };
    let met = match e.result {
        Expected::Pass => failures.is_empty(),
        Expected::Fail => failures
            .iter()
            .any(|f| e.kinds.is_empty() || e.kinds.contains(f)),
    };
    if met {
        Judgement::Met
    } else {
        Judgement::Unmet
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::GuestKind;

    fn expect(result: Expected, kinds: &[&str]) -> Expectation {
        Expectation {
            guest: GuestKind::Linux62,
            relay: true,
            result,
            kinds: kinds.iter().map(|&k| k.to_owned()).collect(),
        }
    }

    /// A failure expected is met only by a run that failed as expected; a pass expected only
    /// by runs that all passed.
    #[test]
    fn a_failure_expected_is_unmet_by_passing_runs() {
        let fail = expect(Expected::Fail, &["null_deref"]);
        assert_eq!(judge(Some(&fail), &[]), Judgement::Unmet);
        assert_eq!(judge(Some(&fail), &["hang".into()]), Judgement::Unmet);
        assert_eq!(judge(Some(&fail), &["null_deref".into()]), Judgement::Met);
        let any = expect(Expected::Fail, &[]);
        assert_eq!(judge(Some(&any), &[]), Judgement::Unmet);
        assert_eq!(judge(Some(&any), &["hang".into()]), Judgement::Met);
        let pass = expect(Expected::Pass, &[]);
        assert_eq!(judge(Some(&pass), &[]), Judgement::Met);
        assert_eq!(judge(Some(&pass), &["hang".into()]), Judgement::Unmet);
        assert_eq!(judge(None, &["hang".into()]), Judgement::Unstated);
        assert!(!Judgement::Unmet.ok() && Judgement::Unstated.ok());
    }
}
