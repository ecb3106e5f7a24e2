//! The ring reader over a hostile image, structured with `arbitrary`: a valid ring written by
//! `RingWriter` (packets of chosen sizes, indices starting anywhere, so packets wrap), then
//! targeted corruptions of what the peer controls (the write and read indices, a packet's
//! descriptor: type, offset and length fields, the trailer, pending-send size, raw bytes).
//! The reader returns packets or a typed error, never panics, never returns a packet larger
//! than its buffer, and never returns more packets than the ring can hold.
//!
//! (This harness needs `vmbus_ring`, which `vpci_relay`'s tests cannot reach; `cargo xflowey
//! fuzz` replays `fuzz/regressions/ring_reader/` with `cargo fuzz run` instead.)

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shared_mem::{HeapMem, SharedMem};
use std::sync::Arc;
use vmbus_ring::{
    CONTROL_PAGE_SIZE, DESCRIPTOR_SIZE, PENDING_SEND_SIZE_OFFSET, PacketMeta, READ_INDEX_OFFSET,
    Ring, RingReader, RingWriter, WRITE_INDEX_OFFSET, packet_type,
};

const DATA: usize = 4096;

#[derive(Arbitrary, Debug)]
enum Corruption {
    WriteIndex(u32),
    ReadIndex(u32),
    /// The write index moved by a few bytes (misaligned, or past a packet's end).
    WriteIndexNudge(i8),
    /// A field of the first packet's descriptor: 0 type, 2 offset8, 4 len8, 6 flags.
    Descriptor {
        field: u8,
        value: u16,
    },
    /// A descriptor field of the packet at this data offset (may be mid-packet).
    DescriptorAt {
        at: u16,
        field: u8,
        value: u16,
    },
    PendingSendSize(u32),
    Byte {
        at: u16,
        value: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Image {
    /// Where both indices start (aligned down to 8), so packets wrap around the end.
    start: u16,
    packets: Vec<(u8, u16, bool)>,
    corruptions: Vec<Corruption>,
}

fuzz_target!(|img: Image| {
    let mem = Arc::new(HeapMem::new(CONTROL_PAGE_SIZE + DATA));
    let Ok(ring) = Ring::new(mem.clone()) else {
        return;
    };
    let _ = ring.initialize();
    let start = u32::from(img.start) % DATA as u32 & !7;
    let _ = mem.store_u32(WRITE_INDEX_OFFSET, start);
    let _ = mem.store_u32(READ_INDEX_OFFSET, start);
    let Ok(mut writer) = RingWriter::new(mem.clone()) else {
        return;
    };
    for (i, &(fill, len, request)) in img.packets.iter().take(64).enumerate() {
        let meta = PacketMeta {
            packet_type: if request {
                packet_type::DATA_INBAND
            } else {
                packet_type::COMP
            },
            flags: u16::from(request),
            transaction_id: i as u64,
        };
        let payload = vec![fill; usize::from(len) % 600];
        let _ = writer.write_packet(&meta, &payload);
    }
    let data_at = |off: u32| CONTROL_PAGE_SIZE + (off as usize % DATA);
    for c in img.corruptions.iter().take(8) {
        let _ = match *c {
            Corruption::WriteIndex(v) => mem.store_u32(WRITE_INDEX_OFFSET, v),
            Corruption::ReadIndex(v) => mem.store_u32(READ_INDEX_OFFSET, v),
            Corruption::WriteIndexNudge(d) => {
                let w = mem.load_u32(WRITE_INDEX_OFFSET).unwrap_or(0);
                mem.store_u32(WRITE_INDEX_OFFSET, w.wrapping_add_signed(i32::from(d)))
            }
            Corruption::Descriptor { field, value } => {
                let at = start + u32::from(field % 8 & !1);
                mem.write_at(data_at(at), &value.to_le_bytes())
            }
            Corruption::DescriptorAt { at, field, value } => {
                let at = u32::from(at) + u32::from(field % DESCRIPTOR_SIZE as u8 & !1);
                mem.write_at(data_at(at), &value.to_le_bytes())
            }
            Corruption::PendingSendSize(v) => mem.store_u32(PENDING_SEND_SIZE_OFFSET, v),
            Corruption::Byte { at, value } => mem.write_at(data_at(u32::from(at)), &[value]),
        };
    }
    let Ok(mut reader) = RingReader::new(mem.clone()) else {
        return;
    };
    let mut buf = vec![0u8; reader.max_packet_len()];
    // A data area of DATA bytes holds at most DATA / 24 packets; more reads is a loop.
    for _ in 0..DATA / 24 + 1 {
        match reader.read_packet(&mut buf) {
            Ok(Some(p)) => assert!(p.info.len() <= buf.len()),
            Ok(None) | Err(_) => return,
        }
    }
    panic!("the reader returned more packets than the ring can hold");
});
