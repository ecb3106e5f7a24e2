//! The bus's ordered workqueue: the relations work (`pci_devices_present_work`) and the eject
//! work (`hv_eject_device_work`), one item at a time.

use crate::guest::{BusState, LinuxGuest};
use crate::objects::{Fault, FuncDesc, HpDevId, LockId, Wait};
use crate::{ContextId, FailureKind, GuestEnv};
use std::collections::VecDeque;
use vpci_protocol::wire::{EjectionCompleteBody, SlotBody};
use vpci_protocol::{Fixed, Message};
use zerocopy::little_endian::U32;

/// A queued work item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkItem {
    /// `pci_devices_present_work` (takes the newest relations record).
    Relations,
    /// `hv_eject_device_work` for a child.
    Eject(HpDevId),
}

/// Where the running relations work is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RelPc {
    Start,
    Lock(Vec<FuncDesc>),
    Mark(Vec<FuncDesc>),
    Func {
        dr: Vec<FuncDesc>,
        idx: usize,
    },
    QrrWait {
        dr: Vec<FuncDesc>,
        idx: usize,
        hp: HpDevId,
        tid: u64,
    },
    Remove,
    Switch,
    Rescan,
    Finish,
}

/// Where the running eject work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EjectPc {
    Start,
    Lock,
    Find,
    RemoveLock,
    RemoveDev,
    Unlink,
    Finish,
}

/// The running item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkState {
    Relations(RelPc),
    Eject { id: HpDevId, pc: EjectPc },
}

/// `hbus->wq`, an ordered workqueue.
#[derive(Debug, Clone, Default)]
pub(crate) struct Workqueue {
    pub(crate) items: VecDeque<(u64, WorkItem)>,
    pub(crate) current: Option<(u64, WorkState)>,
    pub(crate) wait: Option<Wait>,
    pub(crate) queued_seq: u64,
    pub(crate) done_seq: u64,
    pub(crate) destroyed: bool,
}

impl Workqueue {
    pub(crate) fn runnable(&self) -> bool {
        !self.destroyed && (self.current.is_some() || !self.items.is_empty())
    }

    pub(crate) fn idle(&self) -> bool {
        self.current.is_none() && self.items.is_empty()
    }
}

impl LinuxGuest {
    /// Models `queue_work` on `hbus->wq`. Returns whether the item was queued. Re-queuing a
    /// child's eject work while it is still pending corrupts the worklist (the kernel runs
    /// `INIT_WORK` on it first); re-queuing it while it runs makes it run twice.
    pub(crate) fn queue_work(
        &mut self,
        ctx: ContextId,
        function: &'static str,
        item: WorkItem,
    ) -> bool {
        if self.wq.destroyed {
            self.fail(
                ctx,
                function,
                Fault::new(
                    FailureKind::UseAfterFree,
                    "queue_work on a destroyed workqueue",
                ),
            );
            return false;
        }
        if let WorkItem::Eject(id) = item {
            match self.objs.hpdev_mut(id) {
                Ok(h) if h.eject_queued => {
                    // hv_pci_eject_device runs INIT_WORK on the child's work item while it
                    // is still on the worklist: its list entry is reset in place.
                    let slot = h.desc.slot;
                    self.fail(
                        ctx,
                        function,
                        Fault::new(
                            FailureKind::ListCorruption,
                            format!(
                                "INIT_WORK on the eject work of {slot} while it is still queued"
                            ),
                        ),
                    );
                    return false;
                }
                Ok(h) => h.eject_queued = true,
                Err(f) => {
                    self.fail(ctx, function, f);
                    return false;
                }
            }
        }
        self.wq.queued_seq += 1;
        let seq = self.wq.queued_seq;
        self.wq.items.push_back((seq, item));
        true
    }

    /// Models the ordered workqueue's worker (`process_one_work` on `hbus->wq`): runs the
    /// current item (starting the next one if none runs) to its next scheduling point.
    pub(crate) fn step_work(&mut self, env: &mut dyn GuestEnv) {
        self.wq.wait = None;
        let (seq, state) = match self.wq.current.take() {
            Some(c) => c,
            None => match self.wq.items.pop_front() {
                Some((seq, WorkItem::Relations)) => (seq, WorkState::Relations(RelPc::Start)),
                Some((seq, WorkItem::Eject(id))) => (
                    seq,
                    WorkState::Eject {
                        id,
                        pc: EjectPc::Start,
                    },
                ),
                None => return,
            },
        };
        let next = match state {
            WorkState::Relations(pc) => self.relations_step(env, pc).map(WorkState::Relations),
            WorkState::Eject { id, pc } => self
                .eject_step(env, id, pc)
                .map(|pc| WorkState::Eject { id, pc }),
        };
        match next {
            Some(state) => self.wq.current = Some((seq, state)),
            None => self.wq.done_seq = seq,
        }
    }

