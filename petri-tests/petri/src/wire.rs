//! The packets that crossed each guest channel, kept the way the channel's ring would keep
//! them: per bus and direction, only as many of the newest packets as fit one ring, so that a
//! run of any length holds a bounded amount (a long haul or a soak records as little as a
//! short replay). `petri replay --dump-rings` rebuilds ring images from them.

use std::collections::{BTreeMap, VecDeque};
use vmbus_channel::Packet;

/// The data area of a vPCI channel's ring as Linux sets it up (four pages).
pub const RING_DATA_BYTES: usize = 16 * 1024;

/// The bytes of packets (each framed: descriptor, payload padded to 8, trailer) one ring of
/// [`RING_DATA_BYTES`] holds: a ring whose write index caught up with its read index reads
/// as empty, so one 8-byte unit always stays free.
pub const RING_CAPACITY: usize = RING_DATA_BYTES - 8;

/// One direction of one bus: the newest packets, as a ring would hold them.
#[derive(Clone, Debug, Default)]
struct Recent {
    /// Oldest first.
    packets: VecDeque<Packet>,
    /// Their framed bytes (at most [`RING_CAPACITY`]).
    bytes: usize,
    /// Packets that fell out to make room, as a ring writer overwrites read space.
    overwritten: u64,
}

/// The bytes a packet takes in a ring (its framed length and trailer), or `None` for a
/// payload no ring packet can carry.
fn ring_bytes(packet: &Packet) -> Option<usize> {
    vmbus_ring::framed_len(packet.payload.len()).and_then(|l| l.checked_add(8))
}

impl Recent {
    fn push(&mut self, packet: Packet) {
        let Some(len) = ring_bytes(&packet).filter(|&l| l <= RING_CAPACITY) else {
            // Larger than a whole ring: a ring could not have held it either.
            self.overwritten += 1;
            return;
        };
        self.bytes += len;
        self.packets.push_back(packet);
        while self.bytes > RING_CAPACITY {
            let Some(old) = self.packets.pop_front() else {
                self.bytes = 0;
                break;
            };
            self.bytes = self.bytes.saturating_sub(ring_bytes(&old).unwrap_or(0));
            self.overwritten += 1;
        }
    }
}

/// The packets that crossed the guest's channels of a run, per bus and direction, each
/// bounded by [`RING_CAPACITY`].
#[derive(Clone, Debug, Default)]
pub struct WireLog {
    /// Keyed by (bus, to the guest).
    channels: BTreeMap<(usize, bool), Recent>,
}

impl WireLog {
    /// A packet crossed bus `bus`'s channel: delivered to the guest (`to_guest`), else sent
    /// by it. The oldest packets of that direction fall out once a ring's worth is kept.
    pub fn push(&mut self, bus: usize, to_guest: bool, packet: Packet) {
        self.channels
            .entry((bus, to_guest))
            .or_default()
            .push(packet);
    }

    /// The packets kept for one direction of bus `bus`, oldest first.
    pub fn packets(&self, bus: usize, to_guest: bool) -> impl Iterator<Item = &Packet> {
        self.channels
            .get(&(bus, to_guest))
            .into_iter()
            .flat_map(|r| r.packets.iter())
    }

    /// How many packets of one direction of bus `bus` fell out to keep the newest.
    pub fn overwritten(&self, bus: usize, to_guest: bool) -> u64 {
        self.channels
            .get(&(bus, to_guest))
            .map_or(0, |r| r.overwritten)
    }

    /// The ring bytes one direction of bus `bus` holds now (at most [`RING_CAPACITY`]).
    pub fn bytes(&self, bus: usize, to_guest: bool) -> usize {
        self.channels.get(&(bus, to_guest)).map_or(0, |r| r.bytes)
    }

    /// Whether no packet crossed any channel.
    pub fn is_empty(&self) -> bool {
        self.channels
            .values()
            .all(|r| r.packets.is_empty() && r.overwritten == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmbus_channel::{PacketFlags, PacketKind};

    fn packet(id: u64, payload_len: usize) -> Packet {
        Packet {
            kind: PacketKind::InBand,
            flags: PacketFlags::NONE,
            transaction_id: id,
            payload: vec![0; payload_len],
        }
    }

    fn ids(log: &WireLog, bus: usize, to_guest: bool) -> Vec<u64> {
        log.packets(bus, to_guest)
            .map(|p| p.transaction_id)
            .collect()
    }

    /// Up to a ring's worth everything is kept, in order; past it the oldest fall out one by
    /// one and the bytes never exceed the capacity. Directions and buses are apart.
    #[test]
    fn keeps_the_newest_ring_worth() {
        let mut log = WireLog::default();
        assert!(log.is_empty());
        // 16 + 40 = 56 framed, + 8 trailer: 64 bytes each; 255 fit in 16376.
        for id in 0..255 {
            log.push(0, true, packet(id, 40));
        }
        assert_eq!(log.bytes(0, true), 255 * 64);
        assert_eq!(log.overwritten(0, true), 0);
        assert_eq!(ids(&log, 0, true), (0..255).collect::<Vec<_>>());
        log.push(0, true, packet(255, 40));
        assert_eq!(log.overwritten(0, true), 1);
        assert_eq!(ids(&log, 0, true).first(), Some(&1));
        for id in 256..10_000 {
            log.push(0, true, packet(id, 40));
            assert!(log.bytes(0, true) <= RING_CAPACITY);
        }
        assert_eq!(
            ids(&log, 0, true),
            (10_000 - 255..10_000).collect::<Vec<_>>()
        );
        assert_eq!(log.overwritten(0, true), 10_000 - 255);
        assert!(ids(&log, 0, false).is_empty());
        assert!(ids(&log, 1, true).is_empty());
        log.push(1, false, packet(7, 8));
        assert_eq!(ids(&log, 1, false), vec![7]);
        assert_eq!(ids(&log, 0, true).len(), 255);
    }

    /// A packet larger than a ring is not kept (and keeps nothing else out).
    #[test]
    fn oversized_packet_is_dropped() {
        let mut log = WireLog::default();
        log.push(0, false, packet(1, 8));
        log.push(0, false, packet(2, RING_CAPACITY));
        assert_eq!(ids(&log, 0, false), vec![1]);
        assert_eq!(log.overwritten(0, false), 1);
        assert!(!log.is_empty());
    }
}
