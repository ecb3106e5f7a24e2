//! Servicing mode (issue 15): a run whose relays are serviced at every scheduling point
//! (stopped, saved, encoded, decoded, dropped and restored over the same channels, clock and
//! BAR backing) ends exactly as the same seed without servicing: the same outcome (kind and
//! detail), the same choices and steps, what the guest holds and the host has once the run
//! settled, the guest's device history and steps, and (for the models) every message and
//! relay note of the trace. For every built-in scenario, the 6.2 and 6.3 models and the real
//! 5.10, 6.1 and 6.12 drivers, the chaotic host and a host acting at random moments. A lossy
//! servicing is caught.

mod cli;

use cli::{petri, stdout, temp};
use guest_linux::KernelModel;
use host_sim::{FunctionSpec, HostAction};
use petri::explore::{Strategy, Summary, explore, run_seed};
use petri::outcome::{Outcome, RunResult};
use petri::scenario::{GuestKind, Scenario, Servicing, catalogue, load};
use petri::sched::Chooser;
use petri::trace::{Line, Mark};
use petri::vm::{Vm, VmSpec};
use vpci_relay::SavedBus;

/// Seeds per built-in scenario for each model, and for each real driver (each run is a
/// guest process, and the serviced one services at every one of its hundreds of points).
/// `SERVICING_SEEDS=N` runs N for the models and N/6 for the real drivers instead.
const MODEL_SEEDS: u64 = 12;
const REAL_SEEDS: u64 = 2;

fn seeds(default: u64, divisor: u64) -> u64 {
    std::env::var("SERVICING_SEEDS")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(default, |n| (n / divisor).max(1))
}

fn with_servicing(scenario: &Scenario, servicing: Servicing) -> Scenario {
    let mut s = scenario.clone();
    s.relay.servicing = servicing;
    s
}

