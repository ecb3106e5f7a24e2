//! The vPCI decoders, structured: a message or completion built with `vpci_protocol::build`,
//! one targeted corruption, decoded as either sender at any version; whatever decodes
//! re-encodes to the same bytes. The harness is shared with `cargo test`
//! (`vpci_relay/tests/fuzzing/decode.rs`), which replays `fuzz/regressions/decode/`.

#![no_main]

#[path = "../../vm/devices/pci/vpci_relay/tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::decode::run(data));
