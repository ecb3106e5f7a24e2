//! The saved request table.

/// The saved request table.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedRequestTable {
    /// Guest requests the host still owes an answer, by the relay's id.
    #[prost(message, repeated, tag = "1")]
    pub live: Vec<SavedRequest>,
    /// Requests the relay answered itself, remembered (oldest first) so that the host's late
    /// completion is recognised.
    #[prost(message, repeated, tag = "2")]
    pub answered: Vec<SavedAnsweredLocally>,
    /// Host requests forwarded to the guest.
    #[prost(message, repeated, tag = "3")]
    pub host_requests: Vec<SavedHostRequest>,
    /// The next transaction id the relay issues (at least 1).
    #[prost(uint64, tag = "4")]
    pub next_txid: u64,
}

/// A guest request forwarded to the host.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedRequest {
    /// The relay's transaction id for it.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The guest's transaction id.
    #[prost(uint64, tag = "2")]
    pub guest_txid: u64,
    /// The request's vPCI payload.
    #[prost(bytes = "vec", tag = "3")]
    pub request: Vec<u8>,
    /// The function it names (raw slot), if any.
    #[prost(uint32, optional, tag = "4")]
    pub slot: Option<u32>,
    /// When it was forwarded, in nanoseconds.
    #[prost(uint64, tag = "5")]
    pub sent_at_ns: u64,
}

/// A request the relay answered itself.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedAnsweredLocally {
    /// The relay's transaction id for it.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Its message type.
    #[prost(uint32, tag = "2")]
    pub message_type: u32,
}

/// A host request forwarded to the guest.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedHostRequest {
    /// The relay's transaction id for it (the guest's completion carries it).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The host's transaction id.
    #[prost(uint64, tag = "2")]
    pub host_txid: u64,
}
