//! The runtime's leak check reports each leak's allocation stack: right after the leak event,
//! the allocation site and its callers, which symbolise to the driver's allocating function
//! and line and the runtime code that called into the driver.

mod common;

use common::*;
use kernel_shim::DriverVersion;
use kernel_shim::forensics::{Leak, Symbolizer, frame_text, leak_report};
use kernel_shim::guest::Ending;
use kernel_shim::protocol::{Command, EventKind};

const SECOND: u64 = 1_000_000_000;

/// A rescind while BUS_D0ENTRY goes unanswered leaks the child on every driver (see
/// `scenarios::rescind_during_d0_entry_leaks_the_child`): the leak event is followed by its
/// stack, whose first frame is the leak's site; the stack symbolises to `new_pcichild_device`
/// in `pci-hyperv.c` at frame 0 and has callers after it, down to the runtime's worker.
#[test]
fn leak_comes_with_its_allocation_stack() {
    for version in DriverVersion::ALL {
        let faults = Faults {
            swallow: Some(BUS_D0ENTRY),
            rescind_at_ns: Some(5 * SECOND),
            ..Faults::default()
        };
        let script = vec![
            Step::Command(Command::Init),
            Step::Command(Command::Probe {
                bus: 0,
                instance: INSTANCE,
            }),
            Step::Command(Command::Exit),
        ];
        let (host, outcome) = run(version, 1, script, faults);
        assert_eq!(outcome.ending, Ending::Done { leaks: 1 }, "{version:?}");
        let at = host
            .events
            .iter()
            .position(|(k, _)| *k == EventKind::Leak)
            .expect("a leak event");
        let (kind, stack_text) = host.events.get(at + 1).expect("an event after the leak");
        assert_eq!(
            *kind,
            EventKind::LeakStack,
            "{version:?}: {:?}",
            host.events
        );
        let mut leak = Leak::new(&host.events[at].1);
        leak.set_stack(stack_text);
        let site = leak.summary.rsplit("exe+0x").next().unwrap();
        assert_eq!(
            leak.stack.first(),
            u64::from_str_radix(site.trim(), 16).ok().as_ref(),
            "{version:?}: {stack_text}"
        );
        assert!(leak.stack.len() >= 3, "{version:?}: {stack_text}");
        let mut symbolizer = Symbolizer::new(version.guest_executable());
        let frames = leak.frames(&mut symbolizer);
        let text: Vec<String> = frames
            .iter()
            .map(|f| format!("#{} {}", f.index, frame_text(&f.location)))
            .collect();
        assert!(
            frames.iter().any(|f| f.index == 0
                && f.location.function == "new_pcichild_device"
                && f.location.file.ends_with("pci-hyperv.c")
                && f.location.line > 0),
            "{version:?}: {text:#?}"
        );
        assert!(
            frames
                .iter()
                .any(|f| f.index > 0 && f.location.file.contains("shim/runtime/")),
            "{version:?}: a caller in the runtime: {text:#?}"
        );
        // The report has the same frames, one a line under the summary.
        let report = leak_report(&[leak], &mut symbolizer);
        assert_eq!(
            report.get(1).map(String::as_str),
            Some("  allocation stack:")
        );
        assert_eq!(report.len(), 2 + frames.len(), "{report:#?}");
    }
}
