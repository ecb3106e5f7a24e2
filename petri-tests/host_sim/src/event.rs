//! What the host saw and did, for traces, charts and test milestones.

use crate::action::ActionError;
use std::time::Duration;
use thiserror::Error;
use vpci_protocol::{DecodeError, MessageType, ProtocolVersion, Status, WinSlot};

/// One thing that happened on a bus, at a virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEvent {
    /// When it happened.
    pub at: Duration,
    /// What happened.
    pub kind: HostEventKind,
}

/// Why a function left the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalReason {
    /// The guest completed its eject.
    Ejected,
    /// The guest did not complete the eject in time; the host removed it by force.
    EjectTimedOut,
    /// Dropped without an eject.
    Surprise,
    /// Replaced by a new function in the same slot.
    Replaced,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEventKind {
    /// A guest message was decoded.
    Received {
        /// Its type.
        message: MessageType,
        /// The function it names.
        slot: Option<WinSlot>,
        /// Its transaction id.
        transaction_id: u64,
    },
    /// A version was agreed.
    Negotiated {
        /// The version.
        version: ProtocolVersion,
    },
    /// An offered version was refused (REVISION_MISMATCH).
    VersionRejected {
        /// The version offered.
        offered: ProtocolVersion,
    },
    /// BUS_RELATIONS or BUS_RELATIONS2 was sent.
    RelationsSent {
        /// Which of the two.
        message: MessageType,
        /// The functions listed.
        slots: Vec<WinSlot>,
    },
    /// The bus entered D0.
    D0Entered {
        /// The config window's MMIO base.
        mmio_base: u64,
    },
    /// The bus left D0.
    D0Exited,
    /// A completion left the host.
    Answered {
        /// The request type.
        message: MessageType,
        /// The function it named.
        slot: Option<WinSlot>,
        /// The status carried (`None` if the completion is shorter than a status).
        status: Option<Status>,
    },
    /// A response rule holds the answer to a message until `until`.
    ResponseDelayed {
        /// The request type.
        message: MessageType,
        /// When the answer leaves.
        until: Duration,
    },
    /// A response rule keeps the host from ever answering a message.
    ResponseWithheld {
        /// The request type.
        message: MessageType,
    },
    /// A response rule made the host answer wrongly (duplicate, truncated, ...).
    ResponseTampered {
        /// The request type.
        message: MessageType,
    },
    /// Delayed answers overflowed the bound; this one was dropped.
    DelayedResponseDropped {
        /// The request type.
        message: MessageType,
    },
    /// An interrupt was created.
    InterruptCreated {
        /// The function.
        slot: WinSlot,
        /// MSI address.
        address: u64,
        /// MSI data.
        data: u32,
    },
    /// An interrupt was deleted.
    InterruptDeleted {
        /// The function.
        slot: WinSlot,
        /// MSI address.
        address: u64,
        /// MSI data.
        data: u32,
    },
    /// RESOURCES_ASSIGNED was accepted.
    ResourcesAssigned {
        /// The function.
        slot: WinSlot,
    },
    /// RESOURCES_RELEASED was handled.
    ResourcesReleased {
        /// The function.
        slot: WinSlot,
    },
    /// A function's power state changed.
    PowerStateChanged {
        /// The function.
        slot: WinSlot,
        /// The new state (1 = D0, 4 = D3).
        state: u32,
    },
    /// A function joined the bus.
    FunctionAdded {
        /// The slot.
        slot: WinSlot,
        /// Its serial number.
        serial: u32,
    },
    /// A function left the bus.
    FunctionRemoved {
        /// The slot.
        slot: WinSlot,
        /// Why.
        reason: RemovalReason,
    },
    /// EJECT was sent.
    EjectSent {
        /// The slot.
        slot: WinSlot,
    },
    /// The guest completed an eject.
    EjectCompleted {
        /// The slot.
        slot: WinSlot,
        /// How long the eject was outstanding.
        waited: Duration,
    },
    /// The host gave up waiting for EJECTION_COMPLETE.
    EjectTimedOut {
        /// The slot.
        slot: WinSlot,
    },
    /// A function's BAR mapping was torn down.
    BarsTornDown {
        /// The slot.
        slot: WinSlot,
    },
    /// A request named a slot the host does not have.
    UnknownSlot {
        /// The request type.
        message: MessageType,
        /// The slot.
        slot: WinSlot,
    },
    /// The guest broke the protocol.
    GuestError(GuestError),
    /// A packet arrived after the rescind and was ignored.
    IgnoredAfterRescind,
    /// A hostile packet was sent.
    HostileSent {
        /// Which kind (the [`crate::HostilePacket`] variant's name).
        what: &'static str,
    },
    /// A script step fired and its action succeeded.
    ScriptStepFired {
        /// The step's index.
        step: usize,
    },
    /// A script step fired and its action failed.
    ScriptStepFailed {
        /// The step's index.
        step: usize,
        /// Why.
        error: ActionError,
    },
    /// The channel was rescinded.
    Rescinded,
}

