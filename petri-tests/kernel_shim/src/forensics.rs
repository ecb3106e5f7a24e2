//! Crash forensics: where a guest process crashed, in the driver's or the runtime's source.
//!
//! The runtime's crash handler writes `kshim: fault pc=P addr=A main=M` on stderr (the
//! faulting instruction, the faulting address, and where `main` was loaded). The guest
//! executables are position independent, so `P - M` plus `main`'s link-time address (read
//! with `nm`) is the instruction's address in the executable, which `addr2line` turns into a
//! function and `file:line`. AddressSanitizer's reports carry their own backtrace
//! (`#N 0x... in FUNCTION FILE:LINE`, symbolised by the sanitizer). Either way the crash is
//! placed in the driver (`pci-hyperv.c`), the shim's headers, or the runtime
//! (`shim/runtime/*.c`): a crash in the runtime is the harness's failure, never the guest's.
//! The runtime's leak check reports each allocation left at module exit with its allocation
//! stack, symbolised here too ([`Leak`]).

mod leak;
mod native;
mod sanitizer;
mod symbolizer;
#[cfg(test)]
mod testutil;

pub use leak::{Leak, leak_report};
pub use native::{native_backtrace, symbolize_sites};
pub use sanitizer::{SanitizerReport, frame_text, sanitizer_report, short_file};
pub use symbolizer::Symbolizer;

use std::path::Path;
use std::process::Command;

/// The crash handler's report of a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The faulting instruction's address (0 if the handler could not read it).
    pub pc: u64,
    /// The faulting data address (`si_addr`).
    pub addr: u64,
    /// Where `main` was loaded.
    pub main: u64,
}

/// Where a code address is in the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The function.
    pub function: String,
    /// The file, as the debug information names it.
    pub file: String,
    /// The line (0 if unknown).
    pub line: u32,
}

/// Which part of the guest executable some code belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The real driver, `pci-hyperv.c`.
    Driver,
    /// The shim's kernel headers (inline helpers the driver compiles in).
    ShimHeader,
    /// The shim's runtime (`shim/runtime/*.c`).
    Runtime,
    /// Anything else (the C library, the sanitizer).
    Other,
}

impl Location {
    /// Which part of the executable the location is in.
    pub fn origin(&self) -> Origin {
        origin_of(&self.file)
    }

    /// `function at pci-hyperv.c:LINE` (the file's base name).
    pub fn short(&self) -> String {
        let base = self.file.rsplit('/').next().unwrap_or(&self.file);
        if self.line > 0 {
            format!("{} at {base}:{}", self.function, self.line)
        } else {
            format!("{} in {base}", self.function)
        }
    }
}

fn origin_of(file: &str) -> Origin {
    if file.ends_with("pci-hyperv.c") {
        Origin::Driver
    } else if file.contains("shim/runtime/") {
        Origin::Runtime
    } else if file.contains("shim/include/") {
        Origin::ShimHeader
    } else {
        Origin::Other
    }
}

/// The crash handler's fault line in a guest's stderr.
pub fn fault_report(stderr: &str) -> Option<Fault> {
    let line = stderr.lines().find(|l| l.starts_with("kshim: fault pc="))?;
    let field = |name: &str| -> Option<u64> {
        let rest = line.split(name).nth(1)?;
        let hex = rest.split_whitespace().next()?.trim_start_matches("0x");
        u64::from_str_radix(hex, 16).ok()
    };
    Some(Fault {
        pc: field("pc=")?,
        addr: field("addr=")?,
        main: field("main=")?,
    })
}

/// The link-time address of `main` in `exe` (`nm`).
pub(crate) fn main_address(exe: &Path) -> Option<u64> {
    let out = Command::new("nm").arg(exe).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        let addr = words.next()?;
        let kind = words.next()?;
        let name = words.next()?;
        (name == "main" && kind.eq_ignore_ascii_case("t"))
            .then(|| u64::from_str_radix(addr, 16).ok())
            .flatten()
    })
}

/// The source location of the fault's instruction in `exe`, with `addr2line`.
pub fn locate(exe: &Path, fault: &Fault) -> Option<Location> {
    if fault.pc == 0 || fault.main == 0 {
        return None;
    }
    let main = main_address(exe)?;
    let addr = fault.pc.wrapping_sub(fault.main).wrapping_add(main);
    symbolize(exe, addr)
}

