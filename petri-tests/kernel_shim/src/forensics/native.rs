//! What the runtime itself reports about code addresses: the crash handler's backtrace
//! (`kshim: frame pc=P` after its fault line) and the allocation sites of its leak and
//! double-free reports (`exe+0xOFF`, relative to the executable's start).

use super::symbolizer::Symbolizer;
use super::{Fault, Frame, Location, frame_text, main_address};
use std::path::Path;

/// The crash handler's raw backtrace: every `kshim: frame pc=` line, innermost first.
fn frame_pcs(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("kshim: frame pc="))
        .filter_map(|hex| u64::from_str_radix(hex.trim().trim_start_matches("0x"), 16).ok())
        .collect()
}

/// The crashed thread's backtrace, symbolised: from the faulting instruction outwards (the
/// crash handler's own frames and the signal trampoline dropped), inlined frames expanded,
/// frames outside the executable (the C library) left out. Empty when the handler wrote no
/// backtrace or the executable has no `main` symbol.
pub fn native_backtrace(stderr: &str, exe: &Path, fault: &Fault) -> Vec<Frame> {
    let pcs = frame_pcs(stderr);
    let Some(main) = main_address(exe) else {
        return Vec::new();
    };
    if pcs.is_empty() || fault.main == 0 {
        return Vec::new();
    }
    // The faulting pc itself, then the return addresses of its callers; when the unwinder
    // did not pass through the faulting frame, every frame after the trampoline's.
    let from = pcs.iter().position(|&pc| pc == fault.pc);
    let walk: Vec<(u64, bool)> = match from {
        Some(at) => pcs
            .iter()
            .skip(at)
            .enumerate()
            .map(|(i, &pc)| (pc, i > 0))
            .collect(),
        None => std::iter::once((fault.pc, false))
            .chain(pcs.iter().skip(2).map(|&pc| (pc, true)))
            .collect(),
    };
    // A return address is the instruction after the call: look up the call's.
    let link = |(pc, ret): (u64, bool)| {
        pc.wrapping_sub(fault.main)
            .wrapping_add(main)
            .wrapping_sub(u64::from(ret))
    };
    let mut symbolizer = Symbolizer::new(exe);
    symbolizer.resolve(walk.iter().map(|&w| link(w)));
    let mut frames = Vec::new();
    for (index, &w) in walk.iter().enumerate() {
        for location in symbolizer.frames(link(w)) {
            frames.push(Frame {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                location: location.clone(),
            });
        }
    }
    frames
}

/// `text` with every `exe+0xOFF` (an address relative to the executable's start, as the
/// runtime's leak and double-free reports give allocation sites) followed by where it is:
/// `exe+0xee5a (new_pcichild_device pci-hyperv.c:2019, inlined into
/// pci_devices_present_work pci-hyperv.c:2177)`.
pub fn symbolize_sites(text: &str, symbolizer: &mut Symbolizer) -> String {
    let sites: Vec<u64> = sites(text).into_iter().map(|(_, _, off)| off).collect();
    // A call site is a return address: the call is the instruction before.
    symbolizer.resolve(sites.iter().map(|o| o.saturating_sub(1)));
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end, off) in self::sites(text) {
        out.push_str(text.get(last..end).unwrap_or_default());
        last = end;
        let found: Vec<Location> = symbolizer.frames(off.saturating_sub(1)).to_vec();
        if let Some((inner, outer)) = found.split_first() {
            out.push_str(&format!(" ({}", frame_text(inner)));
            for o in outer {
                out.push_str(&format!(", inlined into {}", frame_text(o)));
            }
            out.push(')');
        }
        let _ = start;
    }
    out.push_str(text.get(last..).unwrap_or_default());
    out
}

/// The offset of each `exe+0xOFF` in `text`, in order.
pub(super) fn site_offsets(text: &str) -> Vec<u64> {
    sites(text).into_iter().map(|(_, _, off)| off).collect()
}

