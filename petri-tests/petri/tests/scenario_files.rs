//! Scenario files: mistakes are refused with the file, the line and the reason; steps that
//! never fire are reported and fail the run set; cells name their kinds.

use petri::explore::{Strategy, check, explore, run_seed};
use petri::report::{COLUMNS, cell, cell_detail, demo_table, replay_command};
use petri::scenario::{GuestKind, Scenario, builtin_text, catalogue, load};

/// The error a scenario text gives, as `petri run` prints it.
fn error(text: &str) -> String {
    match Scenario::from_toml("mine.toml", text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const HEAD: &str = "name = \"mine\"\n\n[[bus]]\nfunctions = [{ slot = 1 }]\n";

/// An unknown key inside a response rule's `response` is named (not "wanted exactly 1
/// element"), with the file and line.
#[test]
fn unknown_response_key_is_named() {
    let e = error(&format!(
        "{HEAD}\n[[bus.script.responses]]\nmessage = \"BUS_D0ENTRY\"\n\
         response = {{ delay = \"5ms\", jitter = \"1ms\" }}\n"
    ));
    assert!(e.starts_with("mine.toml: line 8"), "{e}");
    assert!(e.contains("unknown field `jitter`"), "{e}");
    assert!(!e.contains("exactly 1 element"), "{e}");
}

/// An unknown key inside a trigger (`after` belongs to the step) is named.
#[test]
fn unknown_trigger_key_is_named() {
    let e = error(&format!(
        "{HEAD}\n[[bus.script.steps]]\nwhen = {{ at = \"1s\", after = \"2ms\" }}\n\
         action = {{ kind = \"rescind\" }}\n"
    ));
    assert!(e.starts_with("mine.toml: line 7"), "{e}");
    assert!(e.contains("unknown field `after`"), "{e}");
}

/// A misspelt failure kind is refused when the file is read, listing the known kinds.
#[test]
fn misspelt_kind_is_refused() {
    let e = error(&format!(
        "{HEAD}\n[[expect]]\nguest = \"6.2\"\nrelay = false\nresult = \"fail\"\n\
         kinds = [\"nul_deref\"]\n"
    ));
    assert!(e.starts_with("mine.toml: line 10"), "{e}");
    assert!(e.contains("unknown failure kind \"nul_deref\""), "{e}");
    assert!(e.contains("null_deref") && e.contains("segfault"), "{e}");
}

/// More MSI-X vectors than the function's table holds are refused, at `vectors`'s line.
#[test]
fn too_many_vectors_are_refused() {
    let e = error(&format!("{HEAD}\n[guest]\nvectors = 9\n"));
    assert!(e.starts_with("mine.toml: line 7"), "{e}");
    assert!(e.contains("more than the 8 entries"), "{e}");
    // A hot-added function counts too.
    let e = error(
        "name = \"mine\"\n\n[guest]\nvectors = 4\n\n[[bus]]\nfunctions = []\n\
         [[bus.script.steps]]\nwhen = { at = \"1s\" }\naction = { kind = \"hot_add\", slot = 2, \
         msix = { table_size = 2, bar = 0, table_offset = 0x2000, pba_offset = 0x3000 } }\n",
    );
    assert!(e.contains("line 4") && e.contains("slot 2"), "{e}");
    assert!(Scenario::from_toml("ok", &format!("{HEAD}\n[guest]\nvectors = 8\n")).is_ok());
}

/// `[chaos] slots = 0` is refused.
#[test]
fn chaos_without_slots_is_refused() {
    let e = error(&format!("{HEAD}\n[chaos]\nactions = 3\nslots = 0\n"));
    assert!(e.starts_with("mine.toml: line 8"), "{e}");
    assert!(e.contains("slots must be at least 1"), "{e}");
}

/// `schedules = 0` names its line.
#[test]
fn no_schedules_is_refused() {
    let e = error(&format!("schedules = 0\n{HEAD}"));
    assert!(e.starts_with("mine.toml: line 1"), "{e}");
}

/// A scenario whose host offers only protocol 1.2: the guest sends CREATE_INTERRUPT_MESSAGE2.
fn v12(message: &str) -> Scenario {
    Scenario::from_toml(
        "v12",
        &format!(
            "name = \"v12\"\n\n[[bus]]\nversions = [\"1.2\"]\nfunctions = [{{ slot = 1 }}]\n\n\
             [[bus.script.steps]]\nwhen = {{ received = {{ message = \"{message}\", slot = 1 }} }}\n\
             action = {{ kind = \"eject\", slot = 1 }}\n\n[[expect]]\nguest = \"6.3\"\n\
             relay = false\nresult = \"pass\"\n"
        ),
    )
    .unwrap()
}

/// A step whose trigger never happens is reported, and the run set fails (`n/a`); with
/// the message family the same step fires on that guest.
#[test]
fn a_step_that_never_fires_fails_the_run_set() {
    let s = v12("CREATE_INTERRUPT_MESSAGE3");
    let strategy = Strategy::Random { first_seed: 0 };
    let summary = explore(&s, GuestKind::Linux63, false, 4, strategy, |_| {}).unwrap();
    assert_eq!(summary.failures, 0);
    assert_eq!(summary.unfired_steps.len(), 1);
    let u = &summary.unfired_steps[0];
    assert_eq!((u.bus, u.step, u.missed), (0, 1, 4));
    assert_eq!(u.when, "received CREATE_INTERRUPT_MESSAGE3 for slot 1");
    let e = check(&s, GuestKind::Linux63, &summary).unwrap_err();
    assert!(e.contains("step 1") && e.contains("never fired"), "{e}");
    assert_eq!(cell(&s, GuestKind::Linux63, &summary), "n/a !");
    let detail = cell_detail(&summary).unwrap();
    assert!(
        detail.starts_with("n/a: step 1 (received CREATE_INTERRUPT_MESSAGE3"),
        "{detail}"
    );
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["unfired_steps"][0]["missed"], 4);
    assert_eq!(json["unfired_steps"][0]["step"], 1);
    let r = run_seed(&s, GuestKind::Linux63, false, 0, false).unwrap();
    assert_eq!(r.unfired_steps, [(0, 0)]);

    let s = v12("CREATE_INTERRUPT_MESSAGE*");
    let summary = explore(&s, GuestKind::Linux63, false, 4, strategy, |_| {}).unwrap();
    assert!(
        summary.unfired_steps.is_empty(),
        "{:?}",
        summary.unfired_steps
    );
    check(&s, GuestKind::Linux63, &summary).unwrap();
}

/// C2 and C2-failed trigger on the CREATE_INTERRUPT_MESSAGE family, so they reach their
/// window whatever version the guest speaks.
#[test]
fn c2_triggers_on_the_family() {
    for name in ["c2", "c2-failed"] {
        let text = builtin_text(name).unwrap();
        assert!(text.contains("\"CREATE_INTERRUPT_MESSAGE*\""), "{name}");
    }
}

/// For each failure kind of a mixed cell the summary has a seed, and that seed replays to
/// that kind.
#[test]
fn each_kind_has_a_seed_that_replays_to_it() {
    let s = load("chaos").unwrap();
    let strategy = Strategy::Random { first_seed: 0 };
    let summary = explore(&s, GuestKind::Linux62, false, 12, strategy, |_| {}).unwrap();
    assert!(
        summary.first_seed_by_kind.len() > 1,
        "{:?}",
        summary.outcomes
    );
    for (kind, seed) in &summary.first_seed_by_kind {
        let r = run_seed(&s, GuestKind::Linux62, false, *seed, false).unwrap();
        assert_eq!(r.outcome.kind(), kind, "seed {seed}");
    }
    let json = serde_json::to_value(&summary).unwrap();
    assert!(json["first_seed_by_kind"].is_object());
}

/// The demo's rows fit 120 columns with every direct cell failing (many schedules, a mix of
/// kinds, expectations not met); each failing cell's note names every kind and replays on
/// the cell's own guest.
#[test]
fn demo_table_fits_and_names_kinds() {
    let scenarios = catalogue();
    let strategy = Strategy::Random { first_seed: 0 };
    let chaos = load("chaos").unwrap();
    let mut results = Vec::new();
    for s in &scenarios {
        let mut row = Vec::new();
        for (guest, relay) in COLUMNS {
            // The models' mixed summary, relabelled, stands in for every cell (no real runs).
            let model = guest.model().map_or(GuestKind::Linux63, |_| guest);
            let mut summary = explore(&chaos, model, false, 3, strategy, |_| {}).unwrap();
            summary.schedules = 300;
            summary.failures = 299;
            if relay {
                summary.failures = 0;
                summary.outcomes = [("ok".to_owned(), 300)].into_iter().collect();
                summary.first_seed_by_kind.clear();
            }
            summary.relay = relay;
            summary.guest = guest.name().to_owned();
            row.push(summary);
        }
        results.push((s, row));
    }
    let text = demo_table(&results);
    // Two tables (the models', the real drivers'), each a header, a rule and a row per
    // scenario.
    let table: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(table.len(), 2 * (scenarios.len() + 2));
    for line in &table {
        assert!(
            line.chars().count() <= 120,
            "{} columns: {line}",
            line.len()
        );
    }
    let first = &results[0].1[4];
    let cmd = replay_command("c1", GuestKind::Debian510, first).unwrap();
    assert!(cmd.ends_with("c1 --guest 5.10"), "{cmd}");
    assert!(text.contains(&cmd), "{text}");
    let mut relay_cell = results[0].1[6].clone();
    relay_cell.relay = true;
    let relay_cmd = replay_command("c1", GuestKind::Debian61, &relay_cell).unwrap();
    assert!(relay_cmd.ends_with("--guest 6.1 --relay"), "{relay_cmd}");
    for kind in first.first_seed_by_kind.keys() {
        assert!(text.contains(kind.as_str()), "{kind}");
    }
}
