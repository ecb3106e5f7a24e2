//! Scalar protocol values: versions, message types, status codes, slots, senders.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A vPCI protocol version: `(major << 16) | minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ProtocolVersion(pub u32);

impl ProtocolVersion {
    /// 1.0 (OpenVMM's WIN8).
    pub const V1_0: Self = Self(0x0001_0000);
    /// 1.1 (WIN10): the oldest version Linux offers.
    pub const V1_1: Self = Self(0x0001_0001);
    /// 1.2 (RS1): adds CREATE_INTERRUPT_MESSAGE2 and RESOURCES_ASSIGNED2.
    pub const V1_2: Self = Self(0x0001_0002);
    /// 1.3 (VB): adds BUS_RELATIONS2.
    pub const V1_3: Self = Self(0x0001_0003);
    /// 1.4 (FE): adds CREATE_INTERRUPT_MESSAGE3 and RESOURCES_ASSIGNED3; the newest Linux offers.
    pub const V1_4: Self = Self(0x0001_0004);
    /// 1.5 (GE): adds RESET_DEVICE.
    pub const V1_5: Self = Self(0x0001_0005);
    /// 1.6 (DT): dynamic interrupt mapping for Windows guests.
    pub const V1_6: Self = Self(0x0001_0006);
    /// 1.7 (GE_TDISP): adds TDISP_COMMAND and QUERY_ISOLATED_RESOURCES.
    pub const V1_7: Self = Self(0x0001_0007);

    /// Every version this crate knows, oldest first.
    pub const ALL: [Self; 8] = [
        Self::V1_0,
        Self::V1_1,
        Self::V1_2,
        Self::V1_3,
        Self::V1_4,
        Self::V1_5,
        Self::V1_6,
        Self::V1_7,
    ];

    /// The versions a Linux guest offers, in the order it offers them (highest first).
    pub const LINUX_OFFERS: [Self; 4] = [Self::V1_4, Self::V1_3, Self::V1_2, Self::V1_1];

    /// The major part.
    pub fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// The minor part.
    pub fn minor(self) -> u16 {
        self.0 as u16
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

/// A version string that is not one of `1.0` to `1.7`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown vPCI protocol version {0:?}: expected 1.0 to 1.7")]
pub struct ParseVersionError(pub String);

impl FromStr for ProtocolVersion {
    type Err = ParseVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.to_string() == s.trim())
            .ok_or_else(|| ParseVersionError(s.to_owned()))
    }
}

/// Which side of a vPCI channel sent a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sender {
    /// The host (the VSP): sends relations, ejects and block invalidations.
    Host,
    /// The guest (the VSC): sends everything else.
    Guest,
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sender::Host => "host",
            Sender::Guest => "guest",
        })
    }
}

/// The base every message type is an offset from.
pub const MESSAGE_BASE: u32 = 0x4249_0000;

