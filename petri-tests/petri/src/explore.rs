//! Running many schedules of one scenario: seeded random schedules, or a bounded systematic
//! walk of the choice tree; and checking the result against the scenario's expectations.

use crate::outcome::RunResult;
use crate::scenario::{Expected, GuestKind, Scenario, Servicing};
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
        None => {
            #[allow(unused_mut)]
            let mut vm = Vm::new(spec, chooser)?.with_servicing(scenario.relay.servicing);
            #[cfg(feature = "safeguard-switches")]
            vm.set_service_tamper(scenario.relay.tamper);
            Ok(vm.run())
        }
    }
}

/// The most schedules a systematic walk keeps waiting. Fixed, not tied to a run's budget, so
/// that `petri replay --systematic N` walks to the same schedule N as the run did.
pub const SYSTEMATIC_QUEUE: usize = 20_000;

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
    /// For each failure kind, the first seed that ended with it (random strategy): `petri
    /// replay --seed S` replays to that kind.
    pub first_seed_by_kind: BTreeMap<String, u64>,
    /// The host script steps that did not fire in at least one schedule, in script order.
    pub unfired_steps: Vec<UnfiredStep>,
    /// `random` (seeded schedules) or `systematic` (a walk of the choice tree).
    pub strategy: &'static str,
    /// The systematic walk ran every schedule of the choice tree: no other interleaving of
    /// this scenario, guest and mode exists.
    pub exhaustive: bool,
    /// For each failure kind, the first systematic schedule (counting from 0) that ended
    /// with it: `petri replay --systematic N` replays it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub first_schedule_by_kind: BTreeMap<String, u64>,
    /// Relay servicings over all runs, when the runs service their relays (`--servicing`,
    /// `[relay] servicing`): shown so that a run set where none happened is seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servicings: Option<u64>,
}

/// A host script step that did not fire in some schedules of a run set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnfiredStep {
    /// The bus (counting from 0, in the order of the scenario's `[[bus]]` tables).
    pub bus: usize,
    /// The step (counting from 1, in the order of its bus's `[[bus.script.steps]]`).
    pub step: usize,
    /// Its trigger, in scenario words (`received CREATE_INTERRUPT_MESSAGE3 for slot 1`).
    pub when: String,
    /// Whether the scenario marks it `optional` (then never firing is no failure).
    pub optional: bool,
    /// How many schedules it did not fire in.
    pub missed: u64,
}

impl UnfiredStep {
    /// The steps of `scenario` that did not fire, each described in scenario words, from how
    /// many runs each missed: `(bus, step)` keys count from 0 (bus and step alike), in order.
    pub fn described(
        scenario: &Scenario,
        missed: impl IntoIterator<Item = ((usize, usize), u64)>,
    ) -> Vec<Self> {
        missed
            .into_iter()
            .map(|((bus, step), missed)| {
                let s = scenario
                    .buses
                    .get(bus)
                    .and_then(|b| b.script.steps.get(step));
                Self {
                    bus,
                    step: step + 1,
                    when: s.map(|s| s.when.to_string()).unwrap_or_default(),
                    optional: s.is_some_and(|s| s.optional),
                    missed,
                }
            })
            .collect()
    }

    /// Whether the step never fired in any of `schedules` schedules and is not optional: the
    /// run set did not reach what the scenario is about.
    pub fn fatal(&self, schedules: u64) -> bool {
        !self.optional && schedules > 0 && self.missed >= schedules
    }

    /// `step 1 (received BUS_D0ENTRY) never fired in 20 of 20 schedules (optional)`: the
    /// line `petri run` prints for it, out of `of` runs called `unit` (`schedules`, `runs`).
    pub fn line(&self, of: u64, unit: &str) -> String {
        format!(
            "{} ({}) {} in {} of {of} {unit}{}",
            self.name(),
            self.when,
            if self.missed >= of {
                "never fired"
            } else {
                "did not fire"
            },
            self.missed,
            if self.optional { " (optional)" } else { "" }
        )
    }

    /// `step 1` (or `bus 2 step 1` beyond the first bus).
    pub fn name(&self) -> String {
        if self.bus == 0 {
            format!("step {}", self.step)
        } else {
            format!("bus {} step {}", self.bus + 1, self.step)
        }
    }
}

impl Summary {
    /// The required steps that never fired in any schedule.
    pub fn never_fired(&self) -> impl Iterator<Item = &UnfiredStep> {
        self.unfired_steps
            .iter()
            .filter(|u| u.fatal(self.schedules))
    }

