//! The typed `Message` enum with `decode` and `encode`.
//!
//! Decoding is strict where the spec is (types, senders, versions, counts, reserved slot bits)
//! and faithful where the wire varies: every fixed-size message keeps the bytes that follow its
//! layout in `trailing`. That covers both dialects of the spec (Linux's packed sizes and
//! OpenVMM's padded ones) and the VMBus padding of a payload to 8 bytes, so re-encoding a
//! decoded message gives back the same bytes.

use crate::error::DecodeError;
use crate::reader::Reader;
use crate::types::{MessageType, ProtocolVersion, Sender, WinSlot};
use crate::wire::*;
use serde::Serialize;
use serde::ser::SerializeMap;
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U32, U64};

/// Writes bytes as lowercase hex (used for opaque data in JSON).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub(crate) fn serialize_trailing<M: SerializeMap>(
    map: &mut M,
    trailing: &[u8],
) -> Result<(), M::Error> {
    if trailing.is_empty() {
        Ok(())
    } else {
        map.serialize_entry("trailing", &hex(trailing))
    }
}

/// A message whose layout is fixed: its body, then whatever bytes followed the layout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fixed<B> {
    /// The body after the message type.
    pub body: B,
    /// Bytes after the layout: a dialect's extra reserved bytes (Linux's POWER_STATE_CHANGE
    /// reserved word, OpenVMM's padded interrupt descriptors) or VMBus padding. Kept so a
    /// relay forwards exactly what it got.
    pub trailing: Vec<u8>,
    /// How many bytes at the end of `body`'s layout the sender left out: they read as zero
    /// in `body` and are not encoded. Zero but for a dialect that stops a layout early, which
    /// [`decode`] accepts only for EJECTION_COMPLETE: OpenVMM's client sends type and slot
    /// (8 bytes) and no status word, so its body has `omitted == 4` (and no `trailing`).
    pub omitted: usize,
}

impl<B> Fixed<B> {
    /// A body with no trailing bytes, nothing omitted.
    pub fn new(body: B) -> Self {
        Self {
            body,
            trailing: Vec::new(),
            omitted: 0,
        }
    }
}

impl Fixed<EjectionCompleteBody> {
    /// The status the guest reported: `None` for OpenVMM's 8-byte EJECTION_COMPLETE, which
    /// has no status word (Linux's 12-byte one has it).
    pub fn status(&self) -> Option<u32> {
        (self.omitted == 0).then(|| self.body.status.get())
    }
}

impl<B: Fields> Fixed<B> {
    pub(crate) fn serialize_into<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        self.body.serialize_fields(map)?;
        if self.omitted != 0 {
            map.serialize_entry("omitted", &self.omitted)?;
        }
        serialize_trailing(map, &self.trailing)
    }
}

/// BUS_RELATIONS (`D` = [`FunctionDescription`]) or BUS_RELATIONS2
/// (`D` = [`FunctionDescription2`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct BusRelations<D> {
    /// The functions on the bus (the wire's `device_count` is their number).
    pub functions: Vec<D>,
    /// Bytes after the last description.
    pub trailing: Vec<u8>,
}

impl<D: Serialize> BusRelations<D> {
    pub(crate) fn serialize_into<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry("device_count", &self.functions.len())?;
        map.serialize_entry("description", &self.functions)?;
        serialize_trailing(map, &self.trailing)
    }
}

/// RESOURCES_ASSIGNED, RESOURCES_ASSIGNED2 or RESOURCES_ASSIGNED3.
///
/// The head is the same in both dialects; Linux sends no MSI resources and pads with reserved
/// bytes (to 148 or 202 bytes), OpenVMM reads `msi_descriptor_count` MSI resources after the
/// head (16, 72 or 80 bytes each for versions 1, 2, 3).
///
/// The same shape follows the status of a completion, with the translated interrupts as MSI
/// resources. OpenVMM answers RESOURCES_ASSIGNED3 in the version 2 size (72 bytes each), so
/// that completion is read with 80-byte resources when they fit and 72-byte ones otherwise
/// ([`ResourcesAssigned::msi_resource_size`] tells which).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResourcesAssigned {
    /// Slot, BAR resources, MSI resource count and a reserved word.
    pub head: ResourcesHead,
    /// `head.msi_descriptor_count` MSI resources, raw.
    pub msi_resources: Vec<u8>,
    /// Bytes after the MSI resources (Linux's reserved tail).
    pub trailing: Vec<u8>,
}

