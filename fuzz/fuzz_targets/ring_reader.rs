//! A ring image of arbitrary bytes (control page and data area written by a hostile peer):
//! the reader returns packets or a typed error, never panics, never loops.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_mem::{HeapMem, SharedMem};
use vmbus_ring::{CONTROL_PAGE_SIZE, RingReader};

fuzz_target!(|data: &[u8]| {
    let mem = HeapMem::new(CONTROL_PAGE_SIZE + 4096);
    let len = data.len().min(mem.len());
    if mem.write_at(0, &data[..len]).is_err() {
        return;
    }
    let Ok(mut reader) = RingReader::new(mem) else {
        return;
    };
    let mut buf = vec![0u8; reader.max_packet_len()];
    // A 4 KiB data area holds at most 4096 / 24 packets; more reads than that is a loop.
    for _ in 0..4096 / 24 + 1 {
        match reader.peek(&mut buf) {
            Ok(Some(_)) => reader.consume(),
            Ok(None) | Err(_) => return,
        }
    }
    panic!("the reader returned more packets than the ring can hold");
});