/// How the guest broke the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum GuestError {
    /// The payload does not decode.
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    /// A packet type vPCI does not use.
    #[error("packet type {0} is not in-band data")]
    UnexpectedKind(u16),
    /// A completion: the host never asks for one.
    #[error("completion with transaction id {0:#x}: the host sent no request")]
    UnexpectedCompletion(u64),
    /// A message before a version was agreed.
    #[error("{0} before a protocol version was agreed")]
    NotNegotiated(MessageType),
    /// A message the host does not take from a guest.
    #[error("{0} is not handled by the host")]
    Unsupported(MessageType),
    /// EJECTION_COMPLETE without an outstanding eject.
    #[error("EJECTION_COMPLETE for slot {0} without an outstanding eject")]
    UnexpectedEjectionComplete(WinSlot),
    /// DELETE_INTERRUPT_MESSAGE for an interrupt the function does not have.
    #[error("slot {slot}: no interrupt at address {address:#x} data {data:#x}")]
    UnknownInterrupt {
        /// The function.
        slot: WinSlot,
        /// MSI address.
        address: u64,
        /// MSI data.
        data: u32,
    },
    /// An interrupt request the host refuses (too many, bad delivery mode or counts).
    #[error("slot {slot}: interrupt request refused: {reason}")]
    BadInterrupt {
        /// The function.
        slot: WinSlot,
        /// Why.
        reason: &'static str,
    },
    /// A power state other than D0 or D3.
    #[error("slot {slot}: power state {state} is neither D0 nor D3")]
    BadPowerState {
        /// The function.
        slot: WinSlot,
        /// The state asked for.
        state: u32,
    },
    /// WRITE_BLOCK beyond the function's block bound.
    #[error("slot {0}: too many configuration blocks")]
    TooManyBlocks(WinSlot),
}

/// The virtual time, then the event's line.
impl std::fmt::Display for HostEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}", self.at, self.kind)
    }
}

fn slot_suffix(slot: &Option<WinSlot>) -> String {
    slot.map(|s| format!(" {s}")).unwrap_or_default()
}

impl std::fmt::Display for RemovalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemovalReason::Ejected => "ejected",
            RemovalReason::EjectTimedOut => "eject timed out",
            RemovalReason::Surprise => "surprise removal",
            RemovalReason::Replaced => "replaced",
        })
    }
}

/// One short line per event, for traces and message sequence charts.
impl std::fmt::Display for HostEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use HostEventKind as K;
        match self {
            K::Received {
                message,
                slot,
                transaction_id,
            } => write!(
                f,
                "received {message}{} (id {transaction_id:#x})",
                slot_suffix(slot)
            ),
            K::Negotiated { version } => write!(f, "agreed protocol {version}"),
            K::VersionRejected { offered } => write!(f, "refused protocol {offered}"),
            K::RelationsSent { message, slots } => {
                let list: Vec<String> = slots.iter().map(ToString::to_string).collect();
                write!(f, "sent {message} [{}]", list.join(", "))
            }
            K::D0Entered { mmio_base } => write!(f, "D0 entry, config window at {mmio_base:#x}"),
            K::D0Exited => f.write_str("D0 exit"),
            K::Answered {
                message,
                slot,
                status,
            } => {
                write!(f, "completed {message}{}", slot_suffix(slot))?;
                match status {
                    Some(s) => write!(f, ": {s}"),
                    None => f.write_str(": (no status)"),
                }
            }
            K::ResponseDelayed { message, until } => {
                write!(f, "holding the answer to {message} until {until:?}")
            }
            K::ResponseWithheld { message } => write!(f, "never answering {message}"),
            K::ResponseTampered { message } => write!(f, "answering {message} wrongly"),
            K::DelayedResponseDropped { message } => {
                write!(f, "dropped a delayed answer to {message}")
            }
            K::InterruptCreated {
                slot,
                address,
                data,
            } => write!(f, "interrupt {address:#x}/{data:#x} created for {slot}"),
            K::InterruptDeleted {
                slot,
                address,
                data,
            } => write!(f, "interrupt {address:#x}/{data:#x} deleted for {slot}"),
            K::ResourcesAssigned { slot } => write!(f, "resources assigned to {slot}"),
            K::ResourcesReleased { slot } => write!(f, "resources released by {slot}"),
            K::PowerStateChanged { slot, state } => write!(f, "{slot} to power state D{}", {
                if *state == 1 { 0 } else { 3 }
            }),
            K::FunctionAdded { slot, serial } => write!(f, "{slot} added (serial {serial:#x})"),
            K::FunctionRemoved { slot, reason } => write!(f, "{slot} removed: {reason}"),
            K::EjectSent { slot } => write!(f, "sent PCI_EJECT {slot}"),
            K::EjectCompleted { slot, waited } => {
                write!(f, "eject of {slot} completed after {waited:?}")
            }
            K::EjectTimedOut { slot } => write!(f, "gave up waiting for the eject of {slot}"),
            K::BarsTornDown { slot } => write!(f, "BARs of {slot} unmapped"),
            K::UnknownSlot { message, slot } => write!(f, "{message} for unknown slot {slot}"),
            K::GuestError(e) => write!(f, "guest error: {e}"),
            K::IgnoredAfterRescind => f.write_str("ignored a packet after the rescind"),
            K::HostileSent { what } => write!(f, "sent hostile packet: {what}"),
            K::ScriptStepFired { step } => write!(f, "script step {step} fired"),
            K::ScriptStepFailed { step, error } => write!(f, "script step {step} failed: {error}"),
            K::Rescinded => f.write_str("rescinded the channel"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events print as one short line naming the message and the slot.
    #[test]
    fn events_print_as_lines() {
        let e = HostEventKind::Answered {
            message: MessageType::QUERY_RESOURCE_REQUIREMENTS,
            slot: Some(WinSlot::new(1, 0)),
            status: Some(Status::SUCCESS),
        };
        assert_eq!(
            e.to_string(),
            "completed PCI_QUERY_RESOURCE_REQUIREMENTS 01.0: SUCCESS (0x00000000)"
        );
        let e = HostEventKind::RelationsSent {
            message: MessageType::BUS_RELATIONS2,
            slots: vec![WinSlot::new(1, 0), WinSlot::new(2, 1)],
        };
        assert_eq!(e.to_string(), "sent PCI_BUS_RELATIONS2 [01.0, 02.1]");
        assert!(!e.to_string().contains('\n'));
    }
}