impl ResourcesAssigned {
    pub(crate) fn serialize_into<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        self.head.serialize_fields(map)?;
        if !self.msi_resources.is_empty() {
            map.serialize_entry("msi_resources", &hex(&self.msi_resources))?;
        }
        serialize_trailing(map, &self.trailing)
    }

    /// The size of one MSI resource in `msi_resources` (their length over
    /// `head.msi_descriptor_count`), or `None` without any or when they do not divide evenly.
    pub fn msi_resource_size(&self) -> Option<usize> {
        let count = usize::try_from(self.head.msi_descriptor_count.get()).ok()?;
        let len = self.msi_resources.len();
        (count != 0 && len % count == 0).then(|| len / count)
    }

    pub(crate) fn decode(r: &mut Reader<'_>, msi_size: usize) -> Result<Self, DecodeError> {
        Self::decode_either(r, msi_size, None)
    }

    /// Decodes a head and its MSI resources, `msi_size` bytes each or, when that many do not
    /// fit, `smaller` bytes each; the error then names the most that fit in the smaller size.
    pub(crate) fn decode_either(
        r: &mut Reader<'_>,
        msi_size: usize,
        smaller: Option<usize>,
    ) -> Result<Self, DecodeError> {
        let head: ResourcesHead = r.read("RESOURCES_ASSIGNED head")?;
        let count_offset = r.offset() - 8;
        let count = head.msi_descriptor_count.get().into();
        let fits = |size| {
            r.fit_count(
                "msi_descriptor_count",
                count_offset,
                count,
                size,
                MAX_MSI_RESOURCES.into(),
            )
        };
        let len = match smaller {
            Some(smaller) => fits(msi_size).or_else(|_| fits(smaller))?,
            None => fits(msi_size)?,
        };
        let msi_resources = r.take(len, "MSI resources")?.to_vec();
        Ok(Self {
            head,
            msi_resources,
            trailing: r.rest().to_vec(),
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(&self.msi_resources);
        out.extend_from_slice(&self.trailing);
    }
}

/// WRITE_BLOCK: a head, then `byte_count` bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WriteBlock {
    /// Block id, slot and byte count.
    pub head: WriteBlockHead,
    /// The bytes to write (`head.byte_count` of them, at most 128).
    pub bytes: Vec<u8>,
    /// Bytes after the data (Linux adds four for old hosts that misread the size).
    pub trailing: Vec<u8>,
}

impl WriteBlock {
    pub(crate) fn serialize_into<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        self.head.serialize_fields(map)?;
        map.serialize_entry("bytes", &hex(&self.bytes))?;
        serialize_trailing(map, &self.trailing)
    }
}

/// TDISP_COMMAND: slot, then `data_length` bytes of command data (carried, not interpreted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TdispCommand {
    /// The function's slot.
    pub wslot: WinSlot,
    /// The command data (its length is the wire's `data_length`).
    pub data: Vec<u8>,
    /// Bytes after the data.
    pub trailing: Vec<u8>,
}

impl TdispCommand {
    pub(crate) fn serialize_into<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry("wslot", &self.wslot)?;
        map.serialize_entry("data_length", &self.data.len())?;
        map.serialize_entry("data", &hex(&self.data))?;
        serialize_trailing(map, &self.trailing)
    }
}

/// Who may send a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Only the host.
    HostToGuest,
    /// Only the guest.
    GuestToHost,
    /// Not used by Linux; the direction is not pinned down, so either side is accepted.
    Either,
}

impl Direction {
    fn allows(self, sender: Sender) -> bool {
        matches!(
            (self, sender),
            (Direction::Either, _)
                | (Direction::HostToGuest, Sender::Host)
                | (Direction::GuestToHost, Sender::Guest)
        )
    }
}

pub(crate) fn decode_fixed<B>(
    r: &mut Reader<'_>,
    what: &'static str,
) -> Result<Fixed<B>, DecodeError>
where
    B: zerocopy::FromBytes
        + zerocopy::KnownLayout
        + zerocopy::Immutable
        + zerocopy::Unaligned
        + Reserved,
{
    let body = r.read(what)?;
    Ok(Fixed {
        body,
        trailing: r.rest().to_vec(),
        omitted: 0,
    })
}

