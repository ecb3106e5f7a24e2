//! The saved change queue.

/// The saved change queue: the change outstanding at the guest, held ejects, host relations
/// not yet reflected, and the alarm.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedChangeQueue {
    /// The change the guest is working on.
    #[prost(message, optional, tag = "1")]
    pub outstanding: Option<SavedChange>,
    /// Held ejects, in the order they began (raw slots).
    #[prost(uint32, repeated, tag = "2")]
    pub ejects: Vec<u32>,
    /// The host's latest relations not yet reflected.
    #[prost(message, optional, tag = "3")]
    pub host_relations: Option<SavedHostRelations>,
    /// The guest's view must be refreshed.
    #[prost(bool, tag = "4")]
    pub relations_dirty: bool,
    /// The current relations hold has been reported.
    #[prost(bool, tag = "5")]
    pub relations_held_reported: bool,
    /// The change the guest did not finish in time (the alarm).
    #[prost(message, optional, tag = "6")]
    pub overdue: Option<SavedChange>,
}

/// A saved change.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedChange {
    /// 1 relations, 2 eject.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    /// When it was delivered, in nanoseconds.
    #[prost(uint64, tag = "2")]
    pub since_ns: u64,
    /// An eject: its slot (raw).
    #[prost(uint32, tag = "3")]
    pub slot: u32,
    /// Relations: the slots it announced (raw).
    #[prost(uint32, repeated, tag = "4")]
    pub added: Vec<u32>,
    /// Relations: it answered the guest's survey before the probe path was done.
    #[prost(bool, tag = "5")]
    pub initial: bool,
}

/// Saved host relations.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedHostRelations {
    /// BUS_RELATIONS2 (else BUS_RELATIONS).
    #[prost(bool, tag = "1")]
    pub v2: bool,
    /// The host's payload.
    #[prost(bytes = "vec", tag = "2")]
    pub raw: Vec<u8>,
    /// `raw` lists exactly `functions`.
    #[prost(bool, tag = "3")]
    pub exact: bool,
    /// The functions it lists, each as the wire's 28 bytes.
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub functions: Vec<Vec<u8>>,
}
