//! Conversions between the guest protocol's packets and [`vmbus_channel::Packet`], so that a
//! controller can carry the real driver's traffic over any [`vmbus_channel::Channel`] (to
//! host_sim, or through the relay).

use vmbus_channel::{Packet, PacketFlags, PacketKind};

use crate::guest::Action;
use crate::protocol::GuestPacket;

impl GuestPacket {
    /// The packet as a VMBus channel carries it.
    pub fn to_packet(&self) -> Packet {
        Packet {
            kind: PacketKind::from_raw(self.packet_type),
            flags: PacketFlags(self.flags),
            transaction_id: self.trans_id,
            payload: self.payload.clone(),
        }
    }
}

impl Action {
    /// Delivers a packet received from a VMBus channel to the guest's channel for `bus`.
    pub fn deliver(bus: u32, packet: &Packet) -> Self {
        Action::Packet {
            bus,
            packet_type: packet.kind.to_raw(),
            flags: packet.flags.0,
            trans_id: packet.transaction_id,
            payload: packet.payload.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest request keeps its type, flags, id and bytes on the channel, and a completion
    /// from the channel becomes a delivery of the same fields.
    #[test]
    fn packets_round_trip() {
        let sent = GuestPacket {
            bus: 3,
            packet_type: 6,
            flags: 1,
            trans_id: 0x7fff_0000_1234,
            payload: vec![0x13, 0, 0x49, 0x42, 3, 0, 1, 0],
        };
        let packet = sent.to_packet();
        assert_eq!(packet.kind, PacketKind::InBand);
        assert!(packet.completion_requested());
        assert_eq!(packet.transaction_id, sent.trans_id);
        let reply = Packet::completion(sent.trans_id, vec![0; 4]);
        assert_eq!(
            Action::deliver(3, &reply),
            Action::Packet {
                bus: 3,
                packet_type: 11,
                flags: 0,
                trans_id: sent.trans_id,
                payload: vec![0; 4],
            }
        );
    }
}
