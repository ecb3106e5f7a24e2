//! Wrap-around, boundary and signalling cases of the ring, one behaviour per test.

mod common;

use common::*;
use shared_mem::HeapMem;
use shared_mem::SharedMem;
use std::sync::Arc;
use vmbus_ring::*;

/// Writes a packet with a `payload_len` payload at `start` and checks what lands where.
fn write_read_at(start: u32, payload_len: usize) -> (Mem, u32) {
    let (mem, mut writer, mut reader) = ring_at(4096, start);
    let body = payload(start as u64, payload_len);
    let out = writer.write_packet(&inband(42), &body).unwrap();
    assert!(
        out.signal_reader,
        "the first packet into an empty ring signals"
    );
    let framed = framed_len(payload_len).unwrap();
    let end = ((start as usize + framed + TRAILER_SIZE) % 4096) as u32;
    assert_eq!(mem.load_u32(WRITE_INDEX_OFFSET).unwrap(), end);
    // The trailer holds the start offset in its upper half.
    let trailer_at = (start as usize + framed) % 4096;
    let trailer = u64::from_le_bytes(data(&mem, trailer_at, 8).try_into().unwrap());
    assert_eq!(trailer, u64::from(start) << 32);
    let (meta, got) = read_one(&mut reader).unwrap();
    assert_eq!(meta, inband(42));
    assert_eq!(&got[..payload_len], &body[..]);
    assert_eq!(mem.load_u32(READ_INDEX_OFFSET).unwrap(), end);
    assert!(read_one(&mut reader).is_none());
    (mem, end)
}

/// A packet whose trailer ends exactly at the end of the data area leaves both indices at 0.
#[test]
fn packet_ending_exactly_at_end() {
    let (_, end) = write_read_at(4096 - 48, 24);
    assert_eq!(end, 0);
}

/// A packet whose body fits but whose trailer wraps to the start.
#[test]
fn trailer_wraps() {
    let (mem, end) = write_read_at(4096 - 40, 24);
    assert_eq!(end, 8);
    assert_eq!(data(&mem, 0, 8), ((4096u64 - 40) << 32).to_le_bytes());
}

/// A payload that wraps around the end of the data area.
#[test]
fn payload_wraps() {
    let (_, end) = write_read_at(4096 - 16, 100);
    assert_eq!(end as usize, (16 + 104 + 8) - 16);
}

/// A descriptor split across the end of the data area.
#[test]
fn descriptor_wraps() {
    let (_, end) = write_read_at(4096 - 8, 3);
    assert_eq!(end, 24);
}

/// An empty payload is a 16-byte packet.
#[test]
fn empty_payload() {
    let (_, end) = write_read_at(0, 0);
    assert_eq!(end, 24);
}

/// The writer needs strictly more free bytes than it writes: filling the ring exactly is
/// refused, one step less is accepted, and the ring can then take nothing more.
#[test]
fn exactly_full_is_refused() {
    let (_, mut writer, mut reader) = ring();
    // A packet needing the whole data area can never fit.
    let whole = 4096 - DESCRIPTOR_SIZE - TRAILER_SIZE;
    assert_eq!(
        writer.write_packet(&inband(1), &vec![0; whole]),
        Err(WriteError::TooLarge {
            needed: 4096,
            data_size: 4096
        })
    );
    // First packet: 1000 bytes of payload -> 1016 framed -> 1024 needed.
    let _ = writer.write_packet(&inband(1), &[1; 1000]).unwrap();
    assert_eq!(writer.free_bytes().unwrap(), 4096 - 1024);
    // Exactly the free space: refused.
    let exact = 4096 - 1024 - DESCRIPTOR_SIZE - TRAILER_SIZE;
    assert_eq!(
        writer.write_packet(&inband(2), &vec![2; exact]),
        Err(WriteError::Full {
            needed: 3072,
            free: 3072
        })
    );
    // Eight bytes less: accepted, leaving eight free bytes.
    let _ = writer
        .write_packet(&inband(2), &vec![2; exact - 8])
        .unwrap();
    assert_eq!(writer.free_bytes().unwrap(), 8);
    assert!(matches!(
        writer.write_packet(&inband(3), &[]),
        Err(WriteError::Full {
            needed: 24,
            free: 8
        })
    ));
    // Reading the first packet makes room again.
    assert_eq!(read_one(&mut reader).unwrap().1, vec![1; 1000]);
    let _ = writer.write_packet(&inband(3), &[3; 100]).unwrap();
    assert_eq!(read_one(&mut reader).unwrap().1, vec![2; exact - 8]);
    assert_eq!(&read_one(&mut reader).unwrap().1[..100], &[3; 100]);
    assert!(read_one(&mut reader).is_none());
}