/// The trace without its servicing points (the only lines servicing may add).
fn lines(r: &RunResult) -> Vec<Line> {
    r.trace
        .as_ref()
        .map(|t| {
            t.lines
                .iter()
                .filter(|l| l.mark != Mark::Serviced)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Everything the two runs must share; panics naming the first difference.
fn assert_same(at: &str, plain: &RunResult, serviced: &RunResult) {
    assert_eq!(plain.servicings, 0, "{at}: the plain run serviced");
    assert_eq!(
        (plain.outcome.kind(), plain.outcome.to_string()),
        (serviced.outcome.kind(), serviced.outcome.to_string()),
        "{at}: outcome without (left) and with servicing (right)"
    );
    assert_eq!(plain.choices, serviced.choices, "{at}: choices");
    assert_eq!(plain.steps, serviced.steps, "{at}: steps");
    assert_eq!(plain.end, serviced.end, "{at}: end time");
    assert_eq!(plain.views, serviced.views, "{at}: guest and host views");
    assert_eq!(
        plain.device_history, serviced.device_history,
        "{at}: device history"
    );
    assert_eq!(plain.guest_trace, serviced.guest_trace, "{at}: guest steps");
    assert_eq!(
        plain.unfired_steps, serviced.unfired_steps,
        "{at}: unfired steps"
    );
    let (a, b) = (lines(plain), lines(serviced));
    if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
        panic!(
            "{at}: trace line {i} without (left) and with servicing (right): {:?} != {:?}",
            a.get(i).map(ToString::to_string),
            b.get(i).map(ToString::to_string)
        );
    }
}

/// Servicing happened at every scheduling point: at least once per choice the scheduler
/// made (each bus's relay is serviced before each pick while it runs).
fn assert_serviced(at: &str, r: &RunResult) {
    assert!(r.servicings > 0, "{at}: no servicing happened");
    assert!(
        r.servicings >= r.choices.len() as u64,
        "{at}: {} servicings for {} choices",
        r.servicings,
        r.choices.len()
    );
}

/// One seed of `scenario` on `guest` through the relay, with and without servicing at
/// every step; returns the servicings done.
fn compare(scenario: &Scenario, guest: GuestKind, seed: u64) -> u64 {
    let record = guest.driver().is_none();
    let at = format!("{} {guest} seed {seed}", scenario.name);
    let run = |servicing| {
        run_seed(
            &with_servicing(scenario, servicing),
            guest,
            true,
            seed,
            record,
        )
        .unwrap_or_else(|e| panic!("{at}: {e}"))
    };
    let plain = run(Servicing::Off);
    let serviced = run(Servicing::EveryStep);
    assert!(
        !matches!(serviced.outcome, Outcome::HarnessError { .. }),
        "{at}: {}",
        serviced.outcome
    );
    assert_same(&at, &plain, &serviced);
    assert_serviced(&at, &serviced);
    serviced.servicings
}

/// Every built-in scenario on each of `guests`, `seeds` seeds each, serviced at every step
/// and compared with the same seed unserviced: how many runs and servicings there were.
fn catalogue_serviced(guests: &[GuestKind], seeds: u64) -> (usize, u64) {
    let mut servicings = 0;
    let mut runs = 0;
    for scenario in catalogue() {
        for &guest in guests {
            for seed in 0..seeds {
                servicings += compare(&scenario, guest, seed);
                runs += 1;
            }
        }
    }
    assert!(runs >= 12 * guests.len() * seeds as usize, "{runs} runs");
    (runs, servicings)
}

/// Every built-in scenario on both models, 12 seeds each.
#[test]
fn models_serviced_at_every_step_end_as_unserviced() {
    let (runs, servicings) = catalogue_serviced(&GuestKind::ALL, seeds(MODEL_SEEDS, 1));
    eprintln!("models: {runs} runs serviced at every step, {servicings} servicings");
}

/// Every built-in scenario on the three real drivers, 2 seeds each.
#[test]
fn real_drivers_serviced_at_every_step_end_as_unserviced() {
    let (runs, servicings) = catalogue_serviced(&GuestKind::REAL, seeds(REAL_SEEDS, 6));
    eprintln!("real drivers: {runs} runs serviced at every step, {servicings} servicings");
}

/// The chaotic host beyond the suite's first seeds, on both models and one real driver.
#[test]
fn chaos_serviced_at_every_step_ends_as_unserviced() {
    let chaos = load("chaos").expect("chaos");
    for seed in 100..110 {
        for guest in GuestKind::ALL {
            compare(&chaos, guest, seed);
        }
    }
    for seed in 100..102 {
        compare(&chaos, GuestKind::Debian510, seed);
    }
}

/// What a host acting at random moments saw: after each cycle, the guest's view and the
/// host's verdict; then the end of the run.
fn random_host(model: KernelModel, seed: u64, servicing: Servicing) -> (Vec<String>, RunResult) {
    let mut vm = Vm::new(&VmSpec::hot_plug(model), Chooser::seeded(seed))
        .expect("vm")
        .with_servicing(servicing);
    let mut seen = Vec::new();
    let mut rng = seed | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    seen.push(format!("boot: {:?}", vm.settle()));
    for cycle in 1..=30u32 {
        vm.host_act(
            0,
            HostAction::HotAdd(FunctionSpec::nic(2).with_serial(cycle)),
        )
        .expect("hot add");
        let mid = vm.run_for(next() % 48);
        // Sometimes the host re-lists or ejects the booted function too.
        if next() % 4 == 0 {
            let _ = vm.host_act(0, HostAction::SendRelations {});
        }
        vm.host_act(0, HostAction::Eject { slot: 2 })
            .expect("eject");
        let end = vm.settle();
        seen.push(format!(
            "cycle {cycle}: {mid:?} {end:?} {:?} {} {:?}",
            vm.failure(),
            vm.host_visible_outcome(),
            vm.guest_devices(0)
        ));
    }
    (seen, vm.run())
}

/// A host that hot-adds and ejects at random moments (in the middle of a probe, or after
/// it): the serviced run sees the same thing after every cycle, and ends the same.
#[test]
fn random_host_serviced_at_every_step_ends_as_unserviced() {
    for model in [KernelModel::Linux62, KernelModel::Linux63] {
        for seed in [3, 7, 11] {
            let at = format!("{model:?} seed {seed}");
            let (plain_seen, plain) = random_host(model, seed, Servicing::Off);
            let (seen, serviced) = random_host(model, seed, Servicing::EveryStep);
            assert_eq!(
                plain_seen, seen,
                "{at}: cycles without (left) and with servicing"
            );
            assert_same(&at, &plain, &serviced);
            assert!(serviced.servicings > 0, "{at}: no servicing happened");
        }
    }
}

/// One seed on the 6.3 model through the relay: `plain` unserviced, and `lossy` (serviced at
/// every step by a servicing that tampers with the saved state), which must have been
/// serviced at every step. Whether the comparison of the two caught a difference, with the
/// unserviced run and the lossy one.
fn lossy_run(plain: &Scenario, lossy: &Scenario, seed: u64) -> (bool, RunResult, RunResult) {
    let unserviced = run_seed(plain, GuestKind::Linux63, true, seed, true).expect("plain");
    let serviced = run_seed(lossy, GuestKind::Linux63, true, seed, true).expect("lossy");
    assert_serviced("lossy", &serviced);
    let caught = std::panic::catch_unwind(|| assert_same("lossy", &unserviced, &serviced)).is_err();
    (caught, unserviced, serviced)
}

/// Test-only lossy servicing: the host's relations not yet reflected to the guest are lost
/// (a state that still restores: the loss is only seen in what the guest ends up with).
fn forget_host_relations(saved: &mut SavedBus) {
    if let Some(changes) = saved.relay.as_mut().and_then(|r| r.changes.as_mut()) {
        changes.host_relations = None;
        changes.relations_dirty = false;
    }
}

/// The comparison has teeth: with a servicing that loses the relations the relay holds for
/// the guest, the checks above fail (re-add's guest never gets its function back), and a lossless
/// servicing of the same run passes them.
#[test]
fn a_lossy_servicing_is_caught() {
    let re_add = load("re-add").expect("re-add");
    let mut lossy = with_servicing(&re_add, Servicing::EveryStep);
    lossy.relay.tamper = Some(forget_host_relations);
    let mut caught = 0;
    for seed in 0..4 {
        let (failed, plain, serviced) = lossy_run(&re_add, &lossy, seed);
        let faithful = run_seed(
            &with_servicing(&re_add, Servicing::EveryStep),
            GuestKind::Linux63,
            true,
            seed,
            true,
        )
        .expect("serviced");
        assert_same("faithful", &plain, &faithful);
        if failed {
            assert_eq!(serviced.outcome.kind(), "lost_device", "seed {seed}");
            caught += 1;
        }
    }
    assert_eq!(caught, 4, "a lossy servicing went unnoticed");
}

/// Test-only lossy servicing: the host packets the stopped bus queued are lost.
fn drop_host_queue(saved: &mut SavedBus) {
    saved.host_queue.clear();
}

/// Servicing also happens while host packets wait unread in the relay's channel, so the
/// saved host queue is exercised: losing it changes how c2 ends on every seed tried.
#[test]
fn a_lost_host_queue_is_caught() {
    let c2 = load("c2").expect("c2");
    let mut lossy = with_servicing(&c2, Servicing::EveryStep);
    lossy.relay.tamper = Some(drop_host_queue);
    for seed in 0..4 {
        let (failed, _, _) = lossy_run(&c2, &lossy, seed);
        assert!(failed, "seed {seed}: losing the host queue went unnoticed");
    }
}

/// `schedules` random schedules (from seed 0) of `scenario` on the 6.3 model, through the
/// relay or directly.
fn explore_63(scenario: &Scenario, relay: bool, schedules: u64) -> Summary {
    explore(
        scenario,
        GuestKind::Linux63,
        relay,
        schedules,
        Strategy::Random { first_seed: 0 },
        |_| {},
    )
    .expect("explore")
}

/// A run set that asks for servicing and services nothing is refused, never a silent pass:
/// direct runs have no relay, so their summary carries no servicing count; through the
/// relay the count is there.
#[test]
fn the_summary_counts_servicings() {
    let c2 = with_servicing(&load("c2").expect("c2"), Servicing::EveryStep);
    let relayed = explore_63(&c2, true, 3);
    assert!(relayed.servicings.is_some_and(|n| n > 0), "{relayed:?}");
    assert!(petri::explore::check(&c2, GuestKind::Linux63, &relayed).is_ok());
    let direct = explore_63(&c2, false, 3);
    assert_eq!(direct.servicings, None);
    let mut none = relayed.clone();
    none.servicings = Some(0);
    let refused = petri::explore::check(&c2, GuestKind::Linux63, &none);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("no relay was serviced")),
        "{refused:?}"
    );
}

