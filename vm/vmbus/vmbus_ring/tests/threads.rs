//! A writer and a reader on different threads (and over a memfd), streaming many packets of
//! varying sizes; every packet arrives once, in order, with its content intact.

mod common;

use common::*;
use shared_mem::HeapMem;
use shared_mem::MemfdMem;
use shared_mem::SharedMem;
use std::sync::Arc;
use vmbus_ring::*;

/// Packet `i`'s payload length: varied, sometimes zero, sometimes large enough to wrap.
fn len_of(i: u64) -> usize {
    (i.wrapping_mul(2654435761) % 700) as usize
}

fn stream<M: SharedMem + Clone + 'static>(mem: M, count: u64) {
    Ring::new(mem.clone()).unwrap().initialize().unwrap();
    let mut writer = RingWriter::new(mem.clone()).unwrap();
    let mut reader = RingReader::new(mem).unwrap();
    let producer = std::thread::spawn(move || {
        let mut full = 0u64;
        for i in 0..count {
            let body = payload(i, len_of(i));
            loop {
                match writer.write_packet(&inband(i), &body) {
                    Ok(_) => break,
                    Err(WriteError::Full { needed, .. }) => {
                        full += 1;
                        if !writer.set_pending_send_size(needed).unwrap() {
                            std::thread::yield_now();
                        }
                    }
                    Err(e) => panic!("write failed: {e}"),
                }
            }
        }
        full
    });
    let mut buf = vec![0; reader.max_packet_len()];
    let mut i = 0;
    while i < count {
        match reader.read_packet(&mut buf).unwrap() {
            None => std::thread::yield_now(),
            Some(packet) => {
                assert_eq!(packet.info.header.meta, inband(i));
                let len = len_of(i);
                let got = packet.info.payload(&buf);
                assert_eq!(got.len(), len.next_multiple_of(8));
                assert_eq!(&got[..len], &payload(i, len)[..]);
                i += 1;
            }
        }
    }
    producer.join().unwrap();
    assert!(reader.read_packet(&mut buf).unwrap().is_none());
}

/// Streaming over heap memory shared by two threads.
#[test]
fn two_threads_heap() {
    let count = if cfg!(miri) { 50 } else { 200_000 };
    stream(Arc::new(HeapMem::new(CONTROL_PAGE_SIZE + 8192)), count);
}

/// Streaming over a memfd mapped twice (as two processes would), writer and reader each on
/// its own mapping.
#[test]
#[cfg_attr(miri, ignore)]
fn two_threads_two_memfd_mappings() {
    let a = MemfdMem::create("vmbus_ring-test", CONTROL_PAGE_SIZE + 4096).unwrap();
    let b = MemfdMem::from_fd(a.try_clone_fd().unwrap()).unwrap();
    let a = Arc::new(a);
    let b = Arc::new(b);
    Ring::new(a.clone()).unwrap().initialize().unwrap();
    let mut writer = RingWriter::new(a).unwrap();
    let mut reader = RingReader::new(b).unwrap();
    let count = 100_000u64;
    let producer = std::thread::spawn(move || {
        for i in 0..count {
            let body = payload(i, len_of(i));
            while let Err(e) = writer.write_packet(&inband(i), &body) {
                assert!(matches!(e, WriteError::Full { .. }), "{e}");
                std::thread::yield_now();
            }
        }
    });
    let mut buf = vec![0; 4096];
    let mut i = 0;
    while i < count {
        if let Some(packet) = reader.read_packet(&mut buf).unwrap() {
            let len = len_of(i);
            assert_eq!(packet.info.header.meta.transaction_id, i);
            assert_eq!(&packet.info.payload(&buf)[..len], &payload(i, len)[..]);
            i += 1;
        } else {
            std::thread::yield_now();
        }
    }
    producer.join().unwrap();
}

/// Neither side polls: each sleeps on its doorbell and is woken only when the other side's
/// signalling rule says so (empty -> non-empty for the reader, pending_send_sz crossed for a
/// blocked writer). A lost wakeup in either rule would hang one side and fail the test.
#[test]
fn signalling_without_polling_never_loses_a_wakeup() {
    let count = if cfg!(miri) { 30 } else { 100_000 };
    let mem = Arc::new(HeapMem::new(CONTROL_PAGE_SIZE + 4096));
    Ring::new(mem.clone()).unwrap().initialize().unwrap();
    let writer = RingWriter::new(mem.clone()).unwrap();
    let mut reader = RingReader::new(mem).unwrap();
    let reader_bell = Doorbell::new();
    let writer_bell = Doorbell::new();
    let producer = blocking_writer(writer, count, len_of, &reader_bell, &writer_bell);
    let mut buf = vec![0; reader.max_packet_len()];
    let mut i = 0;
    let mut sleeps = 0u64;
    reader.mask_interrupts().unwrap();
    while i < count {
        while let Some(packet) = reader.read_packet(&mut buf).unwrap() {
            assert_eq!(packet.info.header.meta.transaction_id, i);
            let len = len_of(i);
            assert_eq!(&packet.info.payload(&buf)[..len], &payload(i, len)[..]);
            if packet.signal_writer {
                writer_bell.ring();
            }
            i += 1;
        }
        if i == count {
            break;
        }
        // Empty: unmask, and sleep only if nothing slipped in meanwhile.
        if !reader.unmask_interrupts().unwrap() {
            sleeps += 1;
            reader_bell.wait("the reader");
        }
        reader.mask_interrupts().unwrap();
    }
    let waits = producer.join().unwrap();
    // Both paths were exercised (with a 4 KiB ring and ~350-byte packets the writer blocks).
    if !cfg!(miri) {
        assert!(
            sleeps > 0 && waits > 0,
            "sleeps {sleeps}, writer waits {waits}"
        );
    }
}
