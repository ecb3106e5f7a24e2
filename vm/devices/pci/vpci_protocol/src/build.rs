//! Builders for the payloads peers send, in the dialect Linux's `pci-hyperv` writes them
//! (packed structs; RESOURCES_ASSIGNED(2) padded to Linux's sizes): for tests, simulators and
//! fuzzers, so that each crate does not keep its own copies. Every function returns the
//! payload as the sender writes it, before VMBus pads it to 8 bytes (see
//! `vmbus_channel::padded` for that).

use crate::encode;
use crate::wire::{
    CreateInterrupt2Body, CreateInterrupt3Body, CreateInterruptBody, D0EntryBody,
    DeleteInterruptBody, EjectionCompleteBody, Empty, FunctionDescription, FunctionDescription2,
    ResourcesHead, SlotBody, VersionBody,
};
use crate::{BusRelations, Fixed, Message, ProtocolVersion, ResourcesAssigned, Status, WinSlot};
use zerocopy::FromZeros;

/// Linux's CREATE_INTERRUPT_MESSAGE2: 78 bytes, without OpenVMM's two bytes of padding.
const CREATE_INTERRUPT2_LINUX: usize = 78;
/// What Linux pads RESOURCES_ASSIGNED2 to beyond the 136-byte head (202 bytes in all).
const RESOURCES_ASSIGNED2_TAIL: usize = 66;
/// What Linux pads RESOURCES_ASSIGNED to beyond the 136-byte head (148 bytes in all).
const RESOURCES_ASSIGNED_TAIL: usize = 12;

fn slot_message(f: fn(Fixed<SlotBody>) -> Message, slot: WinSlot) -> Vec<u8> {
    encode(&f(Fixed::new(SlotBody { wslot: slot })))
}

/// QUERY_PROTOCOL_VERSION offering `version`.
pub fn query_version(version: ProtocolVersion) -> Vec<u8> {
    encode(&Message::QueryProtocolVersion(Fixed::new(VersionBody {
        protocol_version: version.0.into(),
    })))
}

/// QUERY_BUS_RELATIONS.
pub fn query_relations() -> Vec<u8> {
    encode(&Message::QueryBusRelations(Fixed::new(Empty {})))
}

/// BUS_D0ENTRY with the config window at `mmio_base`.
pub fn d0_entry(mmio_base: u64) -> Vec<u8> {
    encode(&Message::BusD0Entry(Fixed::new(D0EntryBody {
        reserved: 0.into(),
        mmio_base: mmio_base.into(),
    })))
}

/// BUS_D0EXIT.
pub fn d0_exit() -> Vec<u8> {
    encode(&Message::BusD0Exit(Fixed::new(Empty {})))
}

/// QUERY_RESOURCE_REQUIREMENTS for `slot`.
pub fn query_requirements(slot: WinSlot) -> Vec<u8> {
    slot_message(Message::QueryResourceRequirements, slot)
}

/// EJECT of `slot` (from the host).
pub fn eject(slot: WinSlot) -> Vec<u8> {
    slot_message(Message::Eject, slot)
}

/// EJECTION_COMPLETE for `slot`, with Linux's status word (12 bytes).
pub fn ejection_complete(slot: WinSlot) -> Vec<u8> {
    encode(&Message::EjectionComplete(Fixed::new(
        EjectionCompleteBody {
            wslot: slot,
            status: 0.into(),
        },
    )))
}

/// RESOURCES_RELEASED for `slot`.
pub fn resources_released(slot: WinSlot) -> Vec<u8> {
    slot_message(Message::ResourcesReleased, slot)
}

/// The 136-byte head of RESOURCES_ASSIGNED(2,3) for `slot`, with memory ranges (type 3,
/// address, length) in its first resource descriptors (at most six are kept).
fn resources_head(slot: WinSlot, memory: &[(u64, u32)]) -> ResourcesHead {
    let mut head = ResourcesHead::new_zeroed();
    head.wslot = slot;
    for (range, &(address, length)) in head.memory_range.iter_mut().zip(memory) {
        range.resource_type = 3;
        range.address = address.into();
        range.length = length.into();
    }
    head
}

/// RESOURCES_ASSIGNED for `slot` as Linux sends it below 1.2 (no MSI resources, 148 bytes).
pub fn resources_assigned(slot: WinSlot, memory: &[(u64, u32)]) -> Vec<u8> {
    encode(&Message::ResourcesAssigned(ResourcesAssigned {
        head: resources_head(slot, memory),
        msi_resources: Vec::new(),
        trailing: vec![0; RESOURCES_ASSIGNED_TAIL],
    }))
}

