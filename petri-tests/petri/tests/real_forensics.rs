//! Real-driver failures as a kernel maintainer reads them: `petri replay` of a failing 5.10
//! seed prints the whole AddressSanitizer report (the access, the dead frame and its
//! variables or the heap region and its allocation stack, the threads' creation stacks),
//! every frame symbolised as `function file:LINE`; a segfault without a sanitizer report
//! gets the crash handler's backtrace, symbolised; a leak names its allocation site.
//!
//! The seeds are found with `explore`, not written down, so a change of the scheduler's
//! draws does not turn these tests into false passes: each test first requires the failure
//! kind it is about.

mod cli;

use cli::{petri, stdout};
use petri::explore::{Strategy, explore};
use petri::scenario::{GuestKind, load};

/// A scenario file of this suite.
fn scenario_file(name: &str) -> String {
    format!("{}/tests/forensics/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

/// The first seed of `scenario` on 5.10 direct that fails with `kind` (within `schedules`).
fn seed_of(scenario: &str, kind: &str, schedules: u64) -> u64 {
    let s = load(scenario).unwrap();
    let summary = explore(
        &s,
        GuestKind::Debian510,
        false,
        schedules,
        Strategy::Random { first_seed: 0 },
        |_| {},
    )
    .unwrap();
    *summary
        .first_seed_by_kind
        .get(kind)
        .unwrap_or_else(|| panic!("{scenario}: no {kind} in {schedules} seeds: {summary:?}"))
}

/// `petri replay --seed SEED SCENARIO --guest 5.10 [extra]`'s output.
fn replay(scenario: &str, seed: u64, extra: &[&str]) -> String {
    let seed = seed.to_string();
    let mut args = vec!["replay", "--seed", &seed, scenario, "--guest", "5.10"];
    args.extend_from_slice(extra);
    let out = petri(&args);
    assert!(out.status.success(), "{}", cli::stderr(&out));
    stdout(&out)
}

fn assert_has(text: &str, keys: &[&str]) {
    for key in keys {
        assert!(
            text.contains(key),
            "{key:?} missing from the replay:\n{text}"
        );
    }
}

/// `#N function pci-hyperv.c:LINE` with a real line number somewhere in `text`.
fn has_driver_frame(text: &str, function: &str) -> bool {
    let needle = format!(" {function} pci-hyperv.c:");
    text.match_indices(&needle).any(|(at, m)| {
        text.get(at + m.len()..)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n > 0)
    })
}

/// A duplicated requirements completion on 5.10 is read from a work item's dead frame: the
/// replay shows the whole report, the faulting frame and the dead frame symbolised, the
/// variable the access hit, and the creation stacks of both threads.
#[test]
fn stack_use_after_scope_replay_shows_the_whole_report() {
    let file = scenario_file("duplicate-requirements");
    let seed = seed_of(&file, "dead_stack_write", 20);
    let text = replay(&file, seed, &[]);
    assert_has(
        &text,
        &[
            "guest dead_stack_write",
            "crash report (AddressSanitizer, symbolised):",
            "ERROR: AddressSanitizer: stack-use-after-scope",
            "is located in stack of thread",
            "This frame has",
            "<== Memory access at offset",
            "'pkt' (line ",
            "created by T0 here:",
            "#1 tasklet_main shim/runtime/vmbus.c:",
            "SUMMARY: AddressSanitizer: stack-use-after-scope",
        ],
    );
    assert!(
        has_driver_frame(&text, "#0 hv_pci_onchannelcallback"),
        "{text}"
    );
    assert!(
        has_driver_frame(&text, "pci_devices_present_work"),
        "{text}"
    );
    // The one-line outcome names the variable and its dead frame.
    let outcome = text.lines().find(|l| l.starts_with("outcome:")).unwrap();
    assert!(
        outcome.contains("'pkt' (line ") && outcome.contains("in the stack frame of"),
        "{outcome}"
    );
    // No frame left as a module offset, no shadow map.
    assert!(!text.contains("_ASAN+0x"), "{text}");
    assert!(!text.contains("Shadow byte"), "{text}");
}

/// A duplicated D0-entry completion on 5.10 is read from the freed request: the replay
/// names the heap region and the driver function that allocated it, with its stack.
#[test]
fn use_after_free_replay_shows_the_allocation_stack() {
    let file = scenario_file("duplicate-d0-entry");
    let seed = seed_of(&file, "use_after_free", 20);
    let text = replay(&file, seed, &[]);
    assert_has(
        &text,
        &[
            "guest use_after_free",
            "ERROR: AddressSanitizer: use-after-poison",
            "-byte region",
            "allocated by thread T0 here:",
            "#3 kzalloc shim/runtime/mem.c:",
        ],
    );
    assert!(has_driver_frame(&text, "hv_pci_enter_d0"), "{text}");
    let outcome = text.lines().find(|l| l.starts_with("outcome:")).unwrap();
    assert!(
        outcome.contains("allocated in hv_pci_enter_d0 pci-hyperv.c:"),
        "{outcome}"
    );
}

/// 5.10 takes a hostile host's unknown transaction id for a pointer and segfaults without a
/// sanitizer report: the crash handler's backtrace is symbolised frame by frame, and the
/// crash is the driver's (its caller chain goes through pci-hyperv.c), not the harness's.
#[test]
fn segfault_replay_shows_the_symbolised_backtrace() {
    let seed = seed_of("hostile-host", "segfault", 4);
    let text = replay("hostile-host", seed, &[]);
    assert_has(
        &text,
        &[
            "guest segfault",
            "crash report (crash handler's backtrace, symbolised):",
            "#1 tasklet_main shim/runtime/vmbus.c:",
        ],
    );
    assert!(
        has_driver_frame(&text, "#0 hv_pci_onchannelcallback"),
        "{text}"
    );
    assert!(!text.contains("harness_error"), "{text}");
}

/// A rescind during the probe path leaks the child on 5.10 (C5): the leak names its size
/// and its allocation site, symbolised, in the outcome and in the replay's leak report, and
/// the report shows the whole allocation stack, every frame as `#N function file:LINE`:
/// the driver's allocating function and line, the work function it is inlined into, and the
/// runtime's worker that called that (a caller, not the site again).
#[test]
fn leak_replay_names_the_allocation_site() {
    let seed = seed_of("c5", "leaked_device", 4);
    let text = replay("c5", seed, &[]);
    assert_has(
        &text,
        &[
            "guest leaked_device",
            "leak report (allocations left at module exit, sites and allocation stacks \
             symbolised):",
            "bytes allocated after",
            "      allocation stack:\n        #0 new_pcichild_device pci-hyperv.c:",
        ],
    );
    assert!(has_driver_frame(&text, "(new_pcichild_device"), "{text}");
    let stack: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != "allocation stack:")
        .skip(1)
        .take_while(|l| l.trim_start().starts_with('#'))
        .collect();
    assert!(
        has_driver_frame(&stack.join("\n"), "#0 new_pcichild_device"),
        "{text}"
    );
    assert!(
        has_driver_frame(&stack.join("\n"), "#0 pci_devices_present_work"),
        "{text}"
    );
    assert!(
        stack
            .iter()
            .any(|l| l.trim_start().starts_with("#1 ") && l.contains(" shim/runtime/")),
        "the caller of the work function: {stack:#?}"
    );
    let outcome = text.lines().find(|l| l.starts_with("outcome:")).unwrap();
    assert!(outcome.contains("pci-hyperv.c:"), "{outcome}");
    assert!(!outcome.contains("allocation stack"), "{outcome}");
}

