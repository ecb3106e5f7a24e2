//! Real-guest runs: the real Linux `pci-hyperv.c` (Debian 11's 5.10, Debian 12's 6.1, built by
//! `kernel_shim`) as the guest of a VM run, in a child process under petri's scheduler.
//!
//! A run is one guest process ([`kernel_shim::guest::Session`]) driven by a
//! `controller::RealController`: host_sim's buses from the scenario, each through the shared
//! host side (`crate::host_side`) and optionally behind its own real relay ([`RelayRig`]), the
//! command sequence (endpoint setup, `init_module`, a probe per bus; once the scenario has
//! played out, a remove per probed bus and module exit), and the scheduler: at every scheduling point of the kernel code petri's
//! [`Chooser`] picks a runnable context or the delivery of what is in flight, so a seed names
//! one interleaving and replays it bit for bit. Virtual time jumps to the earliest guest, host
//! or relay deadline when nothing can run.
//!
//! How a run ends, as an [`Outcome`]: a crash of the kernel code (classified from
//! AddressSanitizer's report: `use_after_free`, `dead_stack_write`, `null_deref`, else
//! `segfault`), a BUG or WARN (`bug`), a driver bound to a function the guest had ejected
//! (`ejected_device_access`) or never assigned (`unresourced_device`), an access to unbacked
//! device memory (`unbacked_access`), a command that never returns or a busy-poll nothing
//! will answer (`hang`), allocations left at module exit (`leaked_device`); then what the host
//! saw, looking both ways once the scenario settled: `eject_unanswered`, `lost_bus`,
//! `ghost_device` (checked before the teardown, which would let go of it), `lost_device`. The
//! driver's holdings carry the identity it found: the ids its PCI core read and the serial
//! number of the relations that listed the slot.

mod access;
pub(crate) mod bars;
mod choice_points;
mod controller;
pub(crate) mod observe;

use crate::host_side::HostSide;
use crate::outcome::{Outcome, RunResult};
use crate::scenario::Scenario;
use crate::sched::Chooser;
use crate::vm::{Chaos, RunLimits};
use controller::{HotPlug, Plan, RealController};
use host_sim::HostBus;
use kernel_shim::forensics::{self, Origin};
use kernel_shim::guest::{Ending, GuestError, Session};
use kernel_shim::protocol::Command;
use kernel_shim::{DriverVersion, Instrumentation};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use vpci_relay::sim::RelayRig;
use vpci_relay::{BusRelay, RelayConfig, VirtualClock};

