//! Kernel objects whose lifetimes the model tracks: children (`hv_pci_dev`, reference
//! counted), stack frames holding completions, outstanding requests, `pci_dev`s and their
//! interrupt descriptors, and what a context can wait on.

use crate::FailureKind;
use std::collections::BTreeMap;
use std::time::Duration;
use vpci_protocol::{MessageType, WinSlot};

/// Index of a child in the arena (never reused, so a stale index stays detectable).
pub(crate) type HpDevId = usize;
/// Index of a stack frame in the arena.
pub(crate) type FrameId = usize;

/// A fault the model detected, before it is attributed to a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
}

impl Fault {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A function as a relations message describes it (the fields the driver compares).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FuncDesc {
    pub(crate) slot: WinSlot,
    pub(crate) vendor: u16,
    pub(crate) device: u16,
    pub(crate) serial: u32,
}

/// One `hv_pci_dev`.
#[derive(Debug, Clone)]
pub(crate) struct HpDev {
    pub(crate) desc: FuncDesc,
    pub(crate) refs: u32,
    pub(crate) freed: bool,
    /// On `hbus->children`.
    pub(crate) linked: bool,
    pub(crate) reported_missing: bool,
    /// 6.2's `hv_pcichild_ejecting` state.
    pub(crate) ejecting: bool,
    pub(crate) probed_bar: [u32; 6],
    /// RESOURCES_ASSIGNED for it was completed with success.
    pub(crate) resources_assigned: bool,
    /// Its eject work is queued and has not started.
    pub(crate) eject_queued: bool,
    /// It has a `pci_slot` in sysfs.
    pub(crate) has_slot: bool,
}

/// A stack frame holding a completion some other context may complete.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) alive: bool,
    pub(crate) completed: bool,
}

/// The arenas.
#[derive(Debug, Clone, Default)]
pub(crate) struct Objects {
    pub(crate) hpdevs: Vec<HpDev>,
    pub(crate) frames: Vec<Frame>,
}

impl Objects {
    /// The bytes the arenas hold, freed entries included: they are never reused, so that a
    /// stale id is caught as a use after free (a long run grows by one child per hot-add).
    pub(crate) fn retained_bytes(&self) -> usize {
        self.hpdevs.capacity() * std::mem::size_of::<HpDev>()
            + self.frames.capacity() * std::mem::size_of::<Frame>()
    }

    /// `kzalloc` of a child (refcount 0 until `new_pcichild_device` sets it).
    pub(crate) fn alloc_hpdev(&mut self, desc: FuncDesc) -> HpDevId {
        self.hpdevs.push(HpDev {
            desc,
            refs: 0,
            freed: false,
            linked: false,
            reported_missing: false,
            ejecting: false,
            probed_bar: [0; 6],
            resources_assigned: false,
            eject_queued: false,
            has_slot: false,
        });
        self.hpdevs.len() - 1
    }

    /// Dereferences a child: a freed one is a use after free.
    pub(crate) fn hpdev(&self, id: HpDevId) -> Result<&HpDev, Fault> {
        match self.hpdevs.get(id) {
            Some(h) if !h.freed => Ok(h),
            Some(h) => Err(Fault::new(
                FailureKind::UseAfterFree,
                format!("child {} was already freed", h.desc.slot),
            )),
            None => Err(Fault::new(FailureKind::Bug, "unknown child")),
        }
    }

    /// Mutable dereference with the same check.
    pub(crate) fn hpdev_mut(&mut self, id: HpDevId) -> Result<&mut HpDev, Fault> {
        match self.hpdevs.get_mut(id) {
            Some(h) if !h.freed => Ok(h),
            Some(h) => Err(Fault::new(
                FailureKind::UseAfterFree,
                format!("child {} was already freed", h.desc.slot),
            )),
            None => Err(Fault::new(FailureKind::Bug, "unknown child")),
        }
    }

    /// `get_pcichild`.
    pub(crate) fn get(&mut self, id: HpDevId) -> Result<(), Fault> {
        let h = self.hpdev_mut(id)?;
        h.refs += 1;
        Ok(())
    }