/// `max_packet_len` is the largest packet an empty ring accepts, and a reader buffer of that
/// size takes it.
#[test]
fn max_packet_fits() {
    let (_, mut writer, mut reader) = ring();
    let max = writer.max_packet_len();
    assert_eq!(max, 4096 - 16);
    let _ = writer
        .write_packet(&inband(9), &vec![9; max - DESCRIPTOR_SIZE])
        .unwrap();
    let (_, got) = read_one(&mut reader).unwrap();
    assert_eq!(got, vec![9; max - DESCRIPTOR_SIZE]);
}

/// Only the write into an empty ring signals; a masked reader is never signalled, and
/// unmasking reports data that arrived while masked.
#[test]
fn write_signals_only_on_empty_to_non_empty() {
    let (_, mut writer, mut reader) = ring();
    assert!(writer.write_packet(&inband(1), &[1]).unwrap().signal_reader);
    assert!(!writer.write_packet(&inband(2), &[2]).unwrap().signal_reader);
    read_one(&mut reader).unwrap();
    // Not empty yet: still no signal.
    assert!(!writer.write_packet(&inband(3), &[3]).unwrap().signal_reader);
    read_one(&mut reader).unwrap();
    read_one(&mut reader).unwrap();
    assert!(writer.write_packet(&inband(4), &[4]).unwrap().signal_reader);
    read_one(&mut reader).unwrap();
    reader.mask_interrupts().unwrap();
    assert!(!writer.write_packet(&inband(5), &[5]).unwrap().signal_reader);
    assert!(
        reader.unmask_interrupts().unwrap(),
        "data arrived while masked"
    );
    read_one(&mut reader).unwrap();
    assert!(!reader.unmask_interrupts().unwrap());
    assert!(writer.write_packet(&inband(6), &[6]).unwrap().signal_reader);
}

/// A blocked writer that set pending_send_sz is signalled once, by the commit that frees
/// enough space, and not by later commits.
#[test]
fn pending_send_size_signals_once() {
    let (mem, mut writer, mut reader) = ring();
    // Four packets of 1016 framed bytes (1024 with trailer): 4096 - 4 * 1024 = 0 is not
    // allowed, so the fourth is refused.
    for i in 0..3 {
        let _ = writer.write_packet(&inband(i), &[i as u8; 1000]).unwrap();
    }
    let Err(WriteError::Full { needed, free }) = writer.write_packet(&inband(3), &[3; 1000]) else {
        panic!("expected full");
    };
    assert_eq!((needed, free), (1024, 1024));
    assert!(!writer.set_pending_send_size(needed).unwrap());
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE_OFFSET).unwrap(), 1024);
    // Reading one packet: free goes 1024 -> 2048 > 1024: signal.
    let mut buf = vec![0; 4096];
    assert!(reader.read_packet(&mut buf).unwrap().unwrap().signal_writer);
    // Another read: free was already enough, no second signal.
    assert!(!reader.read_packet(&mut buf).unwrap().unwrap().signal_writer);
    // The write succeeds and clears the request.
    let _ = writer.write_packet(&inband(3), &[3; 1000]).unwrap();
    assert_eq!(mem.load_u32(PENDING_SEND_SIZE_OFFSET).unwrap(), 0);
    assert!(!reader.read_packet(&mut buf).unwrap().unwrap().signal_writer);
}

/// Without the feature bit the reader never signals a writer.
#[test]
fn pending_send_size_needs_feature_bit() {
    let (mem, mut writer, mut reader) = ring();
    mem.store_u32(FEATURE_BITS_OFFSET, 0).unwrap();
    for i in 0..3 {
        let _ = writer.write_packet(&inband(i), &[0; 1000]).unwrap();
    }
    writer.set_pending_send_size(1024).unwrap();
    assert!(
        !reader
            .read_packet(&mut [0; 4096])
            .unwrap()
            .unwrap()
            .signal_writer
    );
}

