//! The relay between two hostile peers, structured: host and guest packets built with
//! `vpci_protocol::build` and sometimes corrupted, completions of what the relay forwarded,
//! config accesses, time, a rescind. Tables bounded, nothing malformed reaches the guest, every
//! guest request answered once. The harness is shared with `cargo test`
//! (`vpci_relay/tests/fuzzing/relay.rs`), which replays `fuzz/regressions/relay/`.

#![no_main]

#[path = "../../vm/devices/pci/vpci_relay/tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::relay::run(data));