/// Each `exe+0xOFF` in `text`: where it starts and ends, and the offset.
fn sites(text: &str) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text.get(from..).and_then(|t| t.find("exe+0x")) {
        let start = from + at;
        let digits = start + "exe+0x".len();
        let len = text
            .get(digits..)
            .map_or(0, |t| t.chars().take_while(char::is_ascii_hexdigit).count());
        let end = digits + len;
        if let Some(off) = text
            .get(digits..end)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            out.push((start, end, off));
        }
        from = end.max(start + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forensics::{fault_report, runtime_fault};
    use crate::{DriverVersion, Instrumentation};

    fn exe(version: DriverVersion) -> &'static Path {
        version.guest_executable_with(Instrumentation::Asan)
    }

    /// The crash handler's report of hostile-host seed 0 on 5.10 (5.10 takes a completion's
    /// transaction id for a pointer), with its pcs moved onto `functions` of the current
    /// build (fault first, then the callers), so the test follows rebuilds: the captured
    /// report's shape, this build's addresses.
    fn captured_with(version: DriverVersion, functions: &[&str]) -> String {
        let exe = exe(version);
        let captured = include_str!("testdata/fault_510_hostile_host.txt");
        let fault = fault_report(captured).expect("fault line");
        let main = main_address(exe).expect("main");
        let base = fault.main.wrapping_sub(main);
        let addrs = crate::forensics::testutil::function_addresses(exe, functions);
        let pcs: Vec<u64> = addrs.iter().map(|a| base + a + 0x10).collect();
        let mut out = format!(
            "kshim: fault pc={:#018x} addr=0x0000000000001092 main={:#018x}\n",
            pcs[0], fault.main
        );
        // The sanitizer's interceptor, the crash handler, the signal trampoline.
        for (i, line) in captured
            .lines()
            .filter(|l| l.starts_with("kshim: frame"))
            .enumerate()
        {
            if i < 3 {
                out.push_str(line);
                out.push('\n');
            }
        }
        for pc in &pcs {
            out.push_str(&format!("kshim: frame pc={pc:#018x}\n"));
        }
        out.push_str("kshim: frame pc=0x00007ffff76a71f5\n");
        out
    }

    /// A segfault in the driver's channel callback, called by the runtime's tasklet: the
    /// backtrace starts at the faulting instruction (the handler's frames dropped), the
    /// callers are symbolised, and the crash is the driver's.
    #[test]
    fn segfault_backtrace_in_the_driver() {
        let names = ["hv_pci_onchannelcallback", "tasklet_main", "thread_main"];
        let stderr = captured_with(DriverVersion::Debian5_10, &names);
        let fault = fault_report(&stderr).expect("fault line");
        let frames = native_backtrace(&stderr, exe(DriverVersion::Debian5_10), &fault);
        let text: Vec<String> = frames.iter().map(|f| frame_text(&f.location)).collect();
        assert_eq!(frames.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("hv_pci_onchannelcallback pci-hyperv.c:"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("tasklet_main shim/runtime/vmbus.c:"),
            "{text:?}"
        );
        assert!(
            text[2].starts_with("thread_main shim/runtime/os.c:"),
            "{text:?}"
        );
        assert!(!runtime_fault(&frames));
    }

    /// A fault in a runtime function the driver called (`complete` on a stale pointer) is
    /// the driver's: its caller is in pci-hyperv.c. With the fault pc alone it would have
    /// been blamed on the runtime.
    #[test]
    fn runtime_function_called_by_the_driver_is_the_drivers() {
        let names = ["complete", "hv_pci_onchannelcallback", "tasklet_main"];
        let stderr = captured_with(DriverVersion::Debian5_10, &names);
        let fault = fault_report(&stderr).expect("fault line");
        let frames = native_backtrace(&stderr, exe(DriverVersion::Debian5_10), &fault);
        assert_eq!(
            frames[0].location.origin(),
            crate::forensics::Origin::Runtime
        );
        assert!(!runtime_fault(&frames), "{frames:?}");
        // The runtime's own loop crashing is the harness's.
        let own = captured_with(DriverVersion::Debian5_10, &["tasklet_main", "thread_main"]);
        let fault = fault_report(&own).expect("fault line");
        let frames = native_backtrace(&own, exe(DriverVersion::Debian5_10), &fault);
        assert!(runtime_fault(&frames), "{frames:?}");
    }

    #[test]
    fn no_backtrace_lines_no_frames() {
        let fault = Fault {
            pc: 1,
            addr: 2,
            main: 3,
        };
        assert!(native_backtrace("nothing", exe(DriverVersion::Debian5_10), &fault).is_empty());
    }

    /// The runtime's leak report (as c5 on 5.10 writes it) names the allocation site by
    /// offset from the executable's start: symbolised, it names the function and line
    /// (a site inside `hv_pci_probe` of the current build).
    #[test]
    fn leak_sites_symbolised() {
        let exe = exe(DriverVersion::Debian5_10);
        let probe = crate::forensics::testutil::function_addresses(exe, &["hv_pci_probe"])[0];
        let mut s = Symbolizer::new(exe);
        let text = format!(
            "144 bytes allocated after spin_unlock_irqrestore at exe+{:#x}",
            probe + 0x20
        );
        let out = symbolize_sites(&text, &mut s);
        assert!(out.starts_with(&text), "{out}");
        assert!(out.contains(" (hv_pci_probe pci-hyperv.c:"), "{out}");
        assert_eq!(symbolize_sites("no site", &mut s), "no site");
        assert_eq!(sites("exe+0x zz exe+0x1f."), vec![(10, 18, 0x1f)]);
    }
}
