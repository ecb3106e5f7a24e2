//! The VM subcommands of the `petri` binary: `demo`, `list`, `run`, `replay`.

use indicatif::{ProgressBar, ProgressStyle};
use petri::explore::{Strategy, Summary, check, explore, run_seed, run_systematic};
use petri::labels::RelayTimes;
use petri::outcome::RunResult;
use petri::report::{COLUMNS, cell, column_name, demo_table, kinds_text, replay_command, table};
use petri::scenario::{GuestKind, Scenario, Servicing, builtin_text, catalogue, load};
use petri::trace::Trace;
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
pub(crate) fn demo(
    schedules: Option<u64>,
    real: u64,
    seed: u64,
    json: bool,
    servicing: Option<Servicing>,
) -> ExitCode {
    let mut scenarios = catalogue();
    if let Some(servicing) = servicing {
        for s in &mut scenarios {
            s.relay.servicing = servicing;
        }
    }
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
    let mut results = Vec::new();
    let mut problems = Vec::new();
    for scenario in &scenarios {
        let mut row = Vec::new();
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
            row.push(summary);
        }
        results.push((scenario, row));
    }
    bar.finish_and_clear();
    if !json {
        print!("{}", demo_table(&results));
        println!();
        println!(
            "Each cell: failing schedules / schedules explored, and the letter of its note above: \
             every failure kind with its count and the first seed that replays to it, script \
             steps that did not fire (n/a: a step the scenario needs never fired, so the runs \
             never reached its window), and the command that replays the commonest failure. \
             ! marks an expectation not met. 5.10, 6.1 and 6.12 are the real pci-hyperv.c of \
             Debian 11, 12 and 13 (kernel_shim); dir = direct, relay = through the relay."
        );
        if let Some(servicing) = servicing.filter(|s| *s != Servicing::Off) {
            let total: u64 = results
                .iter()
                .flat_map(|(_, row)| row.iter().filter_map(|s| s.servicings))
                .sum();
            println!(
                "Servicing ({}): {total} relay servicings (saved, encoded, restored) over the \
                 relay columns' runs.",
                servicing.name()
            );
        }
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

/// `petri list --show NAME`: a built-in scenario's TOML.
pub(crate) fn show(name: &str) -> ExitCode {
    match builtin_text(name) {
        Some(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        None => {
            let names: Vec<String> = catalogue().into_iter().map(|s| s.name).collect();
            fail(
                "list",
                format!(
                    "no built-in scenario {name:?} (built in: {})",
                    names.join(", ")
                ),
            )
        }
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
    pub(crate) real_schedules: Option<u64>,
    pub(crate) seed: u64,
    pub(crate) systematic: bool,
    pub(crate) json: bool,
    pub(crate) chart: Option<String>,
    /// `--servicing`: overrides the scenario's `[relay] servicing`.
    pub(crate) servicing: Option<Servicing>,
}

fn print_summary(scenario: &Scenario, guest: GuestKind, summary: &Summary) {
    let verdict = match check(scenario, guest, summary) {
        Err(e) => format!("NOT AS EXPECTED: {e}"),
        Ok(()) if scenario.expectation(guest, summary.relay).is_none() => {
            "no expectation stated for this guest and mode".to_owned()
        }
        Ok(()) => "as expected".to_owned(),
    };
    let kinds = kinds_text(summary);
    println!(
        "{} {}: {}{}{} ({verdict})",
        scenario.name,
        column_name(guest, summary.relay),
        cell(scenario, guest, summary).trim_end_matches(" !"),
        if kinds.is_empty() { "" } else { ": " },
        kinds
    );
    for u in &summary.unfired_steps {
        println!("  {}", u.line(summary.schedules, "schedules"));
    }
    if summary.exhaustive {
        println!(
            "  exhaustive: the systematic walk ran every schedule of the choice tree ({}); no \
             other interleaving exists",
            summary.schedules
        );
    } else if summary.strategy == "systematic" {
        println!(
            "  not exhaustive: the choice tree has more than the {} schedules run",
            summary.schedules
        );
    }
    if let Some(n) = summary.servicings {
        println!(
            "  servicing ({}): {n} relay servicings (saved, encoded, restored) over {} schedules",
            scenario.relay.servicing.name(),
            summary.schedules
        );
    }
    if let Some(f) = &summary.first_failure {
        println!("  first failure: {f}");
    }
    if let Some(cmd) = replay_command(&scenario.name, guest, summary) {
        println!("  replay: {cmd}");
    }
}

/// `petri run`.
pub(crate) fn run(args: RunArgs) -> ExitCode {
    let mut scenario = match load(&args.scenario) {
        Ok(s) => s,
        Err(e) => return fail("run", e),
    };
    if let Some(servicing) = args.servicing {
        scenario.relay.servicing = servicing;
    }
    let guests: Vec<GuestKind> = args.guest.map_or(GuestKind::ALL.to_vec(), |g| vec![g]);
    let modes: Vec<bool> = args.mode.map_or(vec![false, true], |m| vec![m]);
    if args.chart.is_some() && (guests.len() != 1 || modes.len() != 1) {
        return fail(
            "run",
            "--chart draws one run: choose --guest and --mode direct or --mode relay",
        );
    }
    // A real driver's run is a process: `--real-schedules`, else `--schedules`, else 20.
    let schedules_for = |guest: GuestKind| match guest.driver() {
        Some(_) => args.real_schedules.or(args.schedules).unwrap_or(20),
        None => args.schedules.unwrap_or(scenario.schedules),
    };
    let strategy = if args.systematic {
        Strategy::Systematic
    } else {
        Strategy::Random {
            first_seed: args.seed,
        }
    };
    let mut all_met = true;
    for &guest in &guests {
        let schedules = schedules_for(guest);
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
                let which = if args.systematic {
                    let first = summary.first_schedule_by_kind.values().min();
                    Schedule::Systematic(first.copied().unwrap_or(0))
                } else {
                    Schedule::Seed(summary.first_failing_seed.unwrap_or(args.seed))
                };
                if let Err(e) = write_chart(&scenario, guest, relay, which, path) {
                    return fail("run", e);
                }
                if !args.json {
                    println!("  chart of {which} written to {path}");
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

/// Which schedule to run: a seed, or a schedule of the systematic walk.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Schedule {
    /// `--seed N`.
    Seed(u64),
    /// `--systematic N`.
    Systematic(u64),
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Seed(n) => write!(f, "seed {n}"),
            Schedule::Systematic(n) => write!(f, "systematic schedule {n}"),
        }
    }
}

fn run_schedule(
    scenario: &Scenario,
    guest: GuestKind,
    relay: bool,
    which: Schedule,
) -> Result<RunResult, String> {
    match which {
        Schedule::Seed(seed) => run_seed(scenario, guest, relay, seed, true).map_err(|e| e.to_string()),
        Schedule::Systematic(n) => run_systematic(scenario, guest, relay, n, true)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!("the choice tree has no schedule {n} (they count from 0: see `petri run --systematic`)")
            }),
    }
}

fn write_chart(
    scenario: &Scenario,
    guest: GuestKind,
    relay: bool,
    which: Schedule,
    path: &str,
) -> Result<(), String> {
    let result = run_schedule(scenario, guest, relay, which)?;
    let title = format!(
        "{} on {} {}, {which}: {}",
        scenario.name,
        guest,
        if relay { "through the relay" } else { "direct" },
        result.outcome
    );
    let trace = polished(scenario, relay, result.trace.unwrap_or_default());
    std::fs::write(path, petri::chart::svg(&title, &trace, relay))
        .map_err(|e| format!("cannot write {path}: {e}"))
}

/// `trace` in the replay's and chart's vocabulary (see [`petri::labels`]).
fn polished(scenario: &Scenario, relay: bool, mut trace: Trace) -> Trace {
    let times = relay.then_some(RelayTimes {
        settle: scenario.relay.settle.0,
        max_hold: scenario.relay.max_hold.0,
    });
    petri::labels::polish(&mut trace, scenario, times);
    trace
}

/// What `petri replay` writes besides the replay itself.
pub(crate) struct ReplayOutput<'a> {
    /// The message sequence chart's file.
    pub(crate) chart: Option<&'a str>,
    /// List a real guest's choice points too.
    pub(crate) verbose: bool,
    /// The directory for the ring images.
    pub(crate) dump_rings: Option<&'a str>,
    /// `--servicing`: overrides the scenario's `[relay] servicing`.
    pub(crate) servicing: Option<Servicing>,
}

