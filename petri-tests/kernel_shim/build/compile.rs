//! Compiling the fetched driver against our own kernel shim with the `cc` crate.
//!
//! The driver and the kernel-side runtime are built `-nostdinc` against `shim/include` only,
//! with the kernel's semantic flags (no strict aliasing, no strict overflow, NULL checks kept),
//! `CONFIG_X86` and the shim's version macro `KSHIM_KVER` (510 or 601).

use std::path::{Path, PathBuf};

/// How a guest executable is instrumented.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// No instrumentation: the fast one for exploring many schedules.
    Plain,
    /// AddressSanitizer on the driver and the runtime: heap and stack use after free (and
    /// after return) become crashes with a report; the runtime poisons freed blocks for it.
    Asan,
}

impl Flavor {
    /// Both flavors.
    pub(crate) const ALL: [Flavor; 2] = [Flavor::Plain, Flavor::Asan];

    /// The suffix of object directories, executables and environment variables.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Flavor::Plain => "",
            Flavor::Asan => "_ASAN",
        }
    }

    fn apply(self, build: &mut cc::Build) {
        if self == Flavor::Asan {
            build
                .flag("-fsanitize=address")
                .flag("-fno-omit-frame-pointer")
                .define("KSHIM_ASAN", None);
        }
    }
}

/// The shim's version macro value for a package key (`5.10` -> `510`, `6.1` -> `601`).
pub(crate) fn kver(key: &str) -> Result<u32, String> {
    let (major, minor) = key
        .split_once('.')
        .ok_or_else(|| format!("bad version key {key}"))?;
    let major: u32 = major.parse().map_err(|e| format!("{key}: {e}"))?;
    let minor: u32 = minor.parse().map_err(|e| format!("{key}: {e}"))?;
    Ok(major * 100 + minor)
}

/// A `cc::Build` set up for kernel-side code of one version: `-nostdinc`, our headers only.
pub(crate) fn kernel_build(shim: &Path, kver: u32) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cargo_metadata(false)
        .include(shim.join("include"))
        .define("CONFIG_X86", None)
        .define("KSHIM_KVER", kver.to_string().as_str())
        .define("KBUILD_MODNAME", "\"pci_hyperv\"")
        .flag("-std=gnu11")
        .flag("-nostdinc")
        .flag("-fno-strict-aliasing")
        .flag("-fno-strict-overflow")
        .flag("-fno-delete-null-pointer-checks")
        .flag("-fno-common")
        .flag("-Wno-unused-parameter")
        .flag("-Wno-sign-compare")
        .flag("-Werror=implicit-function-declaration")
        .debug(true)
        .opt_level(1);
    build
}

/// Compiles one driver source into an object under `out`.
pub(crate) fn compile_driver(
    shim: &Path,
    kver: u32,
    flavor: Flavor,
    source: &Path,
    out: &Path,
) -> Result<Vec<PathBuf>, String> {
    let mut build = kernel_build(shim, kver);
    flavor.apply(&mut build);
    build.file(source).out_dir(out);
    build
        .try_compile_intermediates()
        .map_err(|e| format!("compiling {} failed: {e}", source.display()))
}

/// The runtime's kernel-side C files (compiled like the driver) under `shim/runtime`.
const RUNTIME_FILES: [&str; 8] = [
    "proto.c", "sched.c", "mem.c", "sync.c", "vmbus.c", "pci.c", "msi.c", "main.c",
];

/// Compiles the kernel-side runtime for one version.
pub(crate) fn compile_runtime(
    shim: &Path,
    kver: u32,
    flavor: Flavor,
    debian_version: &str,
    out: &Path,
) -> Result<Vec<PathBuf>, String> {
    let mut build = kernel_build(shim, kver);
    flavor.apply(&mut build);
    build
        .include(shim.join("runtime"))
        .define(
            "KSHIM_DEBIAN_VERSION",
            format!("\"{}\"", debian_version.replace(['"', '\\'], "")).as_str(),
        )
        .out_dir(out);
    for file in RUNTIME_FILES {
        build.file(shim.join("runtime").join(file));
    }
    build
        .try_compile_intermediates()
        .map_err(|e| format!("compiling the kernel shim runtime failed: {e}"))
}

/// Compiles `os.c`, the one runtime file built against the C library.
pub(crate) fn compile_os(shim: &Path, flavor: Flavor, out: &Path) -> Result<Vec<PathBuf>, String> {
    let mut build = cc::Build::new();
    flavor.apply(&mut build);
    build
        .cargo_metadata(false)
        .include(shim.join("runtime"))
        .file(shim.join("runtime").join("os.c"))
        .debug(true)
        .opt_level(1)
        .out_dir(out);
    build
        .try_compile_intermediates()
        .map_err(|e| format!("compiling the runtime's os.c failed: {e}"))
}

/// Links a guest executable from the driver, the runtime and the OS layer.
pub(crate) fn link(objects: &[PathBuf], flavor: Flavor, exe: &Path) -> Result<(), String> {
    let compiler = cc::Build::new()
        .cargo_metadata(false)
        .try_get_compiler()
        .map_err(|e| format!("no C compiler: {e}"))?;
    let mut command = compiler.to_command();
    if flavor == Flavor::Asan {
        command.arg("-fsanitize=address");
    }
    let output = command
        .args(objects)
        .arg("-o")
        .arg(exe)
        .arg("-lpthread")
        .output()
        .map_err(|e| format!("cannot run the linker: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "linking {} failed: {}",
            exe.display(),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
