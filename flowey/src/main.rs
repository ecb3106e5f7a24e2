//! flowey: the project's CI pipelines, written in Rust and run as `cargo xflowey <pipeline>`.
//!
//! A pipeline is a list of steps; a step is a program with arguments and environment. Steps
//! run in order from the workspace root with their output passed through; each prints its name
//! before it starts and its duration when it ends, the first failure stops the run with the
//! failing command line and its exit code, and a table of durations closes the run.
//!
//! Pipelines are data: adding one (say `fuzz-smoke`) is one more entry in [`PIPELINES`].
//! `.ci/run` calls `cargo xflowey ci`, whose test step is exactly the README's test command.

#![forbid(unsafe_code)]

use anyhow::{Context, bail};
use clap::Parser;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// One command of a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    /// Short name shown in the log and the summary.
    name: &'static str,
    /// The program to run (looked up on `PATH`).
    program: &'static str,
    /// Its arguments.
    args: &'static [&'static str],
    /// Extra environment variables, on top of flowey's own environment.
    env: &'static [(&'static str, &'static str)],
}

impl Step {
    /// The step as a shell command line (environment first), quoted so it can be pasted.
    fn command_line(&self) -> String {
        let mut line = String::new();
        for (key, value) in self.env {
            // Writing to a String cannot fail.
            let _ = write!(line, "{key}={} ", shell_quote(value));
        }
        line.push_str(&shell_quote(self.program));
        for arg in self.args {
            line.push(' ');
            line.push_str(&shell_quote(arg));
        }
        line
    }
}

/// Quotes `word` for a POSIX shell if it holds anything but plain characters.
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Formatting of every file, checked, not rewritten.
const FMT: Step = Step {
    name: "fmt",
    program: "cargo",
    args: &["fmt", "--all", "--", "--check"],
    env: &[],
};

/// Clippy over every crate and target, warnings as errors.
const CLIPPY: Step = Step {
    name: "clippy",
    program: "cargo",
    args: &[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ],
    env: &[],
};

/// The README's test command, exactly.
const TEST: Step = Step {
    name: "test",
    program: "cargo",
    args: &["test", "--workspace"],
    env: &[],
};

/// The workspace's own docs, rustdoc warnings as errors.
const DOC: Step = Step {
    name: "doc",
    program: "cargo",
    args: &["doc", "--workspace", "--no-deps"],
    env: &[("RUSTDOCFLAGS", "-D warnings")],
};

/// Every benchmark run once as a test: it builds and does not panic, no timing.
const BENCH_SMOKE: Step = Step {
    name: "bench-smoke",
    program: "cargo",
    args: &["bench", "--workspace", "--", "--test"],
    env: &[],
};

/// The race catalogue on both guest models (2,000 seeded schedules per cell) and both real
/// drivers (200 per cell, each run a guest process), direct and through the relay (the test
/// suite runs fewer).
const CATALOGUE: Step = Step {
    name: "catalogue",
    program: "cargo",
    args: &[
        "run",
        "--release",
        "-p",
        "petri",
        "--",
        "demo",
        "--schedules",
        "2000",
        "--real-schedules",
        "200",
    ],
    env: &[],
};

/// The hot-plug long haul: 100,000 add/eject cycles through the relay on the 6.2 model.
const LONG_HAUL: Step = Step {
    name: "long-haul",
    program: "cargo",
    args: &[
        "test",
        "--release",
        "-p",
        "petri",
        "--test",
        "long_haul",
        "--",
        "--ignored",
    ],
    env: &[],
};

/// The real Debian 5.10 driver's hot-plug long haul (10,000 add/eject cycles, direct and
/// through the relay) and C3 on 5.10 by systematic search, with the real drivers as petri
/// guests.
const REAL_LONG_HAUL: Step = Step {
    name: "real-long-haul",
    program: "cargo",
    args: &[
        "test",
        "--release",
        "-p",
        "petri",
        "--test",
        "real_guests",
        "--",
        "--ignored",
        "--nocapture",
    ],
    env: &[("PETRI_REAL_LONG_HAUL_CYCLES", "10000")],
};

