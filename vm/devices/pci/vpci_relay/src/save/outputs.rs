//! The saved outputs: what the driver has not taken yet, and the counters.

/// The saved outputs. Events not yet taken are not saved: they are reports, not state (the
/// counters they bump are), and the driver takes them after every input.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedOutputs {
    /// Packets and channel actions not yet taken, in order.
    #[prost(message, repeated, tag = "1")]
    pub tx: Vec<SavedTransmit>,
    /// Backing changes not yet taken, in order.
    #[prost(message, repeated, tag = "2")]
    pub backing: Vec<SavedBacking>,
    /// The bus's counters.
    #[prost(message, optional, tag = "3")]
    pub counters: Option<SavedCounters>,
}

/// A packet to send, or a channel action.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedTransmit {
    /// 1 to the host, 2 to the guest, 3 close the guest channel.
    #[prost(uint32, tag = "1")]
    pub to: u32,
    /// The packet (absent for a close).
    #[prost(message, optional, tag = "2")]
    pub packet: Option<SavedPacket>,
}

/// A VMBus packet.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedPacket {
    /// The VMBus packet type (6 in-band, 11 completion).
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    /// The descriptor flags (bit 0: completion requested).
    #[prost(uint32, tag = "2")]
    pub flags: u32,
    /// The transaction id.
    #[prost(uint64, tag = "3")]
    pub transaction_id: u64,
    /// The payload.
    #[prost(bytes = "vec", tag = "4")]
    pub payload: Vec<u8>,
}

/// A backing change.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedBacking {
    /// The slot (raw).
    #[prost(uint32, tag = "1")]
    pub slot: u32,
    /// 1 device, 2 shield, 3 released.
    #[prost(uint32, tag = "2")]
    pub backing: u32,
}

/// The bus's counters (see `Counters`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedCounters {
    /// `Counters::relayed_to_host`.
    #[prost(uint64, tag = "1")]
    pub relayed_to_host: u64,
    /// `Counters::relayed_to_guest`.
    #[prost(uint64, tag = "2")]
    pub relayed_to_guest: u64,
    /// `Counters::held`.
    #[prost(uint64, tag = "3")]
    pub held: u64,
    /// `Counters::released`.
    #[prost(uint64, tag = "4")]
    pub released: u64,
    /// `Counters::coalesced`.
    #[prost(uint64, tag = "5")]
    pub coalesced: u64,
    /// `Counters::superseded`.
    #[prost(uint64, tag = "6")]
    pub superseded: u64,
    /// `Counters::answered_locally`.
    #[prost(uint64, tag = "7")]
    pub answered_locally: u64,
    /// `Counters::late_completions`.
    #[prost(uint64, tag = "8")]
    pub late_completions: u64,
    /// `Counters::malformed_host`.
    #[prost(uint64, tag = "9")]
    pub malformed_host: u64,
    /// `Counters::malformed_guest`.
    #[prost(uint64, tag = "10")]
    pub malformed_guest: u64,
    /// `Counters::timed_out`.
    #[prost(uint64, tag = "11")]
    pub timed_out: u64,
    /// `Counters::ejects_answered_locally`.
    #[prost(uint64, tag = "12")]
    pub ejects_answered_locally: u64,
    /// `Counters::ejects_answered_at_deadline`.
    #[prost(uint64, tag = "13")]
    pub ejects_answered_at_deadline: u64,
    /// `Counters::stale_listings`.
    #[prost(uint64, tag = "14")]
    pub stale_listings: u64,
    /// `Counters::over_limit_relations`.
    #[prost(uint64, tag = "15")]
    pub over_limit_relations: u64,
    /// `Counters::progress_stalls`.
    #[prost(uint64, tag = "16")]
    pub progress_stalls: u64,
    /// `Counters::accesses_refused` (minor 1).
    #[prost(uint64, tag = "17")]
    pub accesses_refused: u64,
    /// `Counters::accesses_abandoned` (minor 1).
    #[prost(uint64, tag = "18")]
    pub accesses_abandoned: u64,
}
