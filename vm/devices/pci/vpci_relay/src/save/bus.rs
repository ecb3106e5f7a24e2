//! The saved state of a whole bus: the relay and its driver's queues.

use super::{SavedPacket, SavedRelay};

/// A stopped bus driver's saved state (see
/// [`StoppedBus::save`](crate::driver::StoppedBus::save)).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedBus {
    /// The relay.
    #[prost(message, optional, tag = "1")]
    pub relay: Option<SavedRelay>,
    /// Packets the relay sent the host that its channel had not taken yet, in order.
    #[prost(message, repeated, tag = "2")]
    pub to_host: Vec<SavedPacket>,
    /// Packets the relay sent the guest that its channel had not taken yet, in order.
    #[prost(message, repeated, tag = "3")]
    pub to_guest: Vec<SavedPacket>,
    /// The host channel had ended (rescind, close, or a broken transport) before the stop.
    #[prost(bool, tag = "4")]
    pub host_ended: bool,
    /// The relay asked for the guest channel to be closed once `to_guest` is sent.
    #[prost(bool, tag = "5")]
    pub close_guest: bool,
    /// Host packets that arrived while the bus was stopped, in order: the restored relay
    /// gets them first.
    #[prost(message, repeated, tag = "6")]
    pub host_queue: Vec<SavedPacket>,
    /// How the host channel ended while the bus was stopped, after `host_queue`: 0 it did
    /// not, 1 closed or revoked, 2 a broken transport.
    #[prost(uint32, tag = "7")]
    pub host_end_while_stopped: u32,
    /// The driver's own counters: host sends refused, guest sends refused, guest receives
    /// refused.
    #[prost(uint64, repeated, tag = "8")]
    pub driver_counters: Vec<u64>,
}

impl SavedBus {
    /// The state as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }

    /// A state from bytes (only the encoding is checked here).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, super::RestoreError> {
        <Self as prost::Message>::decode(bytes).map_err(super::RestoreError::Decode)
    }
}
