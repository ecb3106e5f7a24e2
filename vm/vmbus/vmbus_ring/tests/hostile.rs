//! A hostile peer: whatever it writes into the control page or the data area, the ring
//! returns a typed error (or a well-formed packet) and never panics or reads out of bounds.

mod common;

use common::*;
use proptest::prelude::*;
use shared_mem::HeapMem;
use shared_mem::MemError;
use shared_mem::SharedMem;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use vmbus_ring::*;

/// A ring holding two valid packets of 24 bytes of payload (40 framed, 48 with trailer).
fn two_packets() -> (Mem, RingWriter<Mem>, RingReader<Mem>) {
    let (mem, mut writer, reader) = ring();
    let _ = writer.write_packet(&inband(1), &[1; 24]).unwrap();
    let _ = writer.write_packet(&inband(2), &[2; 24]).unwrap();
    (mem, writer, reader)
}

fn read_err(reader: &mut RingReader<Mem>) -> RingError {
    reader.read_packet(&mut [0; 4096]).unwrap_err()
}

/// A write index outside the data area or misaligned is refused by the reader.
#[test]
fn reader_rejects_bad_write_index() {
    for value in [4096, 4097, u32::MAX, 12, 4095] {
        let (mem, _, mut reader) = ring();
        mem.store_u32(WRITE_INDEX_OFFSET, value).unwrap();
        assert_eq!(
            read_err(&mut reader),
            RingError::InvalidWriteIndex {
                value,
                data_size: 4096
            }
        );
    }
}

/// A read index outside the data area or misaligned is refused by the writer, which then
/// writes nothing.
#[test]
fn writer_rejects_bad_read_index() {
    for value in [4096, 0x8000_0000, 3] {
        let (mem, mut writer, _) = ring();
        // Fill the ring enough that the writer must re-read the read index.
        let _ = writer.write_packet(&inband(0), &[0; 3000]).unwrap();
        mem.store_u32(READ_INDEX_OFFSET, value).unwrap();
        assert_eq!(
            writer.write_packet(&inband(1), &[0; 1100]),
            Err(WriteError::Ring(RingError::InvalidReadIndex {
                value,
                data_size: 4096
            }))
        );
        assert_eq!(mem.load_u32(WRITE_INDEX_OFFSET).unwrap(), 3024);
    }
}

/// A write index that publishes fewer bytes than a descriptor plus trailer.
#[test]
fn truncated_publication() {
    let (mem, _, mut reader) = ring();
    mem.store_u32(WRITE_INDEX_OFFSET, 16).unwrap();
    assert_eq!(
        read_err(&mut reader),
        RingError::TruncatedPacket {
            offset: 0,
            available: 16
        }
    );
}

/// A write index that cuts the first packet short: the packet overruns what was published.
#[test]
fn packet_overruns_write_index() {
    let (mem, _, mut reader) = two_packets();
    mem.store_u32(WRITE_INDEX_OFFSET, 40).unwrap();
    assert_eq!(
        read_err(&mut reader),
        RingError::BadPacket {
            offset: 0,
            error: PacketError::Truncated {
                len8: 5,
                available: 32
            }
        }
    );
}

/// Each corrupted descriptor field has its own error, carrying the offset of the packet.
#[test]
fn corrupted_descriptors() {
    // (byte offset in descriptor, new u16 value, expected error)
    let cases = [
        (0, 0, PacketError::UnknownType(0)),
        (0, 0x4242, PacketError::UnknownType(0x4242)),
        (2, 1, PacketError::OffsetInsideDescriptor { offset8: 1 }),
        (2, 0, PacketError::OffsetInsideDescriptor { offset8: 0 }),
        (
            2,
            6,
            PacketError::LengthBeforeOffset {
                offset8: 6,
                len8: 5,
            },
        ),
        (
            4,
            0xffff,
            PacketError::Truncated {
                len8: 0xffff,
                available: 40,
            },
        ),
    ];
    for (field, value, error) in cases {
        let (mem, _, mut reader) = two_packets();
        // Corrupt the second packet, after reading the first.
        assert!(read_one(&mut reader).is_some());
        mem.write_at(CONTROL_PAGE_SIZE + 48 + field, &u16::to_le_bytes(value))
            .unwrap();
        let err = read_err(&mut reader);
        assert_eq!(err, RingError::BadPacket { offset: 48, error });
        // The error is sticky and harmless: reading again gives the same answer.
        assert_eq!(read_err(&mut reader), err);
    }
}

