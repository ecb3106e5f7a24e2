//! The guest: one vPCI bus's shared state, its contexts, and the scheduler-facing API.

use crate::driver::DriverState;
use crate::objects::{Fault, FrameId, FuncDesc, HpDevId, LockId, Objects, PciDevs, Request, Wait};
use crate::probe::ProbeState;
use crate::removal::RemovalState;
use crate::work::Workqueue;
use crate::{ContextId, FailureKind, GuestConfig, GuestEnv, GuestFailure, KernelModel, TraceEntry};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use vmbus_channel::Packet;
use vpci_protocol::{MessageType, ProtocolVersion, WinSlot};

/// Linux errno values the model returns (negative, as the kernel does).
pub(crate) mod errno {
    pub(crate) const EIO: i32 = -5;
    pub(crate) const ENODEV: i32 = -19;
    pub(crate) const ENOTEMPTY: i32 = -39;
    pub(crate) const EPROTO: i32 = -71;
    pub(crate) const EAGAIN: i32 = -11;
    pub(crate) const ETIMEDOUT: i32 = -110;
}

/// `hbus->state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BusState {
    /// `hv_pcibus_init`: probing.
    Init,
    /// `hv_pcibus_probed`: resources sent, root bus not yet created.
    Probed,
    /// `hv_pcibus_installed`: the root bus exists.
    Installed,
    /// `hv_pcibus_removing`: removal has started.
    Removing,
}

/// A function as the guest sees it, for end-state checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    /// The function's slot.
    pub slot: WinSlot,
    /// A child for this slot is on the bus's children list.
    pub child_present: bool,
    /// The child's vendor id (0 when no child).
    pub vendor_id: u16,
    /// The child's device id (0 when no child).
    pub device_id: u16,
    /// The child's serial number (0 when no child).
    pub serial: u32,
    /// RESOURCES_ASSIGNED for the child completed with success.
    pub resources_assigned: bool,
    /// A `pci_dev` exists for the slot.
    pub pci_dev: bool,
    /// The `pci_dev`'s identity: the vendor and device ids the scan read, and the serial
    /// number of the child it was created for (`None` when no `pci_dev`).
    pub pci_dev_identity: Option<(u16, u16, u32)>,
    /// A driver is bound to it.
    pub driver_bound: bool,
    /// The guest sent EJECTION_COMPLETE for the slot (and has not re-added it since).
    pub ejection_completed: bool,
}

/// The channel as the driver sees it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChannelState {
    pub(crate) open: bool,
    pub(crate) closed: bool,
    pub(crate) rescinded: bool,
    pub(crate) inbound: VecDeque<Packet>,
    /// The channel tasklet is disabled (`hv_compose_msi_msg` polls inline).
    pub(crate) tasklet_disabled: bool,
    pub(crate) version: Option<ProtocolVersion>,
    /// Requests with a completion requested, by handle (what waiters hold).
    pub(crate) requests: BTreeMap<u64, Request>,
    pub(crate) next_handle: u64,
    /// The channel's requestor: transaction id on the wire -> request handle.
    pub(crate) rqstor: BTreeMap<u64, u64>,
    /// Freed transaction ids, most recently freed last (reused first).
    pub(crate) free_ids: Vec<u64>,
    /// The next never-used transaction id.
    pub(crate) next_fresh_id: u64,
}

/// How many requests the channel's requestor tracks at once (`HV_PCI_RQSTOR_SIZE`).
const RQSTOR_SIZE: u64 = 64;

impl ChannelState {
    /// `vmbus_next_request_id`: the most recently freed id first, else the next fresh one.
    pub(crate) fn alloc_request_id(&mut self) -> Option<u64> {
        if let Some(id) = self.free_ids.pop() {
            return Some(id);
        }
        if self.next_fresh_id > RQSTOR_SIZE {
            return None;
        }
        let id = self.next_fresh_id;
        self.next_fresh_id += 1;
        Some(id)
    }
}

