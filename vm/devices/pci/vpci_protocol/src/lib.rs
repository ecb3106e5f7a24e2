//! Every vPCI message (protocol versions 1.0 to 1.7) as zerocopy wire types, with a typed
//! decoder and encoder.
//!
//! vPCI is the protocol a Hyper-V host and a guest speak over one VMBus channel per virtual
//! PCI bus. A payload (the bytes after the 16-byte VMBus packet descriptor) is either a
//! request or notification, which starts with a 4-byte [`MessageType`], or a completion,
//! which starts with a 4-byte [`Status`] and can only be read knowing the request it answers.
//!
//! - [`decode`] turns a request or notification into a [`Message`], checking the sender,
//!   the negotiated version, every count against the payload and the reserved slot bits;
//!   [`encode`] writes it back.
//! - [`decode_completion`] does the same for a [`Completion`].
//! - [`wire`] holds the fixed layouts, each asserted at compile time against the spec's size.
//! - [`build`] writes the payloads peers send, in Linux's dialect, for tests and simulators.
//!
//! The wire has two dialects: Linux packs its structs, OpenVMM pads some of them, and VMBus
//! pads every payload to 8 bytes. Decoding accepts both and keeps whatever follows a layout in
//! a `trailing` field, so `encode(decode(bytes)) == bytes`: a relay forwards what it got.
//! OpenVMM also shortens a few: its client's EJECTION_COMPLETE has no status word
//! ([`Fixed::omitted`]), and its host answers POWER_STATE_CHANGE with a status alone and
//! RESOURCES_ASSIGNED3 with 72-byte MSI resources. Whatever fits no dialect is refused.
//!
//! No input panics, loops, or makes the decoder allocate more than the input's size.
//!
//! ```
//! use vpci_protocol::{decode, encode, Message, ProtocolVersion, Sender};
//!
//! // EJECT of device 2, function 0, from the host.
//! let bytes = [0x0b, 0x00, 0x49, 0x42, 0x02, 0x00, 0x00, 0x00];
//! let msg = decode(&bytes, Sender::Host, ProtocolVersion::V1_4)?;
//! assert!(matches!(&msg, Message::Eject(e) if e.body.wslot.device() == 2));
//! assert_eq!(encode(&msg), bytes);
//! # Ok::<(), vpci_protocol::DecodeError>(())
//! ```

#![forbid(unsafe_code)]

pub mod build;
mod completion;
mod error;
mod message;
mod reader;
mod types;
pub mod wire;

pub use completion::{Completion, CompletionBody, decode_completion, gets_completion};
pub use error::DecodeError;
pub use message::{
    BusRelations, Direction, Fixed, Message, ResourcesAssigned, TdispCommand, WriteBlock, decode,
    encode, encode_into, rules,
};
pub use types::{
    MESSAGE_BASE, MessageType, ParseVersionError, ProtocolVersion, Sender, Status, WinSlot,
};