/// A trailer whose upper half is not the packet's start offset (the lower half is not
/// checked: Linux writes zero there, and it carries no information).
#[test]
fn corrupted_trailer() {
    let (mem, _, mut reader) = two_packets();
    mem.write_at(CONTROL_PAGE_SIZE + 40, &7u64.to_le_bytes())
        .unwrap();
    assert_eq!(read_one(&mut reader).unwrap().0, inband(1));
    mem.write_at(CONTROL_PAGE_SIZE + 88, &(40u64 << 32).to_le_bytes())
        .unwrap();
    assert_eq!(
        read_err(&mut reader),
        RingError::BadTrailer {
            offset: 48,
            trailer: 40 << 32
        }
    );
    // A reader told not to check trailers accepts it.
    reader.set_check_trailer(false);
    assert_eq!(read_one(&mut reader).unwrap().0, inband(2));
}

/// A packet larger than the caller's buffer is refused and left in the ring.
#[test]
fn packet_larger_than_buffer_stays() {
    let (_, _, mut reader) = two_packets();
    assert_eq!(
        reader.read_packet(&mut [0; 39]).unwrap_err(),
        RingError::PacketTooLarge {
            offset: 0,
            len: 40,
            capacity: 39
        }
    );
    assert_eq!(read_one(&mut reader).unwrap().0, inband(1));
}

/// Overwriting the reader's own published index does not move the reader (it keeps its
/// position privately), and likewise for the writer.
#[test]
fn peer_cannot_move_our_index() {
    let (mem, mut writer, mut reader) = two_packets();
    mem.store_u32(READ_INDEX_OFFSET, 48).unwrap();
    assert_eq!(read_one(&mut reader).unwrap().0, inband(1));
    mem.store_u32(WRITE_INDEX_OFFSET, 0).unwrap();
    let _ = writer.write_packet(&inband(3), &[3; 8]).unwrap();
    assert_eq!(mem.load_u32(WRITE_INDEX_OFFSET).unwrap(), 96 + 32);
}

/// Memory that rewrites the packet's length field right after every read of the ring, as a
/// peer racing the reader would.
struct FlipFlop {
    inner: HeapMem,
    reads: AtomicUsize,
}

impl SharedMem for FlipFlop {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
        self.inner.read_at(offset, buf)?;
        let n = self.reads.fetch_add(1, Ordering::Relaxed);
        // len8 of the packet at 0: alternate between a huge and a tiny value.
        let len8: u16 = if n % 2 == 0 { 0xfff } else { 2 };
        self.inner
            .write_at(CONTROL_PAGE_SIZE + 4, &len8.to_le_bytes())
    }
    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
        self.inner.write_at(offset, data)
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.inner.load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.inner.store_u32(offset, value)
    }
    fn load_u64(&self, offset: usize) -> Result<u64, MemError> {
        self.inner.load_u64(offset)
    }
    fn store_u64(&self, offset: usize, value: u64) -> Result<(), MemError> {
        self.inner.store_u64(offset, value)
    }
}