/// `struct hv_pcibus_device`, the parts the model needs.
#[derive(Debug, Clone)]
pub(crate) struct BusData {
    pub(crate) state: BusState,
    pub(crate) freed: bool,
    /// `hbus->survey_event`: the frame holding the probe path's on-stack completion.
    pub(crate) survey_event: Option<FrameId>,
    /// `hbus->children`, in list order.
    pub(crate) children: Vec<HpDevId>,
    /// `hbus->dr_list`: relations records not yet taken by the relations work.
    pub(crate) dr_list: Vec<Vec<FuncDesc>>,
    pub(crate) wslot_res_allocated: i32,
    /// `low_mmio_space || high_mmio_space`: the survey summed the BARs.
    pub(crate) mmio_surveyed: bool,
}

/// One vPCI bus of a modelled Linux guest. See the crate documentation.
///
/// It is `Clone`, so a scheduler can fork a run at a choice point instead of replaying it.
#[derive(Debug, Clone)]
pub struct LinuxGuest {
    pub(crate) cfg: GuestConfig,
    pub(crate) now: Duration,
    pub(crate) chan: ChannelState,
    pub(crate) bus: BusData,
    pub(crate) objs: Objects,
    pub(crate) pci_devs: PciDevs,
    pub(crate) locks: BTreeMap<LockId, ContextId>,
    pub(crate) wq: Workqueue,
    pub(crate) probe: ProbeState,
    pub(crate) drivers: BTreeMap<u32, DriverState>,
    pub(crate) removal: Option<RemovalState>,
    /// Slots the guest sent EJECTION_COMPLETE for (cleared when a new child takes the slot).
    pub(crate) ejected: BTreeSet<u32>,
    pub(crate) failure: Option<GuestFailure>,
    pub(crate) trace: Vec<TraceEntry>,
    /// Devices the scan found since the caller last took them (`take_scanned`).
    pub(crate) scanned: Vec<crate::pci_core::ScannedDevice>,
}

impl LinuxGuest {
    /// A guest about to probe its bus (`hv_pci_probe` is runnable; nothing has been sent).
    pub fn new(config: GuestConfig) -> Self {
        Self {
            cfg: config,
            now: Duration::ZERO,
            chan: ChannelState {
                next_handle: 1,
                next_fresh_id: 1,
                ..ChannelState::default()
            },
            bus: BusData {
                state: BusState::Init,
                freed: false,
                survey_event: None,
                children: Vec::new(),
                dr_list: Vec::new(),
                wslot_res_allocated: -1,
                mmio_surveyed: false,
            },
            objs: Objects::default(),
            pci_devs: PciDevs::new(),
            locks: BTreeMap::new(),
            wq: Workqueue::default(),
            probe: ProbeState::default(),
            drivers: BTreeMap::new(),
            removal: None,
            ejected: BTreeSet::new(),
            failure: None,
            trace: Vec::new(),
            scanned: Vec::new(),
        }
    }

    /// The kernel this guest models.
    pub fn model(&self) -> KernelModel {
        self.cfg.model
    }

    /// A packet arrives on the channel: the channel callback becomes runnable (once the channel
    /// is open and while the tasklet is enabled). Packets after the channel closed are dropped.
    pub fn receive(&mut self, packet: Packet) {
        if self.chan.closed || self.chan.rescinded {
            return;
        }
        self.chan.inbound.push_back(packet);
    }

    /// The host rescinded the channel: the callback is unhooked (queued packets are never
    /// read), waits see `-ENODEV`, sends fail, and once the probe path has succeeded VMBus runs
    /// `hv_pci_remove`.
    pub fn rescind(&mut self) {
        if self.chan.rescinded {
            return;
        }
        self.chan.rescinded = true;
        self.chan.inbound.clear();
        self.log(
            ContextId::ChannelCallback,
            "vmbus_onoffer_rescind",
            "channel rescinded",
        );
        self.removal = Some(RemovalState::default());
    }

    /// Tells the guest virtual time has reached `now` (timed waits may end).
    pub fn advance_time(&mut self, now: Duration) {
        self.now = self.now.max(now);
    }

