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

/// A doorbell like an eventfd: a ring is remembered until the waiter takes it.
pub struct Doorbell {
    rung: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Doorbell {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            rung: std::sync::Mutex::new(false),
            cv: std::sync::Condvar::new(),
        })
    }

    pub fn ring(&self) {
        *self.rung.lock().unwrap() = true;
        self.cv.notify_one();
    }

    /// Waits for a ring; a wait that times out is a lost wake-up, i.e. a signalling bug.
    pub fn wait(&self, who: &str) {
        let rung = self.rung.lock().unwrap();
        let (mut rung, timeout) = self
            .cv
            .wait_timeout_while(rung, std::time::Duration::from_secs(20), |r| !*r)
            .unwrap();
        assert!(!timeout.timed_out(), "{who} was never signalled");
        *rung = false;
    }
}

/// A writer thread that writes packets `0..count` (packet `i` of `len_of(i)` bytes), rings
/// `reader_bell` whenever the signalling rule says so, and never polls: when the ring is
/// full it sets its pending send size and sleeps on `writer_bell`. Returns how often it slept.
pub fn blocking_writer(
    mut writer: RingWriter<Mem>,
    count: u64,
    len_of: fn(u64) -> usize,
    reader_bell: &Arc<Doorbell>,
    writer_bell: &Arc<Doorbell>,
) -> std::thread::JoinHandle<u64> {
    let (reader_bell, writer_bell) = (reader_bell.clone(), writer_bell.clone());
    std::thread::spawn(move || {
        let mut waits = 0u64;
        for i in 0..count {
            let body = payload(i, len_of(i));
            loop {
                match writer.write_packet(&inband(i), &body) {
                    Ok(out) => {
                        if out.signal_reader {
                            reader_bell.ring();
                        }
                        break;
                    }
                    Err(vmbus_ring::WriteError::Full { needed, .. }) => {
                        if !writer.set_pending_send_size(needed).unwrap() {
                            waits += 1;
                            writer_bell.wait("the blocked writer");
                        }
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        waits
    })
}
