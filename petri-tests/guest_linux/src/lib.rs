//! Executable models of Linux's pci-hyperv guest driver, `linux-6.2` (before the April 2023
//! race fixes) and `linux-6.3` (after), with their real concurrency made explicit.
//!
//! One [`LinuxGuest`] is one vPCI bus as the Linux driver sees it: one `hv_pcibus_device`
//! with its contexts (the probe thread, the channel callback, the per-bus ordered workqueue, a
//! device driver per function, and the removal on rescind). Each context is a state machine;
//! [`LinuxGuest::step`] runs one of them to its next scheduling point (a send on the channel, a
//! device access, a blocking wait, a contended lock). A scheduler outside this crate decides
//! which runnable context steps next, so every interleaving the kernel allows between two such
//! points can be produced, and the same choices always give the same run.
//!
//! The model tracks object lifetimes (the bus, each child `hv_pci_dev` with its reference
//! count, the probe path's on-stack survey completion, each `pci_dev` and interrupt
//! descriptor), so a race shows up as what it would be in the kernel: a NULL dereference, a use
//! after free, a write into a dead stack frame, an access to a function the guest already gave
//! back, an access to device memory nothing backs. The first such event is recorded as the
//! guest's [`GuestFailure`] ("panic") and the guest stops.
//!
//! A scheduler drives it like this (here against a host that never answers, so the probe
//! path ends up waiting for its first completion):
//!
//! ```
//! use guest_linux::{ContextId, GuestConfig, GuestEnv, KernelModel, LinuxGuest};
//! use std::time::Duration;
//! use vmbus_channel::Packet;
//! use vpci_protocol::WinSlot;
//!
//! struct Silent(Vec<Packet>);
//! impl GuestEnv for Silent {
//!     fn now(&self) -> Duration { Duration::ZERO }
//!     fn send(&mut self, packet: Packet) { self.0.push(packet) }
//!     fn config_read(&mut self, _: WinSlot, _: u16, _: u8) -> Option<u32> { Some(u32::MAX) }
//!     fn config_write(&mut self, _: WinSlot, _: u16, _: u8, _: u32) -> bool { true }
//!     fn bar_read(&mut self, _: WinSlot, _: u8, _: u64, _: u8) -> Option<u32> { None }
//!     fn bar_write(&mut self, _: WinSlot, _: u8, _: u64, _: u8, _: u32) -> bool { false }
//!     fn retarget_interrupt(&mut self, _: WinSlot, _: u32) {}
//! }
//!
//! let mut guest = LinuxGuest::new(GuestConfig::new(KernelModel::Linux62));
//! let mut host = Silent(Vec::new());
//! while let Some(ctx) = guest.runnable().first().copied() {
//!     guest.step(ctx, &mut host);
//! }
//! assert_eq!(host.0.len(), 1, "QUERY_PROTOCOL_VERSION for 1.4");
//! assert_eq!(
//!     guest.blocked(),
//!     vec![(ContextId::ProbePath, "wait_for_response: QUERY_PROTOCOL_VERSION completion")]
//! );
//! guest.declare_hang();
//! assert!(guest.failure().is_some());
//! ```
//!
//! What differs between the models follows the six patches of the series:
//! - patch 1: the probe path flushes the bus workqueue before leaving `hv_pci_query_relations`;
//! - patch 2: the interrupt polling loop no longer gives up when the child is being ejected,
//!   and `hv_irq_unmask` tolerates a missing interrupt descriptor;
//! - patch 3: the child's ejecting state is gone (6.3 keeps no such mark);
//! - patch 4: the D0-entry retry happens inside `hv_pci_enter_d0` again, instead of restarting
//!   the probe from the relations query;
//! - patch 5: a per-bus `state_lock` serialises the probe path (D0 entry to root-bus creation)
//!   with the relations work and the eject work;
//! - patch 6 (async probing) was not merged into mainline; both models keep the global
//!   rescan/remove lock around root-bus creation, as mainline does.

#![forbid(unsafe_code)]

/// Logs a formatted trace entry for a context, formatting only when tracing is on.
macro_rules! tlog {
    ($guest:expr, $ctx:expr, $function:expr, $($fmt:tt)+) => {
        if $guest.cfg.trace {
            $guest.log($ctx, $function, format!($($fmt)+));
        }
    };
}
pub(crate) use tlog;

mod access;
mod callback;
mod driver;
mod failure;
mod guest;
mod objects;
mod pci_core;
mod probe;
mod removal;
mod work;

pub use failure::{FailureKind, GuestFailure, TraceEntry};
pub use guest::{BusState, DeviceView, LinuxGuest};
pub use pci_core::ScannedDevice;

use std::time::Duration;
use vpci_protocol::{ProtocolVersion, WinSlot};

/// Which kernel the model follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelModel {
    /// Linux 6.2: pci-hyperv before the April 2023 race-fix series.
    Linux62,
    /// Linux 6.3 and later: pci-hyperv with the series applied (patches 1-5).
    Linux63,
}

impl KernelModel {
    /// The model's short name (`linux-6.2`, `linux-6.3`).
    pub fn name(self) -> &'static str {
        match self {
            KernelModel::Linux62 => "linux-6.2",
            KernelModel::Linux63 => "linux-6.3",
        }
    }

    /// Whether the series' fixes are in (6.3 and later).
    pub fn fixed(self) -> bool {
        matches!(self, KernelModel::Linux63)
    }
}

