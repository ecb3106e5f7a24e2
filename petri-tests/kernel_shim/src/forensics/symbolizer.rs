//! Code addresses of the guest executable to functions and `file:line`, many at once.
//!
//! One `addr2line -a -f -C -i` call answers every address of a report, with the inlined
//! frames of each (the driver's helpers are often inlined into their callers): a replay
//! symbolises a few dozen addresses, and one process per address would dominate it.

use super::Location;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Symbolises addresses of one executable (link-time addresses), caching the answers.
#[derive(Debug)]
pub struct Symbolizer {
    exe: PathBuf,
    /// Each address asked for, with its frames innermost first (empty: no symbol).
    known: BTreeMap<u64, Vec<Location>>,
}

impl Symbolizer {
    /// A symbolizer of `exe`.
    pub fn new(exe: &Path) -> Self {
        Self {
            exe: exe.to_owned(),
            known: BTreeMap::new(),
        }
    }

    /// The executable it reads.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// Symbolises every address not asked for yet, in one `addr2line` call. An address
    /// may come more than once (a leak's site is also its stack's first frame).
    pub fn resolve(&mut self, addrs: impl IntoIterator<Item = u64>) {
        // Each address once: the answers are keyed by address, so a repeated one would
        // find its frames taken by the first and be cached as unknown.
        let missing: std::collections::BTreeSet<u64> = addrs
            .into_iter()
            .filter(|a| !self.known.contains_key(a))
            .collect();
        if missing.is_empty() {
            return;
        }
        let output = Command::new("addr2line")
            .args(["-a", "-f", "-C", "-i", "-e"])
            .arg(&self.exe)
            .args(missing.iter().map(|a| format!("{a:#x}")))
            .output();
        let text = output
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut parsed = parse_addr2line(&text);
        for addr in missing {
            let frames = parsed.remove(&addr).unwrap_or_default();
            self.known.insert(addr, frames);
        }
    }

    /// The frames at `addr` (innermost first; empty when it has no symbol), symbolising it
    /// now if it was not resolved before.
    pub fn frames(&mut self, addr: u64) -> &[Location] {
        self.resolve([addr]);
        self.known.get(&addr).map_or(&[], Vec::as_slice)
    }
}

/// `addr2line -a -f -i` output: each address (`0x...`) followed by function and `file:line`
/// pairs, innermost first.
pub(crate) fn parse_addr2line(text: &str) -> BTreeMap<u64, Vec<Location>> {
    let mut out: BTreeMap<u64, Vec<Location>> = BTreeMap::new();
    let mut current: Option<u64> = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if let Some(hex) = line.strip_prefix("0x") {
            if let Ok(addr) = u64::from_str_radix(hex, 16) {
                current = Some(addr);
                out.entry(addr).or_default();
                continue;
            }
        }
        let (Some(addr), Some(place)) = (current, lines.next()) else {
            continue;
        };
        let place = place.trim();
        let place = place.split(" (discriminator").next().unwrap_or(place);
        let Some((file, number)) = place.rsplit_once(':') else {
            continue;
        };
        if line == "??" && file == "??" {
            continue;
        }
        out.entry(addr).or_default().push(Location {
            function: line.to_owned(),
            file: file.to_owned(),
            line: number.parse().unwrap_or(0),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address asked for twice in one batch is symbolised, not cached as unknown
    /// (a function of the current 5.10 build).
    #[test]
    fn repeated_address_in_one_batch() {
        let exe =
            crate::DriverVersion::Debian5_10.guest_executable_with(crate::Instrumentation::Asan);
        let probe = crate::forensics::testutil::function_addresses(exe, &["hv_pci_probe"])[0];
        let mut s = Symbolizer::new(exe);
        s.resolve([probe + 0x10, probe + 0x10]);
        assert_eq!(
            s.frames(probe + 0x10).last().map(|l| l.function.as_str()),
            Some("hv_pci_probe")
        );
    }

    /// addr2line's answer for two addresses, one with an inlined frame, one unknown
    /// (captured from binutils 2.40 on the 5.10 guest).
    #[test]
    fn batch_output_parses() {
        let text = "0x000000000000c8f6\n\
                    hv_pci_onchannelcallback\n\
                    /k/linux-source-5.10/pci-hyperv.c:2513\n\
                    0x000000000000a62a\n\
                    hv_pci_generic_compl\n\
                    /k/linux-source-5.10/pci-hyperv.c:410 (discriminator 2)\n\
                    hv_pci_enter_d0\n\
                    /k/linux-source-5.10/pci-hyperv.c:2855\n\
                    0x0000000000000010\n\
                    ??\n\
                    ??:0\n";
        let parsed = parse_addr2line(text);
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[&0xc8f6][0].line, 2513);
        let inlined = &parsed[&0xa62a];
        assert_eq!(inlined.len(), 2);
        assert_eq!(inlined[0].function, "hv_pci_generic_compl");
        assert_eq!(inlined[0].line, 410);
        assert_eq!(inlined[1].function, "hv_pci_enter_d0");
        assert!(parsed[&0x10].is_empty());
    }
}
