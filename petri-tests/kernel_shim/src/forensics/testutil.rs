//! Test helpers: addresses of the current build, so that tests built on captured reports
//! follow rebuilds of the guest executables.

use std::path::Path;

/// The link-time address of each named function in `exe` (`nm`).
pub(crate) fn function_addresses(exe: &Path, names: &[&str]) -> Vec<u64> {
    let out = std::process::Command::new("nm")
        .arg(exe)
        .output()
        .expect("nm runs");
    let text = String::from_utf8_lossy(&out.stdout);
    names
        .iter()
        .map(|name| {
            text.lines()
                .find_map(|l| {
                    let mut w = l.split_whitespace();
                    let (addr, _, n) = (w.next()?, w.next()?, w.next()?);
                    (n == *name)
                        .then(|| u64::from_str_radix(addr, 16).ok())
                        .flatten()
                })
                .unwrap_or_else(|| panic!("{name} not in {}", exe.display()))
        })
        .collect()
}
