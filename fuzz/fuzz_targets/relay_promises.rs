//! The relay's promises to a conformant guest and a host with the protocol's freedom, checked
//! after every step and at quiescence; the fuzzer's bytes choose the host's actions, the
//! guest's config accesses and when the device answers them, every delay and when time
//! passes. The harness is shared with `cargo test`
//! (`vpci_relay/tests/fuzzing/promises.rs`), which replays `fuzz/regressions/relay_promises/`.

#![no_main]

#[path = "../../vm/devices/pci/vpci_relay/tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::promises::run(data));
