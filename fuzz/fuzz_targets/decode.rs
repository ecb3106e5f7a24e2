//! Arbitrary bytes into every vPCI decoder: no panic, and whatever decodes re-encodes to the
//! same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vpci_protocol::{MessageType, ProtocolVersion, Sender, decode, decode_completion, encode};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let version = ProtocolVersion::ALL[usize::from(selector & 7)];
    let from = if selector & 8 == 0 {
        Sender::Host
    } else {
        Sender::Guest
    };
    if let Ok(m) = decode(bytes, from, version) {
        assert_eq!(encode(&m), bytes);
    }
    let request = MessageType::ALL[usize::from(selector >> 3) % MessageType::ALL.len()];
    if let Ok(c) = decode_completion(bytes, request, version) {
        assert_eq!(c.encode(), bytes);
    }
});
