//! A lazy reader (`RingReader::set_lazy_publish`): it keeps its read position private only
//! while the writer cannot need it, and no rule of the signalling protocol loses a wake-up.

mod common;

use common::*;
use shared_mem::SharedMem;
use vmbus_ring::*;

/// The read index as the writer sees it.
fn shared_read_index(mem: &Mem) -> u32 {
    mem.load_u32(READ_INDEX_OFFSET).unwrap()
}

/// A lazy, masked reader on a fresh one-page ring.
fn lazy_ring() -> (Mem, RingWriter<Mem>, RingReader<Mem>) {
    let (mem, writer, mut reader) = ring();
    reader.set_lazy_publish(true);
    reader.mask_interrupts().unwrap();
    (mem, writer, reader)
}

/// While masked and unasked, reads leave the shared read index alone; flush publishes it.
#[test]
fn masked_lazy_reader_defers_until_flush() {
    let (mem, mut writer, mut reader) = lazy_ring();
    for i in 0..3 {
        let _ = writer.write_packet(&inband(i), &[7; 16]).unwrap();
    }
    for i in 0..3 {
        assert_eq!(read_one(&mut reader).unwrap().0, inband(i));
    }
    assert!(read_one(&mut reader).is_none());
    assert!(!reader.commit().unwrap());
    assert_eq!(shared_read_index(&mem), 0);
    assert_eq!(reader.unpublished_bytes(), 3 * 40);
    assert!(!reader.flush().unwrap());
    assert_eq!(shared_read_index(&mem), 3 * 40);
    assert_eq!(reader.unpublished_bytes(), 0);
}

/// Lazy publishing needs the mask: an unmasked reader may sleep after any read and is woken
/// only if the writer sees it caught up, so it publishes at every commit.
#[test]
fn unmasked_lazy_reader_publishes_every_commit() {
    let (mem, mut writer, mut reader) = ring();
    reader.set_lazy_publish(true);
    let _ = writer.write_packet(&inband(1), &[1; 16]).unwrap();
    assert_eq!(read_one(&mut reader).unwrap().0, inband(1));
    assert_eq!(shared_read_index(&mem), 40);
    // And after an unmask, too.
    reader.mask_interrupts().unwrap();
    assert!(!reader.unmask_interrupts().unwrap());
    let _ = writer.write_packet(&inband(2), &[2; 16]).unwrap();
    assert_eq!(read_one(&mut reader).unwrap().0, inband(2));
    assert_eq!(shared_read_index(&mem), 80);
}

/// Once a quarter of the data area is consumed and unpublished, the reader publishes even if
/// nobody asked (a writer that never sets pending_send_sz still sees the space).
#[test]
fn lazy_reader_publishes_at_a_quarter_of_the_ring() {
    let (mem, mut writer, mut reader) = lazy_ring();
    // 104-byte packets (16 + 80 + 8): the tenth read takes the unpublished bytes to 1040,
    // past 1024.
    for i in 0..10 {
        let _ = writer.write_packet(&inband(i), &[3; 80]).unwrap();
        assert_eq!(read_one(&mut reader).unwrap().0, inband(i));
        let expected = if i < 9 { 0 } else { 1040 };
        assert_eq!(shared_read_index(&mem), expected, "after packet {i}");
    }
}

/// A writer that asked for space gets the read index at the next commit, with a signal once
/// the space it needs is free, however little the reader has left unpublished.
#[test]
fn pending_send_size_makes_the_lazy_reader_publish() {
    let (mem, mut writer, mut reader) = lazy_ring();
    // Two small packets (504 and 104 bytes with their trailers); the reader reads the first.
    let _ = writer.write_packet(&inband(0), &[9; 480]).unwrap();
    let _ = writer.write_packet(&inband(1), &[9; 80]).unwrap();
    assert_eq!(read_one(&mut reader).unwrap().0, inband(0));
    assert_eq!(shared_read_index(&mem), 0, "504 < 1024: deferred");
    // A large packet does not fit in what the writer sees (4096 - 608): it asks and waits.
    let big = [1u8; 3600];
    let Err(WriteError::Full { needed, free }) = writer.write_packet(&inband(2), &big) else {
        panic!("the large packet should not fit");
    };
    assert_eq!(free, 4096 - 608);
    assert!(!writer.set_pending_send_size(needed).unwrap());
    // The reader reads on: its next commit sees the request, publishes, and signals (608
    // bytes unpublished, far under the quarter rule's 1024).
    let packet = reader.read_packet(&mut vec![0; 4096]).unwrap().unwrap();
    assert_eq!(packet.info.header.meta.transaction_id, 1);
    assert!(packet.signal_writer);
    assert_eq!(shared_read_index(&mem), 608);
    let _ = writer.write_packet(&inband(2), &big).unwrap();
}