/// What a device driver does, modelled on NVMe: it enables the device, reads a status register
/// in its BAR, sets up MSI-X vectors (compose, write, unmask), and in remove reads the status
/// register again before freeing its vectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    /// A name for traces.
    pub name: &'static str,
    /// How many MSI-X vectors probe sets up.
    pub vectors: u8,
    /// The BAR the driver reads its status register from.
    pub bar: u8,
    /// The status register's offset in that BAR (NVMe's CSTS is at 0x1c).
    pub status_offset: u64,
    /// Whether probe reads the status register.
    pub probe_reads_bar: bool,
    /// Whether remove reads the status register (NVMe does; that is how C7 bites).
    pub remove_reads_bar: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            name: "nvme-like",
            vectors: 1,
            bar: 0,
            status_offset: 0x1c,
            probe_reads_bar: true,
            remove_reads_bar: true,
        }
    }
}

/// Binds a driver to the functions whose ids match (`None` matches any id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverBinding {
    /// The vendor id to match.
    pub vendor_id: Option<u16>,
    /// The device id to match.
    pub device_id: Option<u16>,
    /// The driver that binds.
    pub driver: DriverConfig,
}

/// How a [`LinuxGuest`] is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// Which kernel to model.
    pub model: KernelModel,
    /// The protocol versions offered, in order (Linux: 1.4, 1.3, 1.2, 1.1).
    pub versions: Vec<ProtocolVersion>,
    /// The config window's MMIO base, sent in BUS_D0ENTRY.
    pub mmio_base: u64,
    /// Device drivers; the first matching binding binds to a function when it is added.
    pub drivers: Vec<DriverBinding>,
    /// Whether [`LinuxGuest::trace`] records what each context does (turn it off for long
    /// benchmark runs; the failure is recorded either way).
    pub trace: bool,
}

impl GuestConfig {
    /// A guest of `model` offering Linux's versions, with the NVMe-like driver bound to every
    /// function.
    pub fn new(model: KernelModel) -> Self {
        Self {
            model,
            versions: ProtocolVersion::LINUX_OFFERS.to_vec(),
            mmio_base: 0xf800_0000,
            drivers: vec![DriverBinding {
                vendor_id: None,
                device_id: None,
                driver: DriverConfig::default(),
            }],
            trace: true,
        }
    }
}

/// A context of the guest: a thread of execution that can be scheduled on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContextId {
    /// `hv_pci_probe`, the thread that brings the bus up.
    ProbePath,
    /// `hv_pci_onchannelcallback`, the channel's tasklet.
    ChannelCallback,
    /// The bus's ordered workqueue (relations work, eject work).
    Workqueue,
    /// A device driver's probe or remove (and its interrupt setup) for one function. It runs on
    /// behalf of the context that called it (the probe path at root-bus creation, the eject
    /// work, the removal), which waits for it.
    Driver(WinSlot),
    /// `hv_pci_remove`, run by VMBus after the host rescinded the channel.
    Removal,
}

impl ContextId {
    /// A stable ordering key (probe path, callback, workqueue, drivers by slot, removal).
    pub fn order_key(self) -> (u8, u32) {
        match self {
            ContextId::ProbePath => (0, 0),
            ContextId::ChannelCallback => (1, 0),
            ContextId::Workqueue => (2, 0),
            ContextId::Driver(slot) => (3, slot.raw()),
            ContextId::Removal => (4, 0),
        }
    }
}

impl std::fmt::Display for ContextId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContextId::ProbePath => f.write_str("probe"),
            ContextId::ChannelCallback => f.write_str("callback"),
            ContextId::Workqueue => f.write_str("workqueue"),
            ContextId::Driver(slot) => write!(f, "driver[{slot}]"),
            ContextId::Removal => f.write_str("removal"),
        }
    }
}

/// Everything outside the guest: the channel's far end, the config window, device memory, the
/// hypervisor, and the clock.
pub trait GuestEnv {
    /// The current virtual time.
    fn now(&self) -> Duration;
    /// Sends a packet on the vPCI channel (to the relay, or straight to the host).
    fn send(&mut self, packet: vmbus_channel::Packet);
    /// Reads `len` bytes of a function's config space through the config window (the guest
    /// selects the slot in the window's first page, then reads at offset 0x1000 + `offset`).
    /// `None` means nothing backs the window, so the access faults; a removed function whose
    /// window is still backed reads all ones.
    fn config_read(&mut self, slot: WinSlot, offset: u16, len: u8) -> Option<u32>;
    /// Writes `len` bytes of a function's config space through the config window; `false`
    /// means nothing backs the window, so the access faults.
    fn config_write(&mut self, slot: WinSlot, offset: u16, len: u8, value: u32) -> bool;
    /// Reads device memory in a BAR; `None` means nothing backs it, so the access faults.
    fn bar_read(&mut self, slot: WinSlot, bar: u8, offset: u64, len: u8) -> Option<u32>;
    /// Writes device memory in a BAR; `false` means nothing backs it, so the access faults.
    fn bar_write(&mut self, slot: WinSlot, bar: u8, offset: u64, len: u8, value: u32) -> bool;
    /// The HvRetargetDeviceInterrupt hypercall issued by `hv_irq_unmask`.
    fn retarget_interrupt(&mut self, slot: WinSlot, vector: u32);
}