/// Why a real-guest run could not be made.
#[derive(Debug, Error)]
pub enum RealError {
    /// A bus of the scenario is not a valid host_sim bus.
    #[error(transparent)]
    Config(#[from] host_sim::ConfigError),
    /// The guest process could not be run.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The scenario asks for something real-guest runs do not do yet.
    #[error("{0}")]
    Unsupported(String),
}

/// The VMBus instance GUID of the run's first bus (bytes 4-5 give the PCI domain).
const INSTANCE: [u8; 16] = [
    0x5e, 0x7a, 0x11, 0x9c, 0x01, 0x00, 0x4f, 0x2b, 0x8a, 0x3d, 0x66, 0x10, 0x52, 0xe4, 0x07, 0xc1,
];

/// The most buses a real guest process runs (the runtime's `KSHIM_MAX_BUS`).
const MAX_BUSES: usize = 8;

/// The PCI domain bus `bus`'s driver is asked to take: 1, 2, ...
fn domain(bus: usize) -> u16 {
    u16::try_from(bus + 1).unwrap_or(u16::MAX)
}

/// The VMBus instance GUID of bus `bus`: the first bus's with the domain bytes (4-5, little
/// endian, as `hv_pci_probe` reads them) set to [`domain`].
fn instance(bus: usize) -> [u8; 16] {
    let mut guid = INSTANCE;
    let [lo, hi] = domain(bus).to_le_bytes();
    guid[4] = lo;
    guid[5] = hi;
    guid
}

/// Real-guest runs take many more scheduling points than model steps (about 650 for a
/// probe, eject and remove): the step bound is the scenario's times this.
const STEP_FACTOR: u64 = 20;

/// The instrumentation petri runs real guests with: AddressSanitizer, so that a use after
/// free or a write to a dead stack frame is caught where it happens (a plain build would
/// read poison or write silently).
pub const INSTRUMENTATION: Instrumentation = Instrumentation::Asan;

/// Runs one schedule of `scenario` with the real driver `version`.
pub fn run(
    scenario: &Scenario,
    version: DriverVersion,
    relay: bool,
    chooser: Chooser,
    seed: u64,
    record: bool,
) -> Result<RunResult, RealError> {
    run_with(scenario, version, relay, chooser, seed, record, None).map(|(r, _)| r)
}

/// What a hot-plug long haul did.
#[derive(Clone, Debug)]
pub struct LongHaul {
    /// How the run ended.
    pub result: RunResult,
    /// Add/eject cycles completed.
    pub cycles: u32,
}

/// A hot-plug long haul in the manner of the seed's own testing: after boot (one function in
/// slot 1), the host adds a function in slot 2 and ejects it again as soon as the run is
/// quiescent, `cycles` times, against one guest process; each add must reach the guest and
/// each eject must leave it. Then the driver is removed and the module unloaded (leaks count).
pub fn hot_plug_long_haul(
    version: DriverVersion,
    relay: bool,
    cycles: u32,
    seed: u64,
) -> Result<LongHaul, RealError> {
    let mut scenario = crate::scenario::load("re-add")
        .map_err(|e| RealError::Unsupported(format!("the long haul's base scenario: {e}")))?;
    scenario.name = "hot-plug long haul".to_owned();
    if let Some(bus) = scenario.buses.first_mut() {
        bus.script = host_sim::Script::default();
    }
    scenario.limits.max_steps = u64::MAX / STEP_FACTOR;
    scenario.limits.max_time = host_sim::Time(Duration::from_secs(u64::from(cycles) * 3600 + 3600));
    let hot_plug = HotPlug {
        slot: 2,
        cycles,
        done: 0,
    };
    let (result, done) = run_with(
        &scenario,
        version,
        relay,
        Chooser::seeded(seed),
        seed,
        false,
        Some(hot_plug),
    )?;
    Ok(LongHaul {
        result,
        cycles: done / 2,
    })
}

fn run_with(
    scenario: &Scenario,
    version: DriverVersion,
    relay: bool,
    chooser: Chooser,
    seed: u64,
    record: bool,
    hot_plug: Option<HotPlug>,
) -> Result<(RunResult, u32), RealError> {
    if scenario.buses.is_empty() || scenario.buses.len() > MAX_BUSES {
        return Err(RealError::Unsupported(format!(
            "{}: a real guest runs 1 to {MAX_BUSES} buses ({} given)",
            scenario.name,
            scenario.buses.len()
        )));
    }
    let clock = VirtualClock::new();
    let mut sides = Vec::with_capacity(scenario.buses.len());
    for bus in &scenario.buses {
        let relay = relay.then(|| {
            let config = RelayConfig {
                name: bus.name.clone(),
                settle: scenario.relay.settle.0,
                max_hold: scenario.relay.max_hold.0,
                ..RelayConfig::default()
            };
            #[allow(unused_mut)]
            let mut rig = RelayRig::new(BusRelay::new(config.clone()), clock.clone(), record)
                .serviceable(config);
            #[cfg(feature = "safeguard-switches")]
            rig.set_tamper(scenario.relay.tamper);
            rig
        });
        sides.push(HostSide::new(HostBus::new(bus.clone())?, relay));
    }
    let buses = 0..scenario.buses.len();
    let wire = |b: usize| u32::try_from(b).unwrap_or(u32::MAX);
    let limits = RunLimits {
        max_steps: scenario.limits.max_steps.saturating_mul(STEP_FACTOR),
        max_time: scenario.limits.max_time.0,
    };
    let mut boot = vec![
        Command::Endpoint {
            nvec: u32::from(scenario.guest.vectors.max(1)),
            msix: true,
        },
        Command::Init,
    ];
    boot.extend(buses.clone().map(|b| Command::Probe {
        bus: wire(b),
        instance: instance(b),
    }));
    let plan = Plan {
        boot,
        remove: buses
            .clone()
            .map(|b| Command::Remove { bus: wire(b) })
            .collect(),
        hot_plug,
        domains: buses.map(domain).collect(),
        stall: scenario.guest.stall.map(|s| s.spec()),
        checks: scenario
            .checks
            .iter()
            .map(|c| (c.bus, c.path.clone(), c.equals.clone()))
            .collect(),
    };
    let chaos = scenario.chaos.map(|mut c| {
        c.seed = seed;
        Chaos::new(c)
    });
    let mut controller = RealController::new(sides, clock, chooser, limits, plan, record, chaos);
    controller.servicing = scenario.relay.servicing;
    for side in &mut controller.sides {
        side.servicing = scenario.relay.servicing == crate::scenario::Servicing::EveryStep;
    }
    let exe = version.guest_executable_with(INSTRUMENTATION);
    if record {
        controller.observer.choice_points = choice_points::ChoicePoints::new(Some(exe));
        controller.observer.wire = Some(crate::wire::WireLog::default());
    }
    let session = Session::spawn_with(version, INSTRUMENTATION)?;
    let outcome = session.run(&mut controller)?;
    if std::env::var_os("FX_DUMP").is_some() {
        eprintln!("<<<STDERR\n{}\n>>>", outcome.stderr);
    }
    let exe = version.guest_executable_with(INSTRUMENTATION);
    let mut result_outcome = classify(&controller, &outcome.ending, &outcome.stderr, exe);
    let end = end_time(&controller);
    let report = result_outcome
        .failed()
        .then(|| {
            forensic_report(
                &outcome.ending,
                &outcome.stderr,
                exe,
                &controller.observer.leaks,
            )
        })
        .flatten();
    if let Some(trace) = &mut controller.trace {
        if result_outcome.failed() {
            trace.push(
                end,
                crate::trace::Lane::Guest,
                crate::trace::Lane::Guest,
                result_outcome.to_string(),
                crate::trace::Mark::Crash,
            );
        }
        trace.wire = controller.observer.wire.take().unwrap_or_default();
        if let Some(report) = &report {
            trace.push(
                end,
                crate::trace::Lane::Guest,
                crate::trace::Lane::Guest,
                report.clone(),
                crate::trace::Mark::None,
            );
        }
    }
    if result_outcome == Outcome::Ok {
        result_outcome = controller.host_visible.clone();
    }
    let mut guest_trace = std::mem::take(&mut controller.observer.guest_trace);
    guest_trace.push(format!(
        "driver {} ({}), {} scheduling points, ended {:?}",
        version.package_name(),
        outcome.package_version,
        outcome.sched_points,
        outcome.ending
    ));
    guest_trace.extend(report);
    let done = controller.hot_plug.map_or(0, |h| h.done);
    let result = RunResult {
        outcome: result_outcome,
        choices: std::mem::take(&mut controller.choices),
        steps: controller.steps,
        end: end_time(&controller),
        trace: controller.trace.take(),
        guest_trace,
        unfired_steps: controller
            .sides
            .iter()
            .enumerate()
            .flat_map(|(i, s)| crate::outcome::unfired_steps(i, &s.host))
            .collect(),
        device_history: std::mem::take(&mut controller.observer.device_history),
        servicings: controller.sides.iter().map(HostSide::servicings).sum(),
        views: std::mem::take(&mut controller.views),
    };
    Ok((result, done))
}

fn end_time(controller: &RealController) -> Duration {
    controller.now
}

/// The failure kind of a crash, from AddressSanitizer's report when there is one.
pub(crate) fn crash_kind(signal: u32, stderr: &str) -> &'static str {
    if stderr.contains("heap-use-after-free") || stderr.contains("use-after-poison") {
        "use_after_free"
    } else if stderr.contains("stack-use-after-return") || stderr.contains("stack-use-after-scope")
    {
        "dead_stack_write"
    } else if stderr.contains("double-free") {
        "bug"
    } else if let Some(addr) = segv_address(stderr) {
        if addr < 0x1000 {
            "null_deref"
        } else {
            "segfault"
        }
    } else if signal == 6 {
        "bug"
    } else {
        "segfault"
    }
}