pub(crate) fn encode_fixed<B: IntoBytes + zerocopy::Immutable>(f: &Fixed<B>, out: &mut Vec<u8>) {
    let body = f.body.as_bytes();
    let sent = body.len().saturating_sub(f.omitted);
    out.extend_from_slice(body.get(..sent).unwrap_or(body));
    out.extend_from_slice(&f.trailing);
}

/// EJECTION_COMPLETE in either dialect: Linux's type, slot and status (12 bytes, 16 as VMBus
/// pads it), or OpenVMM's type and slot alone (exactly 8 bytes). Anything between the two is
/// truncated.
fn decode_ejection_complete(
    r: &mut Reader<'_>,
) -> Result<Fixed<EjectionCompleteBody>, DecodeError> {
    let SlotBody { wslot } = r.read("wslot")?;
    if r.remaining() == 0 {
        return Ok(Fixed {
            body: EjectionCompleteBody {
                wslot,
                status: U32::ZERO,
            },
            trailing: Vec::new(),
            omitted: size_of::<U32>(),
        });
    }
    let status: U32 = r.read("EJECTION_COMPLETE status")?;
    Ok(Fixed {
        body: EjectionCompleteBody { wslot, status },
        trailing: r.rest().to_vec(),
        omitted: 0,
    })
}

