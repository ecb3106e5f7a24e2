//! Completions: the replies a host sends (VMBus packet type COMP) to requests that asked for
//! one. A completion carries no message type, so decoding needs the request's type.

use crate::error::DecodeError;
use crate::message::{
    Direction, Fixed, ResourcesAssigned, TdispCommand, decode_fixed, decode_tdisp, encode_fixed,
    encode_tdisp, hex, rules, serialize_trailing,
};
use crate::reader::Reader;
use crate::types::{MessageType, ProtocolVersion, Status};
use crate::wire::*;
use serde::Serialize;
use serde::ser::SerializeMap;
use zerocopy::IntoBytes;
use zerocopy::little_endian::U32;

/// A decoded completion: the status every completion starts with, and what follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The type of the request this completes.
    pub request: MessageType,
    /// The status; negative (as i32) is failure.
    pub status: Status,
    /// The rest of the completion.
    pub body: CompletionBody,
}

/// What follows a completion's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompletionBody {
    /// Only the status (and these bytes after it, if any). Requests such as BUS_D0ENTRY get
    /// nothing more; a failed request may be answered with its status alone; Linux reads only
    /// the status of QUERY_PROTOCOL_VERSION and RESOURCES_ASSIGNED.
    StatusOnly(Vec<u8>),
    /// QUERY_PROTOCOL_VERSION, with the version the host speaks (OpenVMM's 8-byte reply).
    ProtocolVersion(Fixed<VersionReply>),
    /// QUERY_RESOURCE_REQUIREMENTS: the probed BARs.
    ResourceRequirements(Fixed<ResourceRequirementsReply>),
    /// RESOURCES_ASSIGNED(2,3) as OpenVMM answers it: the translated resources (72-byte MSI
    /// resources for RESOURCES_ASSIGNED3 as OpenVMM sends them, or 80-byte ones).
    ResourcesAssigned(ResourcesAssigned),
    /// CREATE_INTERRUPT_MESSAGE(1,2,3): the translated interrupt.
    CreateInterrupt(Fixed<CreateInterruptReply>),
    /// POWER_STATE_CHANGE: the resulting state (OpenVMM answers with the status alone, which
    /// decodes as [`CompletionBody::StatusOnly`]).
    PowerStateChange(Fixed<PowerStateReply>),
    /// READ_BLOCK: the bytes read.
    ReadBlock(Vec<u8>),
    /// TDISP_COMMAND: slot and response data.
    Tdisp(TdispCommand),
    /// QUERY_ISOLATED_RESOURCES: per-BAR and DMA isolation.
    IsolatedResources(Fixed<IsolatedResourcesReply>),
}

/// What a completion of `request` carries after its status, or `None` when the request gets
/// no completion at all.
fn completion_shape(request: MessageType) -> Option<Shape> {
    use MessageType as T;
    Some(match request {
        T::QUERY_PROTOCOL_VERSION => Shape::OptionalBody,
        T::QUERY_RESOURCE_REQUIREMENTS
        | T::CREATE_INTERRUPT_MESSAGE
        | T::CREATE_INTERRUPT_MESSAGE2
        | T::CREATE_INTERRUPT_MESSAGE3
        | T::TDISP_COMMAND
        | T::QUERY_ISOLATED_RESOURCES => Shape::Body,
        // OpenVMM's host answers with the status alone, even on success.
        T::POWER_STATE_CHANGE => Shape::BodyOrPaddedStatus,
        T::RESOURCES_ASSIGNED | T::RESOURCES_ASSIGNED2 | T::RESOURCES_ASSIGNED3 => {
            Shape::OptionalBody
        }
        T::READ_BLOCK => Shape::Body,
        // Linux never asks for a completion of these, but OpenVMM's client asks for one of
        // DELETE_INTERRUPT_MESSAGE, and OpenVMM's host answers all three with a status.
        T::DELETE_INTERRUPT_MESSAGE | T::DELETE_INTERRUPT_MESSAGE2 | T::RESOURCES_RELEASED => {
            Shape::StatusOnly
        }
        // Fire-and-forget: no guest asks for their completion (Linux and OpenVMM's client
        // send both without the completion-requested flag).
        T::QUERY_BUS_RELATIONS | T::EJECTION_COMPLETE => return None,
        other => match rules(other) {
            Some((Direction::HostToGuest, _)) | None => return None,
            Some(_) => Shape::StatusOnly,
        },
    })
}