/// The faulting address of an AddressSanitizer SEGV report.
fn segv_address(stderr: &str) -> Option<u64> {
    let rest = stderr.split("SEGV on unknown address ").nth(1)?;
    let hex = rest.split_whitespace().next()?.trim_start_matches("0x");
    u64::from_str_radix(hex, 16).ok()
}

/// The first line of AddressSanitizer's report, and its first frame (the multi-process
/// runs' summary, which has no executable at hand to symbolise with).
pub(crate) fn report_summary(stderr: &str) -> String {
    let headline = stderr
        .lines()
        .find(|l| l.contains("ERROR: AddressSanitizer"))
        .map(|l| l.split("ERROR: ").nth(1).unwrap_or(l).trim().to_owned());
    let frame = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("#0 ") || l.trim_start().starts_with("#1 "))
        .map(|l| l.trim().to_owned());
    match (headline, frame) {
        (Some(h), Some(f)) => format!("{h}; {f}"),
        (Some(h), None) => h,
        _ => String::new(),
    }
}

/// AddressSanitizer's finding in one line: what it found, and where the address was (the
/// variable and the dead frame it lived in, or the heap region and who allocated it).
fn sanitizer_summary(stderr: &str, exe: &Path) -> String {
    match forensics::sanitizer_report(stderr, exe) {
        Some(r) => {
            let headline = r
                .headline
                .split(" at pc ")
                .next()
                .unwrap_or(&r.headline)
                .to_owned();
            match r.object {
                Some(object) => format!("{headline}; {object}"),
                None => headline,
            }
        }
        None => String::new(),
    }
}

