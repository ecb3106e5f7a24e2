//! Hot-plug long haul in the manner of the seed's own testing: add and remove a device as
//! fast as the host allows, for hundreds of cycles, through the relay. Nothing fails, every
//! device reaches the guest and leaves it, and no table in the relay grows with the cycles.

use guest_linux::KernelModel;
use host_sim::{FunctionSpec, HostAction};
use petri::outcome::Outcome;
use petri::sched::Chooser;
use petri::vm::{Vm, VmSpec};
use std::time::Duration;

fn count(tree: &inspect::Node, path: &str) -> usize {
    match tree.query(path) {
        Ok(inspect::Node::Dir(entries)) => entries.len(),
        _ => 0,
    }
}

/// 300 add/eject cycles of slot 2 on an unfixed guest through the relay, with the guest's
/// scheduling drawn from a seed: every cycle ends with the guest holding exactly what the
/// host has, and the relay's tables do not grow with the cycles: one function entry per slot
/// the host used (slot 2's is the memory of its last ejected function, which keeps a stale
/// listing of it from announcing it again), no live request.
#[test]
fn hot_plug_long_haul_through_the_relay() {
    let mut vm = Vm::new(&VmSpec::hot_plug(KernelModel::Linux62), Chooser::seeded(7)).unwrap();
    assert_eq!(vm.settle(), None);
    assert!(vm.guest_installed(0));
    for cycle in 0..300 {
        vm.host_act(
            0,
            HostAction::HotAdd(FunctionSpec::nic(2).with_serial(cycle)),
        )
        .unwrap();
        assert_eq!(vm.settle(), None, "cycle {cycle}");
        assert_eq!(vm.failure(), None, "cycle {cycle}");
        let present = |vm: &Vm| {
            vm.guest_devices(0)
                .iter()
                .filter(|d| d.child_present)
                .map(|d| (d.slot.raw(), d.serial))
                .collect::<Vec<_>>()
        };
        assert_eq!(present(&vm), [(1, 1), (2, cycle)], "cycle {cycle}");
        assert_eq!(vm.host_visible_outcome(), Outcome::Ok, "cycle {cycle}");
        vm.host_act(0, HostAction::Eject { slot: 2 }).unwrap();
        assert_eq!(vm.settle(), None, "cycle {cycle}");
        assert_eq!(vm.failure(), None, "cycle {cycle}");
        assert_eq!(present(&vm), [(1, 1)], "cycle {cycle}");
        assert_eq!(vm.host_visible_outcome(), Outcome::Ok, "cycle {cycle}");
        assert!(
            vm.now() < Duration::from_secs(u64::from(cycle + 1)),
            "no waits: {:?}",
            vm.now()
        );
        vm.forget_choices();
        let tree = vm.relay_inspect(0).expect("relay running");
        assert_eq!(count(&tree, "functions"), 2, "cycle {cycle}");
        assert_eq!(
            tree.query("functions/02.0/guest").map(|n| n.to_json()),
            Ok(serde_json::json!("Hidden")),
            "cycle {cycle}"
        );
        assert_eq!(count(&tree, "requests/live"), 0, "cycle {cycle}");
    }
}

/// The long haul at scale (the `catalogue` flowey pipeline): 100,000 cycles on each model,
/// in a release build.
#[test]
#[ignore = "minutes in a debug build; run by `cargo xflowey catalogue`"]
fn hot_plug_long_haul_100k() {
    for model in [KernelModel::Linux62, KernelModel::Linux63] {
        let mut vm = Vm::new(&VmSpec::hot_plug(model), Chooser::seeded(11)).unwrap();
        assert_eq!(vm.settle(), None);
        for cycle in 0..100_000u32 {
            vm.host_act(
                0,
                HostAction::HotAdd(FunctionSpec::nic(2).with_serial(cycle)),
            )
            .unwrap();
            assert_eq!(vm.settle(), None, "{model:?} cycle {cycle}");
            vm.host_act(0, HostAction::Eject { slot: 2 }).unwrap();
            assert_eq!(vm.settle(), None, "{model:?} cycle {cycle}");
            assert_eq!(vm.failure(), None, "{model:?} cycle {cycle}");
            vm.forget_choices();
        }
        let tree = vm.relay_inspect(0).expect("relay running");
        assert_eq!(count(&tree, "functions"), 2, "one entry per slot used");
        assert_eq!(count(&tree, "requests/live"), 0);
        assert_eq!(
            vm.guest_devices(0)
                .iter()
                .filter(|d| d.child_present)
                .count(),
            1
        );
    }
}

/// Resident memory of this process in KiB (`/proc/self/statm`), where the OS tells.
fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

