//! One function on a bus: its device, its identity, and the host-side state the protocol
//! builds up for it (interrupts, configuration blocks, power state, mapping).

use crate::device::Device;
use crate::spec::FunctionSpec;
use inspect::{Inspect, Node};
use std::collections::BTreeMap;
use vpci_protocol::WinSlot;

/// The host-side identity of a function that the device's config space does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionIdentity {
    /// The slot.
    pub slot: WinSlot,
    /// The serial number BUS_RELATIONS reports.
    pub serial: u32,
    /// The virtual NUMA node BUS_RELATIONS2 reports, if any.
    pub numa_node: Option<u16>,
}

/// An interrupt the host has created for a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Inspect)]
pub struct Interrupt {
    /// MSI address (x86: 0xFEE00000 | APIC id << 12).
    #[inspect(hex)]
    pub address: u64,
    /// MSI data (the vector).
    #[inspect(hex)]
    pub data: u32,
    /// The vector the guest asked for.
    pub vector: u32,
    /// How many vectors.
    pub vector_count: u16,
    /// The target processor (the first one the guest named).
    pub cpu: u32,
}

/// MSI address of an x86 interrupt targeting `cpu` (its APIC id, 8 bits).
pub(crate) fn msi_address(cpu: u32) -> u64 {
    0xFEE0_0000 | (u64::from(cpu & 0xff) << 12)
}

pub(crate) struct Function {
    pub(crate) identity: FunctionIdentity,
    /// Which addition of a function this is (a replaced slot gets a new one).
    pub(crate) incarnation: u64,
    /// The spec the device was built from, if it was.
    pub(crate) spec: Option<FunctionSpec>,
    pub(crate) device: Box<dyn Device>,
    /// The BARs have been unmapped (eject under `Teardown::AtEject`).
    pub(crate) torn_down: bool,
    pub(crate) interrupts: Vec<Interrupt>,
    pub(crate) blocks: BTreeMap<u32, Vec<u8>>,
    /// The last power state the guest set (0: never set).
    pub(crate) power_state: u32,
    pub(crate) resources_assigned: bool,
}

impl Function {
    pub(crate) fn new(
        identity: FunctionIdentity,
        incarnation: u64,
        spec: Option<FunctionSpec>,
        device: Box<dyn Device>,
    ) -> Self {
        Self {
            identity,
            incarnation,
            spec,
            device,
            torn_down: false,
            interrupts: Vec::new(),
            blocks: BTreeMap::new(),
            power_state: 0,
            resources_assigned: false,
        }
    }
}

impl Inspect for Function {
    fn inspect(&self) -> Node {
        let Self {
            identity,
            incarnation,
            spec: _,
            device,
            torn_down,
            interrupts,
            blocks,
            power_state,
            resources_assigned,
        } = self;
        Node::dir()
            .hex("serial", u64::from(identity.serial))
            .field("numa_node", &identity.numa_node)
            .field("incarnation", incarnation)
            .field("torn_down", torn_down)
            .field("resources_assigned", resources_assigned)
            .field("power_state", power_state)
            .field("interrupts", interrupts)
            .field("config_blocks", &blocks.len())
            .child("device", device.inspect_device())
            .build()
    }
}