    /// `put_pcichild`: frees at zero. Returns whether it was freed.
    pub(crate) fn put(&mut self, id: HpDevId) -> Result<bool, Fault> {
        let h = self.hpdev_mut(id)?;
        if h.refs == 0 {
            return Err(Fault::new(
                FailureKind::Bug,
                format!("refcount underflow on child {}", h.desc.slot),
            ));
        }
        h.refs -= 1;
        if h.refs == 0 {
            h.freed = true;
            if h.linked {
                return Err(Fault::new(
                    FailureKind::UseAfterFree,
                    format!(
                        "child {} freed while still on the children list (the next list walk \
                         reads freed memory)",
                        h.desc.slot
                    ),
                ));
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// `kfree` of a child that never got a reference (failed `new_pcichild_device`).
    pub(crate) fn free_unreferenced(&mut self, id: HpDevId) {
        if let Some(h) = self.hpdevs.get_mut(id) {
            h.freed = true;
            h.linked = false;
        }
    }

    /// A new live frame.
    pub(crate) fn push_frame(&mut self) -> FrameId {
        self.frames.push(Frame {
            alive: true,
            completed: false,
        });
        self.frames.len() - 1
    }

    /// The frame returned: its locals are dead.
    pub(crate) fn pop_frame(&mut self, id: FrameId) {
        if let Some(f) = self.frames.get_mut(id) {
            f.alive = false;
        }
    }

    /// `complete()` on a completion in `id`: a dead frame is a write into a dead stack.
    pub(crate) fn complete_frame(&mut self, id: FrameId) -> Result<(), Fault> {
        match self.frames.get_mut(id) {
            Some(f) if f.alive => {
                f.completed = true;
                Ok(())
            }
            Some(_) => Err(Fault::new(
                FailureKind::DeadStackWrite,
                "complete() on the survey completion of hv_pci_query_relations, whose stack \
                 frame has already returned",
            )),
            None => Err(Fault::new(FailureKind::Bug, "unknown frame")),
        }
    }

    /// Whether the completion in the frame was completed.
    pub(crate) fn frame_completed(&self, id: FrameId) -> bool {
        self.frames.get(id).is_some_and(|f| f.completed)
    }
}

/// What a completion carried, as the waiter reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) status: i32,
    pub(crate) probed_bar: Option<[u32; 6]>,
    pub(crate) int_desc: Option<IntDesc>,
}

/// The translated interrupt from CREATE_INTERRUPT_MESSAGE's completion (`tran_int_desc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IntDesc {
    pub(crate) address: u64,
    pub(crate) data: u32,
    pub(crate) vector_count: u16,
}

/// A request sent with a completion requested, in the channel's requestor table.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) ty: MessageType,
    pub(crate) reply: Option<Reply>,
}

/// The mutexes the model knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LockId {
    /// The PCI core's global `pci_rescan_remove_lock`.
    RescanRemove,
    /// 6.3's per-bus `hbus->state_lock`.
    StateLock,
}

impl LockId {
    pub(crate) fn name(self) -> &'static str {
        match self {
            LockId::RescanRemove => "pci_rescan_remove_lock",
            LockId::StateLock => "hbus->state_lock",
        }
    }
}

/// What a context waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wait {
    /// `wait_for_response` on a request: ends on its completion or on rescind.
    Response(u64),
    /// `wait_for_response` on the survey completion in a frame.
    Survey(FrameId),
    /// `wait_for_completion_timeout` on a request (no rescind check).
    TimedResponse { tid: u64, deadline: Duration },
    /// A mutex.
    Lock(LockId),
    /// `flush_workqueue`: everything queued up to this sequence number has run.
    Flush(u64),
    /// `destroy_workqueue`: the queue has drained.
    Drain,
    /// A driver's probe or remove for this slot, called synchronously.
    Driver(u32),
}

/// An interrupt vector of a `pci_dev` (its `irq_data`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Irq {
    /// `irq_data->chip_data`: the `tran_int_desc` from the host, or NULL.
    pub(crate) chip_data: Option<IntDesc>,
    /// The vector number the interrupt core chose.
    pub(crate) vector: u32,
}

/// A `pci_dev` on the root bus.
#[derive(Debug, Clone)]
pub(crate) struct PciDev {
    pub(crate) slot: WinSlot,
    /// The child the scan found when it created this device.
    pub(crate) hpdev: HpDevId,
    /// The ids read at scan time.
    pub(crate) vendor: u16,
    pub(crate) device: u16,
    /// `pci_bus_add_device` ran (drivers may bind).
    pub(crate) added: bool,
    /// A driver is bound.
    pub(crate) bound: bool,
    /// The driver's interrupt vectors.
    pub(crate) irqs: Vec<Irq>,
}

/// The root bus's devices, by raw slot.
pub(crate) type PciDevs = BTreeMap<u32, PciDev>;
