//! Runs the real Linux `pci-hyperv.c` (Debian 11's 5.10, Debian 12's 6.1, Debian 13's 6.12) in
//! user space.
//!
//! The driver source is fetched from Debian's package registry by the build script and never
//! committed; it is compiled against this crate's own minimal kernel headers (`shim/include`)
//! and linked with a C runtime (`shim/runtime`) into one guest executable per version. See
//! `shim/SYMBOLS.md` for every symbol the runtime provides and the kernel semantics it follows.
//!
//! A guest runs as a child process ([`guest::Session`]) that talks to a [`guest::Controller`]
//! over a framed protocol ([`protocol`]): the controller is the host (packets, config window,
//! BARs, hypercalls), the scenario (commands such as probe and remove) and the scheduler. In
//! the guest every kernel context is a thread, but exactly one runs at a time; at each
//! scheduling point (blocking, waking, locking, channel, MMIO) the controller chooses which
//! context runs next, so a run is a pure function of the controller's answers. Keeping the C
//! in its own process is also what keeps this crate free of `unsafe`: no FFI, and a crash of
//! the kernel code is an exit status, not a crash of the harness.
#![forbid(unsafe_code)]

pub mod channel;
pub mod forensics;
pub mod guest;
pub mod host;
pub mod protocol;

use std::path::Path;

/// How the guest executable is instrumented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Instrumentation {
    /// None: the fast build for exploring many schedules.
    Plain,
    /// AddressSanitizer on the driver and the runtime: a use after free (heap, or a dead stack
    /// frame) aborts the guest with a report on its stderr.
    Asan,
}

/// A real driver version this crate builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DriverVersion {
    /// Debian 11's `linux-source-5.10`: query-relations and unmask fixes, no per-bus `state_lock`.
    Debian5_10,
    /// Debian 12's `linux-source-6.1`: the whole 2023 fix series.
    Debian6_1,
    /// Debian 13's `linux-source-6.12`: 6.1's fixes, per-CPU hypercall input pages, and config
    /// access through MMIO hypercalls when Hyper-V hints so.
    Debian6_12,
}

impl DriverVersion {
    /// Every version, oldest first.
    pub const ALL: [DriverVersion; 3] = [
        DriverVersion::Debian5_10,
        DriverVersion::Debian6_1,
        DriverVersion::Debian6_12,
    ];

    /// The exact Debian package version the driver source was extracted from.
    pub fn package_version(self) -> &'static str {
        match self {
            DriverVersion::Debian5_10 => env!("KERNEL_SHIM_DEBIAN_VERSION_5_10"),
            DriverVersion::Debian6_1 => env!("KERNEL_SHIM_DEBIAN_VERSION_6_1"),
            DriverVersion::Debian6_12 => env!("KERNEL_SHIM_DEBIAN_VERSION_6_12"),
        }
    }

    /// The guest executable: this version's driver linked with the shim runtime.
    pub fn guest_executable(self) -> &'static Path {
        self.guest_executable_with(Instrumentation::Plain)
    }

    /// The guest executable built with the given instrumentation.
    pub fn guest_executable_with(self, instrumentation: Instrumentation) -> &'static Path {
        Path::new(match (self, instrumentation) {
            (DriverVersion::Debian5_10, Instrumentation::Plain) => env!("KERNEL_SHIM_GUEST_510"),
            (DriverVersion::Debian6_1, Instrumentation::Plain) => env!("KERNEL_SHIM_GUEST_601"),
            (DriverVersion::Debian6_12, Instrumentation::Plain) => env!("KERNEL_SHIM_GUEST_612"),
            (DriverVersion::Debian5_10, Instrumentation::Asan) => {
                env!("KERNEL_SHIM_GUEST_510_ASAN")
            }
            (DriverVersion::Debian6_1, Instrumentation::Asan) => {
                env!("KERNEL_SHIM_GUEST_601_ASAN")
            }
            (DriverVersion::Debian6_12, Instrumentation::Asan) => {
                env!("KERNEL_SHIM_GUEST_612_ASAN")
            }
        })
    }

    /// The Debian package the driver source comes from.
    pub fn package_name(self) -> &'static str {
        match self {
            DriverVersion::Debian5_10 => "linux-source-5.10",
            DriverVersion::Debian6_1 => "linux-source-6.1",
            DriverVersion::Debian6_12 => "linux-source-6.12",
        }
    }
}

/// The build script's fetch logic, compiled here too so that its parsing is unit-tested.
#[cfg(test)]
#[allow(dead_code, unreachable_pub)]
#[path = "../build/fetch.rs"]
mod fetch;

#[cfg(test)]
mod tests {
    use super::*;

    /// The recorded package versions belong to the kernel series each package is named after.
    #[test]
    fn package_versions_match_their_series() {
        assert!(
            DriverVersion::Debian5_10
                .package_version()
                .starts_with("5.10.")
        );
        assert!(
            DriverVersion::Debian6_1
                .package_version()
                .starts_with("6.1.")
        );
        assert!(
            DriverVersion::Debian6_12
                .package_version()
                .starts_with("6.12.")
        );
    }
}
