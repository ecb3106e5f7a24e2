//! The runtime follows the kernel where a shortcut would hide a race or abort the run: host
//! packets before the channel is open, the rescind's ordering against the channel callback,
//! and the driver's remove run by the rescind itself.

mod common;

use common::*;
use kernel_shim::DriverVersion;
use kernel_shim::guest::Ending;
use kernel_shim::protocol::Command;

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

/// A chaotic host's EJECT before the driver even probed: vmbus keeps it in the ring (the
/// interrupt is ignored while no callback is set) until the driver's callback first runs,
/// which finds no child for the slot and drops it; the probe goes on. The runtime once
/// aborted the guest (exit 5, "packet for a bus with no channel").
#[test]
fn eject_before_the_channel_is_open_is_dropped_by_the_driver() {
    for version in DriverVersion::ALL {
        for seed in 0..4 {
            let faults = Faults {
                eject_at_start: true,
                ..Faults::default()
            };
            let (host, outcome) = run(version, seed, probe_then_exit(), faults);
            assert_eq!(
                outcome.ending,
                Ending::Done { leaks: 0 },
                "{version:?} seed {seed}: {}\n{:#?}",
                outcome.stderr,
                host.log
            );
            assert!(
                host.all_results.iter().all(|&(_, r)| r == 0),
                "{version:?} seed {seed}: {:?}",
                host.all_results
            );
        }
    }
}

/// The rescind runs as the kernel's vmbus_onoffer_rescind does, in its own context: it
/// resets the channel callback, sets `rescind`, and unregisters the device, so the driver's
/// remove (and its vmbus_close) runs there, not in a later command of the process context.
/// Both drivers' remove then leaks the child: `hv_pci_bus_exit` returns at once on a rescinded
/// channel, before it frees the children.
#[test]
fn rescind_resets_the_callback_and_removes_the_driver() {
    for version in DriverVersion::ALL {
        let script = vec![
            Step::Command(Command::Init),
            Step::Command(Command::Probe {
                bus: 0,
                instance: INSTANCE,
            }),
            Step::Rescind,
            Step::Command(Command::Exit),
        ];
        let (host, outcome) = run(version, 2, script, Faults::default());
        let leaks = 1;
        assert_eq!(
            outcome.ending,
            Ending::Done { leaks },
            "{version:?}: {}\n{:#?}",
            outcome.stderr,
            host.log
        );
        let ctx_of = |needle: &str| {
            host.log
                .iter()
                .find(|l| l.contains(needle))
                .and_then(|l| l.split(']').next())
                .map(str::to_owned)
        };
        let rescind = ctx_of("vmbus_onoffer_rescind bus 0");
        assert!(rescind.is_some(), "{version:?}: {:#?}", host.log);
        assert_eq!(ctx_of("vmbus_close bus 0"), rescind, "{version:?}");
    }
}