/// `petri replay`.
pub(crate) fn replay(
    scenario: &str,
    guest: GuestKind,
    relay: bool,
    which: Schedule,
    output: ReplayOutput<'_>,
) -> ExitCode {
    let ReplayOutput {
        chart,
        verbose,
        dump_rings,
        servicing,
    } = output;
    let real = guest.driver().is_some();
    let mut scenario = match load(scenario) {
        Ok(s) => s,
        Err(e) => return fail("replay", e),
    };
    if let Some(servicing) = servicing {
        scenario.relay.servicing = servicing;
    }
    let result = match run_schedule(&scenario, guest, relay, which) {
        Ok(r) => r,
        Err(e) => return fail("replay", e),
    };
    println!(
        "{} on {guest} {}, {which}",
        scenario.name,
        if relay { "through the relay" } else { "direct" }
    );
    let trace = polished(&scenario, relay, result.trace.clone().unwrap_or_default());
    let choices = !real || verbose;
    if choices {
        println!(
            "Each line: #step (the scheduler's step it happened in), virtual time, lanes, what \
             happened. >> marks a choice point: the context or delivery that ran, and what \
             else could have run there (another seed takes another branch)."
        );
    } else {
        println!(
            "Each line: #step (the scheduler's step it happened in), virtual time, lanes, what \
             happened. --verbose lists the choice points too: the kernel context that ran, \
             where it stood, and what else could have run."
        );
    }
    if real && verbose {
        println!(
            "A real guest's context stands at a scheduling point of the shim: a lock or unlock, \
             a wait or wake, queue_work, a vmbus send or receive, an MMIO or config access, \
             named with the driver function that called it."
        );
    }
    for line in &trace.lines {
        if line.mark == petri::trace::Mark::Choice && !choices {
            continue;
        }
        // One line per bus at every step: only when asked for, so the replay stays readable.
        if line.mark == petri::trace::Mark::Serviced && !verbose {
            continue;
        }
        println!("{line}");
    }
    println!(
        "outcome: {} ({} steps, {} choices, ended at {:.3} ms)",
        result.outcome,
        result.steps,
        result.choices.len(),
        result.end.as_secs_f64() * 1000.0
    );
    if relay && scenario.relay.servicing != Servicing::Off {
        println!(
            "servicing ({}): the relay was serviced {} times (saved, encoded, restored){}",
            scenario.relay.servicing.name(),
            result.servicings,
            if verbose {
                ""
            } else {
                "; --verbose lists each servicing point"
            }
        );
    }
    for &(bus, step) in &result.unfired_steps {
        let s = scenario
            .buses
            .get(bus)
            .and_then(|b| b.script.steps.get(step));
        println!(
            "script {}step {} ({}) never fired{}",
            if bus == 0 {
                String::new()
            } else {
                format!("bus {} ", bus + 1)
            },
            step + 1,
            s.map(|s| s.when.to_string()).unwrap_or_default(),
            if s.is_some_and(|s| s.optional) {
                " (optional)"
            } else {
                ""
            }
        );
    }
    if let Some(path) = chart {
        if let Err(e) = write_chart(&scenario, guest, relay, which, path) {
            return fail("replay", e);
        }
        println!("chart written to {path}");
    }
    if let Some(dir) = dump_rings {
        match dump_rings_to(dir, &scenario, result.trace.as_ref()) {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(e) => return fail("replay", e),
        }
    }
    ExitCode::SUCCESS
}

