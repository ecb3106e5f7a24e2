//! Multi-process runs: host_sim, the `openhcl-vpci` service and the guest (a Linux model, or
//! a real Debian driver in its kernel_shim child) in three processes over real rings.
//! Every wait is bounded: a hang fails the test instead of blocking the suite.

use petri::outcome::Outcome;
use petri::processes::{self, ProcessOptions};
use petri::scenario::GuestKind;
use std::path::PathBuf;
use std::time::Duration;
use vpci_endpoints::report::{GuestState, StormSummary};
use vpci_protocol::WinSlot;

fn options(storm: u32) -> ProcessOptions {
    ProcessOptions {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_petri")),
        storm,
        late_buses: 0,
        updates: 0,
        quiet: Duration::from_millis(750),
        limit: Duration::from_secs(90) + Duration::from_millis(u64::from(storm) * 400),
        verbose: std::env::var_os("PETRI_VERBOSE").is_some(),
    }
}

/// A scenario file of one bus with `functions` NIC-like functions and no script.
fn plain_bus(name: &str, functions: u32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("petri-processes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(format!("{name}.toml"));
    let slots: Vec<String> = (0..functions)
        .map(|s| format!("{{ slot = {s} }}"))
        .collect();
    let text = format!(
        "name = \"{name}\"\n\n[[bus]]\nfunctions = [{}]\n",
        slots.join(", ")
    );
    std::fs::write(&path, text).expect("scenario file");
    path
}

fn run(scenario: &str, guest: GuestKind, storm: u32) -> processes::ProcessRun {
    run_with(scenario, guest, &options(storm))
}

fn run_with(scenario: &str, guest: GuestKind, opts: &ProcessOptions) -> processes::ProcessRun {
    match processes::run(scenario, guest, opts) {
        Ok(r) => r,
        Err(e) => panic!("{scenario} {}: {e}", guest.name()),
    }
}

fn assert_ok(what: &str, r: &processes::ProcessRun) {
    assert_eq!(
        r.outcome,
        Outcome::Ok,
        "{what}: {} (guest's last lines: {:?})",
        r.outcome,
        &r.guest_lines[r.guest_lines.len().saturating_sub(12)..]
    );
}

/// The real 5.10 driver probes a two-function bus through the service across processes,
/// holds both functions with the host's identities, and is removed and unloaded with nothing
/// leaked.
#[test]
fn real_510_probes_through_the_service() {
    let scenario = plain_bus("two-functions", 2);
    let r = run(
        scenario.to_str().expect("utf-8 path"),
        GuestKind::Debian510,
        0,
    );
    assert_ok("probe", &r);
    let seen = r.guest_lines.join("\n");
    assert!(
        seen.contains("probed=1 closed=0 held=[0:15b3:101a:0;1:15b3:101a:0]"),
        "{seen}"
    );
    assert!(
        seen.contains("ending=Done { leaks: 0 } leaks=0") && seen.contains("torn_down=true"),
        "{seen}"
    );
}

/// One real 5.10 guest process drives two buses through the service (one driver instance
/// per bus, in PCI domains 1 and 2), the host ejecting a function of the second while the
/// driver sets up its interrupt: both probe, the eject is answered, and everything is removed
/// and unloaded with nothing leaked.
#[test]
fn real_510_two_buses_through_the_service() {
    let dir = std::env::temp_dir().join(format!("petri-processes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join("two-buses.toml");
    let text = "name = \"two-buses\"\n\n[[bus]]\nfunctions = [{ slot = 1 }]\n\n\
                [[bus]]\nfunctions = [{ slot = 1 }, { slot = 2 }]\n\
                [[bus.script.steps]]\n\
                when = { received = { message = \"CREATE_INTERRUPT_MESSAGE*\", slot = 1 } }\n\
                action = { kind = \"eject\", slot = 1 }\n";
    std::fs::write(&path, text).expect("scenario file");
    let r = run(path.to_str().expect("utf-8 path"), GuestKind::Debian510, 0);
    assert_ok("two buses", &r);
    let seen = r.guest_lines.join("\n");
    assert!(
        seen.contains("guest state bus0 probed=1 closed=0 held=[1:"),
        "{seen}"
    );
    assert!(
        seen.contains("guest state bus1 probed=1 closed=0 held=[2:"),
        "{seen}"
    );
    assert!(
        seen.contains("leaks=0") && seen.contains("torn_down=true"),
        "{seen}"
    );
}

/// A bus the host offers after the message that every boot-time offer was delivered reaches
/// the real 5.10 driver, which probes it (in a driver instance of its own, PCI domain 2)
/// while the boot bus stays up: both end probed with the host's functions, and everything is
/// removed and unloaded with nothing leaked.
#[test]
fn real_510_late_offer_probes() {
    let dir = std::env::temp_dir().join(format!("petri-processes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join("late-offer.toml");
    let text = "name = \"late-offer\"\n\n[[bus]]\nfunctions = [{ slot = 1 }]\n\n\
                [[bus]]\nfunctions = [{ slot = 2 }, { slot = 3 }]\n";
    std::fs::write(&path, text).expect("scenario file");
    let opts = ProcessOptions {
        late_buses: 1,
        updates: 0,
        ..options(0)
    };
    let r = run_with(
        path.to_str().expect("utf-8 path"),
        GuestKind::Debian510,
        &opts,
    );
    assert_ok("late offer", &r);
    let seen = r.guest_lines.join("\n");
    let boot_done = r
        .guest_lines
        .iter()
        .position(|l| l.starts_with("guest state bus0 probed=1"));
    let late = r
        .guest_lines
        .iter()
        .position(|l| l == "guest late offer bus1");
    assert!(
        matches!((boot_done, late), (Some(b), Some(l)) if b < l),
        "bus1 must come after bus0's probe: {seen}"
    );
    assert!(
        seen.contains("guest state bus1 probed=1 closed=0 held=[2:15b3:101a:0;3:15b3:101a:0]"),
        "{seen}"
    );
    assert!(
        seen.contains("leaks=0") && seen.contains("torn_down=true"),
        "{seen}"
    );
}

/// The run had one storm, of `cycles` cycles, every one done: each hot-add made and each
/// EJECT answered, none timed out.
fn assert_one_storm_complete(r: &processes::ProcessRun, cycles: u32) {
    let [line] = r.storm.as_slice() else {
        panic!("one storm summary expected: {:?}", r.storm);
    };
    let Some(summary) = StormSummary::parse(line) else {
        panic!("not a storm summary: {line}");
    };
    assert_eq!(summary.cycles, cycles, "{summary:?}");
    assert!(summary.complete(), "{summary:?}");
}

/// Cycles in the real drivers' storms: `default`, or `PETRI_REAL_STORM` (1,000 in
/// `cargo xflowey storm`).
fn storm_cycles(default: u32) -> u32 {
    std::env::var("PETRI_REAL_STORM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A hot-plug storm of `cycles` against a real driver through the service (the EJECT sent
/// before the guest hears of the function, 1 ms, 15 ms or 120 ms after), then the checks:
/// every cycle ran (the host made each hot-add and got each EJECT answered, none timed out),
/// the driver found the hot-added function (slot 1) in at least a fifth of them (the relay
/// coalesces an add whose EJECT came before the guest heard of it), and the end-of-run checks
/// find nothing: no guest failure, nothing lost or held too long, nothing leaked at unload.
fn real_storm(guest: GuestKind, cycles: u32) {
    let scenario = plain_bus(&format!("storm-{}", guest.name()), 1);
    let r = run(scenario.to_str().expect("utf-8 path"), guest, cycles);
    eprintln!(
        "{cycles} cycles against {}: {:?} ({:?})",
        guest.name(),
        r.storm,
        r.elapsed
    );
    assert_ok("storm", &r);
    assert_one_storm_complete(&r, cycles);
    let found = GuestState::arrivals(&r.guest_lines, "bus0", WinSlot::from_raw(1));
    eprintln!("the driver found the hot-added function {found} times");
    assert!(found >= cycles as usize / 5, "found {found} of {cycles}");
}

/// The storm against the real 5.10 driver (100 cycles).
#[test]
fn real_510_hot_plug_storm() {
    real_storm(GuestKind::Debian510, storm_cycles(100));
}

/// The storm against the real 6.1 driver (40 cycles).
#[test]
fn real_61_hot_plug_storm() {
    real_storm(GuestKind::Debian61, storm_cycles(40));
}

/// The storm against the real 6.12 driver (40 cycles).
#[test]
fn real_612_hot_plug_storm() {
    real_storm(GuestKind::Debian612, storm_cycles(40));
}

/// The service updates itself 100 times in a row while a real driver (5.10) and the 6.2
/// model go through a hot-plug storm: each update is answered by the new image, and the run
/// ends as a storm without updates does, every promise kept (`PETRI_UPDATES=N` changes the
/// count).
#[test]
fn storms_across_a_hundred_updates() {
    let updates = std::env::var("PETRI_UPDATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for guest in [GuestKind::Debian510, GuestKind::Linux62] {
        let cycles = 40;
        let scenario = plain_bus(&format!("updates-{}", guest.name()), 1);
        let mut opts = options(cycles);
        opts.updates = updates;
        let r = run_with(scenario.to_str().expect("utf-8 path"), guest, &opts);
        eprintln!(
            "{} across {} updates: {:?} ({:?})",
            guest.name(),
            r.updates,
            r.storm,
            r.elapsed
        );
        assert_ok(&format!("updates {}", guest.name()), &r);
        assert_eq!(r.updates, updates, "{}", guest.name());
        assert_one_storm_complete(&r, cycles);
    }
}

/// `petri run --processes`'s runs: benign scenarios and C2/C3 through the service on the 6.2
/// model and 5.10, each clean.
#[test]
fn catalogue_through_the_service() {
    for scenario in ["re-add", "drop-then-eject", "c2", "c3"] {
        for guest in [GuestKind::Linux62, GuestKind::Debian510] {
            let r = run(scenario, guest, 0);
            assert_ok(&format!("{scenario} {}", guest.name()), &r);
        }
    }
}

/// `--updates N` on the CLI: the run says how many updates the new images answered.
#[test]
fn cli_counts_the_updates() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_petri"))
        .args([
            "run",
            "re-add",
            "--guest",
            "6.2",
            "--processes",
            "--updates",
            "5",
        ])
        .output()
        .expect("petri");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("updates: 5 of 5 (each answered by the new image)"),
        "{text}"
    );
}

/// The CLI says what it ran and that it is not replayable.
#[test]
fn cli_says_not_replayable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_petri"))
        .args(["run", "c2", "--guest", "6.2", "--processes"])
        .output()
        .expect("petri");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("c2 linux-6.2 processes: 0/1 failed"),
        "{text}"
    );
    assert!(text.contains("not replayable"), "{text}");
}

/// Runs across processes always go through the service, so an `[[expect]]` of a failure
/// through the relay cannot be met by runs that pass: the CLI reports it as NOT AS EXPECTED
/// and exits 1 (and says `unmet` in JSON), never as a pass.
#[test]
fn cli_reports_an_expected_failure_that_did_not_happen_as_unmet() {
    let path = scenario_file(
        "expects-failure",
        "[[bus]]\nfunctions = [{ slot = 1 }]\n\n\
         [[expect]]\nguest = \"linux-6.2\"\nrelay = true\nresult = \"fail\"\n",
    );
    let petri = |json: bool| petri_processes(&path, json);
    let out = petri(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("expects-failure linux-6.2 processes: 0/1 failed"),
        "{text}"
    );
    assert!(
        text.contains("NOT AS EXPECTED: a failure was expected"),
        "{text}"
    );
    let out = petri(true);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("\"expectation\":\"unmet\""), "{text}");
}

/// Writes the scenario `name` (`text` after its name line) in this test binary's scratch
/// directory; its path.
fn scenario_file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("petri-processes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("name = \"{name}\"\n{text}")).expect("scenario file");
    path.to_str().expect("utf-8 path").to_owned()
}

