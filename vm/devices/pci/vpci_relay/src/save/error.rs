//! What can be wrong with a saved state.

/// Why a saved state was refused. Nothing of a refused state is kept: the caller closes the
/// bus cleanly (the driver revokes the guest channel, see
/// [`BusDriver::restore`](crate::BusDriver::restore)), as for a host that broke the protocol.
///
/// `field` names where the problem is, as a path into [`SavedRelay`](super::SavedRelay)
/// (`functions[01.0].host`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The bytes are not a protobuf encoding of a saved relay.
    #[error("not a saved relay state: {0}")]
    Decode(prost::DecodeError),
    /// A major format this version does not know (zero: none given).
    #[error("saved-state format {found} is not one this version reads (it reads {known})")]
    UnknownFormat {
        /// The state's format.
        found: u32,
        /// The format this version reads.
        known: u32,
    },
    /// A protocol version this relay does not know.
    #[error("unknown protocol version {0:#x}")]
    UnknownVersion(u32),
    /// A value outside its enumeration.
    #[error("{field}: {value} is not a valid value")]
    BadValue {
        /// Where.
        field: String,
        /// The value.
        value: u64,
    },
    /// A slot with reserved bits set.
    #[error("{field}: {raw:#x} is not a slot")]
    BadSlot {
        /// Where.
        field: String,
        /// The raw slot.
        raw: u32,
    },
    /// A slot named twice where each may appear once.
    #[error("{field}: slot {slot:#x} appears twice")]
    DuplicateSlot {
        /// Where.
        field: String,
        /// The raw slot.
        slot: u32,
    },
    /// A function description that is not the wire's 28 bytes.
    #[error("{field}: a function description of {len} bytes")]
    BadDescription {
        /// Where.
        field: String,
        /// Its length.
        len: usize,
    },
    /// More functions than the 256 slots the wire names.
    #[error("{count} functions; a bus has at most {limit}")]
    TooManyFunctions {
        /// Functions in the state.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A table or queue larger than the configuration allows.
    #[error("{field}: {count} entries exceed the limit of {limit}")]
    OverLimit {
        /// Where.
        field: String,
        /// Entries in the state.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A transaction id used twice, zero, or not yet issued.
    #[error("{field}: transaction id {id:#x} {why}")]
    BadTransaction {
        /// Where.
        field: String,
        /// The id.
        id: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A saved request that is not a guest request the relay forwards with a completion,
    /// or a queued packet that is not a message its receiver may get.
    #[error("{field}: not a message the relay could have forwarded")]
    BadRequest {
        /// Where.
        field: String,
    },
    /// An instant later than the saved relay's own time (or the relay's time beyond
    /// [`MAX_SAVED_TIME`](super::MAX_SAVED_TIME)).
    #[error("{field}: time {at_ns} ns is after the relay's time {now_ns} ns")]
    TimeAhead {
        /// Where.
        field: String,
        /// The instant.
        at_ns: u64,
        /// The relay's saved time.
        now_ns: u64,
    },
    /// A function whose states cannot occur together (see `function/machine.rs`).
    #[error("{field}: {why}")]
    IllegalState {
        /// Where.
        field: String,
        /// The rule broken.
        why: &'static str,
    },
    /// A change or a queued eject naming a function that is not there (or not in the state
    /// the change needs).
    #[error("{field}: names slot {slot:#x}, which holds no such function")]
    NoSuchFunction {
        /// Where.
        field: String,
        /// The raw slot.
        slot: u32,
    },
    /// A payload larger than [`MAX_SAVED_PAYLOAD`](super::MAX_SAVED_PAYLOAD).
    #[error("{field}: a payload of {len} bytes")]
    PayloadTooLarge {
        /// Where.
        field: String,
        /// Its length.
        len: usize,
    },
}