/// The soak: 1,000,000 add/eject cycles with random timing through the relay against the 6.2
/// model, memory measured at 10%, 50% and 100%.
const SOAK: Step = Step {
    name: "soak",
    program: "cargo",
    args: &[
        "test",
        "--release",
        "-p",
        "petri",
        "--test",
        "long_haul",
        "--",
        "--ignored",
        "--nocapture",
        "soak_a_million_cycles",
    ],
    env: &[],
};

/// The service's hot-plug storms across processes: host_sim, `openhcl-vpci` and a Linux model,
/// 2,500 add/eject cycles on each bus (the 6.2 model on 4 buses, 10,000 in all; the 6.3 model
/// on 2), one storm after the other, real time and real rings.
const STORM: Step = Step {
    name: "storm",
    program: "cargo",
    args: &[
        "test",
        "--release",
        "-p",
        "openhcl_vpci",
        "--test",
        "processes",
        "--",
        "hot_plug_storm",
        "--nocapture",
        "--test-threads=1",
    ],
    env: &[("OPENHCL_VPCI_STORM", "2500")],
};

/// The real drivers' hot-plug storms across processes: host_sim, `openhcl-vpci` and the real
/// 5.10, 6.1 and 6.12 drivers in their kernel_shim child, 1,000 add/eject cycles each, one
/// after the other, real time and real rings.
const REAL_STORM: Step = Step {
    name: "real-storm",
    program: "cargo",
    args: &[
        "test",
        "-p",
        "petri",
        "--test",
        "processes",
        "--",
        "hot_plug_storm",
        "--nocapture",
        "--test-threads=1",
    ],
    env: &[("PETRI_REAL_STORM", "1000")],
};

/// A fuzz step: a POSIX shell script (for `FUZZ_SECONDS` and the scratch corpus), run from the
/// workspace root. Needs `cargo install cargo-fuzz`; `-s none` lets it run on the stable
/// toolchain.
macro_rules! fuzz {
    ($name:literal, $script:expr $(,)?) => {
        Step {
            name: $name,
            program: "sh",
            args: &["-c", $script],
            env: &[],
        }
    };
}

/// Each target runs `FUZZ_SECONDS` (default 60) from its committed seeds (`fuzz/corpus/T`,
/// read only) into a scratch corpus (`target/fuzz-corpus/T`), so a run never grows the
/// committed seeds; libFuzzer exits non-zero on a crash and leaves it in `fuzz/artifacts/T`
/// (copy it to `fuzz/regressions/T` once understood: `cargo test -p vpci_relay --test
/// fuzz_regressions` replays it). The first two steps replay the regressions of the ring
/// reader and of the service's saved state, the targets whose harnesses `cargo test` cannot
/// reach.
macro_rules! fuzz_run {
    ($target:literal, $default:literal) => {
        concat!(
            "set -e; mkdir -p \"$PWD/target/fuzz-corpus/",
            $target,
            "\"; ",
            "cargo fuzz run ",
            $target,
            " -s none \"$PWD/target/fuzz-corpus/",
            $target,
            "\" \"$PWD/fuzz/corpus/",
            $target,
            "\" -- -max_total_time=${FUZZ_SECONDS:-",
            $default,
            "}"
        )
    };
}

const FUZZ_RING_REGRESSIONS: Step = fuzz!(
    "fuzz-ring-reader-regressions",
    "cargo fuzz run ring_reader -s none \"$PWD/fuzz/regressions/ring_reader\" -- -runs=0",
);
const FUZZ_SERVICE_REGRESSIONS: Step = fuzz!(
    "fuzz-service-restore-regressions",
    "cargo fuzz run service_restore -s none \"$PWD/fuzz/regressions/service_restore\" -- -runs=0",
);
const FUZZ_DECODE: Step = fuzz!("fuzz-decode", fuzz_run!("decode", "60"));
const FUZZ_RING: Step = fuzz!("fuzz-ring-reader", fuzz_run!("ring_reader", "60"));
const FUZZ_RELAY: Step = fuzz!("fuzz-relay", fuzz_run!("relay", "60"));
const FUZZ_PROMISES: Step = fuzz!("fuzz-relay-promises", fuzz_run!("relay_promises", "60"));
const FUZZ_RESTORE: Step = fuzz!("fuzz-restore", fuzz_run!("restore", "60"));
const FUZZ_SERVICE_RESTORE: Step =
    fuzz!("fuzz-service-restore", fuzz_run!("service_restore", "60"),);