    /// Models `pci_devices_present_work`, one scheduling point per call. `None`: finished.
    fn relations_step(&mut self, env: &mut dyn GuestEnv, pc: RelPc) -> Option<RelPc> {
        const F: &str = "pci_devices_present_work";
        const C: ContextId = ContextId::Workqueue;
        let mut pc = pc;
        loop {
            if self.failed() {
                return None;
            }
            pc = match pc {
                RelPc::Start => {
                    if self.bus.freed {
                        self.fail(
                            C,
                            F,
                            Fault::new(FailureKind::UseAfterFree, "relations work on a freed hbus"),
                        );
                        return None;
                    }
                    // Take every record; only the newest one is processed.
                    let records = std::mem::take(&mut self.bus.dr_list);
                    let dropped = records.len().saturating_sub(1);
                    let Some(dr) = records.into_iter().last() else {
                        self.log(C, F, "no relations record left: nothing to do");
                        return None;
                    };
                    crate::tlog!(
                        self,
                        C,
                        F,
                        "processing relations record ({} functions, {dropped} older ones dropped)",
                        dr.len()
                    );
                    if self.fixed() {
                        RelPc::Lock(dr)
                    } else {
                        RelPc::Mark(dr)
                    }
                }
                RelPc::Lock(dr) => {
                    if !self.try_lock(C, LockId::StateLock) {
                        self.wq.wait = Some(Wait::Lock(LockId::StateLock));
                        return Some(RelPc::Lock(dr));
                    }
                    RelPc::Mark(dr)
                }
                RelPc::Mark(dr) => {
                    for id in self.bus.children.clone() {
                        if let Ok(h) = self.objs.hpdev_mut(id) {
                            h.reported_missing = true;
                        }
                    }
                    RelPc::Func { dr, idx: 0 }
                }
                RelPc::Func { dr, idx } => {
                    let Some(desc) = dr.get(idx).copied() else {
                        break RelPc::Remove;
                    };
                    let mut found = false;
                    for id in self.bus.children.clone() {
                        if let Ok(h) = self.objs.hpdev_mut(id)
                            && h.desc == desc
                        {
                            h.reported_missing = false;
                            found = true;
                        }
                    }
                    if found {
                        RelPc::Func { dr, idx: idx + 1 }
                    } else {
                        // new_pcichild_device: allocate, then ask for the probed BARs.
                        let hp = self.objs.alloc_hpdev(desc);
                        self.slot_reused(desc.slot);
                        let msg = Message::QueryResourceRequirements(Fixed::new(SlotBody {
                            wslot: desc.slot,
                        }));
                        match self.send_msg(env, C, "new_pcichild_device", &msg, true) {
                            Ok(Some(tid)) => {
                                self.wq.wait = Some(Wait::Response(tid));
                                return Some(RelPc::QrrWait { dr, idx, hp, tid });
                            }
                            _ => {
                                self.objs.free_unreferenced(hp);
                                crate::tlog!(
                                    self,
                                    C,
                                    F,
                                    "couldn't record a child device ({})",
                                    desc.slot
                                );
                                RelPc::Func { dr, idx: idx + 1 }
                            }
                        }
                    }
                }
                RelPc::QrrWait { dr, idx, hp, tid } => {
                    match self.take_reply(tid) {
                        Err(e) => {
                            self.objs.free_unreferenced(hp);
                            crate::tlog!(
                                self,
                                C,
                                "new_pcichild_device",
                                "wait failed ({e}): child dropped"
                            );
                        }
                        Ok(reply) => {
                            if let Ok(h) = self.objs.hpdev_mut(hp) {
                                if reply.status < 0 {
                                    // q_resource_requirements only logs; the child is linked anyway.
                                } else if let Some(bars) = reply.probed_bar {
                                    h.probed_bar = bars;
                                }
                                h.refs = 2;
                                h.linked = true;
                                h.reported_missing = false;
                            }
                            self.bus.children.push(hp);
                            let slot = dr.get(idx).map(|d| d.slot);
                            crate::tlog!(
                                self,
                                C,
                                "new_pcichild_device",
                                "child {} linked (requirements status {:#x})",
                                slot.unwrap_or_default(),
                                reply.status as u32
                            );
                        }
                    }
                    RelPc::Func { dr, idx: idx + 1 }
                }
                RelPc::Remove => {
                    let missing: Vec<HpDevId> = self
                        .bus
                        .children
                        .iter()
                        .copied()
                        .filter(|&id| self.objs.hpdevs.get(id).is_some_and(|h| h.reported_missing))
                        .collect();
                    for &id in &missing {
                        self.put_child(C, F, id);
                        self.unlink_child(C, F, id);
                    }
                    for id in missing {
                        if let Ok(h) = self.objs.hpdev_mut(id) {
                            h.has_slot = false;
                            let slot = h.desc.slot;
                            crate::tlog!(self, C, F, "child {slot} no longer reported: removed");
                        }
                        self.put_child(C, F, id);
                    }
                    break RelPc::Switch;
                }
                RelPc::Switch => match self.bus.state {
                    BusState::Installed => RelPc::Rescan,
                    BusState::Init | BusState::Probed => {
                        self.survey_child_resources(C);
                        RelPc::Finish
                    }
                    BusState::Removing => RelPc::Finish,
                },
                RelPc::Rescan => {
                    if !self.try_lock(C, LockId::RescanRemove) {
                        self.wq.wait = Some(Wait::Lock(LockId::RescanRemove));
                        return Some(RelPc::Rescan);
                    }
                    while self.scan_one_device(env, C, "pci_scan_child_bus") {}
                    self.assign_slots();
                    self.unlock(C, LockId::RescanRemove);
                    RelPc::Finish
                }
                RelPc::Finish => {
                    if self.fixed() {
                        self.unlock(C, LockId::StateLock);
                    }
                    return None;
                }
            };
        }
        .into()
    }