/// The function and `file:line` of an address in `exe` (link-time address), with
/// `addr2line`; the innermost inlined frame first is skipped in favour of the outermost
/// function that contains it only when the inner one has no name.
pub fn symbolize(exe: &Path, addr: u64) -> Option<Location> {
    let out = Command::new("addr2line")
        .arg("-f")
        .arg("-C")
        .arg("-e")
        .arg(exe)
        .arg(format!("{addr:#x}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let function = lines.next()?.trim().to_owned();
    let place = lines.next()?.trim();
    let place = place.split(" (discriminator").next().unwrap_or(place);
    let (file, line) = place.rsplit_once(':')?;
    if function == "??" && file == "??" {
        return None;
    }
    Some(Location {
        function,
        file: file.to_owned(),
        line: line.parse().unwrap_or(0),
    })
}

/// One frame of AddressSanitizer's backtrace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The frame number.
    pub index: u32,
    /// Where it is.
    pub location: Location,
}

/// The first backtrace of an AddressSanitizer report (the access, not the allocation's):
/// the frames `#0`, `#1`, ... up to the first blank line.
pub fn asan_backtrace(stderr: &str) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut started = false;
    for line in stderr.lines() {
        let t = line.trim();
        let Some(rest) = t.strip_prefix('#') else {
            if started {
                break;
            }
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(index) = words.next().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if started && index == 0 {
            break;
        }
        started = true;
        let _pc = words.next();
        if words.next() != Some("in") {
            continue;
        }
        let Some(function) = words.next() else {
            continue;
        };
        let place = words.next().unwrap_or("");
        let mut parts = place.rsplitn(3, ':');
        let (last, mid, first) = (parts.next(), parts.next(), parts.next());
        // FILE:LINE:COLUMN or FILE:LINE
        let (file, line) = match (first, mid, last) {
            (Some(f), Some(l), Some(_)) => (f, l),
            (None, Some(f), Some(l)) => (f, l),
            _ => (place, "0"),
        };
        frames.push(Frame {
            index,
            location: Location {
                function: function.to_owned(),
                file: file.to_owned(),
                line: line.parse().unwrap_or(0),
            },
        });
    }
    frames
}

/// Whether a backtrace's crash is the runtime's own: its innermost frame in our code is in
/// the runtime and the runtime was not called by the driver for it (the frame after the
/// runtime's frames is not the driver's or the shim headers'). A runtime function the driver
/// called with a bad argument (a `complete` on a stale pointer) is the driver's crash.
pub fn runtime_fault(frames: &[Frame]) -> bool {
    let ours: Vec<Origin> = frames
        .iter()
        .map(|f| f.location.origin())
        .filter(|o| *o != Origin::Other)
        .collect();
    match ours.first() {
        Some(Origin::Runtime) => !ours
            .iter()
            .skip_while(|o| **o == Origin::Runtime)
            .take(1)
            .any(|o| matches!(o, Origin::Driver | Origin::ShimHeader)),
        _ => false,
    }
}

/// The in-build frames of a backtrace, one per line as `#N function at file:line`.
pub fn describe_backtrace(frames: &[Frame]) -> String {
    frames
        .iter()
        .filter(|f| f.location.origin() != Origin::Other)
        .map(|f| format!("#{} {}", f.index, f.location.short()))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_line_parses() {
        let s = "x\nkshim: fault pc=0x0000555555561234 addr=0x00000000000000a8 \
                 main=0x0000555555560000\n";
        assert_eq!(
            fault_report(s),
            Some(Fault {
                pc: 0x5555_5556_1234,
                addr: 0xa8,
                main: 0x5555_5556_0000
            })
        );
        assert_eq!(fault_report("nothing"), None);
    }

    const REPORT: &str = "\
==1==ERROR: AddressSanitizer: stack-use-after-return on address 0x7ffff3a00030
WRITE of size 4 at 0x7ffff3a00030 thread T2
    #0 0x5555555a1b2c in hv_pci_onchannelcallback /w/target/kernel-src/linux-source-5.10/pci-hyperv.c:2465:3
    #1 0x5555555b0000 in tasklet_main /w/petri-tests/kernel_shim/shim/runtime/vmbus.c:64
    #2 0x7ffff7a00000 in start_thread (/lib/x86_64-linux-gnu/libc.so.6+0x8a000)

Address 0x7ffff3a00030 is located in stack of thread T0 at offset 48 in frame
    #0 0x5555555a0000 in hv_compose_msi_msg /w/pci-hyperv.c:1400
";

    #[test]
    fn asan_frames_and_origin() {
        let frames = asan_backtrace(REPORT);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].location.line, 2465);
        assert_eq!(frames[0].location.origin(), Origin::Driver);
        assert_eq!(frames[1].location.origin(), Origin::Runtime);
        assert!(!runtime_fault(&frames));
        assert_eq!(
            describe_backtrace(&frames),
            "#0 hv_pci_onchannelcallback at pci-hyperv.c:2465; #1 tasklet_main at vmbus.c:64"
        );
    }

    #[test]
    fn runtime_frames_are_the_harness() {
        let own = "    #0 0x1 in drop_packets /w/shim/runtime/vmbus.c:99\n    \
                   #1 0x2 in kshim_vmbus_deliver /w/shim/runtime/vmbus.c:120\n\n";
        assert!(runtime_fault(&asan_backtrace(own)));
        let called = "    #0 0x1 in complete /w/shim/runtime/sync.c:99\n    \
                      #1 0x2 in hv_pci_onchannelcallback /w/pci-hyperv.c:10\n\n";
        assert!(!runtime_fault(&asan_backtrace(called)));
    }
}
