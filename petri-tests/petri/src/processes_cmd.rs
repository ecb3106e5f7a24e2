//! `petri run SCENARIO --processes`: the scenario through the real service, each side in its
//! own process, in real time (see [`petri::processes`]). Prints one line per run and a
//! summary; a run is not replayable.

use petri::explore::UnfiredStep;
use petri::processes::{self, ProcessOptions};
use petri::scenario::{self, GuestKind};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

/// What `--processes` was given.
pub(crate) struct ProcessArgs {
    pub(crate) scenario: String,
    pub(crate) guests: Vec<GuestKind>,
    pub(crate) runs: u64,
    pub(crate) storm: u32,
    pub(crate) updates: u32,
    pub(crate) json: bool,
}

/// Runs the scenario `runs` times on each guest in three processes.
pub(crate) fn run(args: ProcessArgs) -> ExitCode {
    let sc = match scenario::load(&args.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("petri run: {e}");
            return ExitCode::from(2);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("petri run: cannot find petri's own executable: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = ProcessOptions {
        exe,
        storm: args.storm,
        late_buses: 0,
        updates: args.updates,
        quiet: (sc.relay.settle.0 * 5).max(Duration::from_millis(750)),
        limit: Duration::from_secs(120)
            + Duration::from_millis(u64::from(args.storm) * 300)
            + Duration::from_millis(u64::from(args.updates) * 200),
        verbose: std::env::var_os("PETRI_VERBOSE").is_some(),
    };
    let mut all_met = true;
    for &guest in &args.guests {
        let mut failures = Vec::new();
        let mut total = Duration::ZERO;
        let mut missed: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        for run in 0..args.runs {
            let r = match processes::run(&args.scenario, guest, &opts) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("petri run: {} {}: {e}", sc.name, guest.name());
                    return ExitCode::from(2);
                }
            };
            total += r.elapsed;
            for &step in &r.unfired {
                *missed.entry(step).or_default() += 1;
            }
            if run == 0 && !args.json {
                println!("service: {}", r.service);
            }
            for s in &r.storm {
                if !args.json {
                    println!("  {s}");
                }
            }
            if args.updates > 0 && !args.json {
                println!(
                    "  updates: {} of {} (each answered by the new image)",
                    r.updates, args.updates
                );
            }
            if args.json {
                let line = serde_json::json!({
                    "scenario": sc.name,
                    "guest": guest.name(),
                    "mode": "processes",
                    "replayable": false,
                    "run": run,
                    "outcome": r.outcome.kind(),
                    "failure": r.outcome.failed().then(|| r.outcome.to_string()),
                    "seconds": r.elapsed.as_secs_f64(),
                    "storm": r.storm,
                    "updates": r.updates,
                });
                println!("{line}");
            } else {
                println!(
                    "{} {} processes run {}: {} ({:.1} s)",
                    sc.name,
                    guest.name(),
                    run + 1,
                    r.outcome,
                    r.elapsed.as_secs_f64()
                );
            }
            if r.outcome.failed() || opts.verbose {
                for l in &r.host_lines[r.host_lines.len().saturating_sub(12)..] {
                    println!("  host: {l}");
                }
                for l in &r.guest_lines[r.guest_lines.len().saturating_sub(12)..] {
                    println!("  guest: {l}");
                }
            }
            if r.outcome.failed() {
                failures.push(r.outcome.kind().to_owned());
            }
        }
        // Through the service is through the relay: the relay's expectation applies, and one
        // of a failure is met only by runs that failed (never by runs that passed).
        let expectation = sc.expectation(guest, true);
        let judgement = processes::judge(expectation, &failures);
        let unfired = UnfiredStep::described(&sc, missed);
        // A required step that fired in no run: the runs never reached what the scenario is
        // about, so they show nothing, whatever their outcome.
        let never = unfired.iter().find(|u| u.fatal(args.runs));
        let met = judgement.ok() && never.is_none();
        all_met &= met;
        if args.json {
            let line = serde_json::json!({
                "scenario": sc.name,
                "guest": guest.name(),
                "mode": "processes",
                "runs": args.runs,
                "failed": failures.len(),
                "expectation": match (never, judgement) {
                    (Some(_), _) => "unreached",
                    (None, processes::Judgement::Unstated) => "unstated",
                    (None, processes::Judgement::Met) => "met",
                    (None, processes::Judgement::Unmet) => "unmet",
                },
                "unfired_steps": unfired,
            });
            println!("{line}");
        } else {
            println!(
                "{} {} processes: {}/{} failed{} in {:.1} s; {}; not replayable (real processes, \
                 real concurrency and time)",
                sc.name,
                guest.name(),
                failures.len(),
                args.runs,
                if failures.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", failures.join(", "))
                },
                total.as_secs_f64(),
                match never {
                    Some(u) => format!(
                        "NOT AS EXPECTED: {} ({}) never fired in any of {} runs: the runs never \
                         reached the scenario's window",
                        u.name(),
                        u.when,
                        args.runs
                    ),
                    None => judgement.describe(expectation.map(|e| e.result)).to_owned(),
                }
            );
            for u in &unfired {
                println!("  {}", u.line(args.runs, "runs"));
            }
        }
    }
    if all_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
