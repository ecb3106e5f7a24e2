//! Running many schedules of one scenario: seeded random schedules, or a bounded systematic
//! walk of the choice tree; and checking the result against the scenario's expectations.

use crate::outcome::RunResult;
use crate::scenario::{Expected, GuestKind, Scenario};
use crate::sched::{Chooser, Systematic};
use crate::vm::Vm;
use serde::Serialize;
use std::collections::BTreeMap;
use thiserror::Error;

/// Why runs could not be made.
#[derive(Debug, Error)]
pub enum RunError {
    /// A bus of the scenario is not a valid host_sim bus.
    #[error(transparent)]
    Config(#[from] host_sim::ConfigError),
    /// A real-guest run could not be made.
    #[error(transparent)]
    Real(#[from] crate::real::RealError),
}

/// Runs one schedule named by `chooser` (and `seed`, which also seeds a chaotic host).
fn run_one(
    scenario: &Scenario,
    spec: &crate::vm::VmSpec,
    guest: GuestKind,
    relay: bool,
    chooser: Chooser,
    seed: u64,
    record: bool,
) -> Result<RunResult, RunError> {
    match guest.driver() {
        Some(version) => Ok(crate::real::run(
            scenario, version, relay, chooser, seed, record,
        )?),
        None => Ok(Vm::new(spec, chooser)?.run()),
    }
}

/// How schedules are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Seeds `first_seed`, `first_seed + 1`, ...
    Random {
        /// The first seed.
        first_seed: u64,
    },
    /// Depth first over the choice tree, from the all-first-options schedule on.
    Systematic,
}

/// What a set of runs of one scenario, guest and mode showed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The scenario.
    pub scenario: String,
    /// The guest.
    pub guest: String,
    /// Through the relay.
    pub relay: bool,
    /// Schedules run.
    pub schedules: u64,
    /// Schedules that failed.
    pub failures: u64,
    /// The seed of the first failing schedule (random strategy), if any.
    pub first_failing_seed: Option<u64>,
    /// How many runs ended each way (`ok`, `null_deref`, `hang`, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// The first failure, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<String>,
}

/// Runs one schedule: seed `seed` of the scenario for this guest and mode.
pub fn run_seed(
    scenario: &Scenario,
    guest: GuestKind,
    relay: bool,
    seed: u64,
    record: bool,
) -> Result<RunResult, RunError> {
    let mut spec = scenario.vm_spec(guest, relay, record);
    if let Some(chaos) = &mut spec.chaos {
        chaos.seed = seed;
    }
    run_one(
        scenario,
        &spec,
        guest,
        relay,
        Chooser::seeded(seed),
        seed,
        record,
    )
}

/// Runs `schedules` schedules; `progress` is called after each with the count so far.
pub fn explore(
    scenario: &Scenario,
    guest: GuestKind,
    relay: bool,
    schedules: u64,
    strategy: Strategy,
    mut progress: impl FnMut(u64),
) -> Result<Summary, RunError> {
    let mut spec = scenario.vm_spec(guest, relay, false);
    let mut summary = Summary {
        scenario: scenario.name.clone(),
        guest: guest.name().to_owned(),
        relay,
        schedules: 0,
        failures: 0,
        first_failing_seed: None,
        outcomes: BTreeMap::new(),
        first_failure: None,
    };
    let mut systematic = Systematic::new(usize::try_from(schedules).unwrap_or(usize::MAX));
    for i in 0..schedules {
        let (chooser, seed) = match strategy {
            Strategy::Random { first_seed } => {
                let seed = first_seed.wrapping_add(i);
                if let Some(chaos) = &mut spec.chaos {
                    chaos.seed = seed;
                }
                (Chooser::seeded(seed), Some(seed))
            }
            Strategy::Systematic => match systematic.next_prefix() {
                Some(prefix) => (Chooser::prefix(prefix), None),
                None => break,
            },
        };
        let result = run_one(
            scenario,
            &spec,
            guest,
            relay,
            chooser,
            seed.unwrap_or(i),
            false,
        )?;
        if strategy == Strategy::Systematic {
            systematic.record(&result.choices);
        }
        summary.schedules += 1;
        *summary
            .outcomes
            .entry(result.outcome.kind().to_owned())
            .or_default() += 1;
        if result.outcome.failed() {
            summary.failures += 1;
            if summary.first_failure.is_none() {
                summary.first_failing_seed = seed;
                summary.first_failure = Some(result.outcome.to_string());
            }
        }
        progress(summary.schedules);
    }
    Ok(summary)
}

/// Whether a summary meets the scenario's expectation for its guest and mode; `Err` says
/// why not. No expectation stated: anything goes.
pub fn check(scenario: &Scenario, guest: GuestKind, summary: &Summary) -> Result<(), String> {
    // A harness error is never the guest's outcome: it fails whatever was expected.
    if let Some(n) = summary.outcomes.get("harness_error") {
        return Err(format!(
            "{n} harness error(s), not the guest's: {}",
            summary.first_failure.as_deref().unwrap_or("?")
        ));
    }
    let Some(e) = scenario.expectation(guest, summary.relay) else {
        return Ok(());
    };
    match e.result {
        Expected::Pass if summary.failures > 0 => Err(format!(
            "expected no failure, got {} of {} ({})",
            summary.failures,
            summary.schedules,
            summary.first_failure.as_deref().unwrap_or("?")
        )),
        Expected::Fail if summary.failures == 0 => Err(format!(
            "expected a failure, none in {} schedules",
            summary.schedules
        )),
        Expected::Fail
            if !e.kinds.is_empty()
                && !summary
                    .outcomes
                    .keys()
                    .any(|k| e.kinds.iter().any(|w| w == k)) =>
        {
            Err(format!(
                "expected a failure of kind {}, got {:?}",
                e.kinds.join(" or "),
                summary.outcomes
            ))
        }
        _ => Ok(()),
    }
}