    /// The failure kinds with their counts, commonest first (ties by name), and the first
    /// seed of each when known.
    pub fn failure_kinds(&self) -> Vec<(&str, u64, Option<u64>)> {
        let mut kinds: Vec<(&str, u64, Option<u64>)> = self
            .outcomes
            .iter()
            .filter(|(k, _)| k.as_str() != "ok")
            .map(|(k, n)| (k.as_str(), *n, self.first_seed_by_kind.get(k).copied()))
            .collect();
        kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        kinds
    }
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

/// Runs schedule `n` (counting from 0) of the systematic walk, as `explore` with
/// [`Strategy::Systematic`] ran it; `None` if the choice tree has fewer schedules.
pub fn run_systematic(
    scenario: &Scenario,
    guest: GuestKind,
    relay: bool,
    n: u64,
    record: bool,
) -> Result<Option<RunResult>, RunError> {
    let spec = scenario.vm_spec(guest, relay, false);
    let mut systematic = Systematic::new(SYSTEMATIC_QUEUE);
    for i in 0..n {
        let Some(prefix) = systematic.next_prefix() else {
            return Ok(None);
        };
        let result = run_one(
            scenario,
            &spec,
            guest,
            relay,
            Chooser::prefix(prefix),
            i,
            false,
        )?;
        systematic.record(&result.choices);
    }
    let Some(prefix) = systematic.next_prefix() else {
        return Ok(None);
    };
    let spec = scenario.vm_spec(guest, relay, record);
    run_one(
        scenario,
        &spec,
        guest,
        relay,
        Chooser::prefix(prefix),
        n,
        record,
    )
    .map(Some)
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
        first_seed_by_kind: BTreeMap::new(),
        unfired_steps: Vec::new(),
        strategy: match strategy {
            Strategy::Random { .. } => "random",
            Strategy::Systematic => "systematic",
        },
        exhaustive: false,
        first_schedule_by_kind: BTreeMap::new(),
        servicings: (relay && scenario.relay.servicing != Servicing::Off).then_some(0),
    };
    let mut missed: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    let mut systematic = Systematic::new(SYSTEMATIC_QUEUE);
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
        if let Some(n) = &mut summary.servicings {
            *n += result.servicings;
        }
        *summary
            .outcomes
            .entry(result.outcome.kind().to_owned())
            .or_default() += 1;
        for step in &result.unfired_steps {
            *missed.entry(*step).or_default() += 1;
        }
        if let (true, Some(seed)) = (result.outcome.failed(), seed) {
            summary
                .first_seed_by_kind
                .entry(result.outcome.kind().to_owned())
                .or_insert(seed);
        }
        if result.outcome.failed() && seed.is_none() {
            summary
                .first_schedule_by_kind
                .entry(result.outcome.kind().to_owned())
                .or_insert(i);
        }
        if result.outcome.failed() {
            summary.failures += 1;
            if summary.first_failure.is_none() {
                summary.first_failing_seed = seed;
                summary.first_failure = Some(result.outcome.to_string());
            }
        }
        progress(summary.schedules);
    }
    summary.exhaustive = strategy == Strategy::Systematic && {
        let done = systematic.next_prefix().is_none();
        done && systematic.exhausted()
    };
    summary.unfired_steps = UnfiredStep::described(scenario, missed);
    Ok(summary)
}

/// Whether a summary meets the scenario's expectation for its guest and mode; `Err` says
/// why not. A required script step that never fired in any schedule fails whatever the
/// expectation (the runs never reached what the scenario is about). No expectation stated:
/// anything else goes.
pub fn check(scenario: &Scenario, guest: GuestKind, summary: &Summary) -> Result<(), String> {
    // A harness error is never the guest's outcome: it fails whatever was expected.
    if let Some(n) = summary.outcomes.get("harness_error") {
        return Err(format!(
            "{n} harness error(s), not the guest's: {}",
            summary.first_failure.as_deref().unwrap_or("?")
        ));
    }
    // Servicing asked for and never done would pass for nothing.
    if summary.servicings == Some(0) && summary.schedules > 0 {
        return Err(format!(
            "servicing was asked for, but no relay was serviced in {} schedules",
            summary.schedules
        ));
    }
    if let Some(u) = summary.never_fired().next() {
        return Err(format!(
            "{} ({}) never fired in any of {} schedules: the runs never reached the scenario's \
             window",
            u.name(),
            u.when,
            summary.schedules
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