/// The CLI: `--servicing every-step` on `run` prints how many servicings happened; a replay
/// says how many and lists each servicing point only with `--verbose`; a scenario file's
/// `[relay] servicing = "every-step"` does the same as the flag.
#[test]
fn the_cli_shows_servicing() {
    let out = petri(&[
        "run",
        "c2",
        "--guest",
        "6.3",
        "--relay",
        "--schedules",
        "2",
        "--servicing",
        "every-step",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let count = |text: &str, prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in {text}"))
    };
    assert!(count(&text, "servicing (every-step):") > 0, "{text}");

    let replay = |extra: &[&str]| {
        let mut args = vec!["replay", "c2", "--guest", "6.3", "--relay", "--seed", "1"];
        args.extend_from_slice(extra);
        let out = petri(&args);
        assert!(out.status.success(), "{out:?}");
        stdout(&out)
    };
    let quiet = replay(&["--servicing", "every-step"]);
    let verbose = replay(&["--servicing", "every-step", "--verbose"]);
    let plain = replay(&[]);
    let serviced = count(&quiet, "servicing (every-step): the relay was serviced");
    assert!(serviced > 0, "{quiet}");
    assert!(!quiet.contains("relay serviced"), "{quiet}");
    let points = verbose
        .lines()
        .filter(|l| l.contains("relay serviced"))
        .count() as u64;
    assert_eq!(points, serviced, "{verbose}");
    assert!(!plain.contains("servicing"), "{plain}");
    // Apart from the servicing lines, the serviced replay is the plain one.
    let without = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.contains("servicing") && !l.contains("relay serviced"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(without(&quiet), without(&plain));

    let file = temp("serviced.toml", "cli");
    let text = load_text("c2").replace("[[bus]]", "[relay]\nservicing = \"every-step\"\n\n[[bus]]");
    std::fs::write(&file, text).expect("write");
    let from_file = replay_file(&file);
    assert_eq!(
        count(&from_file, "servicing (every-step): the relay was serviced"),
        serviced,
        "{from_file}"
    );
}

fn load_text(name: &str) -> String {
    petri::scenario::builtin_text(name)
        .expect("built in")
        .to_owned()
}

fn replay_file(file: &std::path::Path) -> String {
    let path = file.to_str().expect("utf-8 path");
    let out = petri(&["replay", path, "--guest", "6.3", "--relay", "--seed", "1"]);
    assert!(out.status.success(), "{out:?}");
    stdout(&out)
}

/// Test-only: a state the restore refuses (a major format it does not know).
fn unknown_format(saved: &mut SavedBus) {
    if let Some(relay) = saved.relay.as_mut() {
        relay.format = 99;
    }
}

/// A restore that fails is the harness's error, never scored as the guest's outcome: the run
/// ends `harness_error` naming the refusal, for a model and a real driver, and a run set with
/// one is not as expected whatever the scenario expects.
#[test]
fn a_refused_restore_is_a_harness_error() {
    let mut c2 = with_servicing(&load("c2").expect("c2"), Servicing::EveryStep);
    c2.relay.tamper = Some(unknown_format);
    for guest in [GuestKind::Linux63, GuestKind::Debian61] {
        let r = run_seed(&c2, guest, true, 0, false).expect("run");
        assert_eq!(r.outcome.kind(), "harness_error", "{guest}: {}", r.outcome);
        assert!(
            r.outcome.to_string().contains("servicing the relay failed"),
            "{}",
            r.outcome
        );
    }
    let summary = explore_63(&c2, true, 2);
    assert!(petri::explore::check(&c2, GuestKind::Linux63, &summary).is_err());
}
