//! The harness has teeth: replays are exact, a crash of the real driver is caught as a crash,
//! and a real driver leak is found and located.

mod common;

use std::process::Command as Process;

use common::*;
use kernel_shim::guest::{Ending, Session};
use kernel_shim::protocol::{Command, EventKind};
use kernel_shim::{DriverVersion, Instrumentation};

const ENODEV: i32 = -19;
const SECOND: u64 = 1_000_000_000;

/// The same seed gives the same run, down to 5.10's raw-pointer transaction ids; another seed
/// gives another interleaving.
#[test]
fn same_seed_replays_bit_for_bit() {
    for version in DriverVersion::ALL {
        let first = run_smoke(version, 3);
        let again = run_smoke(version, 3);
        assert_eq!(first.trace, again.trace, "{version:?}");
        let other = run_smoke(version, 4);
        assert_ne!(first.trace, other.trace, "{version:?}");
    }
}

fn probe_then_exit() -> Vec<Step> {
    vec![
        Step::Command(Command::Init),
        Step::Command(Command::Probe {
            bus: 0,
            instance: INSTANCE,
        }),
        Step::Command(Command::Exit),
    ]
}

/// A host that echoes a wrong transaction id: 5.10 takes the id for a pointer and crashes in
/// its channel callback; 6.1 looks it up in its requestor, logs "Invalid transaction ID" and
/// its probe fails cleanly when the channel is later rescinded.
#[test]
fn wrong_completion_id_crashes_5_10_only() {
    let faults = Faults {
        corrupt_first_completion_id: true,
        rescind_at_ns: Some(SECOND),
        ..Faults::default()
    };
    let (host, outcome) = run(
        DriverVersion::Debian5_10,
        0,
        probe_then_exit(),
        faults.clone(),
    );
    match &outcome.ending {
        Ending::Crash {
            signal, last_call, ..
        } => {
            assert_eq!(*signal, 11, "SIGSEGV");
            assert_eq!(last_call, "vmbus_recvpacket_raw");
        }
        other => panic!("5.10 did not crash: {other:?} {:#?}", host.log),
    }

    for version in [DriverVersion::Debian6_1, DriverVersion::Debian6_12] {
        let (host, outcome) = run(version, 0, probe_then_exit(), faults.clone());
        assert_eq!(outcome.ending, Ending::Done { leaks: 0 }, "{:#?}", host.log);
        assert!(
            host.log
                .iter()
                .any(|l| l.contains("Invalid transaction ID dead0000")),
            "{version:?}: {:#?}",
            host.log
        );
        assert!(
            host.all_results.contains(&(2, ENODEV)),
            "{:?}",
            host.all_results
        );
    }
}

