//! The saved table of config accesses in flight (format 1, minor 1).

/// The config accesses the relay forwarded that the caller had not reported done.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedAccessTable {
    /// The next id the relay issues (at least 1; every saved id is below it).
    #[prost(uint64, tag = "1")]
    pub next_id: u64,
    /// The accesses in flight.
    #[prost(message, repeated, tag = "2")]
    pub in_flight: Vec<SavedAccess>,
}

/// One forwarded config access.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedAccess {
    /// The relay's id for it (the caller holds the same id).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// A write (else a read).
    #[prost(bool, tag = "2")]
    pub write: bool,
    /// The function selected in the window (raw slot).
    #[prost(uint32, tag = "3")]
    pub slot: u32,
    /// Byte offset in config space (below 4096).
    #[prost(uint32, tag = "4")]
    pub offset: u32,
    /// Width in bytes: 1, 2 or 4.
    #[prost(uint32, tag = "5")]
    pub len: u32,
    /// A write's value.
    #[prost(uint32, tag = "6")]
    pub value: u32,
    /// When it was forwarded, in nanoseconds.
    #[prost(uint64, tag = "7")]
    pub since_ns: u64,
    /// When the relay first saw its function departed, in nanoseconds (absent while the
    /// function is still the host's; a state saved before this field restores as if the
    /// departure were seen at the restore).
    #[prost(uint64, optional, tag = "8")]
    pub departed_ns: Option<u64>,
}
