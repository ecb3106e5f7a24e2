//! Fixed-layout wire structs, byte for byte as the spec lays them out.
//!
//! Every struct is `#[repr(C)]` over unaligned little-endian fields, so it has no padding and
//! alignment 1 (the spec's "packed"); its size is asserted at compile time against the spec.
//! Structs describe a message's body *after* its 4-byte type; the type is the `Message`
//! variant.

use crate::error::DecodeError;
use crate::types::WinSlot;
use serde::Serialize;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Serializes a wire field as plain numbers (the wire types are little-endian wrappers).
pub(crate) struct Json<'a, T: ?Sized>(pub(crate) &'a T);

macro_rules! json_int {
    ($($t:ty),*) => {$(
        impl Serialize for Json<'_, $t> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.get().serialize(s)
            }
        }
    )*};
}
json_int!(U16, U32, U64);

impl Serialize for Json<'_, u8> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*self.0)
    }
}

impl Serialize for Json<'_, WinSlot> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<T, const N: usize> Serialize for Json<'_, [T; N]>
where
    for<'a> Json<'a, T>: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Json))
    }
}

/// Checks a wire value for bits the spec reserves as zero.
pub trait Reserved {
    /// Returns an error naming the absolute byte offset of the first reserved bit set;
    /// `offset` is where this value starts in the packet.
    fn check_reserved(&self, offset: usize) -> Result<(), DecodeError>;
    /// Clears every bit the spec reserves as zero (used by encoders and generators).
    fn clear_reserved(&mut self);
}

macro_rules! no_reserved {
    ($($t:ty),*) => {$(
        impl Reserved for $t {
            fn check_reserved(&self, _offset: usize) -> Result<(), DecodeError> { Ok(()) }
            fn clear_reserved(&mut self) {}
        }
    )*};
}
no_reserved!(u8, U16, U32, U64);

impl Reserved for WinSlot {
    fn check_reserved(&self, offset: usize) -> Result<(), DecodeError> {
        match self.reserved() {
            0 => Ok(()),
            value => Err(DecodeError::ReservedBitsSet {
                offset,
                field: "wslot",
                value: u64::from(value),
            }),
        }
    }

    fn clear_reserved(&mut self) {
        *self = WinSlot::from_raw(self.raw() & !WinSlot::RESERVED_MASK);
    }
}

impl<T: Reserved, const N: usize> Reserved for [T; N] {
    fn check_reserved(&self, offset: usize) -> Result<(), DecodeError> {
        let size = size_of::<T>();
        self.iter()
            .enumerate()
            .try_for_each(|(i, item)| item.check_reserved(offset + i * size))
    }

    fn clear_reserved(&mut self) {
        self.iter_mut().for_each(Reserved::clear_reserved);
    }
}

/// Writes a wire struct's fields, with the spec's names, into an open JSON-like map.
pub trait Fields {
    /// Adds one entry per field to `map`.
    fn serialize_fields<M: serde::ser::SerializeMap>(&self, map: &mut M) -> Result<(), M::Error>;
}

/// Defines a wire struct: zerocopy derives, a size assertion against the spec, reserved-bit
/// checks per field, and JSON output with the spec's field names.
macro_rules! wire_struct {
    ($(
        $(#[$meta:meta])*
        pub struct $name:ident ($size:literal) {
            $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)*
        }
    )*) => {$(
        $(#[$meta])*
        #[repr(C)]
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
            FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
        )]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        const _: () = assert!(size_of::<$name>() == $size);

        impl $name {
            /// The struct's size on the wire, in bytes.
            pub const SIZE: usize = $size;
        }

        impl Reserved for $name {
            #[allow(unused_variables)]
            fn check_reserved(&self, offset: usize) -> Result<(), DecodeError> {
                $(self.$field.check_reserved(offset + core::mem::offset_of!($name, $field))?;)*
                Ok(())
            }

            fn clear_reserved(&mut self) {
                $(self.$field.clear_reserved();)*
            }
        }

        impl Fields for $name {
            #[allow(unused_variables)]
            fn serialize_fields<M: serde::ser::SerializeMap>(
                &self,
                map: &mut M,
            ) -> Result<(), M::Error> {
                $(map.serialize_entry(stringify!($field), &Json(&self.$field))?;)*
                Ok(())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(None)?;
                self.serialize_fields(&mut map)?;
                map.end()
            }
        }

        impl Serialize for Json<'_, $name> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }
    )*};
}