/// The fewest bytes after the status that make a body for `request`'s completion.
fn min_body(request: MessageType) -> usize {
    use MessageType as T;
    match request {
        T::QUERY_PROTOCOL_VERSION => VersionReply::SIZE,
        T::QUERY_RESOURCE_REQUIREMENTS => ResourceRequirementsReply::SIZE,
        T::CREATE_INTERRUPT_MESSAGE
        | T::CREATE_INTERRUPT_MESSAGE2
        | T::CREATE_INTERRUPT_MESSAGE3 => CreateInterruptReply::SIZE,
        T::POWER_STATE_CHANGE => PowerStateReply::SIZE,
        T::QUERY_ISOLATED_RESOURCES => IsolatedResourcesReply::SIZE,
        T::RESOURCES_ASSIGNED | T::RESOURCES_ASSIGNED2 | T::RESOURCES_ASSIGNED3 => {
            ResourcesHead::SIZE
        }
        T::TDISP_COMMAND => TdispHead::SIZE,
        _ => 0,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    StatusOnly,
    /// A typed body, which may be absent (status only) whatever the status.
    OptionalBody,
    /// A typed body, which only a failure may leave out.
    Body,
    /// A typed body, or the status alone: after a success only VMBus padding may follow it
    /// (fewer than 8 bytes), after a failure anything shorter than the body.
    BodyOrPaddedStatus,
}

/// VMBus pads every payload to this many bytes.
const VMBUS_PACKET_ALIGN: usize = 8;

/// Whether a request of this type gets a completion when it asks for one. QUERY_BUS_RELATIONS,
/// EJECTION_COMPLETE and host messages get none; DELETE_INTERRUPT_MESSAGE(2) and
/// RESOURCES_RELEASED get a status when they ask (Linux never asks, OpenVMM's client does).
pub fn gets_completion(request: MessageType) -> bool {
    rules(request).is_some() && completion_shape(request).is_some()
}

/// Decodes the payload of a completion of a `request` sent on a channel that negotiated
/// `version`. Never panics; allocates at most what the payload holds.
pub fn decode_completion(
    bytes: &[u8],
    request: MessageType,
    version: ProtocolVersion,
) -> Result<Completion, DecodeError> {
    let (_, min) = rules(request).ok_or(DecodeError::UnknownType {
        message_type: request.0,
    })?;
    let shape = completion_shape(request).ok_or(DecodeError::NoCompletion { request })?;
    if version < min && request != MessageType::QUERY_PROTOCOL_VERSION {
        return Err(DecodeError::VersionTooLow {
            message: request,
            required: min,
            negotiated: version,
        });
    }
    let mut r = Reader::new(bytes);
    let status = Status(r.read::<StatusHead>("status")?.status.get());
    // VMBus pads every payload to 8 bytes, so "status only" arrives with up to 4 zero bytes
    // after it: anything shorter than the body counts as no body (and is kept as trailing).
    let short = r.remaining() < min_body(request);
    let status_only = match shape {
        Shape::StatusOnly => true,
        Shape::OptionalBody => short,
        Shape::Body => !status.is_success() && short,
        // 4 status bytes plus padding leave fewer than 8; a longer remainder must be the body.
        Shape::BodyOrPaddedStatus => {
            short && (!status.is_success() || r.remaining() < VMBUS_PACKET_ALIGN)
        }
    };
    let body = if status_only {
        CompletionBody::StatusOnly(r.rest().to_vec())
    } else {
        decode_body(request, &mut r)?
    };
    Ok(Completion {
        request,
        status,
        body,
    })
}

fn decode_body(request: MessageType, r: &mut Reader<'_>) -> Result<CompletionBody, DecodeError> {
    use MessageType as T;
    Ok(match request {
        T::QUERY_PROTOCOL_VERSION => {
            CompletionBody::ProtocolVersion(decode_fixed(r, "protocol_version")?)
        }
        T::QUERY_RESOURCE_REQUIREMENTS => {
            CompletionBody::ResourceRequirements(decode_fixed(r, "probed_bar")?)
        }
        T::CREATE_INTERRUPT_MESSAGE
        | T::CREATE_INTERRUPT_MESSAGE2
        | T::CREATE_INTERRUPT_MESSAGE3 => {
            CompletionBody::CreateInterrupt(decode_fixed(r, "interrupt reply")?)
        }
        T::POWER_STATE_CHANGE => CompletionBody::PowerStateChange(decode_fixed(r, "power reply")?),
        T::QUERY_ISOLATED_RESOURCES => {
            CompletionBody::IsolatedResources(decode_fixed(r, "isolation reply")?)
        }
        T::RESOURCES_ASSIGNED => {
            CompletionBody::ResourcesAssigned(ResourcesAssigned::decode(r, MSI_RESOURCE_SIZES[0])?)
        }
        T::RESOURCES_ASSIGNED2 => {
            CompletionBody::ResourcesAssigned(ResourcesAssigned::decode(r, MSI_RESOURCE_SIZES[1])?)
        }
        // OpenVMM's host answers RESOURCES_ASSIGNED3 with version 2 (72-byte) MSI resources.
        T::RESOURCES_ASSIGNED3 => {
            CompletionBody::ResourcesAssigned(ResourcesAssigned::decode_either(
                r,
                MSI_RESOURCE_SIZES[2],
                Some(MSI_RESOURCE_SIZES[1]),
            )?)
        }
        T::READ_BLOCK => CompletionBody::ReadBlock(r.rest().to_vec()),
        T::TDISP_COMMAND => CompletionBody::Tdisp(decode_tdisp(r)?),
        _ => CompletionBody::StatusOnly(r.rest().to_vec()),
    })
}

impl Completion {
    /// A completion with only a status.
    pub fn status_only(request: MessageType, status: Status) -> Self {
        Self {
            request,
            status,
            body: CompletionBody::StatusOnly(Vec::new()),
        }
    }

    /// Encodes the completion's payload, appending to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(U32::new(self.status.0).as_bytes());
        match &self.body {
            CompletionBody::StatusOnly(rest) | CompletionBody::ReadBlock(rest) => {
                out.extend_from_slice(rest)
            }
            CompletionBody::ProtocolVersion(f) => encode_fixed(f, out),
            CompletionBody::ResourceRequirements(f) => encode_fixed(f, out),
            CompletionBody::ResourcesAssigned(m) => m.encode(out),
            CompletionBody::CreateInterrupt(f) => encode_fixed(f, out),
            CompletionBody::PowerStateChange(f) => encode_fixed(f, out),
            CompletionBody::Tdisp(m) => encode_tdisp(m, out),
            CompletionBody::IsolatedResources(f) => encode_fixed(f, out),
        }
    }

    /// Encodes the completion's payload into a new buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

impl Serialize for Completion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", "COMPLETION")?;
        map.serialize_entry("completion_of", self.request.name().unwrap_or("?"))?;
        map.serialize_entry("status", &self.status.0)?;
        if let Some(name) = self.status.name() {
            map.serialize_entry("status_name", name)?;
        }
        match &self.body {
            CompletionBody::StatusOnly(rest) => serialize_trailing(&mut map, rest)?,
            CompletionBody::ProtocolVersion(f) => f.serialize_into(&mut map)?,
            CompletionBody::ResourceRequirements(f) => f.serialize_into(&mut map)?,
            CompletionBody::ResourcesAssigned(m) => m.serialize_into(&mut map)?,
            CompletionBody::CreateInterrupt(f) => f.serialize_into(&mut map)?,
            CompletionBody::PowerStateChange(f) => f.serialize_into(&mut map)?,
            CompletionBody::ReadBlock(bytes) => map.serialize_entry("bytes", &hex(bytes))?,
            CompletionBody::Tdisp(m) => m.serialize_into(&mut map)?,
            CompletionBody::IsolatedResources(f) => f.serialize_into(&mut map)?,
        }
        map.end()
    }
}