/// What a soak saw at one of its marks.
#[derive(Debug)]
struct Mark {
    cycle: u32,
    rss_kib: Option<u64>,
    relay_functions: usize,
    relay_live_requests: usize,
    /// EJECTs the relay held (the guest was still probing the function) and functions it
    /// coalesced (ejected before the guest saw them), so far.
    held: u64,
    coalesced: u64,
    /// What the 6.2 model's arenas hold (by design: never reused).
    model_bytes: usize,
}

fn counter(tree: &inspect::Node, name: &str) -> u64 {
    tree.query(&format!("counters/{name}"))
        .ok()
        .and_then(|n| n.to_json().as_u64())
        .unwrap_or(0)
}

/// `cycles` add/eject cycles of slot 2 through the relay against the 6.2 model, each EJECT
/// landing after a random number (0 to 63) of the guest's scheduling choices: in the middle of
/// the new function's probe, or after it. After every cycle nothing has failed, the host has
/// had every EJECT answered and the guest holds exactly what the host has; at 10%, 50% and
/// 100% of the cycles the process's resident memory and the relay's tables are recorded.
fn soak(cycles: u32, seed: u64) -> Vec<Mark> {
    let mut vm = Vm::new(
        &VmSpec::hot_plug(KernelModel::Linux62),
        Chooser::seeded(seed),
    )
    .unwrap();
    assert_eq!(vm.settle(), None);
    let mut rng = seed | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let marks = [cycles / 10, cycles / 2, cycles];
    let mut seen = Vec::new();
    for cycle in 1..=cycles {
        vm.host_act(
            0,
            HostAction::HotAdd(FunctionSpec::nic(2).with_serial(cycle)),
        )
        .unwrap();
        assert_eq!(vm.run_for(next() % 64), None, "cycle {cycle}");
        vm.host_act(0, HostAction::Eject { slot: 2 }).unwrap();
        assert_eq!(vm.settle(), None, "cycle {cycle}");
        assert_eq!(vm.failure(), None, "cycle {cycle}");
        assert_eq!(vm.host_visible_outcome(), Outcome::Ok, "cycle {cycle}");
        vm.forget_choices();
        if marks.contains(&cycle) {
            let tree = vm.relay_inspect(0).expect("relay running");
            seen.push(Mark {
                cycle,
                rss_kib: rss_kib(),
                relay_functions: count(&tree, "functions"),
                relay_live_requests: count(&tree, "requests/live"),
                held: counter(&tree, "held"),
                coalesced: counter(&tree, "coalesced"),
                model_bytes: vm.guest_retained_bytes(0),
            });
        }
    }
    seen
}

/// Flat memory: the relay's tables hold one entry per slot used and no live request at every
/// mark. The process's resident memory may grow from the 10% mark to the end only by what the
/// 6.2 model's arenas grew by (by design: a child entry is never reused, so that a stale
/// pointer is caught as a use after free), plus `slack_kib`.
fn assert_flat(marks: &[Mark], slack_kib: u64) {
    for m in marks {
        eprintln!(
            "cycle {}: resident {:?} KiB (the model's arenas {} KiB), relay functions {}, live \
             requests {}, held {}, coalesced {}",
            m.cycle,
            m.rss_kib,
            m.model_bytes / 1024,
            m.relay_functions,
            m.relay_live_requests,
            m.held,
            m.coalesced
        );
        assert!(m.relay_functions <= 2, "cycle {}: {m:?}", m.cycle);
        assert_eq!(m.relay_live_requests, 0, "cycle {}: {m:?}", m.cycle);
    }
    // The random timing reached both hard cases: an EJECT held mid-probe, and a function
    // ejected before the guest saw it.
    let last = marks.last().expect("marks");
    assert!(last.held > 0 && last.coalesced > 0, "{last:?}");
    if let (Some((c0, m0, first)), Some((c1, m1, last))) = (
        marks
            .first()
            .and_then(|m| Some((m.cycle, m.model_bytes, m.rss_kib?))),
        marks
            .last()
            .and_then(|m| Some((m.cycle, m.model_bytes, m.rss_kib?))),
    ) {
        let model_kib = u64::try_from(m1.saturating_sub(m0) / 1024).unwrap_or(u64::MAX);
        assert!(
            last <= first + model_kib + slack_kib,
            "resident memory grew from {first} KiB to {last} KiB over cycles {c0}-{c1}, more \
             than the model's {model_kib} KiB: {marks:?}"
        );
    }
}

/// The soak in CI: 20,000 cycles with random timing (about 15 s in a debug build).
#[test]
fn soak_with_random_timing() {
    let marks = soak(20_000, 7);
    assert_flat(&marks, 2048);
}

/// The full soak (`cargo xflowey soak`): 1,000,000 cycles with random timing, in a release
/// build; the figures go in the README.
#[test]
#[ignore = "a million cycles: run by `cargo xflowey soak`"]
fn soak_a_million_cycles() {
    let marks = soak(1_000_000, 11);
    assert_flat(&marks, 4096);
}