macro_rules! message_types {
    ($($(#[$doc:meta])* $name:ident = $off:literal,)*) => {
        /// A vPCI message type: the first four bytes of every request.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct MessageType(pub u32);

        #[allow(missing_docs)] // Each constant's doc is its spec name, given by `name()`.
        impl MessageType {
            $($(#[$doc])* pub const $name: Self = Self(MESSAGE_BASE + $off);)*

            /// Every message type the protocol defines, in numeric order.
            pub const ALL: &'static [Self] = &[$(Self::$name,)*];

            /// The spec's name with the `PCI_` prefix, or `None` for an unknown value.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $(Self::$name => Some(concat!("PCI_", stringify!($name))),)*
                    _ => None,
                }
            }

            /// Looks a type up by its spec name, with or without the `PCI_` prefix.
            pub fn from_name(name: &str) -> Option<Self> {
                let bare = name.trim().strip_prefix("PCI_").unwrap_or(name.trim());
                match bare {
                    $(stringify!($name) => Some(Self::$name),)*
                    _ => None,
                }
            }
        }
    };
}

message_types! {
    /// Host -> guest: the functions on the bus.
    BUS_RELATIONS = 0x00,
    /// Guest -> host: asks for BUS_RELATIONS.
    QUERY_BUS_RELATIONS = 0x01,
    /// Invalidates a device (not used by Linux; layout carried opaquely).
    INVALIDATE_DEVICE = 0x02,
    /// Invalidates the bus (not used by Linux; layout carried opaquely).
    INVALIDATE_BUS = 0x03,
    /// Guest -> host: a function's power state.
    POWER_STATE_CHANGE = 0x04,
    /// Guest -> host: asks for a function's probed BARs.
    QUERY_RESOURCE_REQUIREMENTS = 0x05,
    /// Guest -> host: asks for a function's resources (OpenVMM's GET_RESOURCES).
    QUERY_RESOURCE_RESOURCES = 0x06,
    /// Guest -> host: the bus enters D0, with the config window's MMIO base.
    BUS_D0ENTRY = 0x07,
    /// Guest -> host: the bus leaves D0.
    BUS_D0EXIT = 0x08,
    /// Guest -> host: reads a configuration block.
    READ_BLOCK = 0x09,
    /// Guest -> host: writes a configuration block.
    WRITE_BLOCK = 0x0A,
    /// Host -> guest: the host wants a function back.
    EJECT = 0x0B,
    /// Query stop (not used by Linux).
    QUERY_STOP = 0x0C,
    /// Re-enable (not used by Linux).
    REENABLE = 0x0D,
    /// Query stop failed (not used by Linux).
    QUERY_STOP_FAILED = 0x0E,
    /// Guest -> host: the guest has let go of an ejected function.
    EJECTION_COMPLETE = 0x0F,
    /// Guest -> host: the resources assigned to a function.
    RESOURCES_ASSIGNED = 0x10,
    /// Guest -> host: the guest released a function's resources.
    RESOURCES_RELEASED = 0x11,
    /// Host -> guest: configuration blocks changed.
    INVALIDATE_BLOCK = 0x12,
    /// Guest -> host: offers a protocol version.
    QUERY_PROTOCOL_VERSION = 0x13,
    /// Guest -> host: creates an interrupt (CPU mask form).
    CREATE_INTERRUPT_MESSAGE = 0x14,
    /// Guest -> host: deletes an interrupt.
    DELETE_INTERRUPT_MESSAGE = 0x15,
    /// Guest -> host: resources assigned, version 2 (1.2+).
    RESOURCES_ASSIGNED2 = 0x16,
    /// Guest -> host: creates an interrupt, processor-array form (1.2+).
    CREATE_INTERRUPT_MESSAGE2 = 0x17,
    /// Guest -> host: deletes an interrupt, version 2 (unused by Linux).
    DELETE_INTERRUPT_MESSAGE2 = 0x18,
    /// Host -> guest: the functions on the bus with NUMA information (1.3+).
    BUS_RELATIONS2 = 0x19,
    /// Guest -> host: resources assigned, version 3 (1.4+).
    RESOURCES_ASSIGNED3 = 0x1A,
    /// Guest -> host: creates an interrupt with a 32-bit vector (1.4+).
    CREATE_INTERRUPT_MESSAGE3 = 0x1B,
    /// Guest -> host: resets a function (1.5+).
    RESET_DEVICE = 0x1C,
    /// Guest -> host: a TDISP command (1.7+).
    TDISP_COMMAND = 0x1D,
    /// Guest -> paravisor: per-BAR isolation of a TDISP device (1.7+).
    QUERY_ISOLATED_RESOURCES = 0x1E,
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "unknown message type {:#010x}", self.0),
        }
    }
}

/// An NTSTATUS as vPCI completions carry it; negative (as `i32`) means failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Status(pub u32);

impl Status {
    /// Success.
    pub const SUCCESS: Self = Self(0);
    /// Generic failure.
    pub const UNSUCCESSFUL: Self = Self(0xC000_0001);
    /// The host does not speak the offered protocol version.
    pub const REVISION_MISMATCH: Self = Self(0xC000_0059);
    /// The request was malformed.
    pub const BAD_DATA: Self = Self(0xC000_090B);
    /// The request is not supported.
    pub const NOT_SUPPORTED: Self = Self(0xC000_00BB);

