//! The VM subcommands of the `petri` binary: `demo`, `list`, `run`, `replay`.

use indicatif::{ProgressBar, ProgressStyle};
use petri::explore::{Strategy, Summary, check, explore, run_seed};
use petri::report::{COLUMNS, cell, column_name, table};
use petri::scenario::{GuestKind, Scenario, catalogue, load};
use std::process::ExitCode;

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} schedules  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn fail(context: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("petri {context}: {e}");
    ExitCode::from(2)
}

/// `petri demo`: `schedules` per model cell (default: each scenario's own), `real` per real
/// driver cell (each run is a process, so fewer).
pub(crate) fn demo(schedules: Option<u64>, real: u64, seed: u64, json: bool) -> ExitCode {
    let scenarios = catalogue();
    let per = |s: &Scenario, guest: GuestKind| {
        if guest.driver().is_some() {
            real
        } else {
            schedules.unwrap_or(s.schedules)
        }
    };
    let total: u64 = scenarios
        .iter()
        .map(|s| COLUMNS.iter().map(|(g, _)| per(s, *g)).sum::<u64>())
        .sum();
    let bar = if json {
        ProgressBar::hidden()
    } else {
        progress_bar(total)
    };
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for scenario in &scenarios {
        let mut row = vec![
            scenario.name.clone(),
            scenario.catalogue.clone().unwrap_or_default(),
        ];
        for (guest, relay) in COLUMNS {
            bar.set_message(format!("{} {}", scenario.name, column_name(guest, relay)));
            let done = bar.position();
            let summary = match explore(
                scenario,
                guest,
                relay,
                per(scenario, guest),
                Strategy::Random { first_seed: seed },
                |n| bar.set_position(done + n),
            ) {
                Ok(s) => s,
                Err(e) => return fail("demo", e),
            };
            if let Err(e) = check(scenario, guest, &summary) {
                problems.push(format!(
                    "{} {}: {e}",
                    scenario.name,
                    column_name(guest, relay)
                ));
            }
            if json {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            }
            row.push(cell(scenario, guest, &summary));
        }
        rows.push(row);
    }
    bar.finish_and_clear();
    if !json {
        let mut header = vec!["scenario".to_owned(), "catalogue".to_owned()];
        header.extend(COLUMNS.iter().map(|(g, r)| column_name(*g, *r)));
        print!("{}", table(&header, &rows));
        println!();
        println!(
            "Each cell: failing schedules / schedules explored, the commonest failure and the first \
             failing seed (replay it with `petri replay --seed S SCENARIO --guest 6.2 [--relay]`). \
             5.10, 6.1 and 6.12 are the real pci-hyperv.c of Debian 11, 12 and 13 (kernel_shim)."
        );
        if problems.is_empty() {
            println!(
                "Every expectation met: the unfixed guest fails where the catalogue says, and \
                 nothing fails through the relay."
            );
        } else {
            println!("Expectations not met (marked !):");
            for p in &problems {
                println!("  {p}");
            }
        }
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `petri list`.
pub(crate) fn list() -> ExitCode {
    let rows: Vec<Vec<String>> = catalogue()
        .into_iter()
        .map(|s| {
            vec![
                s.name,
                s.catalogue.unwrap_or_default(),
                s.schedules.to_string(),
                s.title,
            ]
        })
        .collect();
    let header = ["scenario", "catalogue", "schedules", "title"].map(str::to_owned);
    print!("{}", table(&header, &rows));
    ExitCode::SUCCESS
}

/// The arguments of `petri run`.
pub(crate) struct RunArgs {
    pub(crate) scenario: String,
    pub(crate) guest: Option<GuestKind>,
    pub(crate) mode: Option<bool>,
    pub(crate) schedules: Option<u64>,
    pub(crate) seed: u64,
    pub(crate) systematic: bool,
    pub(crate) json: bool,
    pub(crate) chart: Option<String>,
}

fn print_summary(scenario: &Scenario, guest: GuestKind, summary: &Summary) {
    let verdict = match check(scenario, guest, summary) {
        Ok(()) => "as expected".to_owned(),
        Err(e) => format!("NOT AS EXPECTED: {e}"),
    };
    println!(
        "{} {}: {} ({verdict})",
        scenario.name,
        column_name(guest, summary.relay),
        cell(scenario, guest, summary).trim_end_matches(" !")
    );
    if let Some(f) = &summary.first_failure {
        println!("  first failure: {f}");
    }
}

/// `petri run`.
pub(crate) fn run(args: RunArgs) -> ExitCode {
    let scenario = match load(&args.scenario) {
        Ok(s) => s,
        Err(e) => return fail("run", e),
    };
    let guests: Vec<GuestKind> = args.guest.map_or(GuestKind::ALL.to_vec(), |g| vec![g]);
    let modes: Vec<bool> = args.mode.map_or(vec![false, true], |m| vec![m]);
    if args.chart.is_some() && (guests.len() != 1 || modes.len() != 1) {
        return fail(
            "run",
            "--chart draws one run: choose --guest and one of --relay or --direct",
        );
    }
    let schedules = args.schedules.unwrap_or(scenario.schedules);
    let strategy = if args.systematic {
        Strategy::Systematic
    } else {
        Strategy::Random {
            first_seed: args.seed,
        }
    };
    let mut all_met = true;
    for &guest in &guests {
        for &relay in &modes {
            let bar = if args.json {
                ProgressBar::hidden()
            } else {
                progress_bar(schedules)
            };
            let summary = match explore(&scenario, guest, relay, schedules, strategy, |n| {
                bar.set_position(n)
            }) {
                Ok(s) => s,
                Err(e) => return fail("run", e),
            };
            bar.finish_and_clear();
            all_met &= check(&scenario, guest, &summary).is_ok();
            if args.json {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            } else {
                print_summary(&scenario, guest, &summary);
            }
            if let Some(path) = &args.chart {
                let seed = summary.first_failing_seed.unwrap_or(args.seed);
                if let Err(e) = write_chart(&scenario, guest, relay, seed, path) {
                    return fail("run", e);
                }
                if !args.json {
                    println!("  chart of seed {seed} written to {path}");
                }
            }
        }
    }
    if all_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn write_chart(
    scenario: &Scenario,
    guest: GuestKind,
    relay: bool,
    seed: u64,
    path: &str,
) -> Result<(), String> {
    let result = run_seed(scenario, guest, relay, seed, true).map_err(|e| e.to_string())?;
    let title = format!(
        "{} on {} {}, seed {seed}: {}",
        scenario.name,
        guest,
        if relay { "through the relay" } else { "direct" },
        result.outcome
    );
    let trace = result.trace.unwrap_or_default();
    std::fs::write(path, petri::chart::svg(&title, &trace, relay))
        .map_err(|e| format!("cannot write {path}: {e}"))
}

/// `petri replay`.
pub(crate) fn replay(
    scenario: &str,
    guest: GuestKind,
    relay: bool,
    seed: u64,
    chart: Option<&str>,
) -> ExitCode {
    let scenario = match load(scenario) {
        Ok(s) => s,
        Err(e) => return fail("replay", e),
    };
    let result = match run_seed(&scenario, guest, relay, seed, true) {
        Ok(r) => r,
        Err(e) => return fail("replay", e),
    };
    println!(
        "{} on {guest} {}, seed {seed}",
        scenario.name,
        if relay { "through the relay" } else { "direct" }
    );
    for line in result.trace.iter().flat_map(|t| &t.lines) {
        println!("{line}");
    }
    println!(
        "outcome: {} ({} steps, {} choices, ended at {:.3} ms)",
        result.outcome,
        result.steps,
        result.choices.len(),
        result.end.as_secs_f64() * 1000.0
    );
    if let Some(path) = chart {
        if let Err(e) = write_chart(&scenario, guest, relay, seed, path) {
            return fail("replay", e);
        }
        println!("chart written to {path}");
    }
    ExitCode::SUCCESS
}
