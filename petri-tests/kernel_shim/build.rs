//! Build script: fetches `pci-hyperv.c` from Debian's `linux-source-5.10` and `linux-source-6.1`
//! packages (cached under the target directory), then compiles each against our own kernel shim
//! and runtime into one guest executable per version.
#![forbid(unsafe_code)]

#[path = "build/compile.rs"]
mod compile;
#[path = "build/fetch.rs"]
mod fetch;

use std::env;
use std::path::PathBuf;

fn main() {
    if let Err(message) = run() {
        eprintln!("error: kernel_shim build failed: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-changed=shim");
    println!("cargo:rerun-if-env-changed=KERNEL_SHIM_CACHE_DIR");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let cache = cache_dir()?;
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let shim = manifest.join("shim");
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    // Both packages at once: a fresh clone spends most of its build time in download and xz.
    let fetched: Vec<Result<fetch::Fetched, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = fetch::PACKAGES
            .iter()
            .map(|pkg| scope.spawn(|| fetch::fetch(&cache, pkg)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("the fetch thread panicked".to_string()))
            })
            .collect()
    });
    for (pkg, fetched) in fetch::PACKAGES.iter().zip(fetched) {
        let fetched =
            fetched.map_err(|e| format!("fetching the {} driver from Debian: {e}", pkg.key))?;
        println!("cargo:rerun-if-changed={}", fetched.source.display());
        let macro_key = pkg.key.replace('.', "_");
        println!(
            "cargo:rustc-env=KERNEL_SHIM_DEBIAN_VERSION_{macro_key}={}",
            fetched.version
        );
        let kver = compile::kver(pkg.key)?;
        for flavor in compile::Flavor::ALL {
            let suffix = flavor.suffix();
            let obj_dir = out.join(format!("v{kver}{suffix}"));
            std::fs::create_dir_all(&obj_dir).map_err(|e| e.to_string())?;
            let mut objects =
                compile::compile_driver(&shim, kver, flavor, &fetched.source, &obj_dir)?;
            if let (compile::Flavor::Plain, Some(driver)) = (flavor, objects.first()) {
                println!(
                    "cargo:rustc-env=KERNEL_SHIM_DRIVER_OBJECT_{kver}={}",
                    driver.display()
                );
            }
            objects.extend(compile::compile_runtime(
                &shim,
                kver,
                flavor,
                &fetched.version,
                &obj_dir,
            )?);
            objects.extend(compile::compile_os(&shim, flavor, &obj_dir)?);
            let exe = out.join(format!("kshim-guest-{kver}{suffix}"));
            compile::link(&objects, flavor, &exe)?;
            println!(
                "cargo:rustc-env=KERNEL_SHIM_GUEST_{kver}{suffix}={}",
                exe.display()
            );
        }
    }
    Ok(())
}

/// `$KERNEL_SHIM_CACHE_DIR`, else `$CARGO_TARGET_DIR/kernel-src`, else `target/kernel-src`
/// found from `OUT_DIR` (`target/<profile>/build/<pkg>-<hash>/out`), so that every profile and
/// every rebuild of this crate shares one download.
fn cache_dir() -> Result<PathBuf, String> {
    if let Some(dir) = env::var_os("KERNEL_SHIM_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        let dir = if dir.is_absolute() {
            dir
        } else {
            PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?)
                .ancestors()
                .find(|a| a.join("Cargo.lock").exists())
                .map(|root| root.join(&dir))
                .unwrap_or(dir)
        };
        return Ok(dir.join("kernel-src"));
    }
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    // out -> <pkg>-<hash> -> build -> <profile> -> target (or target/<triple>).
    let target = out
        .ancestors()
        .nth(4)
        .ok_or_else(|| format!("unexpected OUT_DIR layout: {}", out.display()))?;
    Ok(target.join("kernel-src"))
}
