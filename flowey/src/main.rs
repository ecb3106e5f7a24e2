//! flowey: the project's CI pipelines, written in Rust and run as `cargo xflowey <pipeline>`.
//!
//! A pipeline is a list of steps; a step is a command with arguments and environment. Steps
//! run in order from the workspace root with their output passed through; each prints its name
//! before it starts and its duration when it ends, the first failure stops the run with the
//! failing command line and its exit code, and a table of durations closes the run.
//!
//! `.ci/run` calls `cargo xflowey ci`, whose test step is exactly the README's test command.

#![forbid(unsafe_code)]

use anyhow::{Context, bail};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// One command of a pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Step {
    /// Short name shown in the log and the summary.
    name: &'static str,
    /// The program to run.
    program: &'static str,
    /// Its arguments.
    args: &'static [&'static str],
    /// Extra environment variables.
    env: &'static [(&'static str, &'static str)],
}

impl Step {
    fn command_line(&self) -> String {
        let env = self.env.iter().map(|(k, v)| format!("{k}={v} "));
        let mut line: String = env.collect();
        line.push_str(self.program);
        for a in self.args {
            line.push(' ');
            line.push_str(a);
        }
        line
    }
}

const FMT: Step = Step {
    name: "fmt",
    program: "cargo",
    args: &["fmt", "--all", "--", "--check"],
    env: &[],
};

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

const DOC: Step = Step {
    name: "doc",
    program: "cargo",
    args: &["doc", "--workspace", "--no-deps"],
    env: &[("RUSTDOCFLAGS", "-D warnings")],
};

const BENCH_SMOKE: Step = Step {
    name: "bench-smoke",
    program: "cargo",
    args: &["bench", "--workspace", "--", "--test"],
    env: &[],
};

/// Every pipeline: name, what it is for, its steps.
const PIPELINES: &[(&str, &str, &[Step])] = &[
    (
        "ci",
        "what CI runs: format, lints, tests, docs",
        &[FMT, CLIPPY, TEST, DOC],
    ),
    ("test", "the workspace tests only", &[TEST]),
    (
        "bench-smoke",
        "every benchmark once, as a test (no timing)",
        &[BENCH_SMOKE],
    ),
];

/// The project's CI pipelines.
#[derive(Parser, Debug)]
#[command(name = "cargo xflowey", about)]
struct Cli {
    /// The pipeline to run (`list` shows them).
    pipeline: String,
    /// Print the commands instead of running them.
    #[arg(long)]
    dry_run: bool,
}

fn pipeline(name: &str) -> anyhow::Result<&'static [Step]> {
    PIPELINES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, steps)| *steps)
        .with_context(|| {
            let names: Vec<&str> = PIPELINES.iter().map(|(n, _, _)| *n).collect();
            format!(
                "unknown pipeline {name:?}; known: {} (or `list`)",
                names.join(", ")
            )
        })
}

/// How a step ended.
#[derive(Debug)]
struct StepResult {
    name: &'static str,
    duration: Duration,
}

/// Runs `steps` in `root`; stops at the first failure.
fn run_steps(root: &Path, steps: &[Step]) -> anyhow::Result<Vec<StepResult>> {
    let mut done = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        println!(
            "==> [{}/{}] {}: {}",
            i + 1,
            steps.len(),
            step.name,
            step.command_line()
        );
        let start = Instant::now();
        let status = Command::new(step.program)
            .args(step.args)
            .envs(step.env.iter().copied())
            .current_dir(root)
            .status()
            .with_context(|| format!("could not start `{}`", step.command_line()))?;
        let duration = start.elapsed();
        if !status.success() {
            let code = status.code().map_or_else(
                || "killed by a signal".to_owned(),
                |c| format!("exit code {c}"),
            );
            bail!(
                "step {} failed after {:.1}s ({code}): {}",
                step.name,
                duration.as_secs_f64(),
                step.command_line()
            );
        }
        println!("<== {} ok in {:.1}s", step.name, duration.as_secs_f64());
        done.push(StepResult {
            name: step.name,
            duration,
        });
    }
    Ok(done)
}

fn workspace_root() -> PathBuf {
    // flowey lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.pipeline == "list" {
        for (name, about, steps) in PIPELINES {
            println!("{name}: {about}");
            for s in *steps {
                println!("    {}: {}", s.name, s.command_line());
            }
        }
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
    match run_steps(&workspace_root(), steps) {
        Ok(results) => {
            println!(
                "\npipeline {} passed in {:.1}s",
                cli.pipeline,
                start.elapsed().as_secs_f64()
            );
            for r in results {
                println!("  {:<12} {:>8.1}s", r.name, r.duration.as_secs_f64());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nflowey: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRUE: Step = Step {
        name: "true",
        program: "true",
        args: &[],
        env: &[],
    };
    const FALSE: Step = Step {
        name: "false",
        program: "false",
        args: &[],
        env: &[],
    };

    /// The run stops at the first failing step and names it; later steps do not run.
    #[test]
    fn stops_at_first_failure() {
        let marker = std::env::temp_dir().join(format!("flowey-{}", std::process::id()));
        let touch: &'static str = Box::leak(marker.display().to_string().into_boxed_str());
        let args: &'static [&'static str] = Box::leak(vec![touch].into_boxed_slice());
        let touch_step = Step {
            name: "touch",
            program: "touch",
            args,
            env: &[],
        };
        let err = run_steps(Path::new("."), &[TRUE, FALSE, touch_step]).unwrap_err();
        assert!(err.to_string().contains("step false failed"), "{err}");
        assert!(err.to_string().contains("exit code 1"), "{err}");
        assert!(!marker.exists(), "a step after the failure ran");
    }

    /// Passing steps are all reported.
    #[test]
    fn passing_steps_are_reported() {
        let done = run_steps(Path::new("."), &[TRUE, TRUE]).unwrap();
        assert_eq!(done.len(), 2);
    }

    /// The ci pipeline's test step is the README's test command, exactly.
    #[test]
    fn ci_runs_the_readme_test_command() {
        let steps = pipeline("ci").unwrap();
        let test = steps.iter().find(|s| s.name == "test").unwrap();
        assert_eq!(test.command_line(), "cargo test --workspace");
        let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
        assert!(readme.contains("cargo test --workspace"));
    }

    /// An unknown pipeline is a clear error naming the known ones.
    #[test]
    fn unknown_pipeline() {
        let err = pipeline("nope").unwrap_err().to_string();
        assert!(err.contains("unknown pipeline \"nope\""), "{err}");
        assert!(err.contains("ci"), "{err}");
    }
}