wire_struct! {
    /// A body with nothing after the type (QUERY_BUS_RELATIONS, BUS_D0EXIT, INVALIDATE_BUS).
    pub struct Empty (0) {}

    /// A function on the bus, as BUS_RELATIONS lists it.
    pub struct FunctionDescription (20) {
        /// Vendor id.
        pub v_id: U16,
        /// Device id.
        pub d_id: U16,
        /// Revision id.
        pub rev: u8,
        /// Programming interface.
        pub prog_intf: u8,
        /// Subclass code.
        pub subclass: u8,
        /// Base class code.
        pub base_class: u8,
        /// Subsystem id: subsystem vendor id in the low 16 bits, subsystem id in the high 16.
        pub subsystem_id: U32,
        /// The function's slot.
        pub wslot: WinSlot,
        /// Serial number.
        pub ser: U32,
    }

    /// A function on the bus, as BUS_RELATIONS2 lists it (1.3+).
    pub struct FunctionDescription2 (28) {
        /// Vendor id.
        pub v_id: U16,
        /// Device id.
        pub d_id: U16,
        /// Revision id.
        pub rev: u8,
        /// Programming interface.
        pub prog_intf: u8,
        /// Subclass code.
        pub subclass: u8,
        /// Base class code.
        pub base_class: u8,
        /// Subsystem id: subsystem vendor id in the low 16 bits, subsystem id in the high 16.
        pub subsystem_id: U32,
        /// The function's slot.
        pub wslot: WinSlot,
        /// Serial number.
        pub ser: U32,
        /// Bit 0: `virtual_numa_node` is valid.
        pub flags: U32,
        /// The function's virtual NUMA node.
        pub virtual_numa_node: U16,
        /// Reserved.
        pub reserved: U16,
    }

    /// An MSI request with a CPU mask (CREATE_INTERRUPT_MESSAGE).
    pub struct MsiDesc (16) {
        /// Interrupt vector.
        pub vector: u8,
        /// Delivery mode (0 fixed, 1 lowest priority).
        pub delivery_mode: u8,
        /// Number of vectors.
        pub vector_count: U16,
        /// Reserved.
        pub reserved: U32,
        /// Target processors as a mask.
        pub cpu_mask: U64,
    }

    /// An MSI request with a processor array (CREATE_INTERRUPT_MESSAGE2, 1.2+).
    pub struct MsiDesc2 (70) {
        /// Interrupt vector.
        pub vector: u8,
        /// Delivery mode.
        pub delivery_mode: u8,
        /// Number of vectors.
        pub vector_count: U16,
        /// How many entries of `processor_array` are used.
        pub processor_count: U16,
        /// Target processors.
        pub processor_array: [U16; 32],
    }

    /// An MSI request with a 32-bit vector (CREATE_INTERRUPT_MESSAGE3, 1.4+).
    pub struct MsiDesc3 (74) {
        /// Interrupt vector (32 bits, for ARM64 LPIs).
        pub vector: U32,
        /// Delivery mode.
        pub delivery_mode: u8,
        /// Reserved.
        pub reserved: u8,
        /// Number of vectors.
        pub vector_count: U16,
        /// How many entries of `processor_array` are used.
        pub processor_count: U16,
        /// Target processors.
        pub processor_array: [U16; 32],
    }

    /// An interrupt as the host translated it: the address/data pair the device writes.
    pub struct TranIntDesc (16) {
        /// Reserved.
        pub reserved: U16,
        /// Number of vectors.
        pub vector_count: U16,
        /// MSI data.
        pub data: U32,
        /// MSI address.
        pub address: U64,
    }

    /// A resource descriptor (CM_PARTIAL_RESOURCE_DESCRIPTOR as vPCI carries it).
    pub struct ResourceDescriptor (20) {
        /// 0 null, 1 port, 2 interrupt, 3 memory, 4 DMA, 5 device specific, 6 bus number,
        /// 7 large memory.
        pub resource_type: u8,
        /// Share disposition.
        pub share_disposition: u8,
        /// Flags; bits 9-11 select large memory 40/48/64.
        pub flags: U16,
        /// Start address.
        pub address: U64,
        /// Length.
        pub length: U32,
        /// Padding.
        pub padding: U32,
    }

    /// QUERY_PROTOCOL_VERSION's body.
    pub struct VersionBody (4) {
        /// The offered version, `(major << 16) | minor`.
        pub protocol_version: U32,
    }

    /// BUS_D0ENTRY's body.
    pub struct D0EntryBody (12) {
        /// Reserved.
        pub reserved: U32,
        /// MMIO base of the config-space window.
        pub mmio_base: U64,
    }

    /// The body of every message that names only a function.
    pub struct SlotBody (4) {
        /// The function's slot.
        pub wslot: WinSlot,
    }

    /// BUS_RELATIONS(2)'s body head.
    pub struct RelationsHead (4) {
        /// How many descriptions follow.
        pub device_count: U32,
    }

    /// QUERY_RESOURCE_RESOURCES's body (OpenVMM's GET_RESOURCES layout).
    pub struct GetResourcesBody (28) {
        /// The function's slot.
        pub wslot: WinSlot,
        /// Reserved.
        pub reserved: [U64; 3],
    }

    /// EJECTION_COMPLETE's body.
    pub struct EjectionCompleteBody (8) {
        /// The function's slot.
        pub wslot: WinSlot,
        /// Status.
        pub status: U32,
    }

    /// POWER_STATE_CHANGE's body (Linux adds a reserved u32 after it).
    pub struct PowerStateBody (8) {
        /// The function's slot.
        pub wslot: WinSlot,
        /// Power state (D0 = 1, D3 = 4).
        pub power_state: U32,
    }

    /// CREATE_INTERRUPT_MESSAGE's body.
    pub struct CreateInterruptBody (20) {
        /// The function's slot.
        pub wslot: WinSlot,
        /// The request.
        pub int_desc: MsiDesc,
    }

    /// CREATE_INTERRUPT_MESSAGE2's body (OpenVMM pads it by two reserved bytes).
    pub struct CreateInterrupt2Body (74) {
        /// The function's slot.
        pub wslot: WinSlot,
        /// The request.
        pub int_desc: MsiDesc2,
    }

    /// CREATE_INTERRUPT_MESSAGE3's body (OpenVMM pads it by two reserved bytes).
    pub struct CreateInterrupt3Body (78) {
        /// The function's slot.
        pub wslot: WinSlot,
        /// The request.
        pub int_desc: MsiDesc3,
    }

    /// DELETE_INTERRUPT_MESSAGE(2)'s body.
    pub struct DeleteInterruptBody (20) {
        /// The function's slot.
        pub wslot: WinSlot,
        /// The interrupt, as the host translated it.
        pub int_desc: TranIntDesc,
    }

    /// READ_BLOCK's body.
    pub struct ReadBlockBody (12) {
        /// Block id.
        pub block_id: U32,
        /// The function's slot.
        pub wslot: WinSlot,
        /// Bytes to read (at most 128).
        pub bytes_requested: U32,
    }

    /// WRITE_BLOCK's body head; `byte_count` bytes follow.
    pub struct WriteBlockHead (12) {
        /// Block id.
        pub block_id: U32,
        /// The function's slot.
        pub wslot: WinSlot,
        /// Bytes that follow (at most 128).
        pub byte_count: U32,
    }

    /// INVALIDATE_BLOCK's body.
    pub struct InvalidateBlockBody (12) {
        /// The function's slot.
        pub wslot: WinSlot,
        /// Which blocks changed.
        pub block_mask: U64,
    }

    /// RESOURCES_ASSIGNED(2,3)'s body head (132 bytes after the type; OpenVMM's 136-byte
    /// head); `msi_descriptor_count` MSI resources follow.
    pub struct ResourcesHead (132) {
        /// The function's slot.
        pub wslot: WinSlot,
        /// The six BAR resources.
        pub memory_range: [ResourceDescriptor; 6],
        /// How many MSI resources follow (Linux sends 0).
        pub msi_descriptor_count: U32,
        /// Reserved.
        pub reserved: U32,
    }

    /// TDISP_COMMAND's body head; `data_length` bytes follow.
    pub struct TdispHead (12) {
        /// The function's slot.
        pub wslot: WinSlot,
        /// Bytes of command data that follow.
        pub data_length: U64,
    }

    /// The status every completion starts with.
    pub struct StatusHead (4) {
        /// NTSTATUS; negative (as i32) is failure.
        pub status: U32,
    }

    /// QUERY_RESOURCE_REQUIREMENTS's completion after the status.
    pub struct ResourceRequirementsReply (24) {
        /// What reading each BAR back after writing all ones gives.
        pub probed_bar: [U32; 6],
    }

    /// CREATE_INTERRUPT_MESSAGE(1,2,3)'s completion after the status.
    pub struct CreateInterruptReply (20) {
        /// Reserved.
        pub reserved: U32,
        /// The translated interrupt.
        pub int_desc: TranIntDesc,
    }

    /// POWER_STATE_CHANGE's completion after the status.
    pub struct PowerStateReply (12) {
        /// The function's slot.
        pub wslot: WinSlot,
        /// The state the function is now in.
        pub resultant_state: U32,
        /// Reserved.
        pub reserved: U32,
    }

    /// QUERY_PROTOCOL_VERSION's completion after the status (OpenVMM sends it; Linux reads
    /// only the status).
    pub struct VersionReply (4) {
        /// The version the host speaks.
        pub protocol_version: U32,
    }

    /// QUERY_ISOLATED_RESOURCES's completion after the status.
    pub struct IsolatedResourcesReply (28) {
        /// Per BAR: 0 invalid, 1 shared, 2 private.
        pub bar_isolation: [U32; 6],
        /// The DMA path: 1 shared, 2 private.
        pub dma_isolation: U32,
    }
}

