//! The saved function table.

/// The saved function table.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedFunctionTable {
    /// One entry per slot.
    #[prost(message, repeated, tag = "1")]
    pub functions: Vec<SavedFunction>,
    /// The slots the host ever listed, as a 256-bit set (four words, slot 0 in bit 0 of the
    /// first).
    #[prost(fixed64, repeated, tag = "2")]
    pub ever_listed: Vec<u64>,
}

/// One saved function: its host state by its guest state, its probe's progress and the
/// relay's copy of its config space.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedFunction {
    /// The slot (raw).
    #[prost(uint32, tag = "1")]
    pub slot: u32,
    /// The description, as the wire's 28 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub desc: Vec<u8>,
    /// The allow-list lets the guest see it.
    #[prost(bool, tag = "3")]
    pub allowed: bool,
    /// The host's side: 1 listed, 2 ejecting, 3 ejected, 4 gone.
    #[prost(uint32, tag = "4")]
    pub host: u32,
    /// The guest's side: 1 hidden, 2 announced, 3 ejecting.
    #[prost(uint32, tag = "5")]
    pub guest: u32,
    /// QUERY_RESOURCE_REQUIREMENTS progress (0 not started, 1 pending, 2 done).
    #[prost(uint32, tag = "6")]
    pub requirements: u32,
    /// RESOURCES_ASSIGNED progress (as `requirements`).
    #[prost(uint32, tag = "7")]
    pub resources: u32,
    /// The probe path will assign it resources.
    #[prost(bool, tag = "8")]
    pub needs_resources: bool,
    /// CREATE_INTERRUPT_MESSAGE requests outstanding.
    #[prost(uint32, tag = "9")]
    pub interrupts_pending: u32,
    /// Forwarded requests outstanding at the host.
    #[prost(uint32, tag = "10")]
    pub requests_pending: u32,
    /// Host EJECTs owed an EJECTION_COMPLETE.
    #[prost(uint32, tag = "11")]
    pub host_ejects_owed: u32,
    /// When the host's first unanswered EJECT arrived, in nanoseconds.
    #[prost(uint64, optional, tag = "12")]
    pub host_eject_since_ns: Option<u64>,
    /// The last guest traffic for it, in nanoseconds.
    #[prost(uint64, optional, tag = "13")]
    pub last_activity_ns: Option<u64>,
    /// When an eject for it became pending, in nanoseconds.
    #[prost(uint64, optional, tag = "14")]
    pub eject_since_ns: Option<u64>,
    /// The hold of its eject has been reported.
    #[prost(bool, tag = "15")]
    pub hold_reported: bool,
    /// The probed BARs (six, or none).
    #[prost(uint32, repeated, tag = "16")]
    pub probed_bars: Vec<u32>,
    /// The relay's copy of its config space.
    #[prost(message, repeated, tag = "17")]
    pub config: Vec<SavedConfigDword>,
    /// Its backing: 1 device, 2 shield, 3 released.
    #[prost(uint32, tag = "18")]
    pub backing: u32,
    /// The host's newest function in the slot, waiting for this one to leave.
    #[prost(message, optional, tag = "19")]
    pub successor: Option<SavedSuccessor>,
    /// The host's latest relations leave the slot out.
    #[prost(bool, tag = "20")]
    pub unlisted: bool,
}

/// One dword of a function's config-space copy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedConfigDword {
    /// The dword's offset (a multiple of 4).
    #[prost(uint32, tag = "1")]
    pub offset: u32,
    /// Its value.
    #[prost(uint32, tag = "2")]
    pub value: u32,
}

/// A saved successor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedSuccessor {
    /// Its description, as the wire's 28 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub desc: Vec<u8>,
    /// The host ejected it before the guest saw it.
    #[prost(bool, tag = "2")]
    pub ejected: bool,
}