    /// Contexts able to take a step now, in a stable order.
    pub fn runnable(&self) -> Vec<ContextId> {
        if self.failure.is_some() {
            return Vec::new();
        }
        let mut all = vec![
            ContextId::ProbePath,
            ContextId::ChannelCallback,
            ContextId::Workqueue,
        ];
        all.extend(
            self.drivers
                .keys()
                .map(|s| ContextId::Driver(WinSlot::from_raw(*s))),
        );
        all.push(ContextId::Removal);
        all.into_iter().filter(|c| self.is_runnable(*c)).collect()
    }

    /// Runs `ctx` to its next scheduling point. Does nothing if it is not runnable.
    pub fn step(&mut self, ctx: ContextId, env: &mut dyn GuestEnv) {
        if !self.is_runnable(ctx) {
            return;
        }
        self.now = self.now.max(env.now());
        match ctx {
            ContextId::ProbePath => self.step_probe(env),
            ContextId::ChannelCallback => self.step_callback(env),
            ContextId::Workqueue => self.step_work(env),
            ContextId::Driver(slot) => self.step_driver(slot.raw(), env),
            ContextId::Removal => self.step_removal(env),
        }
    }

    /// The earliest time a timed wait ends (`wait_for_completion_timeout`), if any is pending.
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.failure.is_some() {
            return None;
        }
        self.all_waits()
            .into_iter()
            .filter_map(|(_, w)| match w {
                Wait::TimedResponse { tid, deadline } if !self.reply_ready(*tid) => Some(*deadline),
                _ => None,
            })
            .min()
    }

    /// The first failure (the guest's "panic"), if any.
    pub fn failure(&self) -> Option<&GuestFailure> {
        self.failure.as_ref()
    }

    /// Who waits on what. A context listed here cannot run until something else happens.
    pub fn blocked(&self) -> Vec<(ContextId, &'static str)> {
        let mut out: Vec<(ContextId, &'static str)> = self
            .all_waits()
            .into_iter()
            .filter(|(_, w)| !self.wait_ready(w))
            .map(|(c, w)| (c, self.describe_wait(w)))
            .collect();
        if self.chan.tasklet_disabled && !self.chan.inbound.is_empty() {
            out.push((
                ContextId::ChannelCallback,
                "tasklet disabled by hv_compose_msi_msg",
            ));
        }
        for d in self.drivers.values() {
            if d.is_polling() {
                out.push((
                    ContextId::Driver(d.slot),
                    "busy-polling for the CREATE_INTERRUPT_MESSAGE completion",
                ));
            }
        }
        out.sort_by_key(|(c, _)| c.order_key());
        out
    }

    /// Contexts that are runnable but cannot make progress on their own: a driver
    /// busy-polling for a CREATE_INTERRUPT_MESSAGE completion that has not arrived, with no
    /// packet queued for its inline callback. When every runnable context is spinning and
    /// nothing outside the guest is pending, the run is a livelock (report it with
    /// [`LinuxGuest::declare_hang`]).
    pub fn spinning(&self) -> Vec<ContextId> {
        self.drivers
            .values()
            .filter(|d| match d.poll_request() {
                Some(tid) => {
                    !self.reply_ready(tid) && self.chan.inbound.is_empty() && !self.chan.rescinded
                }
                None => false,
            })
            .map(|d| ContextId::Driver(d.slot))
            .collect()
    }

    /// Records a hang (the scheduler found that nothing can ever run again while contexts
    /// wait). Names the first blocked context.
    pub fn declare_hang(&mut self) {
        let blocked = self.blocked();
        let (ctx, what) = blocked
            .first()
            .copied()
            .unwrap_or((ContextId::ProbePath, "nothing"));
        let all: Vec<String> = blocked.iter().map(|(c, w)| format!("{c:?}: {w}")).collect();
        self.fail(
            ctx,
            what,
            Fault::new(
                FailureKind::Hang,
                format!("nothing can run again; blocked: {}", all.join("; ")),
            ),
        );
    }

    /// Checks the end state once the run is over: a `pci_dev` left for a child that is gone
    /// is a ghost device (the guest holds a function it should not); a child record a failed
    /// probe left allocated is a leaked device (memory only); two children on one slot are a duplicate. Records the first such
    /// problem as the failure (if none was recorded before) and returns the failure.
    pub fn check_end_state(&mut self) -> Option<&GuestFailure> {
        let mut faults = Vec::new();
        for dev in self.pci_devs.values() {
            let gone = self
                .objs
                .hpdevs
                .get(dev.hpdev)
                .is_none_or(|h| h.freed || !h.linked);
            if gone {
                faults.push(Fault::new(
                    FailureKind::GhostDevice,
                    format!(
                        "pci_dev {} (driver bound: {}) outlives its child",
                        dev.slot, dev.bound
                    ),
                ));
            }
        }
        // hv_pci_probe's error labels (free_irq_domain, close, destroy_wq, free_bus) never
        // release hbus->children: a child linked by the relations work before the probe failed
        // (a rescind during the probe path, catalogue C5) is leaked, on 6.3 as on 6.2. The real
        // Debian drivers, run in user space, show the same leak (new_pcichild_device's
        // allocation).
        if matches!(self.probe.result, Some(Err(_))) {
            for &id in &self.bus.children {
                if let Some(h) = self.objs.hpdevs.get(id).filter(|h| !h.freed) {
                    faults.push(Fault::new(
                        FailureKind::LeakedDevice,
                        format!(
                            "child {} outlives the failed probe: hv_pci_probe's error path never \
                             frees hbus->children",
                            h.desc.slot
                        ),
                    ));
                }
            }
        }
        let mut seen = BTreeSet::new();
        for &id in &self.bus.children {
            if let Some(h) = self.objs.hpdevs.get(id)
                && !seen.insert(h.desc.slot.raw())
            {
                faults.push(Fault::new(
                    FailureKind::DuplicateDevice,
                    format!("two children on slot {}", h.desc.slot),
                ));
            }
        }
        if let Some(f) = faults.into_iter().next() {
            self.fail(ContextId::ProbePath, "end state", f);
        }
        self.failure.as_ref()
    }

    /// The bytes the model's object arenas hold (children and stack frames, freed ones
    /// included, never reused so that a stale reference is caught): what a long run's memory
    /// may grow by on the model's side.
    pub fn retained_bytes(&self) -> usize {
        self.objs.retained_bytes()
    }

    /// PCI devices present or bound, for end-state checks (sorted by slot).
    pub fn devices(&self) -> Vec<DeviceView> {
        let mut slots: BTreeSet<u32> = self.pci_devs.keys().copied().collect();
        slots.extend(self.ejected.iter().copied());
        for &id in &self.bus.children {
            if let Some(h) = self.objs.hpdevs.get(id) {
                slots.insert(h.desc.slot.raw());
            }
        }
        slots
            .into_iter()
            .map(|raw| {
                let child = self
                    .linked_child(raw)
                    .and_then(|id| self.objs.hpdevs.get(id));
                let dev = self.pci_devs.get(&raw);
                DeviceView {
                    slot: WinSlot::from_raw(raw),
                    child_present: child.is_some(),
                    vendor_id: child.map_or(0, |h| h.desc.vendor),
                    device_id: child.map_or(0, |h| h.desc.device),
                    serial: child.map_or(0, |h| h.desc.serial),
                    resources_assigned: child.is_some_and(|h| h.resources_assigned),
                    pci_dev: dev.is_some(),
                    pci_dev_identity: dev.map(|d| {
                        let serial = self.objs.hpdevs.get(d.hpdev).map_or(0, |h| h.desc.serial);
                        (d.vendor, d.device, serial)
                    }),
                    driver_bound: dev.is_some_and(|d| d.bound),
                    ejection_completed: self.ejected.contains(&raw),
                }
            })
            .collect()
    }

    /// What each context did so far.
    pub fn trace(&self) -> &[TraceEntry] {
        &self.trace
    }

    /// `hbus->state`.
    pub fn bus_state(&self) -> BusState {
        self.bus.state
    }

    /// The protocol version negotiated, once one was.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.chan.version
    }

    /// What `hv_pci_probe` returned, once it returned (`Err` holds the negative errno).
    pub fn probe_result(&self) -> Option<Result<(), i32>> {
        self.probe.result
    }

    /// Whether `hv_pci_remove` has finished.
    pub fn removed(&self) -> bool {
        self.removal.as_ref().is_some_and(|r| r.is_done())
    }

    // ---- plumbing shared by the contexts ----

    pub(crate) fn is_runnable(&self, ctx: ContextId) -> bool {
        if self.failure.is_some() {
            return false;
        }
        let ready = |w: &Option<Wait>| w.as_ref().is_none_or(|w| self.wait_ready(w));
        match ctx {
            ContextId::ProbePath => !self.probe.is_done() && ready(&self.probe.wait),
            ContextId::ChannelCallback => {
                self.chan.open
                    && !self.chan.closed
                    && !self.chan.rescinded
                    && !self.chan.tasklet_disabled
                    && !self.chan.inbound.is_empty()
            }
            ContextId::Workqueue => self.wq.runnable() && ready(&self.wq.wait),
            ContextId::Driver(slot) => self
                .drivers
                .get(&slot.raw())
                .is_some_and(|d| ready(&d.wait)),
            ContextId::Removal => self.removal.as_ref().is_some_and(|r| {
                !r.is_done() && self.probe.result == Some(Ok(())) && ready(&r.wait)
            }),
        }
    }

    fn all_waits(&self) -> Vec<(ContextId, &Wait)> {
        let mut out = Vec::new();
        if let Some(w) = &self.probe.wait
            && !self.probe.is_done()
        {
            out.push((ContextId::ProbePath, w));
        }
        if let Some(w) = &self.wq.wait {
            out.push((ContextId::Workqueue, w));
        }
        for d in self.drivers.values() {
            if let Some(w) = &d.wait {
                out.push((ContextId::Driver(d.slot), w));
            }
        }
        if let Some(r) = &self.removal
            && let Some(w) = &r.wait
        {
            out.push((ContextId::Removal, w));
        }
        out
    }

    fn reply_ready(&self, tid: u64) -> bool {
        self.chan
            .requests
            .get(&tid)
            .is_some_and(|r| r.reply.is_some())
    }

    pub(crate) fn wait_ready(&self, w: &Wait) -> bool {
        match w {
            Wait::Response(tid) => self.reply_ready(*tid) || self.chan.rescinded,
            Wait::Survey(frame) => self.objs.frame_completed(*frame) || self.chan.rescinded,
            Wait::TimedResponse { tid, deadline } => {
                self.reply_ready(*tid) || self.now >= *deadline
            }
            Wait::Lock(l) => !self.locks.contains_key(l),
            Wait::Flush(seq) => self.wq.done_seq >= *seq,
            Wait::Drain => self.wq.idle(),
            Wait::Driver(slot) => !self.drivers.contains_key(slot),
        }
    }

    fn describe_wait(&self, w: &Wait) -> &'static str {
        match w {
            Wait::Response(tid) => match self.chan.requests.get(tid).map(|r| r.ty) {
                Some(MessageType::QUERY_PROTOCOL_VERSION) => {
                    "wait_for_response: QUERY_PROTOCOL_VERSION completion"
                }
                Some(MessageType::QUERY_RESOURCE_REQUIREMENTS) => {
                    "wait_for_response: QUERY_RESOURCE_REQUIREMENTS completion"
                }
                Some(MessageType::BUS_D0ENTRY) => "wait_for_response: BUS_D0ENTRY completion",
                Some(
                    MessageType::RESOURCES_ASSIGNED
                    | MessageType::RESOURCES_ASSIGNED2
                    | MessageType::RESOURCES_ASSIGNED3,
                ) => "wait_for_response: RESOURCES_ASSIGNED completion",
                _ => "wait_for_response: a completion",
            },
            Wait::Survey(_) => "wait_for_response: the survey completion (BUS_RELATIONS)",
            Wait::TimedResponse { .. } => "wait_for_completion_timeout: BUS_D0EXIT completion",
            Wait::Lock(LockId::RescanRemove) => "mutex: pci_rescan_remove_lock",
            Wait::Lock(LockId::StateLock) => "mutex: hbus->state_lock",
            Wait::Flush(_) => "flush_workqueue",
            Wait::Drain => "destroy_workqueue (draining)",
            Wait::Driver(_) => "a driver's probe or remove",
        }
    }

    pub(crate) fn fixed(&self) -> bool {
        self.cfg.model.fixed()
    }

    /// Records what a context did (when tracing is on). Use [`tlog!`](crate::tlog) for a
    /// formatted message, so nothing is formatted while tracing is off.
    pub(crate) fn log(&mut self, ctx: ContextId, function: &'static str, event: impl Into<String>) {
        if !self.cfg.trace {
            return;
        }
        self.trace.push(TraceEntry {
            at: self.now,
            context: ctx,
            function,
            event: event.into(),
        });
    }

    /// Records the first failure; the guest stops.
    pub(crate) fn fail(&mut self, ctx: ContextId, function: &'static str, fault: Fault) {
        crate::tlog!(
            self,
            ctx,
            function,
            "PANIC {}: {}",
            fault.kind,
            fault.message
        );
        if self.failure.is_none() {
            self.failure = Some(GuestFailure {
                kind: fault.kind,
                context: ctx,
                function,
                message: fault.message,
                at: self.now,
            });
        }
    }

    /// Unwraps a model check, recording a failure on error. `None` means the guest failed.
    pub(crate) fn check<T>(
        &mut self,
        ctx: ContextId,
        function: &'static str,
        r: Result<T, Fault>,
    ) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(f) => {
                self.fail(ctx, function, f);
                None
            }
        }
    }

    pub(crate) fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Takes a mutex if it is free; otherwise the caller must wait on `Wait::Lock`.
    pub(crate) fn try_lock(&mut self, ctx: ContextId, lock: LockId) -> bool {
        if self.locks.contains_key(&lock) {
            return false;
        }
        self.locks.insert(lock, ctx);
        crate::tlog!(self, ctx, "mutex_lock", "took {}", lock.name());
        true
    }

    /// Releases a mutex.
    pub(crate) fn unlock(&mut self, ctx: ContextId, lock: LockId) {
        if self.locks.remove(&lock).is_some() {
            crate::tlog!(self, ctx, "mutex_unlock", "released {}", lock.name());
        }
    }

    /// `get_pcichild_wslot`: the first linked child on `slot`, with a reference taken.
    pub(crate) fn get_pcichild_wslot(&mut self, slot: WinSlot) -> Option<HpDevId> {
        let id = self.linked_child(slot.raw())?;
        self.objs.get(id).ok()?;
        Some(id)
    }

    /// The first linked child on a slot, without taking a reference.
    pub(crate) fn linked_child(&self, raw: u32) -> Option<HpDevId> {
        self.bus.children.iter().copied().find(|&id| {
            self.objs
                .hpdevs
                .get(id)
                .is_some_and(|h| !h.freed && h.desc.slot.raw() == raw)
        })
    }

    /// `put_pcichild`, with failures attributed to `ctx`.
    pub(crate) fn put_child(&mut self, ctx: ContextId, function: &'static str, id: HpDevId) {
        let r = self.objs.put(id);
        if let Some(true) = self.check(ctx, function, r)
            && let Some(slot) = self.objs.hpdevs.get(id).map(|h| h.desc.slot)
        {
            crate::tlog!(self, ctx, function, "child {slot} freed");
        }
    }

    /// Unlinks a child from `hbus->children` (`list_del`/`list_move`); unlinking one that is
    /// not on the list is list corruption.
    pub(crate) fn unlink_child(&mut self, ctx: ContextId, function: &'static str, id: HpDevId) {
        let r = self.objs.hpdev_mut(id).and_then(|h| {
            if !h.linked {
                return Err(Fault::new(
                    FailureKind::ListCorruption,
                    format!(
                        "list_del of child {} that is no longer on the children list",
                        h.desc.slot
                    ),
                ));
            }
            h.linked = false;
            Ok(())
        });
        if self.check(ctx, function, r).is_some() {
            self.bus.children.retain(|&c| c != id);
        }
    }

    /// Resets the guest's record of an ejected slot (a new child was created for it).
    pub(crate) fn slot_reused(&mut self, slot: WinSlot) {
        self.ejected.remove(&slot.raw());
    }
}