/// `petri run PATH --guest 6.2 --processes` (with `--json`), as a user runs it.
fn petri_processes(path: &str, json: bool) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_petri"));
    cmd.args(["run", path, "--guest", "6.2", "--processes"]);
    if json {
        cmd.arg("--json");
    }
    cmd.output().expect("petri")
}

/// A required step that cannot fire (its trigger names a slot the host never has) fires in
/// no run: the run set is NOT AS EXPECTED and `petri run` exits 1, naming the step, though
/// every run passed; JSON says `unreached` and lists the step. (Regression test: the runs
/// passed, the step unmentioned.)
#[test]
fn cli_fails_a_run_set_whose_step_never_fires() {
    let path = scenario_file(
        "never-fires",
        "[[bus]]\nfunctions = [{ slot = 1 }]\n\n[[bus.script.steps]]\n\
         when = { ejection_completed = { slot = 7 } }\naction = { kind = \"send_relations\" }\n",
    );
    let out = petri_processes(&path, false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("never-fires linux-6.2 processes: 0/1 failed"),
        "{text}"
    );
    assert!(
        text.contains("NOT AS EXPECTED: step 1 (ejection_completed for slot 7) never fired"),
        "{text}"
    );
    assert!(
        text.contains("  step 1 (ejection_completed for slot 7) never fired in 1 of 1 runs"),
        "{text}"
    );
    let out = petri_processes(&path, true);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("\"expectation\":\"unreached\""), "{text}");
    assert!(text.contains("\"missed\":1"), "{text}");
}

/// What `--processes` cannot honour is refused, never silently dropped: a mode (runs across
/// processes always go through the relay) or a seed (they do not replay). A real driver's
/// runs are counted by `--real-schedules`, as in a simulated run set. (Regression test:
/// `--mode direct` ran through the relay and `--real-schedules 2` ran once.)
#[test]
fn cli_refuses_what_processes_cannot_honour() {
    for extra in [["--mode", "direct"], ["--seed", "3"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_petri"))
            .args(["run", "c2", "--guest", "6.2", "--processes"])
            .args(extra)
            .output()
            .expect("petri");
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {text}");
        assert!(text.contains("cannot be used with"), "{extra:?}: {text}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_petri"))
        .args([
            "run",
            "c2",
            "--guest",
            "5.10",
            "--processes",
            "--real-schedules",
            "2",
        ])
        .output()
        .expect("petri");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("c2 debian-5.10 processes: 0/2 failed"),
        "{text}"
    );
}
