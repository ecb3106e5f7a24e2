//! Compiling the fetched driver against our own kernel shim with the `cc` crate.
//!
//! The driver and the kernel-side runtime are built `-nostdinc` against `shim/include` only,
//! with the kernel's semantic flags (no strict aliasing, no strict overflow, NULL checks kept),
//! `CONFIG_X86` and the shim's version macro `KSHIM_KVER` (510 or 601).

use std::path::{Path, PathBuf};

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
    source: &Path,
    out: &Path,
) -> Result<Vec<PathBuf>, String> {
    let mut build = kernel_build(shim, kver);
    build.file(source).out_dir(out);
    build
        .try_compile_intermediates()
        .map_err(|e| format!("compiling {} failed: {e}", source.display()))
}