impl From<&FunctionDescription> for FunctionDescription2 {
    /// The BUS_RELATIONS2 form of a BUS_RELATIONS description: the same identity and slot,
    /// with no NUMA node (`flags`, `virtual_numa_node` and `reserved` zero).
    fn from(d: &FunctionDescription) -> Self {
        Self {
            v_id: d.v_id,
            d_id: d.d_id,
            rev: d.rev,
            prog_intf: d.prog_intf,
            subclass: d.subclass,
            base_class: d.base_class,
            subsystem_id: d.subsystem_id,
            wslot: d.wslot,
            ser: d.ser,
            flags: U32::ZERO,
            virtual_numa_node: U16::ZERO,
            reserved: U16::ZERO,
        }
    }
}

impl FunctionDescription2 {
    /// The BUS_RELATIONS form of this description, for a guest that negotiated a version
    /// before 1.3: the first 20 bytes (identity, slot, serial); the NUMA fields are dropped.
    pub fn narrow(&self) -> FunctionDescription {
        FunctionDescription {
            v_id: self.v_id,
            d_id: self.d_id,
            rev: self.rev,
            prog_intf: self.prog_intf,
            subclass: self.subclass,
            base_class: self.base_class,
            subsystem_id: self.subsystem_id,
            wslot: self.wslot,
            ser: self.ser,
        }
    }
}