const SMOKE_DECODE: Step = fuzz!("fuzz-smoke-decode", fuzz_run!("decode", "20"));
const SMOKE_RING: Step = fuzz!("fuzz-smoke-ring-reader", fuzz_run!("ring_reader", "20"));
const SMOKE_RELAY: Step = fuzz!("fuzz-smoke-relay", fuzz_run!("relay", "20"));
const SMOKE_PROMISES: Step = fuzz!(
    "fuzz-smoke-relay-promises",
    fuzz_run!("relay_promises", "20"),
);
const SMOKE_RESTORE: Step = fuzz!("fuzz-smoke-restore", fuzz_run!("restore", "20"));
const SMOKE_SERVICE_RESTORE: Step = fuzz!(
    "fuzz-smoke-service-restore",
    fuzz_run!("service_restore", "20"),
);

/// A named list of steps.
#[derive(Debug)]
struct Pipeline {
    /// What to type after `cargo xflowey`.
    name: &'static str,
    /// One line on what it is for, shown by `list`.
    about: &'static str,
    /// The steps, run in this order.
    steps: &'static [Step],
}

/// Every pipeline. Adding a pipeline is adding an entry here.
const PIPELINES: &[Pipeline] = &[
    Pipeline {
        name: "ci",
        about: "what CI runs: format, lints, tests, docs",
        steps: &[FMT, CLIPPY, TEST, DOC],
    },
    Pipeline {
        name: "test",
        about: "the workspace tests only",
        steps: &[TEST],
    },
    Pipeline {
        name: "bench-smoke",
        about: "every benchmark once, as a test (no timing)",
        steps: &[BENCH_SMOKE],
    },
    Pipeline {
        name: "catalogue",
        about: "the race catalogue over 2,000 schedules per cell, a 100,000-cycle hot-plug long haul, and the real 5.10 driver's long haul",
        steps: &[CATALOGUE, LONG_HAUL, REAL_LONG_HAUL],
    },
    Pipeline {
        name: "soak",
        about: "1,000,000 add/eject cycles with random timing through the relay against the 6.2 model, memory at 10%, 50% and 100%",
        steps: &[SOAK],
    },
    Pipeline {
        name: "storm",
        about: "openhcl-vpci across processes: hot-plug storms of 2,500 cycles per bus against the 6.2 model (4 buses) and the 6.3 model (2 buses), and of 1,000 cycles against each real driver (5.10, 6.1, 6.12)",
        steps: &[STORM, REAL_STORM],
    },
    Pipeline {
        name: "fuzz",
        about: "each fuzz target for FUZZ_SECONDS (default 60) from its seeds, after the ring reader's regressions (needs cargo-fuzz)",
        steps: &[
            FUZZ_RING_REGRESSIONS,
            FUZZ_SERVICE_REGRESSIONS,
            FUZZ_DECODE,
            FUZZ_RING,
            FUZZ_RELAY,
            FUZZ_PROMISES,
            FUZZ_RESTORE,
            FUZZ_SERVICE_RESTORE,
        ],
    },
    Pipeline {
        name: "fuzz-smoke",
        about: "each fuzz target for 20 s (FUZZ_SECONDS overrides), as .ci/run does after the CI pipeline (needs cargo-fuzz)",
        steps: &[
            FUZZ_RING_REGRESSIONS,
            FUZZ_SERVICE_REGRESSIONS,
            SMOKE_DECODE,
            SMOKE_RING,
            SMOKE_RELAY,
            SMOKE_PROMISES,
            SMOKE_RESTORE,
            SMOKE_SERVICE_RESTORE,
        ],
    },
];

/// The project's CI pipelines, run from the workspace root.
#[derive(Parser, Debug)]
#[command(name = "cargo xflowey", bin_name = "cargo xflowey", about)]
struct Cli {
    /// The pipeline to run, or `list` to show every pipeline and its steps.
    pipeline: String,
    /// Print the commands instead of running them.
    #[arg(long)]
    dry_run: bool,
}

/// The steps of the pipeline called `name`, or an error naming the known pipelines.
fn pipeline(name: &str) -> anyhow::Result<&'static [Step]> {
    PIPELINES
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.steps)
        .with_context(|| {
            let names: Vec<&str> = PIPELINES.iter().map(|p| p.name).collect();
            format!(
                "unknown pipeline {name:?}; known: {} (or `list`)",
                names.join(", ")
            )
        })
}