/// The descriptor is fetched once: although the peer rewrites len8 after every read, the
/// header returned and the descriptor bytes in the buffer are the copy that was validated.
#[test]
fn descriptor_is_fetched_once() {
    let mem = Arc::new(FlipFlop {
        inner: HeapMem::new(CONTROL_PAGE_SIZE + 4096),
        reads: AtomicUsize::new(0),
    });
    Ring::new(mem.clone()).unwrap().initialize().unwrap();
    let mut writer = RingWriter::new(mem.clone()).unwrap();
    let _ = writer.write_packet(&inband(5), &[5; 24]).unwrap();
    mem.inner
        .write_at(CONTROL_PAGE_SIZE + 4, &5u16.to_le_bytes())
        .unwrap();
    mem.reads.store(0, Ordering::Relaxed);
    let mut reader = RingReader::new(mem.clone()).unwrap();
    let mut buf = [0u8; 4096];
    let info = reader.read_packet(&mut buf).unwrap().unwrap().info;
    assert_eq!(info.header.len8, 5);
    assert_eq!(info.len(), 40);
    let (header, payload) = split_packet(&buf[..info.len()]).unwrap();
    assert_eq!(header, info.header);
    assert_eq!(payload, &[5; 24]);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 512 },
        // Miri's isolation has no getcwd, which the failure file needs.
        failure_persistence: if cfg!(miri) {
            None
        } else {
            ProptestConfig::default().failure_persistence
        },
        ..ProptestConfig::default()
    })]

    /// Random control-page values and random data: the reader returns packets that satisfy
    /// every framing rule, or a typed error, within a bounded number of calls.
    #[test]
    fn reader_survives_random_ring(
        write_index in any::<u32>(),
        read_index in prop_oneof![any::<u32>(), (0u32..512).prop_map(|x| x * 8)],
        aligned_write in (0u32..512).prop_map(|x| x * 8),
        use_aligned in any::<bool>(),
        data in proptest::collection::vec(any::<u8>(), 4096),
        buf_len in 0usize..5000,
    ) {
        let mem = Arc::new(HeapMem::new(CONTROL_PAGE_SIZE + 4096));
        mem.write_at(CONTROL_PAGE_SIZE, &data).unwrap();
        mem.store_u32(WRITE_INDEX_OFFSET, if use_aligned { aligned_write } else { write_index }).unwrap();
        mem.store_u32(READ_INDEX_OFFSET, read_index).unwrap();
        mem.store_u32(PENDING_SEND_SIZE_OFFSET, write_index).unwrap();
        mem.store_u32(FEATURE_BITS_OFFSET, 1).unwrap();
        let Ok(mut reader) = RingReader::new(mem.clone()) else {
            return Ok(());
        };
        let mut buf = vec![0; buf_len];
        // Each successful read consumes at least 24 bytes, so this ends.
        for _ in 0..200 {
            match reader.read_packet(&mut buf) {
                Ok(None) | Err(_) => break,
                Ok(Some(packet)) => {
                    let (header, _) = split_packet(&buf[..packet.info.len()]).unwrap();
                    prop_assert_eq!(header, packet.info.header);
                    prop_assert!(packet_type::is_known(header.meta.packet_type));
                }
            }
        }
    }

    /// Random read index, mask and pending values: the writer writes within bounds or
    /// returns a typed error, and never writes past the free space it computed.
    #[test]
    fn writer_survives_random_control(
        read_index in any::<u32>(),
        mask in any::<u32>(),
        pending in any::<u32>(),
        lens in proptest::collection::vec(0usize..5000, 1..20),
    ) {
        let (mem, mut writer, _) = ring();
        mem.store_u32(READ_INDEX_OFFSET, read_index).unwrap();
        mem.store_u32(INTERRUPT_MASK_OFFSET, mask).unwrap();
        mem.store_u32(PENDING_SEND_SIZE_OFFSET, pending).unwrap();
        for len in lens {
            match writer.write_packet(&inband(0), &vec![0xab; len]) {
                Ok(_) | Err(WriteError::Full { .. } | WriteError::TooLarge { .. }) => {}
                Err(WriteError::Ring(RingError::InvalidReadIndex { value, .. })) => {
                    prop_assert_eq!(value, read_index);
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
            let w = mem.load_u32(WRITE_INDEX_OFFSET).unwrap();
            prop_assert!(w < 4096 && w % 8 == 0);
        }
    }
}