/// RESOURCES_ASSIGNED2 for `slot` as Linux sends it (no MSI resources, 202 bytes).
pub fn resources_assigned2(slot: WinSlot, memory: &[(u64, u32)]) -> Vec<u8> {
    encode(&Message::ResourcesAssigned2(ResourcesAssigned {
        head: resources_head(slot, memory),
        msi_resources: Vec::new(),
        trailing: vec![0; RESOURCES_ASSIGNED2_TAIL],
    }))
}

/// CREATE_INTERRUPT_MESSAGE (1.0, 1.1) for one vector delivered to the processors in
/// `cpu_mask` (Linux sends all ones: any processor).
pub fn create_interrupt(slot: WinSlot, vector: u8, cpu_mask: u64) -> Vec<u8> {
    let mut body = CreateInterruptBody::new_zeroed();
    body.wslot = slot;
    body.int_desc.vector = vector;
    body.int_desc.vector_count = 1.into();
    body.int_desc.cpu_mask = cpu_mask.into();
    encode(&Message::CreateInterruptMessage(Fixed::new(body)))
}

/// CREATE_INTERRUPT_MESSAGE2 (1.2, 1.3) for one vector on processor `cpu`, in Linux's packed
/// 78 bytes.
pub fn create_interrupt2(slot: WinSlot, vector: u8, cpu: u16) -> Vec<u8> {
    let mut body = CreateInterrupt2Body::new_zeroed();
    body.wslot = slot;
    body.int_desc.vector = vector;
    body.int_desc.vector_count = 1.into();
    body.int_desc.processor_count = 1.into();
    if let Some(first) = body.int_desc.processor_array.first_mut() {
        *first = cpu.into();
    }
    let mut bytes = encode(&Message::CreateInterruptMessage2(Fixed::new(body)));
    bytes.truncate(CREATE_INTERRUPT2_LINUX);
    bytes
}

/// CREATE_INTERRUPT_MESSAGE3 (1.4) for one vector on processor `cpu`.
pub fn create_interrupt3(slot: WinSlot, vector: u32, cpu: u16) -> Vec<u8> {
    let mut body = CreateInterrupt3Body::new_zeroed();
    body.wslot = slot;
    body.int_desc.vector = vector.into();
    body.int_desc.vector_count = 1.into();
    body.int_desc.processor_count = 1.into();
    if let Some(first) = body.int_desc.processor_array.first_mut() {
        *first = cpu.into();
    }
    encode(&Message::CreateInterruptMessage3(Fixed::new(body)))
}

/// DELETE_INTERRUPT_MESSAGE for the interrupt the host translated to `address`/`data`.
pub fn delete_interrupt(slot: WinSlot, address: u64, data: u32) -> Vec<u8> {
    let mut body = DeleteInterruptBody::new_zeroed();
    body.wslot = slot;
    body.int_desc.vector_count = 1.into();
    body.int_desc.address = address.into();
    body.int_desc.data = data.into();
    encode(&Message::DeleteInterruptMessage(Fixed::new(body)))
}

/// A function's BUS_RELATIONS2 description: its slot, vendor and device ids, serial, and
/// base class 2 (network), no NUMA node.
pub fn description2(slot: WinSlot, vendor: u16, device: u16, serial: u32) -> FunctionDescription2 {
    let mut d = FunctionDescription2::new_zeroed();
    d.v_id = vendor.into();
    d.d_id = device.into();
    d.base_class = 2;
    d.wslot = slot;
    d.ser = serial.into();
    d
}

/// BUS_RELATIONS2 listing `functions` (from the host, 1.3 and later).
pub fn relations2(functions: &[FunctionDescription2]) -> Vec<u8> {
    encode(&Message::BusRelations2(BusRelations {
        functions: functions.to_vec(),
        trailing: Vec::new(),
    }))
}

/// BUS_RELATIONS listing `functions` in the 20-byte form (from the host, below 1.3).
pub fn relations(functions: &[FunctionDescription2]) -> Vec<u8> {
    encode(&Message::BusRelations(BusRelations {
        functions: functions.iter().map(FunctionDescription2::narrow).collect(),
        trailing: Vec::new(),
    }))
}

/// A completion with `status` only.
pub fn status_reply(status: Status) -> Vec<u8> {
    status.0.to_le_bytes().to_vec()
}

/// A successful QUERY_RESOURCE_REQUIREMENTS completion reporting `probed_bars`.
pub fn requirements_reply(probed_bars: [u32; 6]) -> Vec<u8> {
    let mut v = status_reply(Status::SUCCESS);
    for bar in probed_bars {
        v.extend_from_slice(&bar.to_le_bytes());
    }
    v
}