/// What happened to one step that ran.
#[derive(Debug)]
struct StepResult {
    /// The step's name.
    name: &'static str,
    /// Wall time from start to exit.
    duration: Duration,
    /// Whether it exited successfully.
    ok: bool,
}

/// How a run went: every step that ran, in order; only the last can have failed.
#[derive(Debug)]
struct Report {
    /// The steps that ran.
    results: Vec<StepResult>,
    /// Why the run stopped early, with the failing command line and exit code.
    failure: Option<anyhow::Error>,
}

impl Report {
    /// The table of step durations printed at the end of a run.
    fn summary(&self, total: usize) -> String {
        let mut out = String::from("step           result   time\n");
        for r in &self.results {
            let result = if r.ok { "ok" } else { "FAILED" };
            let _ = writeln!(
                out,
                "{:<14} {:<8} {:>6.1}s",
                r.name,
                result,
                r.duration.as_secs_f64()
            );
        }
        let skipped = total - self.results.len();
        if skipped > 0 {
            let _ = writeln!(out, "({skipped} step(s) not run)");
        }
        let sum: Duration = self.results.iter().map(|r| r.duration).sum();
        let _ = writeln!(out, "{:<23} {:>6.1}s", "total", sum.as_secs_f64());
        out
    }
}

/// Runs `steps` in `root`, printing each one's start and end; stops at the first failure.
fn run_steps(root: &Path, steps: &[Step]) -> Report {
    let mut results = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        println!(
            "==> [{}/{}] {}: {}",
            i + 1,
            steps.len(),
            step.name,
            step.command_line()
        );
        let start = Instant::now();
        let outcome = run_step(root, step);
        let duration = start.elapsed();
        let ok = outcome.is_ok();
        results.push(StepResult {
            name: step.name,
            duration,
            ok,
        });
        match outcome {
            Ok(()) => println!("<== {} ok in {:.1}s", step.name, duration.as_secs_f64()),
            Err(e) => {
                println!("<== {} FAILED in {:.1}s", step.name, duration.as_secs_f64());
                return Report {
                    results,
                    failure: Some(e),
                };
            }
        }
    }
    Report {
        results,
        failure: None,
    }
}

/// Runs one step in `root` with inherited stdout and stderr; an error unless it exits 0.
fn run_step(root: &Path, step: &Step) -> anyhow::Result<()> {
    let status = Command::new(step.program)
        .args(step.args)
        .envs(step.env.iter().copied())
        .current_dir(root)
        .status()
        .with_context(|| {
            format!(
                "step {} could not start: {}",
                step.name,
                step.command_line()
            )
        })?;
    if !status.success() {
        let code = status.code().map_or_else(
            || "killed by a signal".to_owned(),
            |c| format!("exit code {c}"),
        );
        bail!(
            "step {} failed ({code}): {}",
            step.name,
            step.command_line()
        );
    }
    Ok(())
}

/// The workspace root: the parent of flowey's own directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Every pipeline and its steps, as `list` prints them.
fn listing() -> String {
    let mut out = String::new();
    for p in PIPELINES {
        let _ = writeln!(out, "{}: {}", p.name, p.about);
        for s in p.steps {
            let _ = writeln!(out, "    {}: {}", s.name, s.command_line());
        }
    }
    out
}

