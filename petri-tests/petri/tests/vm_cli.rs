//! `petri run`, `replay`, `list` and `demo` as a user runs them.

mod cli;

use cli::{petri, stderr, stdout, temp};

/// `run --json` prints one object per run set with the documented fields, and the failures
/// of the unfixed guest on C2.
#[test]
fn run_json_has_the_documented_fields() {
    let out = petri(&[
        "run",
        "c2",
        "--guest",
        "6.2",
        "--direct",
        "--schedules",
        "20",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["scenario"], "c2");
    assert_eq!(v["guest"], "linux-6.2");
    assert_eq!(v["relay"], false);
    assert_eq!(v["schedules"], 20);
    let failures = v["failures"].as_u64().unwrap();
    assert!(failures > 0);
    assert!(v["first_failing_seed"].is_u64());
    let outcomes = v["outcomes"].as_object().unwrap();
    let total: u64 = outcomes.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(total, 20);
    assert_eq!(outcomes["null_deref"].as_u64().unwrap(), failures);
}

/// Through the relay the same scenario never fails, and `first_failing_seed` is null.
#[test]
fn run_json_through_the_relay() {
    let out = petri(&[
        "run",
        "c2",
        "--guest",
        "6.2",
        "--relay",
        "--schedules",
        "20",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["failures"], 0);
    assert!(v["first_failing_seed"].is_null());
}

/// A replay of a failing seed prints the same run, byte for byte, every time, and ends with
/// the failure `run` reported for that seed.
#[test]
fn replay_reproduces_a_failure_bit_for_bit() {
    let out = petri(&[
        "run",
        "c2",
        "--guest",
        "6.2",
        "--direct",
        "--schedules",
        "20",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let seed = v["first_failing_seed"].as_u64().unwrap().to_string();
    let a = petri(&["replay", "--seed", &seed, "c2", "--guest", "6.2"]);
    let b = petri(&["replay", "--seed", &seed, "c2", "--guest", "6.2"]);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(a.stdout, b.stdout);
    let text = stdout(&a);
    assert!(text.contains("[CRASH]"));
    assert!(text.lines().last().unwrap().contains("null_deref"));
}

/// `--chart` writes one SVG document with the three lanes and the crash marked.
#[test]
fn chart_is_an_svg_with_lanes() {
    let path = temp("c2.svg", "chart");
    let out = petri(&[
        "replay",
        "--seed",
        "1",
        "c2",
        "--guest",
        "6.2",
        "--relay",
        "--chart",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"));
    assert!(svg.trim_end().ends_with("</svg>"));
    for lane in ["host (host_sim)", "relay", "guest", "PCI_EJECT 01.0"] {
        assert!(svg.contains(lane), "{lane}");
    }
}

/// A scenario file with a mistake is refused with exit code 2 and a message naming its line.
#[test]
fn bad_scenario_file_names_the_line() {
    let path = temp("bad.toml", "bad");
    std::fs::write(
        &path,
        "name = \"bad\"\n\n[[bus]]\nfunctions = [{ slot = 1, colour = \"blue\" }]\n",
    )
    .unwrap();
    let out = petri(&["run", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("colour"), "{err}");
    assert!(!err.contains("panicked"));
}

/// A scenario with no bus, or an unknown built-in name, is a clear error too.
#[test]
fn unusable_scenarios_are_clear_errors() {
    let path = temp("nobus.toml", "nobus");
    std::fs::write(&path, "name = \"x\"\nbus = []\n").unwrap();
    let out = petri(&["run", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("at least one [[bus]]"));
    let out = petri(&["run", "no-such-scenario"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("built in: c1"));
}

/// A user's scenario file runs like a built-in one, and its expectations decide the exit
/// code.
#[test]
fn user_scenario_file_runs() {
    let path = temp("mine.toml", "mine");
    std::fs::write(
        &path,
        r#"name = "mine"
schedules = 10

[[bus]]
functions = [{ slot = 1 }, { slot = 2, serial = 9 }]
policy = { teardown = "at_eject" }

[[bus.script.steps]]
when = { at = "2s" }
action = { kind = "eject", slot = 2 }

[[expect]]
guest = "6.3"
relay = true
result = "pass"

[[expect]]
guest = "6.3"
relay = false
result = "fail"
kinds = ["unbacked_access"]
"#,
    )
    .unwrap();
    let out = petri(&["run", path.to_str().unwrap(), "--guest", "6.3"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out).matches("as expected").count(), 2);
}

/// `list` names every built-in scenario.
#[test]
fn list_names_the_catalogue() {
    let out = petri(&["list"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for name in [
        "c1",
        "c2",
        "c3",
        "c4",
        "c5",
        "c7",
        "re-add",
        "drop-then-eject",
    ] {
        assert!(text.contains(name), "{name}");
    }
}

/// Catalogue ids and guest names in either form work; `--schedules 0` is refused clearly.
#[test]
fn names_in_either_form() {
    for (scenario, guest) in [("C2", "linux-6.2"), ("c2", "6.2"), ("C5", "Linux-6.3")] {
        let out = petri(&[
            "run",
            scenario,
            "--guest",
            guest,
            "--relay",
            "--schedules",
            "2",
        ]);
        assert!(out.status.success(), "{scenario} {guest}: {}", stderr(&out));
    }
    let out = petri(&["run", "C2", "--guest", "6.2", "--relay", "--schedules", "2"]);
    assert!(
        stdout(&out).starts_with("c2 6.2 relay: 0/2"),
        "{}",
        stdout(&out)
    );
    let out = petri(&["replay", "--seed", "0", "c2", "--guest", "linux-6.3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = petri(&["run", "c2", "--schedules", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("at least 1"), "{}", stderr(&out));
    let out = petri(&["demo", "--real-schedules", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("at least 1"), "{}", stderr(&out));
}

/// `list --show` prints a built-in's TOML, by name or catalogue id.
#[test]
fn list_shows_a_builtin() {
    let out = petri(&["list", "--show", "c2"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.starts_with("name = \"c2\""), "{text}");
    assert!(text.contains("[[expect]]"), "{text}");
    let out = petri(&["list", "--show", "C7"]);
    assert!(stdout(&out).starts_with("name = \"c7\""));
    let out = petri(&["list", "--show", "nope"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A run line names every failure kind with its count and a seed for each, and the command
/// that replays the commonest; a run set without an expectation says so.
#[test]
fn run_line_names_kinds() {
    let out = petri(&[
        "run",
        "chaos",
        "--guest",
        "6.3",
        "--direct",
        "--schedules",
        "8",
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let line = text.lines().next().unwrap();
    assert!(line.contains("(seed "), "{line}");
    assert!(line.contains("no expectation stated"), "{line}");
    assert!(!line.contains("as expected"), "{line}");
    assert!(
        text.contains("replay: petri replay --seed ") && text.contains("chaos --guest 6.3"),
        "{text}"
    );
    let out = petri(&[
        "run",
        "chaos",
        "--guest",
        "6.3",
        "--direct",
        "--schedules",
        "8",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let by_kind = v["first_seed_by_kind"].as_object().unwrap();
    let outcomes = v["outcomes"].as_object().unwrap();
    for kind in outcomes.keys().filter(|k| *k != "ok") {
        assert!(by_kind[kind].is_u64(), "{kind}");
    }
    assert_eq!(v["unfired_steps"], serde_json::json!([]));
}

/// A step whose trigger never happens: `run` reports it and exits 1, `--json` has it in
/// `unfired_steps`, `replay` names it.
#[test]
fn unfired_steps_are_reported() {
    let path = temp("unfired.toml", "unfired");
    std::fs::write(
        &path,
        r#"name = "unfired"
[[bus]]
versions = ["1.2"]
functions = [{ slot = 1 }]
[[bus.script.steps]]
when = { received = { message = "CREATE_INTERRUPT_MESSAGE3", slot = 1 } }
action = { kind = "eject", slot = 1 }
"#,
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let out = petri(&[
        "run",
        file,
        "--guest",
        "6.3",
        "--direct",
        "--schedules",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("unfired 6.3 direct: n/a"), "{text}");
    assert!(
        text.contains(
            "step 1 (received CREATE_INTERRUPT_MESSAGE3 for slot 1) never fired in 3 of 3"
        ),
        "{text}"
    );
    let out = petri(&[
        "run",
        file,
        "--guest",
        "6.3",
        "--direct",
        "--schedules",
        "3",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        v["unfired_steps"],
        serde_json::json!([{"bus": 0, "step": 1, "when": "received CREATE_INTERRUPT_MESSAGE3 for slot 1", "optional": false, "missed": 3}])
    );
    let out = petri(&["replay", "--seed", "0", file, "--guest", "6.3"]);
    assert!(
        stdout(&out)
            .contains("script step 1 (received CREATE_INTERRUPT_MESSAGE3 for slot 1) never fired"),
        "{}",
        stdout(&out)
    );
}

/// A reader that goes away (`petri run ... | head -1`) ends petri quietly with the shell's
/// status for SIGPIPE, not with a panic about a broken pipe.
#[test]
fn a_closed_pipe_ends_petri_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_petri"))
        .args([
            "run",
            "chaos",
            "--guest",
            "6.2",
            "--schedules",
            "300",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("petri");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("the first line");
    // The reader is gone: the pipe is closed with most of the output still to come.
    let out = child.wait_with_output().expect("petri ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!first.is_empty());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
