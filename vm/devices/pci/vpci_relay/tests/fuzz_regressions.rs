//! Every crash the fuzzers found (`fuzz/regressions/<target>/`) and every committed seed
//! (`fuzz/corpus/<target>/`), replayed through the same harness code the fuzz targets run
//! (`tests/fuzzing/`), in a normal `cargo test`. A harness panics on a broken promise, so a
//! regression fails here with the target, the file and the panic. (The ring reader's harness
//! needs `vmbus_ring`, which this crate does not depend on; `cargo xflowey fuzz` replays its
//! regressions with `cargo fuzz run`.)

mod fuzzing;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn files(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../../fuzz")
        .join(kind)
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    files.sort();
    files
}

/// Runs every regression and seed of `target`; returns how many ran. Panics naming every
/// input that broke a promise.
fn replay(target: &str, harness: fn(&[u8])) -> usize {
    let mut broken = Vec::new();
    let mut n = 0;
    for kind in ["regressions", "corpus"] {
        for path in files(kind, target) {
            n += 1;
            let data = std::fs::read(&path).unwrap();
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| harness(&data))) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                broken.push(format!("{}: {msg}", path.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{target}:\n{}", broken.join("\n"));
    n
}

/// The decoders' seeds and regressions: no panic, every decode re-encodes to its bytes.
#[test]
fn decode_inputs_replay() {
    assert!(replay("decode", fuzzing::decode::run) > 0);
}

/// The relay between hostile peers: tables bounded, nothing malformed to the guest, every
/// guest request answered once.
#[test]
fn relay_inputs_replay() {
    assert!(replay("relay", fuzzing::relay::run) > 0);
}

/// The relay's promises to conformant peers.
#[test]
fn relay_promises_inputs_replay() {
    assert!(replay("relay_promises", fuzzing::promises::run) > 0);
}

/// Restoring corrupt or hostile saved states: no panic, a restored relay keeps its
/// promises. The seeds are the golden states (`tests/saved_state/golden/`).
#[test]
fn restore_inputs_replay() {
    assert!(replay("restore", fuzzing::restore::run) > 0);
}

/// An empty input is a complete program for each harness (every choice 0): a harness that
/// needs a minimum input length would silently skip short crash files.
#[test]
fn empty_inputs_run_to_the_end() {
    fuzzing::decode::run(&[]);
    fuzzing::relay::run(&[]);
    fuzzing::promises::run(&[]);
    fuzzing::restore::run(&[]);
}