/// Resolves an `exe+0x...` allocation site to the innermost function with addr2line.
fn leak_function(version: DriverVersion, text: &str) -> String {
    let offset = text.rsplit("exe+").next().unwrap().trim();
    let offset = u64::from_str_radix(offset.trim_start_matches("0x"), 16).unwrap();
    let output = Process::new("addr2line")
        .args(["-f", "-i", "-e"])
        .arg(version.guest_executable())
        .arg(format!("{:#x}", offset - 1))
        .output()
        .expect("addr2line (binutils) is needed to locate leaks");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The host never completes BUS_D0ENTRY and rescinds the channel after 5 virtual seconds of
/// HZ/10 polls: both drivers notice ("The device is gone"), fail the probe with -ENODEV, and
/// leak the child device that query-relations created (the error path never frees
/// hbus->children), which the runtime's allocator reports with its allocation site.
#[test]
fn rescind_during_d0_entry_leaks_the_child() {
    for version in DriverVersion::ALL {
        let faults = Faults {
            swallow: Some(BUS_D0ENTRY),
            rescind_at_ns: Some(5 * SECOND),
            ..Faults::default()
        };
        let (host, outcome) = run(version, 1, probe_then_exit(), faults);
        assert_eq!(
            outcome.ending,
            Ending::Done { leaks: 1 },
            "{version:?} {:#?}",
            host.log
        );
        assert!(
            host.all_results.contains(&(2, ENODEV)),
            "{:?}",
            host.all_results
        );
        assert!(host.now_ns >= 5 * SECOND);
        assert!(host.log.iter().any(|l| l.contains("The device is gone")));
        let leaks: Vec<_> = host
            .events
            .iter()
            .filter(|(k, _)| *k == EventKind::Leak)
            .collect();
        assert_eq!(leaks.len(), 1);
        assert_eq!(
            leak_function(version, &leaks[0].1),
            "new_pcichild_device",
            "{version:?}"
        );
    }
}

/// EJECT arrives while the probe path scans the new root bus (catalogue C3: after the
/// function's resources were assigned, before the bus is installed). 5.10, without the per-bus
/// state_lock, runs the eject work at once: it finds no pci_dev yet, completes the eject, and
/// the probe path goes on to create the device and bind a driver to a function the host has
/// let go (its interrupts cannot even be unmasked). 6.1's eject work waits on state_lock for the
/// probe path, then removes the bound device properly before completing the eject.
#[test]
fn eject_during_scan_binds_a_gone_device_on_5_10_only() {
    let script = vec![
        Step::Command(Command::Init),
        Step::Command(Command::Probe {
            bus: 0,
            instance: INSTANCE,
        }),
        Step::Command(Command::Remove { bus: 0 }),
        Step::Command(Command::Exit),
    ];
    let faults = Faults {
        // The first BAR0 read of the scan's BAR sizing.
        eject_on_config_read: Some(0x10),
        ..Faults::default()
    };
    let mut failing = Vec::new();
    for seed in 0..20 {
        let (host, outcome) = run(
            DriverVersion::Debian5_10,
            seed,
            script.clone(),
            faults.clone(),
        );
        assert_eq!(outcome.ending, Ending::Done { leaks: 0 }, "{:#?}", host.log);
        if host
            .violations
            .iter()
            .any(|v| v.contains("a driver bound to the function after EJECTION_COMPLETE"))
        {
            assert!(host.log.iter().any(|l| l.contains("can not unmask irq")));
            failing.push(seed);
        }
    }
    assert!(!failing.is_empty(), "5.10 never reached C3");

    for (version, seed) in [DriverVersion::Debian6_1, DriverVersion::Debian6_12]
        .into_iter()
        .flat_map(|v| (0..20).map(move |s| (v, s)))
    {
        let (host, outcome) = run(version, seed, script.clone(), faults.clone());
        assert_eq!(outcome.ending, Ending::Done { leaks: 0 }, "{:#?}", host.log);
        assert!(
            host.violations.is_empty(),
            "{version:?} seed {seed}: {:?}",
            host.violations
        );
        assert_eq!(host.count(EJECTION_COMPLETE), 1);
        // The bound device was removed first: its interrupts were deleted before the eject
        // completed.
        let complete = host
            .sent
            .iter()
            .position(|&m| m == EJECTION_COMPLETE)
            .unwrap();
        assert!(host.sent[..complete].contains(&DELETE_INTERRUPT_MESSAGE));
    }
}

/// A host that unmaps the function's BARs as soon as it sends EJECT (catalogue C7, OpenVMM
/// issue #3077): both drivers' eject work removes the bound device first, and the endpoint's
/// remove reads a BAR register, which would fault. No kernel version fixes this; only the
/// host side (the relay's removal shield) can.
#[test]
fn bars_pulled_at_eject_are_read_by_both_versions() {
    for version in DriverVersion::ALL {
        let faults = Faults {
            unmap_bars_on_eject: true,
            ..Faults::default()
        };
        let (host, outcome) = run(version, 2, smoke_script(), faults);
        assert_eq!(outcome.ending, Ending::Done { leaks: 0 }, "{:#?}", host.log);
        assert_eq!(
            host.violations.len(),
            1,
            "{version:?}: {:?}",
            host.violations
        );
        assert!(host.violations[0].contains("after the host unmapped it"));
    }
}

/// The host answers a suspend's D0 exit only after the guest gave up waiting (10 s): 5.10
/// sent a pointer into hv_pci_bus_exit's stack frame as the transaction id and, when the late
/// completion arrives, calls through that dead frame (AddressSanitizer: stack-use-after-return);
/// 6.1 had scrubbed the id from its requestor and rejects the completion.
#[test]
fn late_completion_after_timeout_hits_a_dead_stack_frame_on_5_10() {
    let script = vec![
        Step::Command(Command::Init),
        Step::Command(Command::Probe {
            bus: 0,
            instance: INSTANCE,
        }),
        Step::Command(Command::Suspend { bus: 0 }),
        Step::Command(Command::Exit),
    ];
    let faults = Faults {
        late_first_d0exit: true,
        ..Faults::default()
    };
    for version in DriverVersion::ALL {
        let mut host = Host::new(0, script.clone());
        host.faults = faults.clone();
        let outcome = Session::spawn_with(version, Instrumentation::Asan)
            .unwrap()
            .run(&mut host)
            .unwrap();
        // The suspend timed out after 10 virtual seconds.
        assert!(
            host.all_results.contains(&(4, -110)),
            "{:?}",
            host.all_results
        );
        assert!(host.now_ns >= 10 * SECOND);
        match version {
            DriverVersion::Debian5_10 => {
                assert!(
                    matches!(outcome.ending, Ending::Crash { signal: 6, .. }),
                    "{:?} {:#?}",
                    outcome.ending,
                    host.log
                );
                // The callback reads the completion function from the dead frame.
                for needle in [
                    "stack-use-after-return",
                    "in hv_pci_onchannelcallback",
                    "in hv_pci_bus_exit",
                ] {
                    assert!(outcome.stderr.contains(needle), "{}", outcome.stderr);
                }
            }
            DriverVersion::Debian6_1 | DriverVersion::Debian6_12 => {
                assert!(
                    matches!(outcome.ending, Ending::Done { .. }),
                    "{:?}\n{}",
                    outcome.ending,
                    outcome.stderr
                );
                assert!(
                    host.log
                        .iter()
                        .any(|l| l.contains("Invalid transaction ID"))
                );
            }
        }
    }
}

/// Fault injection over the whole probe: for each n, the n-th allocation after init fails.
/// Neither driver crashes or trips a WARN or BUG, but both have real error-path defects:
/// - when the channel callback cannot allocate the relations record or its work item
///   (GFP_NOWAIT), the BUS_RELATIONS is dropped and the probe waits for its survey forever
///   (until a rescind);
/// - any failure after the survey (D0 entry, MMIO, RESOURCES_ASSIGNED, the root bus) leaks
///   the child that query-relations created (`new_pcichild_device`), and 5.10 also leaks its
///   bridge-window resource entries (its error path never frees `resources_for_children`;
///   6.1's windows belong to a devres-managed bridge).
#[test]
fn allocation_failures_during_probe_hang_or_leak() {
    for version in DriverVersion::ALL {
        let (mut hangs, mut leaking_runs) = (0, 0);
        for nth in 1.. {
            let script = vec![
                Step::Command(Command::Init),
                Step::Command(Command::FailAlloc { nth }),
                Step::Command(Command::Probe {
                    bus: 0,
                    instance: INSTANCE,
                }),
                Step::Command(Command::Remove { bus: 0 }),
                Step::Command(Command::Exit),
            ];
            let faults = Faults {
                time_limit_ns: Some(30 * SECOND),
                ..Faults::default()
            };
            let (host, outcome) = run(version, 0, script, faults);
            let injected: Vec<&String> = host
                .events
                .iter()
                .filter(|(_, t)| t.starts_with("injected allocation failure"))
                .map(|(_, t)| t)
                .collect();
            let [injected] = injected.as_slice() else {
                // The probe, remove and exit made fewer than nth allocations: done.
                assert!(nth > 10, "{version:?}: only {nth} allocations");
                break;
            };
            let trouble: Vec<_> = host
                .events
                .iter()
                .filter(|(k, _)| matches!(k, EventKind::Warn | EventKind::Bug))
                .collect();
            assert!(trouble.is_empty(), "{version:?} n={nth}: {trouble:?}");
            match &outcome.ending {
                Ending::Stopped(why) if why.starts_with("hang") => {
                    let site = leak_function(version, injected);
                    assert!(
                        [
                            "hv_pci_devices_present",
                            "hv_pci_devices_present2",
                            "hv_pci_start_relations_work"
                        ]
                        .contains(&site.as_str()),
                        "{version:?} n={nth}: a hang after failing {injected} in {site}"
                    );
                    hangs += 1;
                }
                Ending::Done { leaks: 0 } => {}
                Ending::Done { .. } => {
                    leaking_runs += 1;
                    for (_, leak) in host.events.iter().filter(|(k, _)| *k == EventKind::Leak) {
                        let child = leak_function(version, leak) == "new_pcichild_device";
                        let window = version == DriverVersion::Debian5_10
                            && leak.contains("after pci_add_resource");
                        assert!(child || window, "{version:?} n={nth}: {leak}");
                    }
                }
                other => panic!(
                    "{version:?} n={nth} ({injected}): {other:?} {:#?}",
                    host.log
                ),
            }
        }
        assert_eq!(
            hangs, 2,
            "{version:?}: the relations record and its work item"
        );
        assert!(leaking_runs > 0, "{version:?}");
    }
}