/// `petri replay --verbose` of a real guest lists its choice points in order: the kernel
/// context that ran (the probing process, the channel tasklet, a workqueue worker), where it
/// stood (a lock, a wait, a wake, queue_work, a vmbus send or receive) with the driver
/// function that called the shim, and what else could have run. Without --verbose they are
/// left out.
#[test]
fn verbose_replay_lists_choice_points_in_kernel_words() {
    let file = scenario_file("duplicate-requirements");
    let seed = seed_of(&file, "dead_stack_write", 20);
    let text = replay(&file, seed, &["--verbose"]);
    let choices: Vec<&str> = text.lines().filter(|l| l.contains(">> choice ")).collect();
    assert!(choices.len() >= 5, "{text}");
    for (i, line) in choices.iter().enumerate() {
        assert!(
            line.contains(&format!(">> choice {}: ran ", i + 1))
                && line.contains("; could have run: "),
            "choice {} out of order or malformed: {line}",
            i + 1
        );
    }
    let all = choices.join("\n");
    for key in [
        "modprobe [",
        "softirq [",
        "kworker [",
        "called from hv_pci_onchannelcallback pci-hyperv.c:",
        "vmbus send in vmbus_sendpacket, called from ",
        "queue_work, called from ",
        "delivery of ",
    ] {
        assert!(all.contains(key), "{key:?} in no choice point:\n{all}");
    }
    assert!(
        ["lock (", "wait (", "wake ("]
            .iter()
            .any(|k| all.contains(k)),
        "no lock, wait or wake among the choice points:\n{all}"
    );
    // The steps they happened in go forward.
    let steps: Vec<u64> = choices
        .iter()
        .filter_map(|l| l.trim_start().strip_prefix('#'))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(steps.len(), choices.len());
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    let quiet = replay(&file, seed, &[]);
    assert!(!quiet.contains(">> choice "), "{quiet}");
}

/// `petri replay --dump-rings DIR` of a real guest writes each bus's two ring images, and
/// `petri ring dump` lists their packets: the host's relations and completions to the
/// guest, the guest's requests to the host (C3 on 5.10, whose relations name slot 1).
#[test]
fn dump_rings_reads_back_with_ring_dump() {
    let seed = seed_of("c3", "ejected_device_access", 4);
    let dir = cli::temp("rings", "dump_rings");
    let dir_text = dir.to_string_lossy().into_owned();
    let text = replay("c3", seed, &["--dump-rings", &dir_text]);
    assert!(text.contains("bus0-host-to-guest.ring"), "{text}");
    for (file, from, key) in [
        (
            "bus0-host-to-guest.ring",
            "host",
            "\"type\":\"PCI_BUS_RELATIONS2\"",
        ),
        (
            "bus0-guest-to-host.ring",
            "guest",
            "\"type\":\"PCI_QUERY_PROTOCOL_VERSION\"",
        ),
    ] {
        let path = dir.join(file);
        let out = petri(&["ring", "dump", "--from", from, &path.to_string_lossy()]);
        assert!(out.status.success(), "{}", cli::stderr(&out));
        let listed = stdout(&out);
        assert!(listed.lines().count() >= 3, "{file}: {listed}");
        assert!(listed.contains(key), "{file}: {key} not listed:\n{listed}");
    }
}