/// Parses the command line, runs the pipeline and exits 0 only if every step passed.
fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.pipeline == "list" {
        print!("{}", listing());
        return ExitCode::SUCCESS;
    }
    let steps = match pipeline(&cli.pipeline) {
        Ok(steps) => steps,
        Err(e) => {
            eprintln!("flowey: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.dry_run {
        for s in steps {
            println!("{}", s.command_line());
        }
        return ExitCode::SUCCESS;
    }
    let start = Instant::now();
    let report = run_steps(&workspace_root(), steps);
    let elapsed = start.elapsed().as_secs_f64();
    println!("\n{}", report.summary(steps.len()));
    match report.failure {
        None => {
            println!("pipeline {} passed in {elapsed:.1}s", cli.pipeline);
            ExitCode::SUCCESS
        }
        Some(e) => {
            eprintln!("flowey: pipeline {} failed: {e:#}", cli.pipeline);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step that succeeds.
    const TRUE: Step = Step {
        name: "true",
        program: "true",
        args: &[],
        env: &[],
    };

    /// A step that exits 3.
    const EXIT_3: Step = Step {
        name: "exit-3",
        program: "sh",
        args: &["-c", "exit 3"],
        env: &[],
    };

    /// A step leaving a file named after `name` in the directory it runs in.
    const fn touch(name: &'static str, file: &'static [&'static str]) -> Step {
        Step {
            name,
            program: "touch",
            args: file,
            env: &[],
        }
    }

    /// A fresh empty directory for one test.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flowey-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The run stops at the first failing step and reports it with its command line and
    /// exit code; steps before it ran in the given directory, steps after it did not run.
    #[test]
    fn stops_at_first_failure() {
        let dir = scratch("stops");
        let steps = [
            touch("before", &["before"]),
            TRUE,
            EXIT_3,
            touch("after", &["after"]),
        ];
        let report = run_steps(&dir, &steps);
        let err = format!(
            "{:#}",
            report.failure.as_ref().expect("the run should fail")
        );
        assert!(err.contains("step exit-3 failed"), "{err}");
        assert!(err.contains("exit code 3"), "{err}");
        assert!(err.contains("sh -c 'exit 3'"), "{err}");
        let names: Vec<_> = report.results.iter().map(|r| (r.name, r.ok)).collect();
        assert_eq!(names, [("before", true), ("true", true), ("exit-3", false)]);
        assert!(dir.join("before").exists(), "steps run in the given root");
        assert!(!dir.join("after").exists(), "a step after the failure ran");
        assert!(report.summary(steps.len()).contains("1 step(s) not run"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A program that cannot start is a failure naming the step, not a panic.
    #[test]
    fn missing_program_is_a_failure() {
        let missing = Step {
            name: "missing",
            program: "flowey-no-such-program",
            args: &[],
            env: &[],
        };
        let report = run_steps(Path::new("."), &[missing, TRUE]);
        let err = format!("{:#}", report.failure.as_ref().unwrap());
        assert!(err.contains("step missing could not start"), "{err}");
        assert_eq!(report.results.len(), 1);
    }

    /// Passing steps are all reported, and their environment reaches them.
    #[test]
    fn passing_steps_are_reported() {
        let with_env = Step {
            name: "env",
            program: "sh",
            args: &["-c", "test \"$FLOWEY_TEST\" = 'a b'"],
            env: &[("FLOWEY_TEST", "a b")],
        };
        let report = run_steps(Path::new("."), &[TRUE, with_env]);
        assert!(report.failure.is_none(), "{:?}", report.failure);
        assert_eq!(report.results.len(), 2);
        assert!(report.results.iter().all(|r| r.ok));
        assert_eq!(
            with_env.command_line(),
            "FLOWEY_TEST='a b' sh -c 'test \"$FLOWEY_TEST\" = '\\''a b'\\'''"
        );
    }

    /// The ci pipeline runs fmt, clippy, test and doc in that order, and its test step is
    /// the README's test command, exactly.
    #[test]
    fn ci_runs_the_readme_test_command() {
        let steps = pipeline("ci").unwrap();
        let names: Vec<_> = steps.iter().map(|s| s.name).collect();
        assert_eq!(names, ["fmt", "clippy", "test", "doc"]);
        let test = steps.iter().find(|s| s.name == "test").unwrap();
        assert_eq!(test.command_line(), "cargo test --workspace");
        let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
        assert!(readme.contains("cargo test --workspace"));
        assert_eq!(pipeline("test").unwrap(), [TEST]);
    }

    /// An unknown pipeline is a clear error naming the known ones.
    #[test]
    fn unknown_pipeline() {
        let err = pipeline("nope").unwrap_err().to_string();
        assert!(err.contains("unknown pipeline \"nope\""), "{err}");
        assert!(err.contains("ci, test"), "{err}");
    }

    /// Pipeline names are unique, and `list` shows each one with its steps.
    #[test]
    fn listing_shows_every_pipeline() {
        let listing = listing();
        for (i, p) in PIPELINES.iter().enumerate() {
            assert!(p.name != "list", "`list` is a command, not a pipeline");
            assert!(PIPELINES[i + 1..].iter().all(|q| q.name != p.name));
            assert!(listing.contains(&format!("{}: {}", p.name, p.about)));
        }
        assert!(listing.contains("RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps"));
    }
}
