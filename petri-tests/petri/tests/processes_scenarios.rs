//! A scenario run across processes plays what it asks, or says that it did not: a slow host
//! is played to the end before the verdict (a step that never fires fails the run set:
//! `processes.rs`, `cli_fails_a_run_set_whose_step_never_fires`), a chaotic host acts in real
//! time, `[[check]]`s read the running service's inspect tree, and what only the simulated
//! scheduler can play (a guest stall, servicing at every scheduling point) is refused by
//! name. Every wait is bounded.

use petri::outcome::Outcome;
use petri::processes::{self, ProcessOptions};
use petri::scenario::GuestKind;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn options() -> ProcessOptions {
    ProcessOptions {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_petri")),
        storm: 0,
        late_buses: 0,
        updates: 0,
        quiet: Duration::from_millis(750),
        limit: Duration::from_secs(60),
        verbose: std::env::var_os("PETRI_VERBOSE").is_some(),
    }
}

/// Writes `text` as the scenario file `name.toml` in this test binary's scratch directory.
fn scenario(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("petri-scenarios-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("name = \"{name}\"\n{text}")).expect("scenario file");
    path.to_str().expect("utf-8 path").to_owned()
}

fn run(path: &str) -> processes::ProcessRun {
    match processes::run(path, GuestKind::Linux62, &options()) {
        Ok(r) => r,
        Err(e) => panic!("{path}: {e}"),
    }
}

/// A host answering every message 300 ms late ejects at the guest's D0 entry. Nobody prints
/// anything while the guest waits on those answers, for longer than the quiet window in all;
/// the verdict waits as long as the host still holds answers back, so the run is played to
/// the end: the EJECT step fires, the guest probes and lets the function go, and the run
/// passes. (Regression test: the run was judged quiet before the D0 entry and passed with
/// the step never fired.)
#[test]
fn a_slow_host_is_played_to_the_end() {
    let path = scenario(
        "slow-host",
        "[[bus]]\nfunctions = [{ slot = 1 }]\npolicy = { latency = \"300ms\" }\n\n\
         [[bus.script.steps]]\nwhen = { received = { message = \"BUS_D0ENTRY\" } }\n\
         action = { kind = \"eject\", slot = 1 }\n",
    );
    let r = run(&path);
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.outcome);
    assert!(r.unfired.is_empty(), "{:?}", r.unfired);
    let last = r
        .host_lines
        .iter()
        .rev()
        .find(|l| l.starts_with("host state bus0"));
    assert!(
        last.is_some_and(|l| l.contains("functions=[] busy=0 unfired=[]")),
        "{:?}",
        r.host_lines
    );
}

/// The built-in chaotic host acts across processes, in real time: its twelve actions are
/// taken (the summary line says so) and the run passes through the service. (Regression
/// test: `[chaos]` was ignored across processes, and the run passed having done nothing.)
#[test]
fn a_chaotic_host_acts_across_processes() {
    let r = run("chaos");
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.outcome);
    let chaos: Vec<&String> = r.storm.iter().filter(|l| l.starts_with("chaos ")).collect();
    assert_eq!(chaos.len(), 1, "{:?}", r.storm);
    assert!(
        chaos[0].starts_with("chaos bus0 actions=") && !chaos[0].contains("actions=0 "),
        "{chaos:?}"
    );
    let actions = r
        .host_lines
        .iter()
        .filter(|l| l.starts_with("host chaos bus0 "))
        .count();
    assert!(actions > 0, "{:?}", r.host_lines);
}

/// A scenario's `[[check]]`s are taken against the running service's inspect tree: one that
/// holds passes, one that does not is `check_failed` with what the tree held. (Regression
/// test: checks were ignored across processes.)
#[test]
fn checks_read_the_running_service() {
    let bus = "[[bus]]\nfunctions = [{ slot = 1 }]\n\n[[bus.script.steps]]\n\
               when = { at = \"300ms\" }\naction = { kind = \"eject\", slot = 1 }\n";
    let check = |equals: &str| {
        format!(
            "{bus}\n[[check]]\nbus = 0\npath = \"counters/ejects_answered_at_deadline\"\n\
             equals = {equals}\n"
        )
    };
    let r = run(&scenario("check-holds", &check("0")));
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.outcome);
    let r = run(&scenario("check-fails", &check("5")));
    match &r.outcome {
        Outcome::CheckFailed { bus, path, got, .. } => {
            assert_eq!(*bus, 0);
            assert_eq!(path, "counters/ejects_answered_at_deadline");
            assert_eq!(got, "0");
        }
        other => panic!("expected check_failed, got {other}"),
    }
}

/// What only the simulated scheduler plays is refused by name, never run as if it had been:
/// a guest stall, servicing at every scheduling point, and a chaotic host with a storm.
#[test]
fn what_cannot_be_played_is_refused() {
    let stall = scenario(
        "stall",
        "[guest]\nstall = { bus = 0, at = \"10ms\" }\n\n[[bus]]\nfunctions = [{ slot = 1 }]\n",
    );
    let servicing = scenario(
        "servicing",
        "[relay]\nservicing = \"every-step\"\n\n[[bus]]\nfunctions = [{ slot = 1 }]\n",
    );
    for (path, named) in [(&stall, "[guest] stall"), (&servicing, "[relay] servicing")] {
        match processes::run(path, GuestKind::Linux62, &options()) {
            Err(e) => assert!(
                e.contains(named) && e.contains("not played across processes"),
                "{e}"
            ),
            Ok(r) => panic!("{path} ran: {}", r.outcome),
        }
    }
    let storm = ProcessOptions {
        storm: 3,
        ..options()
    };
    match processes::run("chaos", GuestKind::Linux62, &storm) {
        Err(e) => assert!(e.contains("exclude each other"), "{e}"),
        Ok(r) => panic!("chaos with a storm ran: {}", r.outcome),
    }
    let out = Command::new(env!("CARGO_BIN_EXE_petri"))
        .args(["run", &stall, "--guest", "6.2", "--processes"])
        .output()
        .expect("petri");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("[guest] stall"), "{text}");
}
