//! Typed decode errors: each names the reason and the byte offset in the payload.

use crate::types::{MessageType, ProtocolVersion, Sender};

/// Why a vPCI payload could not be decoded. Every variant carries the byte offset (into the
/// payload after the VMBus packet descriptor) where the problem was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ends before a field does.
    #[error("truncated at offset {offset}: {what} needs {needed} bytes but {available} remain")]
    Truncated {
        /// Where the field starts.
        offset: usize,
        /// The field or structure that did not fit.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the payload.
        available: usize,
    },
    /// The first four bytes are not a message type this protocol defines.
    #[error("unknown message type {message_type:#010x} at offset 0")]
    UnknownType {
        /// The value found.
        message_type: u32,
    },
    /// A count or length field asks for more than the payload (or the protocol) allows.
    #[error("{field} {count} at offset {offset} does not fit: at most {limit} fit here")]
    CountTooLarge {
        /// Where the count field is.
        offset: usize,
        /// The field's name.
        field: &'static str,
        /// The value found.
        count: u64,
        /// The most the payload or the protocol allows.
        limit: u64,
    },
    /// The message needs a newer protocol version than the one negotiated.
    #[error(
        "{message} at offset 0 needs protocol version {required} or later, {negotiated} is in use"
    )]
    VersionTooLow {
        /// The message type.
        message: MessageType,
        /// The oldest version that has it.
        required: ProtocolVersion,
        /// The version in use.
        negotiated: ProtocolVersion,
    },
    /// The message is never sent by this side.
    #[error("{message} at offset 0 is not a message the {sender} sends")]
    WrongSender {
        /// The message type.
        message: MessageType,
        /// Who sent it.
        sender: Sender,
    },
    /// Bits the spec reserves as zero are set.
    #[error("reserved bits set in {field} at offset {offset}: {value:#x}")]
    ReservedBitsSet {
        /// Where the field starts.
        offset: usize,
        /// The field's name.
        field: &'static str,
        /// The offending bits.
        value: u64,
    },
    /// A completion was decoded for a request that never gets one.
    #[error("{request} gets no completion (offset 0)")]
    NoCompletion {
        /// The request type.
        request: MessageType,
    },
}

impl DecodeError {
    /// The byte offset in the payload where decoding failed.
    pub fn offset(&self) -> usize {
        match *self {
            DecodeError::Truncated { offset, .. }
            | DecodeError::CountTooLarge { offset, .. }
            | DecodeError::ReservedBitsSet { offset, .. } => offset,
            DecodeError::UnknownType { .. }
            | DecodeError::VersionTooLow { .. }
            | DecodeError::WrongSender { .. }
            | DecodeError::NoCompletion { .. } => 0,
        }
    }
}