fn decode_relations<D>(r: &mut Reader<'_>) -> Result<BusRelations<D>, DecodeError>
where
    D: zerocopy::FromBytes
        + zerocopy::KnownLayout
        + zerocopy::Immutable
        + zerocopy::Unaligned
        + Reserved,
{
    let count_offset = r.offset();
    let head: RelationsHead = r.read("device_count")?;
    let len = r.fit_count(
        "device_count",
        count_offset,
        head.device_count.get().into(),
        size_of::<D>(),
        u64::MAX,
    )?;
    let count = len / size_of::<D>().max(1);
    let mut functions = Vec::with_capacity(count);
    for _ in 0..count {
        functions.push(r.read("function description")?);
    }
    Ok(BusRelations {
        functions,
        trailing: r.rest().to_vec(),
    })
}

fn encode_relations<D: IntoBytes + zerocopy::Immutable>(m: &BusRelations<D>, out: &mut Vec<u8>) {
    // A list longer than u32::MAX cannot be described; encode the count it would wrap to
    // rather than panic (such a list cannot come from `decode`).
    let count = u32::try_from(m.functions.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(U32::new(count).as_bytes());
    for f in &m.functions {
        out.extend_from_slice(f.as_bytes());
    }
    out.extend_from_slice(&m.trailing);
}

fn decode_read_block(r: &mut Reader<'_>) -> Result<Fixed<ReadBlockBody>, DecodeError> {
    let m: Fixed<ReadBlockBody> = decode_fixed(r, "READ_BLOCK body")?;
    let requested = m.body.bytes_requested.get();
    if requested > CONFIG_BLOCK_SIZE_MAX {
        return Err(DecodeError::CountTooLarge {
            offset: 12,
            field: "bytes_requested",
            count: requested.into(),
            limit: CONFIG_BLOCK_SIZE_MAX.into(),
        });
    }
    Ok(m)
}

fn decode_write_block(r: &mut Reader<'_>) -> Result<WriteBlock, DecodeError> {
    let head: WriteBlockHead = r.read("WRITE_BLOCK head")?;
    let len = r.fit_count(
        "byte_count",
        12,
        head.byte_count.get().into(),
        1,
        CONFIG_BLOCK_SIZE_MAX.into(),
    )?;
    let bytes = r.take(len, "WRITE_BLOCK data")?.to_vec();
    Ok(WriteBlock {
        head,
        bytes,
        trailing: r.rest().to_vec(),
    })
}

fn encode_write_block(m: &WriteBlock, out: &mut Vec<u8>) {
    out.extend_from_slice(m.head.as_bytes());
    out.extend_from_slice(&m.bytes);
    out.extend_from_slice(&m.trailing);
}

pub(crate) fn decode_tdisp(r: &mut Reader<'_>) -> Result<TdispCommand, DecodeError> {
    let head: TdispHead = r.read("TDISP_COMMAND head")?;
    let len = r.fit_count("data_length", 8, head.data_length.get(), 1, MAX_TDISP_DATA)?;
    let data = r.take(len, "TDISP data")?.to_vec();
    Ok(TdispCommand {
        wslot: head.wslot,
        data,
        trailing: r.rest().to_vec(),
    })
}

pub(crate) fn encode_tdisp(m: &TdispCommand, out: &mut Vec<u8>) {
    let head = TdispHead {
        wslot: m.wslot,
        data_length: U64::new(m.data.len() as u64),
    };
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&m.data);
    out.extend_from_slice(&m.trailing);
}

macro_rules! messages {
    ($(
        $(#[$doc:meta])*
        $variant:ident($body:ty) = $ty:ident, $dir:ident, $min:ident,
            decode: $decode:expr, encode: $encode:expr;
    )*) => {
        /// A vPCI request or notification (everything but a completion).
        ///
        /// Each variant is one message type; the wire's type field is implied by the variant.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum Message {
            $($(#[$doc])* $variant($body),)*
        }

        impl Message {
            /// The message's type.
            pub fn message_type(&self) -> MessageType {
                match self {
                    $(Message::$variant(_) => MessageType::$ty,)*
                }
            }
        }

        /// Who may send a message of this type, and from which protocol version it exists.
        /// `None` for a type the protocol does not define.
        pub fn rules(ty: MessageType) -> Option<(Direction, ProtocolVersion)> {
            match ty {
                $(MessageType::$ty => Some((Direction::$dir, ProtocolVersion::$min)),)*
                _ => None,
            }
        }

        fn decode_body(ty: MessageType, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
            match ty {
                $(MessageType::$ty => {
                    let decode: fn(&mut Reader<'_>) -> Result<$body, DecodeError> = $decode;
                    decode(r).map(Message::$variant)
                })*
                other => Err(DecodeError::UnknownType { message_type: other.0 }),
            }
        }

        fn encode_body(m: &Message, out: &mut Vec<u8>) {
            match m {
                $(Message::$variant(body) => {
                    let encode: fn(&$body, &mut Vec<u8>) = $encode;
                    encode(body, out)
                })*
            }
        }

        impl Serialize for Message {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("type", self.message_type().name().unwrap_or("?"))?;
                match self {
                    $(Message::$variant(body) => body.serialize_into(&mut map)?,)*
                }
                map.end()
            }
        }
    };
}

messages! {
    /// Host -> guest: the functions on the bus.
    BusRelations(BusRelations<FunctionDescription>) = BUS_RELATIONS, HostToGuest, V1_0,
        decode: decode_relations, encode: encode_relations;
    /// Guest -> host: asks for the bus relations.
    QueryBusRelations(Fixed<Empty>) = QUERY_BUS_RELATIONS, GuestToHost, V1_0,
        decode: |r| decode_fixed(r, "QUERY_BUS_RELATIONS"), encode: encode_fixed;
    /// Invalidates a device (unused by Linux; type + slot, the rest carried).
    InvalidateDevice(Fixed<SlotBody>) = INVALIDATE_DEVICE, Either, V1_0,
        decode: |r| decode_fixed(r, "wslot"), encode: encode_fixed;
    /// Invalidates the bus (unused by Linux; the rest carried).
    InvalidateBus(Fixed<Empty>) = INVALIDATE_BUS, Either, V1_0,
        decode: |r| decode_fixed(r, "INVALIDATE_BUS"), encode: encode_fixed;
    /// Guest -> host: a function's power state (Linux adds a reserved word: `trailing`).
    PowerStateChange(Fixed<PowerStateBody>) = POWER_STATE_CHANGE, GuestToHost, V1_0,
        decode: |r| decode_fixed(r, "POWER_STATE_CHANGE body"), encode: encode_fixed;
    /// Guest -> host: asks for a function's probed BARs.
    QueryResourceRequirements(Fixed<SlotBody>) = QUERY_RESOURCE_REQUIREMENTS, GuestToHost, V1_0,
        decode: |r| decode_fixed(r, "wslot"), encode: encode_fixed;
    /// Guest -> host: asks for a function's resources.
    QueryResourceResources(Fixed<GetResourcesBody>) = QUERY_RESOURCE_RESOURCES, GuestToHost, V1_0,
        decode: |r| decode_fixed(r, "QUERY_RESOURCE_RESOURCES body"), encode: encode_fixed;
    /// Guest -> host: the bus enters D0.
    BusD0Entry(Fixed<D0EntryBody>) = BUS_D0ENTRY, GuestToHost, V1_0,
        decode: |r| decode_fixed(r, "BUS_D0ENTRY body"), encode: encode_fixed;
    /// Guest -> host: the bus leaves D0.
    BusD0Exit(Fixed<Empty>) = BUS_D0EXIT, GuestToHost, V1_0,
        decode: |r| decode_fixed(r, "BUS_D0EXIT"), encode: encode_fixed;
    /// Guest -> host: reads a configuration block.
    ReadBlock(Fixed<ReadBlockBody>) = READ_BLOCK, GuestToHost, V1_0,
        decode: decode_read_block, encode: encode_fixed;
    /// Guest -> host: writes a configuration block.
    WriteBlock(WriteBlock) = WRITE_BLOCK, GuestToHost, V1_0,
        decode: decode_write_block, encode: encode_write_block;
    /// Host -> guest: the host wants the function back.
    Eject(Fixed<SlotBody>) = EJECT, HostToGuest, V1_0,
        decode: |r| decode_fixed(r, "wslot"), encode: encode_fixed;
    /// Query stop (unused by Linux).
    QueryStop(Fixed<SlotBody>) = QUERY_STOP, Either, V1_0,
        decode: |r| decode_fixed(r, "wslot"), encode: encode_fixed;
    /// Re-enable (unused by Linux).
    Reenable(Fixed<SlotBody>) = REENABLE, Either, V1_0,
        decode: |r| decode_fixed(r, "wslot"), encode: encode_fixed;
    /// Query stop failed (unused by Linux).
    QueryStopFailed(Fixed<SlotBody>) = QUERY_STOP_FAILED, Either, V1_0,
        decode: |r| decode_fixed(r, "wslot"), encode: encode_fixed;
    /// Guest -> host: the guest has let go of an ejected function (12 bytes from Linux, 8
    /// without the status from OpenVMM: see [`Fixed::omitted`]).
    EjectionComplete(Fixed<EjectionCompleteBody>) = EJECTION_COMPLETE, GuestToHost, V1_0,
        decode: decode_ejection_complete, encode: encode_fixed;
    /// Guest -> host: a function's resources (MSI resources 16 bytes each).
    ResourcesAssigned(ResourcesAssigned) = RESOURCES_ASSIGNED, GuestToHost, V1_0,
        decode: |r| ResourcesAssigned::decode(r, MSI_RESOURCE_SIZES[0]), encode: ResourcesAssigned::encode;
    /// Guest -> host: the guest released a function's resources.
    ResourcesReleased(Fixed<SlotBody>) = RESOURCES_RELEASED, GuestToHost, V1_0,
        decode: |r| decode_fixed(r, "wslot"), encode: encode_fixed;
    /// Host -> guest: configuration blocks changed.
    InvalidateBlock(Fixed<InvalidateBlockBody>) = INVALIDATE_BLOCK, HostToGuest, V1_0,
        decode: |r| decode_fixed(r, "INVALIDATE_BLOCK body"), encode: encode_fixed;
    /// Guest -> host: offers a protocol version (valid before any version is agreed).
    QueryProtocolVersion(Fixed<VersionBody>) = QUERY_PROTOCOL_VERSION, GuestToHost, V1_0,
        decode: |r| decode_fixed(r, "protocol_version"), encode: encode_fixed;
    /// Guest -> host: creates an interrupt (CPU mask form).
    CreateInterruptMessage(Fixed<CreateInterruptBody>) = CREATE_INTERRUPT_MESSAGE, GuestToHost, V1_0,
        decode: |r| decode_fixed(r, "CREATE_INTERRUPT_MESSAGE body"), encode: encode_fixed;
    /// Guest -> host: deletes an interrupt.
    DeleteInterruptMessage(Fixed<DeleteInterruptBody>) = DELETE_INTERRUPT_MESSAGE, GuestToHost, V1_0,
        decode: |r| decode_fixed(r, "DELETE_INTERRUPT_MESSAGE body"), encode: encode_fixed;
    /// Guest -> host: resources, version 2 (MSI resources 72 bytes each).
    ResourcesAssigned2(ResourcesAssigned) = RESOURCES_ASSIGNED2, GuestToHost, V1_2,
        decode: |r| ResourcesAssigned::decode(r, MSI_RESOURCE_SIZES[1]), encode: ResourcesAssigned::encode;
    /// Guest -> host: creates an interrupt, processor-array form (OpenVMM's two padding
    /// bytes land in `trailing`).
    CreateInterruptMessage2(Fixed<CreateInterrupt2Body>) = CREATE_INTERRUPT_MESSAGE2, GuestToHost, V1_2,
        decode: |r| decode_fixed(r, "CREATE_INTERRUPT_MESSAGE2 body"), encode: encode_fixed;
    /// Guest -> host: deletes an interrupt, version 2.
    DeleteInterruptMessage2(Fixed<DeleteInterruptBody>) = DELETE_INTERRUPT_MESSAGE2, GuestToHost, V1_2,
        decode: |r| decode_fixed(r, "DELETE_INTERRUPT_MESSAGE2 body"), encode: encode_fixed;
    /// Host -> guest: the functions on the bus with NUMA information.
    BusRelations2(BusRelations<FunctionDescription2>) = BUS_RELATIONS2, HostToGuest, V1_3,
        decode: decode_relations, encode: encode_relations;
    /// Guest -> host: resources, version 3 (MSI resources 80 bytes each).
    ResourcesAssigned3(ResourcesAssigned) = RESOURCES_ASSIGNED3, GuestToHost, V1_4,
        decode: |r| ResourcesAssigned::decode(r, MSI_RESOURCE_SIZES[2]), encode: ResourcesAssigned::encode;
    /// Guest -> host: creates an interrupt with a 32-bit vector.
    CreateInterruptMessage3(Fixed<CreateInterrupt3Body>) = CREATE_INTERRUPT_MESSAGE3, GuestToHost, V1_4,
        decode: |r| decode_fixed(r, "CREATE_INTERRUPT_MESSAGE3 body"), encode: encode_fixed;
    /// Guest -> host: resets a function.
    ResetDevice(Fixed<SlotBody>) = RESET_DEVICE, GuestToHost, V1_5,
        decode: |r| decode_fixed(r, "wslot"), encode: encode_fixed;
    /// Guest -> host: a TDISP command (header decoded, data carried).
    TdispCommand(TdispCommand) = TDISP_COMMAND, GuestToHost, V1_7,
        decode: decode_tdisp, encode: encode_tdisp;
    /// Guest -> paravisor: per-BAR isolation of a TDISP device.
    QueryIsolatedResources(Fixed<SlotBody>) = QUERY_ISOLATED_RESOURCES, GuestToHost, V1_7,
        decode: |r| decode_fixed(r, "wslot"), encode: encode_fixed;
}

/// Decodes one vPCI payload (the bytes after the VMBus packet descriptor) sent by `from`
/// on a channel that negotiated `version`.
///
/// QUERY_PROTOCOL_VERSION is accepted at any version (it is how one is agreed). Never
/// panics; allocates at most what the payload itself holds.
pub fn decode(
    bytes: &[u8],
    from: Sender,
    version: ProtocolVersion,
) -> Result<Message, DecodeError> {
    let mut r = Reader::new(bytes);
    let ty = MessageType(r.read::<U32>("message type")?.get());
    let (direction, min) = rules(ty).ok_or(DecodeError::UnknownType { message_type: ty.0 })?;
    if !direction.allows(from) {
        return Err(DecodeError::WrongSender {
            message: ty,
            sender: from,
        });
    }
    if version < min && ty != MessageType::QUERY_PROTOCOL_VERSION {
        return Err(DecodeError::VersionTooLow {
            message: ty,
            required: min,
            negotiated: version,
        });
    }
    decode_body(ty, &mut r)
}

/// Encodes a message, appending to `out`.
pub fn encode_into(message: &Message, out: &mut Vec<u8>) {
    out.extend_from_slice(U32::new(message.message_type().0).as_bytes());
    encode_body(message, out);
}

/// Encodes a message into a new buffer.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(message, &mut out);
    out
}

impl Message {
    /// The function this message is about, if it names one.
    pub fn wslot(&self) -> Option<WinSlot> {
        Some(match self {
            Message::InvalidateDevice(m)
            | Message::QueryResourceRequirements(m)
            | Message::Eject(m)
            | Message::QueryStop(m)
            | Message::Reenable(m)
            | Message::QueryStopFailed(m)
            | Message::ResourcesReleased(m)
            | Message::ResetDevice(m)
            | Message::QueryIsolatedResources(m) => m.body.wslot,
            Message::PowerStateChange(m) => m.body.wslot,
            Message::QueryResourceResources(m) => m.body.wslot,
            Message::ReadBlock(m) => m.body.wslot,
            Message::WriteBlock(m) => m.head.wslot,
            Message::EjectionComplete(m) => m.body.wslot,
            Message::ResourcesAssigned(m)
            | Message::ResourcesAssigned2(m)
            | Message::ResourcesAssigned3(m) => m.head.wslot,
            Message::InvalidateBlock(m) => m.body.wslot,
            Message::CreateInterruptMessage(m) => m.body.wslot,
            Message::CreateInterruptMessage2(m) => m.body.wslot,
            Message::CreateInterruptMessage3(m) => m.body.wslot,
            Message::DeleteInterruptMessage(m) | Message::DeleteInterruptMessage2(m) => {
                m.body.wslot
            }
            Message::TdispCommand(m) => m.wslot,
            Message::BusRelations(_)
            | Message::BusRelations2(_)
            | Message::QueryBusRelations(_)
            | Message::InvalidateBus(_)
            | Message::BusD0Entry(_)
            | Message::BusD0Exit(_)
            | Message::QueryProtocolVersion(_) => return None,
        })
    }

    /// The sender this message type comes from, when the protocol pins it down.
    pub fn direction(&self) -> Direction {
        rules(self.message_type()).map_or(Direction::Either, |(d, _)| d)
    }

    /// Clears every bit the protocol reserves as zero (slot bits 8-31), so the message
    /// decodes again. Used by generators and by code that builds messages from loose input.
    pub fn clear_reserved(&mut self) {
        fn all<T: Reserved>(items: &mut [T]) {
            items.iter_mut().for_each(Reserved::clear_reserved);
        }
        match self {
            Message::BusRelations(m) => all(&mut m.functions),
            Message::BusRelations2(m) => all(&mut m.functions),
            Message::QueryBusRelations(m) | Message::InvalidateBus(m) | Message::BusD0Exit(m) => {
                m.body.clear_reserved()
            }
            Message::InvalidateDevice(m)
            | Message::QueryResourceRequirements(m)
            | Message::Eject(m)
            | Message::QueryStop(m)
            | Message::Reenable(m)
            | Message::QueryStopFailed(m)
            | Message::ResourcesReleased(m)
            | Message::ResetDevice(m)
            | Message::QueryIsolatedResources(m) => m.body.clear_reserved(),
            Message::PowerStateChange(m) => m.body.clear_reserved(),
            Message::QueryResourceResources(m) => m.body.clear_reserved(),
            Message::BusD0Entry(m) => m.body.clear_reserved(),
            Message::ReadBlock(m) => m.body.clear_reserved(),
            Message::WriteBlock(m) => m.head.clear_reserved(),
            Message::EjectionComplete(m) => m.body.clear_reserved(),
            Message::ResourcesAssigned(m)
            | Message::ResourcesAssigned2(m)
            | Message::ResourcesAssigned3(m) => m.head.clear_reserved(),
            Message::InvalidateBlock(m) => m.body.clear_reserved(),
            Message::QueryProtocolVersion(m) => m.body.clear_reserved(),
            Message::CreateInterruptMessage(m) => m.body.clear_reserved(),
            Message::CreateInterruptMessage2(m) => m.body.clear_reserved(),
            Message::CreateInterruptMessage3(m) => m.body.clear_reserved(),
            Message::DeleteInterruptMessage(m) | Message::DeleteInterruptMessage2(m) => {
                m.body.clear_reserved()
            }
            Message::TdispCommand(m) => m.wslot.clear_reserved(),
        }
    }
}