    /// Whether the status means success (non-negative as `i32`).
    pub fn is_success(self) -> bool {
        (self.0 as i32) >= 0
    }

    /// The status's name, when it is one the protocol uses.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::SUCCESS => "SUCCESS",
            Self::UNSUCCESSFUL => "UNSUCCESSFUL",
            Self::REVISION_MISMATCH => "REVISION_MISMATCH",
            Self::BAD_DATA => "BAD_DATA",
            Self::NOT_SUPPORTED => "NOT_SUPPORTED",
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({:#010x})", self.0),
            None => write!(f, "{:#010x}", self.0),
        }
    }
}

/// A function's slot as Windows encodes it: bits 0-4 device, bits 5-7 function, 8-31 zero.
#[repr(transparent)]
#[derive(
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct WinSlot(pub U32);

impl WinSlot {
    /// The bits the protocol reserves (must be zero).
    pub const RESERVED_MASK: u32 = 0xFFFF_FF00;

    /// A slot from a device (0-31) and function (0-7) number; higher bits are dropped.
    pub fn new(device: u8, function: u8) -> Self {
        Self::from_raw(u32::from(device & 0x1f) | (u32::from(function & 0x7) << 5))
    }

    /// A slot from its raw 32-bit encoding.
    pub fn from_raw(raw: u32) -> Self {
        Self(U32::new(raw))
    }

    /// The raw 32-bit encoding.
    pub fn raw(self) -> u32 {
        self.0.get()
    }

    /// The device number (bits 0-4).
    pub fn device(self) -> u8 {
        (self.raw() & 0x1f) as u8
    }

    /// The function number (bits 5-7).
    pub fn function(self) -> u8 {
        ((self.raw() >> 5) & 0x7) as u8
    }

    /// The reserved bits (8-31), which must be zero.
    pub fn reserved(self) -> u32 {
        self.raw() & Self::RESERVED_MASK
    }
}

impl fmt::Debug for WinSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WinSlot({:#x}: {:02x}.{})",
            self.raw(),
            self.device(),
            self.function()
        )
    }
}

impl fmt::Display for WinSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}.{}", self.device(), self.function())
    }
}

impl Serialize for WinSlot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Versions print and parse as the spec writes them.
    #[test]
    fn version_round_trip() {
        for v in ProtocolVersion::ALL {
            assert_eq!(v.to_string().parse::<ProtocolVersion>(), Ok(v));
        }
        assert_eq!(ProtocolVersion::V1_4.to_string(), "1.4");
        assert!("1.8".parse::<ProtocolVersion>().is_err());
        assert!("".parse::<ProtocolVersion>().is_err());
    }

    /// Message type names carry the PCI_ prefix and match the spec's offsets.
    #[test]
    fn message_type_names() {
        assert_eq!(MessageType(0x4249_0019).name(), Some("PCI_BUS_RELATIONS2"));
        assert_eq!(
            MessageType(0x4249_000F).name(),
            Some("PCI_EJECTION_COMPLETE")
        );
        assert_eq!(
            MessageType(0x4249_001E).name(),
            Some("PCI_QUERY_ISOLATED_RESOURCES")
        );
        assert_eq!(MessageType(0x4249_001F).name(), None);
        assert_eq!(
            MessageType::from_name("PCI_QUERY_RESOURCE_REQUIREMENTS"),
            Some(MessageType(0x4249_0005))
        );
        assert_eq!(
            MessageType::from_name("EJECT"),
            Some(MessageType(0x4249_000B))
        );
        assert_eq!(MessageType::ALL.len(), 31);
    }

    /// Slot bits: 0-4 device, 5-7 function.
    #[test]
    fn slot_bits() {
        let s = WinSlot::new(3, 5);
        assert_eq!(s.raw(), 3 | (5 << 5));
        assert_eq!((s.device(), s.function(), s.reserved()), (3, 5, 0));
        assert_eq!(WinSlot::from_raw(0x100).reserved(), 0x100);
    }

    /// Negative statuses are failures.
    #[test]
    fn status_sign() {
        assert!(Status::SUCCESS.is_success());
        assert!(!Status::REVISION_MISMATCH.is_success());
        assert!(Status(1).is_success());
    }
}
