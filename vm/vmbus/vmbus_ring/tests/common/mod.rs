//! Helpers shared by the integration tests.

#![allow(dead_code, unreachable_pub)]

use shared_mem::HeapMem;
use shared_mem::SharedMem;
use std::sync::Arc;
use vmbus_ring::CONTROL_PAGE_SIZE;
use vmbus_ring::PacketMeta;
use vmbus_ring::READ_INDEX_OFFSET;
use vmbus_ring::Ring;
use vmbus_ring::RingReader;
use vmbus_ring::RingWriter;
use vmbus_ring::WRITE_INDEX_OFFSET;
use vmbus_ring::packet_type;

/// Shared memory for one ring.
pub type Mem = Arc<HeapMem>;

/// A fresh, initialized ring with `data_size` bytes of data area, both indices at `start`.
pub fn ring_at(data_size: usize, start: u32) -> (Mem, RingWriter<Mem>, RingReader<Mem>) {
    let mem = Arc::new(HeapMem::new(CONTROL_PAGE_SIZE + data_size));
    Ring::new(mem.clone()).unwrap().initialize().unwrap();
    mem.store_u32(WRITE_INDEX_OFFSET, start).unwrap();
    mem.store_u32(READ_INDEX_OFFSET, start).unwrap();
    let writer = RingWriter::new(mem.clone()).unwrap();
    let reader = RingReader::new(mem.clone()).unwrap();
    (mem, writer, reader)
}

/// A fresh ring of one data page.
pub fn ring() -> (Mem, RingWriter<Mem>, RingReader<Mem>) {
    ring_at(4096, 0)
}

/// In-band metadata with the given transaction id.
pub fn inband(transaction_id: u64) -> PacketMeta {
    PacketMeta {
        packet_type: packet_type::DATA_INBAND,
        flags: 0,
        transaction_id,
    }
}

/// A payload whose bytes depend on `seed` and position.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

/// Reads one packet and returns (meta, payload without padding of `len` bytes).
pub fn read_one(reader: &mut RingReader<Mem>) -> Option<(PacketMeta, Vec<u8>)> {
    let mut buf = vec![0; reader.max_packet_len()];
    let packet = reader.read_packet(&mut buf).unwrap()?;
    let payload = packet.info.payload(&buf).to_vec();
    Some((packet.info.header.meta, payload))
}

/// Reads the data area's raw bytes.
pub fn data(mem: &Mem, offset: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_at(CONTROL_PAGE_SIZE + offset, &mut v).unwrap();
    v
}