/// Writes each bus's two ring images into `dir`: `busN-host-to-guest.ring` and
/// `busN-guest-to-host.ring`, and says what they hold.
///
/// Neither VM keeps its channels in shared memory (a real guest's rings live inside the
/// guest process's runtime, the models' are queues): each image is built from the packets
/// that crossed the guest's channel during the run, in order, as the guest saw them (what
/// it was delivered, what it sent), up to the end of the run or the crash, every packet left
/// unread so that `petri ring dump` lists them all. Only a ring's worth of the newest
/// packets is kept per direction (see [`petri::wire`]): older ones are gone, as a ring
/// writer would have overwritten them.
fn dump_rings_to(
    dir: &str,
    scenario: &Scenario,
    trace: Option<&Trace>,
) -> Result<Vec<String>, String> {
    let Some(wire) = trace.map(|t| &t.wire) else {
        return Err("--dump-rings: this run recorded no trace".to_owned());
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
    let mut lines = vec![format!(
        "ring images in {dir}: each bus's packets as the guest's channel carried them, in \
         order, up to the end of the run (rebuilt from the recorded packets, all left \
         unread: the guest's rings are not shared memory here; each keeps the newest \
         {} bytes of packets, a ring's worth); read them with `petri ring dump --from host \
         FILE` (host to guest) or `--from guest` (guest to host)",
        petri::wire::RING_CAPACITY
    )];
    for bus in 0..scenario.buses.len() {
        for (to_guest, name) in [(true, "host-to-guest"), (false, "guest-to-host")] {
            let packets: Vec<vmbus_channel::Packet> =
                wire.packets(bus, to_guest).cloned().collect();
            let image = petri::ring_dump::ring_image(&packets).map_err(|e| e.to_string())?;
            let path = std::path::Path::new(dir).join(format!("bus{bus}-{name}.ring"));
            std::fs::write(&path, image)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let overwritten = wire.overwritten(bus, to_guest);
            let older = if overwritten > 0 {
                format!(" (the {overwritten} older ones overwritten, as the ring would have)")
            } else {
                String::new()
            };
            lines.push(format!(
                "  {}: {} packets{older}",
                path.display(),
                packets.len()
            ));
        }
    }
    Ok(lines)
}