/// Several packets can be consumed and committed at once; commit reports a signal once.
#[test]
fn peek_consume_commit() {
    let (mem, mut writer, mut reader) = ring();
    let _ = writer.write_packet(&inband(1), &[1; 8]).unwrap();
    let _ = writer.write_packet(&inband(2), &[2; 8]).unwrap();
    let mut buf = [0; 64];
    let a = reader.peek(&mut buf).unwrap().unwrap();
    // Peeking again without consuming returns the same packet.
    assert_eq!(reader.peek(&mut buf).unwrap().unwrap(), a);
    assert_eq!(a.header.meta.transaction_id, 1);
    reader.consume();
    let b = reader.peek(&mut buf).unwrap().unwrap();
    assert_eq!(b.header.meta.transaction_id, 2);
    assert_eq!(b.offset, 32);
    reader.consume();
    // Nothing published until commit.
    assert_eq!(mem.load_u32(READ_INDEX_OFFSET).unwrap(), 0);
    assert!(!reader.commit().unwrap());
    assert_eq!(mem.load_u32(READ_INDEX_OFFSET).unwrap(), 64);
    assert!(reader.peek(&mut buf).unwrap().is_none());
    assert!(!reader.has_data().unwrap());
}

/// A framed packet (for example forwarded from another ring) is written as is.
#[test]
fn write_framed_roundtrip() {
    let (_, mut writer, mut reader) = ring();
    let mut framed = vec![];
    let meta = PacketMeta {
        packet_type: packet_type::COMP,
        flags: FLAG_COMPLETION_REQUESTED,
        transaction_id: 77,
    };
    frame_packet(&meta, &[5; 13], &mut framed).unwrap();
    let _ = writer.write_framed(&framed).unwrap();
    let mut buf = [0; 64];
    let info = reader.read_packet(&mut buf).unwrap().unwrap().info;
    assert_eq!(&buf[..info.len()], &framed[..]);
    assert!(info.header.completion_requested());
    // Framed bytes must be exactly one packet.
    framed.push(0);
    assert_eq!(
        writer.write_framed(&framed),
        Err(WriteError::Packet(PacketError::LengthMismatch {
            len8: 4,
            len: 33
        }))
    );
    assert!(matches!(
        writer.write_framed(&framed[..20]),
        Err(WriteError::Packet(PacketError::Truncated { .. }))
    ));
}

/// Region sizes that are not a control page plus whole data pages are refused.
#[test]
fn region_size_is_checked() {
    for len in [0, 4096, 4096 + 8, 8192 + 4095] {
        assert_eq!(
            Ring::new(Arc::new(HeapMem::new(len))).err(),
            Some(RingError::RegionSize { len })
        );
    }
    let ring = Ring::new(Arc::new(HeapMem::new(4096 * 3))).unwrap();
    assert_eq!(ring.data_size(), 8192);
}

/// Opening a reader and writer mid-stream picks up the indices already in the ring.
#[test]
fn reopen_mid_stream() {
    let (mem, mut writer, _) = ring();
    let _ = writer.write_packet(&inband(1), &[1; 3]).unwrap();
    let _ = writer.write_packet(&inband(2), &[2; 3]).unwrap();
    let mut reader = RingReader::new(mem.clone()).unwrap();
    assert_eq!(read_one(&mut reader).unwrap().0, inband(1));
    let mut reader = RingReader::new(mem.clone()).unwrap();
    assert_eq!(read_one(&mut reader).unwrap().0, inband(2));
    let mut writer = RingWriter::new(mem.clone()).unwrap();
    let _ = writer.write_packet(&inband(3), &[3; 3]).unwrap();
    assert_eq!(read_one(&mut reader).unwrap().0, inband(3));
}

/// The snapshot shows the raw control-page fields.
#[test]
fn snapshot_reads_fields() {
    let (_, mut writer, reader) = ring();
    let _ = writer.write_packet(&inband(1), &[]).unwrap();
    reader.mask_interrupts().unwrap();
    let snap = reader.ring().snapshot().unwrap();
    assert_eq!(
        snap,
        ControlSnapshot {
            write_index: 24,
            read_index: 0,
            interrupt_mask: 1,
            pending_send_sz: 0,
            feature_bits: FEATURE_PENDING_SEND_SIZE,
        }
    );
}