/// A successful CREATE_INTERRUPT_MESSAGE completion translating one vector to
/// `address`/`data`.
pub fn interrupt_reply(address: u64, data: u32) -> Vec<u8> {
    let mut v = status_reply(Status::SUCCESS);
    v.extend_from_slice(&[0; 4]); // reserved
    v.extend_from_slice(&[0; 2]); // tran_int_desc.reserved
    v.extend_from_slice(&1u16.to_le_bytes()); // vector_count
    v.extend_from_slice(&data.to_le_bytes());
    v.extend_from_slice(&address.to_le_bytes());
    v
}

/// The 20-byte BUS_RELATIONS form of `d` (for a test that needs the raw struct).
pub fn narrow(d: &FunctionDescription2) -> FunctionDescription {
    d.narrow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CompletionBody, MessageType, Sender, decode, decode_completion};
    use zerocopy::IntoBytes;

    /// Each builder's payload decodes as the message it names, at the size Linux sends.
    #[test]
    fn builders_decode_as_linux_sizes() {
        let s = WinSlot::new(3, 1);
        let v = ProtocolVersion::V1_4;
        let cases: [(Vec<u8>, Sender, MessageType, usize); 10] = [
            (
                query_version(v),
                Sender::Guest,
                MessageType::QUERY_PROTOCOL_VERSION,
                8,
            ),
            (
                query_relations(),
                Sender::Guest,
                MessageType::QUERY_BUS_RELATIONS,
                4,
            ),
            (
                d0_entry(0xfe00_0000),
                Sender::Guest,
                MessageType::BUS_D0ENTRY,
                16,
            ),
            (
                query_requirements(s),
                Sender::Guest,
                MessageType::QUERY_RESOURCE_REQUIREMENTS,
                8,
            ),
            (eject(s), Sender::Host, MessageType::EJECT, 8),
            (
                ejection_complete(s),
                Sender::Guest,
                MessageType::EJECTION_COMPLETE,
                12,
            ),
            (
                resources_assigned(s, &[]),
                Sender::Guest,
                MessageType::RESOURCES_ASSIGNED,
                148,
            ),
            (
                resources_assigned2(s, &[(0x1000, 0x4000)]),
                Sender::Guest,
                MessageType::RESOURCES_ASSIGNED2,
                202,
            ),
            (
                create_interrupt2(s, 0x30, 1),
                Sender::Guest,
                MessageType::CREATE_INTERRUPT_MESSAGE2,
                78,
            ),
            (
                delete_interrupt(s, 0xfee0_0000, 0x30),
                Sender::Guest,
                MessageType::DELETE_INTERRUPT_MESSAGE,
                24,
            ),
        ];
        for (bytes, sender, ty, len) in cases {
            assert_eq!(bytes.len(), len, "{ty}");
            let m = decode(&bytes, sender, v).unwrap_or_else(|e| panic!("{ty}: {e}"));
            assert_eq!(m.message_type(), ty);
        }
        let d = description2(s, 0x1414, 0xb1, 7);
        let m = decode(&relations2(&[d]), Sender::Host, v).expect("relations2");
        assert!(matches!(m, Message::BusRelations2(r) if r.functions == [d]));
        let m = decode(&relations(&[d]), Sender::Host, ProtocolVersion::V1_1).expect("relations");
        assert!(matches!(m, Message::BusRelations(r) if r.functions == [d.narrow()]));
        assert_eq!(
            narrow(&d).as_bytes(),
            &d.as_bytes()[..FunctionDescription::SIZE]
        );
    }

    /// The completion builders decode as the completions of their requests.
    #[test]
    fn replies_decode() {
        let v = ProtocolVersion::V1_4;
        let c = decode_completion(
            &requirements_reply([0xffff_c000, 0, 0, 0, 0, 0]),
            MessageType::QUERY_RESOURCE_REQUIREMENTS,
            v,
        )
        .expect("requirements");
        assert!(
            matches!(c.body, CompletionBody::ResourceRequirements(r) if r.body.probed_bar[0].get() == 0xffff_c000)
        );
        let c = decode_completion(
            &interrupt_reply(0xfee0_1000, 0x41),
            MessageType::CREATE_INTERRUPT_MESSAGE2,
            v,
        )
        .expect("interrupt");
        assert!(matches!(c.body, CompletionBody::CreateInterrupt(r)
            if r.body.int_desc.address.get() == 0xfee0_1000 && r.body.int_desc.data.get() == 0x41));
        let c = decode_completion(&status_reply(Status::BAD_DATA), MessageType::BUS_D0ENTRY, v)
            .expect("status");
        assert_eq!(c.status, Status::BAD_DATA);
    }
}