/// The writer blocks after the reader's last read; the reader, polling, finds the ring empty
/// and commits: that commit publishes and signals.
#[test]
fn commit_on_an_empty_ring_serves_a_writer_that_blocked_meanwhile() {
    let (mem, mut writer, mut reader) = lazy_ring();
    let _ = writer.write_packet(&inband(0), &[9; 480]).unwrap();
    assert_eq!(read_one(&mut reader).unwrap().0, inband(0));
    assert!(read_one(&mut reader).is_none());
    assert!(!reader.commit().unwrap(), "nobody asked: deferred");
    assert_eq!(shared_read_index(&mem), 0);
    let big = [1u8; 3600];
    let Err(WriteError::Full { needed, .. }) = writer.write_packet(&inband(1), &big) else {
        panic!("the large packet should not fit");
    };
    assert!(!writer.set_pending_send_size(needed).unwrap());
    // A commit with nothing new read still looks at the request.
    assert!(reader.commit().unwrap());
    assert_eq!(shared_read_index(&mem), 504);
    let _ = writer.write_packet(&inband(1), &big).unwrap();
}

/// Unmasking publishes first; if that frees what a blocked writer waits for, unmask says
/// "read again" and the next commit says to signal.
#[test]
fn unmask_publishes_and_hands_the_signal_to_the_next_commit() {
    let (mem, mut writer, mut reader) = lazy_ring();
    let _ = writer.write_packet(&inband(0), &[9; 480]).unwrap();
    assert_eq!(read_one(&mut reader).unwrap().0, inband(0));
    let Err(WriteError::Full { needed, .. }) = writer.write_packet(&inband(1), &[1; 3600]) else {
        panic!("the large packet should not fit");
    };
    assert!(!writer.set_pending_send_size(needed).unwrap());
    assert!(
        reader.unmask_interrupts().unwrap(),
        "a signal is owed: read again"
    );
    assert_eq!(shared_read_index(&mem), 504);
    assert!(reader.commit().unwrap(), "the owed signal");
    assert!(!reader.commit().unwrap(), "owed once");
}

/// Packet `i`'s payload length: mostly small, so the unpublished bytes of a lazy reader
/// often sit under its quarter limit, and every seventh packet so large (3400 to 3600 bytes
/// of a 4096-byte ring) that the writer blocks on space only a publish can give it.
fn len_of(i: u64) -> usize {
    let h = i.wrapping_mul(2654435761);
    if i % 7 == 6 {
        3400 + (h % 200) as usize
    } else {
        (h % 300) as usize
    }
}

/// The lazy reader polls and, every `sleep_every` empty polls, flushes, unmasks and sleeps
/// (0: never sleeps). The writer sleeps whenever the ring is full. Neither polls the other's
/// doorbell: a lost wake-up hangs one side and fails the test by timeout.
fn stress(count: u64, sleep_every: u64) {
    let (_, writer, mut reader) = lazy_ring();
    let reader_bell = Doorbell::new();
    let writer_bell = Doorbell::new();
    let producer = blocking_writer(writer, count, len_of, &reader_bell, &writer_bell);
    let mut buf = vec![0; reader.max_packet_len()];
    let (mut i, mut empty_polls, mut sleeps) = (0u64, 0u64, 0u64);
    while i < count {
        match reader.read_packet(&mut buf).unwrap() {
            Some(packet) => {
                assert_eq!(packet.info.header.meta.transaction_id, i);
                let len = len_of(i);
                assert_eq!(&packet.info.payload(&buf)[..len], &payload(i, len)[..]);
                if packet.signal_writer {
                    writer_bell.ring();
                }
                i += 1;
            }
            // The writer gave up (its wait timed out): its panic says why.
            None if producer.is_finished() => break,
            None => {
                // The lazy reader's rule: a commit each time the ring is found empty.
                if reader.commit().unwrap() {
                    writer_bell.ring();
                }
                empty_polls += 1;
                if sleep_every != 0 && empty_polls % sleep_every == 0 {
                    // Every other time, leave the publishing to unmask_interrupts (whose
                    // owed signal the next commit reports).
                    if sleeps % 2 == 0 && reader.flush().unwrap() {
                        writer_bell.ring();
                    }
                    if !reader.unmask_interrupts().unwrap() {
                        sleeps += 1;
                        reader_bell.wait("the reader");
                    }
                    reader.mask_interrupts().unwrap();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
    let waits = producer.join().unwrap();
    assert!(reader.read_packet(&mut buf).unwrap().is_none());
    assert!(
        waits > 0,
        "the writer never blocked: the test proves nothing"
    );
    if sleep_every != 0 {
        assert!(
            sleeps > 0,
            "the reader never slept: the test proves nothing"
        );
    }
}

/// A reader that only polls: a blocked writer is woken by the commit on an empty ring (or on
/// the next packet), never by an unmask.
#[test]
fn polling_lazy_reader_never_strands_a_blocked_writer() {
    stress(if cfg!(miri) { 30 } else { 100_000 }, 0);
}

/// A reader that polls and sometimes sleeps: both sides block, both always wake.
#[test]
fn sleeping_lazy_reader_and_blocked_writer_always_wake() {
    stress(if cfg!(miri) { 30 } else { 100_000 }, 1);
}

/// The same with the reader sleeping only after a few empty polls.
#[test]
fn mostly_polling_lazy_reader_and_blocked_writer_always_wake() {
    stress(if cfg!(miri) { 30 } else { 100_000 }, 7);
}
