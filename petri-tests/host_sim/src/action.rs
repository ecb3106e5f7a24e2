//! What the host can do on its own: hot-add, replace, remove, eject, resend relations,
//! rescind, and send hostile packets.

use crate::serde_util::HexBytes;
use crate::spec::{FunctionSpec, SpecError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A host-originated action, as [`crate::HostBus::act`] and scripts take it.
///
/// In a scenario file: `{ kind = "eject", slot = 1 }`, `{ kind = "hot_add", slot = 2,
/// serial = 7 }` (the fields of a [`FunctionSpec`]), `{ kind = "rescind" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HostAction {
    /// Adds a function in a free slot and sends relations (once a version is agreed).
    HotAdd(FunctionSpec),
    /// Puts a new function (a new identity) in an occupied slot without an eject: the old
    /// device is gone at once; relations are sent.
    Replace(FunctionSpec),
    /// [`HostAction::Replace`] with the slot's own spec and a new serial number.
    Reserial {
        /// The slot (raw wslot).
        slot: u32,
        /// The new serial number.
        serial: u32,
    },
    /// Drops a function without an eject (surprise removal): the device is gone at once and
    /// relations without it are sent.
    SurpriseRemove {
        /// The slot (raw wslot).
        slot: u32,
    },
    /// Sends EJECT and waits for EJECTION_COMPLETE (or gives up after the policy's timeout,
    /// removing the function by force).
    Eject {
        /// The slot (raw wslot).
        slot: u32,
    },
    /// Sends relations again, unchanged (a duplicate).
    SendRelations {},
    /// Rescinds the channel: the bus ends and the host sends nothing more.
    Rescind {},
    /// Sends a packet that breaks the protocol.
    Hostile {
        /// Which packet.
        packet: HostilePacket,
    },
}

/// A packet that breaks the protocol, for [`HostAction::Hostile`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HostilePacket {
    /// Any packet, raw.
    Raw {
        /// VMBus packet type (6 in-band, 11 completion, anything else).
        #[serde(default = "in_band")]
        kind: u16,
        /// Descriptor flags.
        #[serde(default)]
        flags: u16,
        /// Transaction id.
        #[serde(default)]
        transaction_id: u64,
        /// The payload.
        payload: HexBytes,
    },
    /// An in-band packet with no payload at all.
    Empty {},
    /// A message whose type the protocol does not define.
    UnknownMessageType {
        /// The type to send.
        message_type: u32,
    },
    /// Relations whose last function description is cut in half.
    TruncatedRelations {},
    /// Relations whose device count claims more functions than the packet holds.
    RelationsCountOverflow {
        /// The count to claim.
        claimed: u32,
    },
    /// A completion for a transaction id the guest never used.
    CompletionForUnknownTransaction {
        /// The transaction id.
        transaction_id: u64,
        /// The status it carries.
        #[serde(default)]
        status: u32,
    },
    /// The last completion the host sent, again.
    RepeatLastCompletion {},
    /// EJECT for a slot, whatever the host has there (for a slot it never offered).
    EjectUnknownSlot {
        /// The slot (raw wslot).
        slot: u32,
    },
}

fn in_band() -> u16 {
    6
}

/// Why the host could not carry out an action.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ActionError {
    /// The bus has been rescinded.
    #[error("the bus has been rescinded")]
    Rescinded,
    /// No function is in the slot.
    #[error("no function in slot {0:#x}")]
    NoSuchSlot(u32),
    /// A function is already in the slot.
    #[error("slot {0:#x} is occupied")]
    SlotOccupied(u32),
    /// An eject of the slot is already outstanding.
    #[error("an eject of slot {0:#x} is already outstanding")]
    EjectOutstanding(u32),
    /// Relations cannot be sent before a protocol version is agreed.
    #[error("no protocol version agreed yet")]
    NotNegotiated,
    /// The slot's device was not built from a spec, so it cannot be rebuilt.
    #[error("slot {0:#x} holds a custom device, which cannot be rebuilt from a spec")]
    NoSpec(u32),
    /// The function spec is invalid.
    #[error("invalid function: {0}")]
    Spec(#[from] SpecError),
    /// There is no completion to repeat.
    #[error("no completion has been sent yet")]
    NothingToRepeat,
    /// No bus has that id (in a [`crate::HostSim`]).
    #[error("no bus {0}")]
    NoSuchBus(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Actions deserialize from their tagged form, a spec's fields inline, and unknown
    /// fields are errors.
    #[test]
    fn actions_from_json() {
        let a: HostAction = serde_json::from_str(r#"{"kind": "eject", "slot": 1}"#).unwrap();
        assert_eq!(a, HostAction::Eject { slot: 1 });
        let a: HostAction =
            serde_json::from_str(r#"{"kind": "hot_add", "slot": 2, "serial": 5}"#).unwrap();
        assert_eq!(a, HostAction::HotAdd(FunctionSpec::nic(2).with_serial(5)));
        let a: HostAction = serde_json::from_str(r#"{"kind": "rescind"}"#).unwrap();
        assert_eq!(a, HostAction::Rescind {});
        let a: HostAction = serde_json::from_str(
            r#"{"kind": "hostile", "packet": {"type": "raw", "payload": "0b004942"}}"#,
        )
        .unwrap();
        assert_eq!(
            a,
            HostAction::Hostile {
                packet: HostilePacket::Raw {
                    kind: 6,
                    flags: 0,
                    transaction_id: 0,
                    payload: HexBytes(vec![0x0b, 0, 0x49, 0x42]),
                }
            }
        );
        let a: HostAction =
            serde_json::from_str(r#"{"kind": "hostile", "packet": {"type": "empty"}}"#).unwrap();
        assert_eq!(
            a,
            HostAction::Hostile {
                packet: HostilePacket::Empty {}
            }
        );
        assert!(serde_json::from_str::<HostAction>(r#"{"kind": "eject", "slott": 1}"#).is_err());
        assert!(serde_json::from_str::<HostAction>(r#"{"kind": "hot_add", "slto": 1}"#).is_err());
        assert!(serde_json::from_str::<HostAction>(r#"{"kind": "explode"}"#).is_err());
    }
}