/// Size of one MSI resource that follows a RESOURCES_ASSIGNED head, by message version
/// (OpenVMM's MsiResource, MsiResource2, MsiResource3).
pub const MSI_RESOURCE_SIZES: [usize; 3] = [16, 72, 80];

/// The largest configuration block READ_BLOCK and WRITE_BLOCK move.
pub const CONFIG_BLOCK_SIZE_MAX: u32 = 128;

/// The most MSI resources one RESOURCES_ASSIGNED may carry (500 resources less 6 BARs).
pub const MAX_MSI_RESOURCES: u32 = 494;

/// The largest vPCI packet: a RESOURCES_ASSIGNED3 head with the most MSI resources.
pub const MAX_PACKET_SIZE: usize = 136 + 80 * MAX_MSI_RESOURCES as usize;

/// The most TDISP command data one packet may carry.
pub const MAX_TDISP_DATA: u64 = (MAX_PACKET_SIZE - 16) as u64;

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    /// The spec's sizes of whole messages (type + body) hold.
    #[test]
    fn message_sizes_match_the_spec() {
        assert_eq!(4 + CreateInterruptBody::SIZE, 24);
        assert_eq!(4 + CreateInterrupt2Body::SIZE, 78);
        assert_eq!(4 + CreateInterrupt3Body::SIZE, 82);
        assert_eq!(4 + DeleteInterruptBody::SIZE, 24);
        assert_eq!(4 + ResourcesHead::SIZE, 136);
        assert_eq!(4 + D0EntryBody::SIZE, 16);
        assert_eq!(4 + EjectionCompleteBody::SIZE, 12);
        assert_eq!(4 + InvalidateBlockBody::SIZE, 16);
        assert_eq!(4 + ResourceRequirementsReply::SIZE, 28);
        assert_eq!(4 + CreateInterruptReply::SIZE, 24);
        assert_eq!(4 + IsolatedResourcesReply::SIZE, 32);
    }

    /// Fields sit at the spec's offsets (little-endian).
    #[test]
    fn description2_offsets() {
        let d = FunctionDescription2 {
            v_id: 0x1414.into(),
            d_id: 0xb111.into(),
            rev: 1,
            prog_intf: 2,
            subclass: 3,
            base_class: 4,
            subsystem_id: 0x0506_0708.into(),
            wslot: WinSlot::new(1, 2),
            ser: 9.into(),
            flags: 1.into(),
            virtual_numa_node: 0x0a0b.into(),
            reserved: 0.into(),
        };
        let b = d.as_bytes();
        assert_eq!(&b[0..4], &[0x14, 0x14, 0x11, 0xb1]);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[8..12], &[8, 7, 6, 5]);
        assert_eq!(&b[12..16], &[0x41, 0, 0, 0]);
        assert_eq!(&b[20..24], &[1, 0, 0, 0]);
        assert_eq!(&b[24..26], &[0x0b, 0x0a]);
    }

    /// A description with every byte distinct, so a field moved or dropped shows.
    fn distinct_description2() -> FunctionDescription2 {
        let mut bytes = [0u8; FunctionDescription2::SIZE];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        // Keep the slot's reserved bits clear: device 13, function 0.
        bytes[12..16].copy_from_slice(&13u32.to_le_bytes());
        FunctionDescription2::read_from_bytes(&bytes).unwrap()
    }

    /// Widening keeps the 20 bytes of a BUS_RELATIONS description as the start of the
    /// BUS_RELATIONS2 one and zeroes the NUMA fields; narrowing gives those 20 bytes back.
    #[test]
    fn widen_then_narrow() {
        let wide = distinct_description2();
        let narrow = wide.narrow();
        assert_eq!(
            narrow.as_bytes(),
            &wide.as_bytes()[..FunctionDescription::SIZE]
        );
        let widened = FunctionDescription2::from(&narrow);
        assert_eq!(
            &widened.as_bytes()[..FunctionDescription::SIZE],
            narrow.as_bytes()
        );
        assert_eq!(widened.flags.get(), 0, "no NUMA node is claimed");
        assert_eq!(widened.virtual_numa_node.get(), 0);
        assert_eq!(widened.reserved.get(), 0);
        assert_eq!(widened.narrow(), narrow);
        assert_eq!(narrow.wslot, WinSlot::new(13, 0));
    }

    /// A reserved slot bit is reported at its absolute offset.
    #[test]
    fn reserved_offsets() {
        let mut body = InvalidateBlockBody {
            wslot: WinSlot::from_raw(0x200),
            block_mask: 0.into(),
        };
        let err = body.check_reserved(4).unwrap_err();
        assert_eq!(err.offset(), 4);
        body.clear_reserved();
        assert!(body.check_reserved(4).is_ok());
    }
}