    /// Models `survey_child_resources`: take `survey_event` and complete what it points at.
    fn survey_child_resources(&mut self, ctx: ContextId) {
        const F: &str = "survey_child_resources";
        let Some(frame) = self.bus.survey_event.take() else {
            self.log(ctx, F, "nobody waits for the survey");
            return;
        };
        if !self.bus.mmio_surveyed {
            let any_bar = self
                .bus
                .children
                .iter()
                .filter_map(|&id| self.objs.hpdevs.get(id))
                .any(|h| h.probed_bar.iter().any(|&b| b != 0));
            self.bus.mmio_surveyed = any_bar;
        }
        let r = self.objs.complete_frame(frame);
        if self.check(ctx, F, r).is_some() {
            self.log(ctx, F, "survey complete: the probe path is woken");
        }
    }

    /// Models `hv_eject_device_work`, one scheduling point per call. `None`: finished.
    fn eject_step(&mut self, env: &mut dyn GuestEnv, id: HpDevId, pc: EjectPc) -> Option<EjectPc> {
        const F: &str = "hv_eject_device_work";
        const C: ContextId = ContextId::Workqueue;
        let mut pc = pc;
        loop {
            if self.failed() {
                return None;
            }
            pc = match pc {
                EjectPc::Start => {
                    let r = self.objs.hpdev_mut(id).map(|h| h.eject_queued = false);
                    self.check(C, F, r)?;
                    if self.fixed() {
                        EjectPc::Lock
                    } else {
                        EjectPc::Find
                    }
                }
                EjectPc::Lock => {
                    if !self.try_lock(C, LockId::StateLock) {
                        self.wq.wait = Some(Wait::Lock(LockId::StateLock));
                        return Some(EjectPc::Lock);
                    }
                    EjectPc::Find
                }
                EjectPc::Find => {
                    let r = self.objs.hpdev(id).map(|h| h.desc.slot);
                    let slot = self.check(C, F, r)?;
                    if self.pci_devs.contains_key(&slot.raw()) {
                        crate::tlog!(self, C, F, "pci_dev for {slot} found: stop and remove it");
                        EjectPc::RemoveLock
                    } else {
                        // Another CPU may create the pci_dev right after this lookup.
                        crate::tlog!(self, C, F, "no pci_dev for {slot}");
                        break EjectPc::Unlink;
                    }
                }
                EjectPc::RemoveLock => {
                    if !self.try_lock(C, LockId::RescanRemove) {
                        self.wq.wait = Some(Wait::Lock(LockId::RescanRemove));
                        return Some(EjectPc::RemoveLock);
                    }
                    let r = self.objs.hpdev(id).map(|h| h.desc.slot);
                    let slot = self.check(C, F, r)?;
                    if self.stop_device(C, slot) {
                        self.wq.wait = Some(Wait::Driver(slot.raw()));
                        return Some(EjectPc::RemoveDev);
                    }
                    EjectPc::RemoveDev
                }
                EjectPc::RemoveDev => {
                    let r = self.objs.hpdev(id).map(|h| h.desc.slot);
                    let slot = self.check(C, F, r)?;
                    self.remove_device(C, "pci_stop_and_remove_bus_device", slot);
                    self.unlock(C, LockId::RescanRemove);
                    EjectPc::Unlink
                }
                EjectPc::Unlink => {
                    self.unlink_child(C, F, id);
                    let r = self.objs.hpdev_mut(id).map(|h| {
                        h.has_slot = false;
                        h.desc.slot
                    });
                    let slot = self.check(C, F, r)?;
                    let msg = Message::EjectionComplete(Fixed::new(EjectionCompleteBody {
                        wslot: slot,
                        status: U32::new(0),
                    }));
                    if self.send_msg(env, C, F, &msg, false).is_ok() {
                        self.ejected.insert(slot.raw());
                    }
                    break EjectPc::Finish;
                }
                EjectPc::Finish => {
                    // The reference of hv_pci_eject_device, then the two of new_pcichild_device.
                    for _ in 0..3 {
                        self.put_child(C, F, id);
                    }
                    if self.fixed() {
                        self.unlock(C, LockId::StateLock);
                    }
                    return None;
                }
            };
        }
        .into()
    }
}
