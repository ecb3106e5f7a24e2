//! The orders a rescind lets happen, as the kernel lets them (issue 13, item 1).
//!
//! The runtime runs the rescind as `vmbus_onoffer_rescind` does, in a context of its own:
//! `vmbus_reset_channel_cb`, then `channel->rescind`, then the driver's remove. So a packet
//! the host sent just before the rescind is read by the channel callback in one schedule and
//! left unread in another, and the driver's remove may start while the work the callback
//! queued for that packet (`hv_eject_device_work`, `pci_devices_present_work`) is still
//! queued or running. Each test explores seeds until it has seen the orders it claims, and
//! then runs the same seeds with the rescind held until the guest is idle (the serialised
//! delivery the shim once had, `Faults::rescind_when_idle`): there the orders never happen,
//! so each test fails if the runtime ever serialises the rescind again.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use kernel_shim::DriverVersion;
use kernel_shim::forensics::{Fault, locate};
use kernel_shim::guest::Ending;
use kernel_shim::protocol::Command;

/// Seeds explored per version and script.
const SEEDS: u64 = 48;

/// Work pending when the rescind's remove started: `("queued" | "running", function)`.
type Pending = Vec<(String, String)>;

/// One run: how many packets the rescind left unread, and the work pending at the remove.
type Seen = (Option<u32>, Pending);

fn script(last: Step) -> Vec<Step> {
    vec![
        Step::Command(Command::Init),
        Step::Command(Command::Probe {
            bus: 0,
            instance: INSTANCE,
        }),
        last,
        Step::Command(Command::Exit),
    ]
}

/// How many packets the rescind's callback reset left unread, from the runtime's note.
fn unread_at_rescind(host: &Host) -> Option<u32> {
    host.log.iter().find_map(|l| {
        let rest = l
            .split("vmbus_onoffer_rescind bus 0: callback reset, rescind set, ")
            .nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A run ended the way a driver run ends (done or a crash of the driver), never by a
/// harness error (exit 3, 4, 5) or a stop of the scripted host.
fn assert_driver_ending(
    version: DriverVersion,
    seed: u64,
    host: &Host,
    ending: &Ending,
    stderr: &str,
) {
    assert!(
        matches!(ending, Ending::Done { .. } | Ending::Crash { .. }),
        "{version:?} seed {seed}: {ending:?}\n{stderr}\n{:#?}",
        host.log
    );
}

/// The rescind's view of the driver's work when the driver's remove started, named:
/// `("queued" | "running", function)`.
fn work_at_remove(
    version: DriverVersion,
    host: &Host,
    names: &mut BTreeMap<u64, String>,
) -> Pending {
    let Some(line) = host
        .log
        .iter()
        .find(|l| l.contains("hv_pci_remove from vmbus_onoffer_rescind bus 0: "))
    else {
        return Vec::new();
    };
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let mut main = None;
    let mut items = Vec::new();
    for word in line.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match (key, hex(value)) {
            ("main", Some(m)) => main = Some(m),
            ("queued" | "running", Some(addr)) => items.push((key.to_owned(), addr)),
            _ => {}
        }
    }
    let main = main.expect("the note says where main is");
    let exe = version.guest_executable();
    items
        .into_iter()
        .map(|(state, addr)| {
            let name = names
                .entry(addr)
                .or_insert_with(|| {
                    let fault = Fault {
                        pc: addr,
                        addr: 0,
                        main,
                    };
                    locate(exe, &fault).map_or_else(|| format!("{addr:#x}"), |l| l.function)
                })
                .clone();
            (state, name)
        })
        .collect()
}

/// Runs `last` after the probe over [`SEEDS`] seeds; returns, per seed, how many packets
/// the rescind left unread and the work pending when the remove started.
fn explore(version: DriverVersion, last: &Step, when_idle: bool) -> Vec<Seen> {
    let mut names = BTreeMap::new();
    (0..SEEDS)
        .map(|seed| {
            let faults = Faults {
                rescind_when_idle: when_idle,
                ..Faults::default()
            };
            let (host, outcome) = run(version, seed, script(last.clone()), faults);
            assert_driver_ending(version, seed, &host, &outcome.ending, &outcome.stderr);
            let unread = unread_at_rescind(&host);
            assert!(
                unread.is_some(),
                "{version:?} seed {seed}: no rescind note\n{:#?}",
                host.log
            );
            (unread, work_at_remove(version, &host, &mut names))
        })
        .collect()
}

/// (a) The EJECT the host sent just before the rescind: read by the callback in some
/// schedule, left unread by the callback reset in another. Held until idle, it is always
/// read.
#[test]
fn a_packet_just_before_the_rescind_is_read_or_left_unread() {
    for version in DriverVersion::ALL {
        let runs = explore(version, &Step::EjectThenRescind, false);
        let unread: BTreeSet<u32> = runs.iter().filter_map(|(u, _)| *u).collect();
        assert!(
            unread.contains(&0),
            "{version:?}: the callback never read the EJECT before the reset: {unread:?}"
        );
        assert!(
            unread.iter().any(|&n| n > 0),
            "{version:?}: the reset never left the EJECT unread: {unread:?}"
        );

        let serialised = explore(version, &Step::EjectThenRescind, true);
        let unread: BTreeSet<u32> = serialised.iter().filter_map(|(u, _)| *u).collect();
        assert_eq!(
            unread,
            BTreeSet::from([0]),
            "{version:?}: a rescind held until idle finds every packet read"
        );
    }
}

/// Whether any run's remove started with `function` queued or running.
fn remove_met(runs: &[Seen], function: &str) -> BTreeSet<String> {
    runs.iter()
        .flat_map(|(_, work)| work.iter())
        .filter(|(_, f)| f == function)
        .map(|(state, _)| state.clone())
        .collect()
}

/// (b) The driver's remove, run by the rescind, starts while the work the callback queued
/// for the host's last packet is queued or running: `hv_eject_device_work` for an EJECT,
/// `pci_devices_present_work` for bus relations. Held until idle, it never does.
#[test]
fn the_rescinds_remove_races_the_eject_and_relations_work() {
    let cases = [
        (Step::EjectThenRescind, "hv_eject_device_work"),
        (
            Step::RelationsThenRescind { present: false },
            "pci_devices_present_work",
        ),
    ];
    for version in DriverVersion::ALL {
        for (last, function) in &cases {
            let runs = explore(version, last, false);
            let met = remove_met(&runs, function);
            assert!(
                !met.is_empty(),
                "{version:?}: the rescind's hv_pci_remove never started with {function} \
                 queued or running: {:?}",
                runs.iter().map(|(_, w)| w).collect::<Vec<_>>()
            );
            eprintln!("{version:?}: hv_pci_remove met {function} {met:?}");

            let serialised = explore(version, last, true);
            let met = remove_met(&serialised, function);
            assert!(
                met.is_empty(),
                "{version:?}: a rescind held until idle met {function} {met:?}"
            );
        }
    }
}