/// The runtime's own exit statuses (shim/runtime/proto.h): never the guest's doing.
fn runtime_exit(code: i32) -> Option<&'static str> {
    match code {
        3 => Some("the guest lost its controller pipe"),
        4 => Some("a runtime invariant broke"),
        5 => Some("the controller broke the guest protocol"),
        _ => None,
    }
}

/// The runtime's diagnostic lines (`kshim: ...`) on the guest's stderr.
fn runtime_diagnostics(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| {
            l.starts_with("kshim: ")
                && !l.starts_with("kshim: fault ")
                && !l.starts_with("kshim: frame ")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where a crash happened, from AddressSanitizer's backtrace or the crash handler's (each
/// frame symbolised with addr2line), else the faulting instruction alone: the location text
/// for the failure message, and whether the crash is the runtime's own rather than the
/// driver's (judged from the whole backtrace: a runtime function the driver called with a
/// bad argument is the driver's crash).
fn crash_site(stderr: &str, exe: &Path) -> (String, bool) {
    if let Some(report) = forensics::sanitizer_report(stderr, exe) {
        if !report.frames.is_empty() {
            return (
                forensics::describe_backtrace(&report.frames),
                forensics::runtime_fault(&report.frames),
            );
        }
    }
    let frames = forensics::asan_backtrace(stderr);
    if !frames.is_empty() {
        return (
            forensics::describe_backtrace(&frames),
            forensics::runtime_fault(&frames),
        );
    }
    let Some(fault) = forensics::fault_report(stderr) else {
        return (String::new(), false);
    };
    let frames = forensics::native_backtrace(stderr, exe, &fault);
    if !frames.is_empty() {
        return (
            format!(
                "pc {:#x}: {}",
                fault.pc,
                forensics::describe_backtrace(&frames)
            ),
            forensics::runtime_fault(&frames),
        );
    }
    match forensics::locate(exe, &fault) {
        Some(at) => (
            format!("pc {:#x} in {}", fault.pc, at.short()),
            at.origin() == Origin::Runtime,
        ),
        None => (format!("pc {:#x} (no symbol)", fault.pc), false),
    }
}

/// The whole forensic record of a failed run, for the replay: the sanitizer's report (every
/// frame symbolised), or the crash handler's fault and backtrace, and each allocation left
/// at module exit with its symbolised site. None when there is nothing of the kind.
fn forensic_report(
    ending: &Ending,
    stderr: &str,
    exe: &Path,
    leaks: &[forensics::Leak],
) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(report) = forensics::sanitizer_report(stderr, exe) {
        parts.push(format!(
            "crash report (AddressSanitizer, symbolised):\n{}",
            indent(&report.text)
        ));
    } else if let (Ending::Crash { signal, .. }, Some(fault)) =
        (ending, forensics::fault_report(stderr))
    {
        let frames = forensics::native_backtrace(stderr, exe, &fault);
        let mut text = format!(
            "signal {signal} at pc {:#x}, fault address {:#x}",
            fault.pc, fault.addr
        );
        if frames.is_empty() {
            if let Some(at) = forensics::locate(exe, &fault) {
                text.push_str(&format!("\n    #0 {}", forensics::frame_text(&at)));
            }
        }
        for f in &frames {
            text.push_str(&format!(
                "\n    #{} {}",
                f.index,
                forensics::frame_text(&f.location)
            ));
        }
        parts.push(format!(
            "crash report (crash handler's backtrace, symbolised):\n{}",
            indent(&text)
        ));
    }
    if !leaks.is_empty() {
        let mut symbolizer = forensics::Symbolizer::new(exe);
        let lines: Vec<String> = forensics::leak_report(leaks, &mut symbolizer)
            .into_iter()
            .map(|l| format!("    {l}"))
            .collect();
        parts.push(format!(
            "leak report (allocations left at module exit, sites and allocation stacks \
             symbolised):\n{}",
            lines.join("\n")
        ));
    }
    (!parts.is_empty()).then(|| parts.join("\n"))
}

/// A guest failure whose message names code by `exe+0xOFF` (a double free's allocation
/// site), with each site symbolised.
fn with_sites(outcome: Outcome, exe: &Path) -> Outcome {
    match outcome {
        Outcome::Guest {
            bus,
            failure,
            context,
            function,
            message,
        } if message.contains("exe+0x") => Outcome::Guest {
            bus,
            failure,
            context,
            function,
            message: forensics::symbolize_sites(&message, &mut forensics::Symbolizer::new(exe)),
        },
        other => other,
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn classify(controller: &RealController, ending: &Ending, stderr: &str, exe: &Path) -> Outcome {
    if let Some(f) = &controller.observer.failure {
        return with_sites(f.clone(), exe);
    }
    if let Some(early) = &controller.early {
        return early.clone();
    }
    match ending {
        Ending::Crash {
            signal,
            ctx,
            last_call,
        } => {
            let summary = sanitizer_summary(stderr, exe);
            let (site, runtime) = crash_site(stderr, exe);
            if runtime {
                return Outcome::HarnessError {
                    reason: format!(
                        "signal {signal} in the shim runtime, not the driver: {site} \
                         (context {}, last shim call {last_call})",
                        controller.context_name(*ctx)
                    ),
                };
            }
            let mut message = if summary.is_empty() {
                format!("signal {signal} after {last_call}")
            } else {
                summary
            };
            if !site.is_empty() {
                message = format!("{message}; {site}");
            }
            Outcome::Guest {
                bus: 0,
                failure: crash_kind(*signal, stderr).to_owned(),
                context: controller.context_name(*ctx),
                function: last_call.clone(),
                message,
            }
        }
        Ending::Done { leaks } if *leaks > 0 => Outcome::Guest {
            bus: 0,
            failure: "leaked_device".to_owned(),
            context: "module exit".to_owned(),
            function: "cleanup_module".to_owned(),
            message: {
                let mut symbolizer = forensics::Symbolizer::new(exe);
                let sites: Vec<String> = controller
                    .observer
                    .leaks
                    .iter()
                    .map(|l| l.summary_symbolised(&mut symbolizer))
                    .collect();
                format!("{leaks} allocation(s) left: {}", sites.join("; "))
            },
        },
        Ending::Done { .. } | Ending::Stopped(_) => Outcome::Ok,
        Ending::Exited(code) => {
            let why = code
                .and_then(runtime_exit)
                .unwrap_or("the guest process exited");
            Outcome::HarnessError {
                reason: format!(
                    "{why} (exit status {code:?}, no final frame): {}",
                    runtime_diagnostics(stderr)
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AddressSanitizer's reports name the failure kinds the model uses.
    #[test]
    fn crash_kinds_from_reports() {
        assert_eq!(
            crash_kind(6, "ERROR: AddressSanitizer: heap-use-after-free on address"),
            "use_after_free"
        );
        assert_eq!(
            crash_kind(6, "ERROR: AddressSanitizer: stack-use-after-return on"),
            "dead_stack_write"
        );
        assert_eq!(
            crash_kind(
                11,
                "AddressSanitizer: SEGV on unknown address 0x000000000010 (pc"
            ),
            "null_deref"
        );
        assert_eq!(
            crash_kind(11, "SEGV on unknown address 0x6b6b6b6b6b6b (pc"),
            "segfault"
        );
        assert_eq!(crash_kind(11, ""), "segfault");
    }

    /// The runtime's own exit statuses are harness errors, never a guest failure kind.
    #[test]
    fn runtime_exits_are_harness_errors() {
        assert!(runtime_exit(5).is_some());
        assert!(runtime_exit(4).is_some());
        assert!(runtime_exit(0).is_none());
        assert_eq!(
            runtime_diagnostics("kshim: protocol error: x\nother\nkshim: fault pc=0x1"),
            "kshim: protocol error: x"
        );
    }

    /// A crash report whose backtrace starts in the runtime's own code is the harness's; one
    /// in the driver (or in a runtime function the driver called) is the guest's.
    #[test]
    fn crash_sites() {
        let exe = Path::new("/nonexistent");
        let driver = "    #0 0x1 in hv_pci_onchannelcallback /k/pci-hyperv.c:2465:3\n\
                          #1 0x2 in tasklet_main /w/shim/runtime/vmbus.c:64\n\n";
        let (site, runtime) = crash_site(driver, exe);
        assert!(!runtime);
        assert!(site.contains("pci-hyperv.c:2465"), "{site}");
        let own = "    #0 0x1 in drop_packets /w/shim/runtime/vmbus.c:99\n\n";
        assert!(crash_site(own, exe).1);
    }
}
