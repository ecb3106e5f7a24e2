//! The runtime's own leak check (the guests run with the sanitizer's leak detection off):
//! each allocation outstanding at module exit comes as a leak event (its size, the shim call
//! before it and its site, `exe+0xOFF`) followed by its allocation stack (the site and a few
//! callers, `exe+0xOFF` each). Here the stacks of a run's leaks are symbolised together, in
//! one `addr2line` call, every frame as `function pci-hyperv.c:LINE`.

use super::native::{site_offsets, symbolize_sites};
use super::symbolizer::Symbolizer;
use super::{Frame, frame_text};

/// An allocation the runtime found outstanding at module exit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leak {
    /// The runtime's leak line: `144 bytes allocated after kmalloc at exe+0xee5a`.
    pub summary: String,
    /// The allocation stack: the site first, then its callers (return addresses, relative to
    /// the executable's start). Empty until the runtime's stack event arrives.
    pub stack: Vec<u64>,
}

impl Leak {
    /// A leak as the runtime's leak event states it.
    pub fn new(summary: &str) -> Self {
        Self {
            summary: summary.to_owned(),
            stack: Vec::new(),
        }
    }

    /// Takes the stack event that follows the leak event (`exe+0xOFF` each, innermost
    /// first); anything that is not an offset is skipped.
    pub fn set_stack(&mut self, text: &str) {
        self.stack = site_offsets(text);
    }

    /// The summary with its site symbolised (`... at exe+0xee5a (new_pcichild_device
    /// pci-hyperv.c:2019, inlined into ...)`).
    pub fn summary_symbolised(&self, symbolizer: &mut Symbolizer) -> String {
        symbolize_sites(&self.summary, symbolizer)
    }

    /// The allocation stack, symbolised: `#N function file:LINE` per frame, inlined frames
    /// expanded under the number of the frame they are in, frames without a symbol (outside
    /// the executable) left out.
    pub fn frames(&self, symbolizer: &mut Symbolizer) -> Vec<Frame> {
        // Each is a return address: the call is the instruction before.
        symbolizer.resolve(self.stack.iter().map(|o| o.saturating_sub(1)));
        let mut frames = Vec::new();
        for (index, offset) in self.stack.iter().enumerate() {
            for location in symbolizer.frames(offset.saturating_sub(1)) {
                frames.push(Frame {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    location: location.clone(),
                });
            }
        }
        frames
    }
}

/// Every leak of a run, symbolised for a report: each leak's summary (its site symbolised),
/// then its allocation stack indented under it, one `#N function file:LINE` a line. All the
/// addresses are symbolised in one `addr2line` call.
pub fn leak_report(leaks: &[Leak], symbolizer: &mut Symbolizer) -> Vec<String> {
    let offsets = leaks.iter().flat_map(|l| {
        site_offsets(&l.summary)
            .into_iter()
            .chain(l.stack.iter().copied())
    });
    symbolizer.resolve(offsets.map(|o| o.saturating_sub(1)).collect::<Vec<_>>());
    let mut lines = Vec::new();
    for leak in leaks {
        lines.push(leak.summary_symbolised(symbolizer));
        let frames = leak.frames(symbolizer);
        if !frames.is_empty() {
            lines.push("  allocation stack:".to_owned());
        }
        for f in frames {
            lines.push(format!("    #{} {}", f.index, frame_text(&f.location)));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DriverVersion;
    use crate::Instrumentation;
    use crate::forensics::testutil::function_addresses;

    /// A leak with a stack through three functions of the current 5.10 build (offsets a
    /// little into each, as return addresses are): every frame is symbolised to its
    /// function and `pci-hyperv.c:LINE`, in order, and a frame outside the executable is
    /// left out.
    #[test]
    fn stack_frames_symbolised_in_order() {
        let exe = DriverVersion::Debian5_10.guest_executable_with(Instrumentation::Asan);
        let names = [
            "pci_devices_present_work",
            "hv_pci_query_relations",
            "hv_pci_probe",
        ];
        let addrs = function_addresses(exe, &names);
        let mut leak = Leak::new(&format!(
            "144 bytes allocated after kzalloc at exe+{:#x}",
            addrs[0] + 0x20
        ));
        let stack: Vec<String> = addrs
            .iter()
            .map(|a| format!("exe+{:#x}", a + 0x20))
            .chain(["exe+0xffffffffff001234".to_owned()])
            .collect();
        leak.set_stack(&stack.join(" "));
        assert_eq!(leak.stack.len(), 4);
        let mut symbolizer = Symbolizer::new(exe);
        let lines = leak_report(&[leak.clone(), Leak::new("8 bytes")], &mut symbolizer);
        assert!(
            lines[0].contains("pci_devices_present_work pci-hyperv.c:"),
            "{lines:#?}"
        );
        assert_eq!(lines[1], "  allocation stack:");
        // Outermost function of each numbered frame, in order (inlined helpers may add
        // lines under a number).
        let mut outer: Vec<(u32, String)> = Vec::new();
        for f in leak.frames(&mut symbolizer) {
            assert!(f.location.file.ends_with("pci-hyperv.c"), "{f:?}");
            assert!(f.location.line > 0, "{f:?}");
            match outer.last_mut() {
                Some((i, name)) if *i == f.index => *name = f.location.function.clone(),
                _ => outer.push((f.index, f.location.function.clone())),
            }
        }
        let got: Vec<&str> = outer.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(got, names, "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("    #2 hv_pci_probe pci-hyperv.c:")),
            "{lines:#?}"
        );
        // The second leak has no stack: its summary alone.
        assert_eq!(lines.last().map(String::as_str), Some("8 bytes"));
    }

    #[test]
    fn stack_text_parsing_skips_junk() {
        let mut leak = Leak::new("x");
        leak.set_stack("exe+0x10 garbage exe+0xzz exe+0x2f");
        assert_eq!(leak.stack, vec![0x10, 0x2f]);
        leak.set_stack("");
        assert!(leak.stack.is_empty());
    }
}
