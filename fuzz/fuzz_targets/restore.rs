//! Restoring a relay from a saved state that may be corrupt or hostile (arbitrary bytes, or
//! a golden state mutated field by field or byte by byte), then running the restored relay
//! between hostile peers: restoring must never panic, and a relay it restores must keep its
//! promises. The harness is shared with `cargo test`
//! (`vpci_relay/tests/fuzzing/restore.rs`), which replays `fuzz/regressions/restore/` and the
//! seeds in `fuzz/corpus/restore/` (the golden states).

#![no_main]

#[path = "../../vm/devices/pci/vpci_relay/tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::restore::run(data));
