//! The probe path (`hv_pci_probe`): version negotiation, the relations query with its
//! on-stack survey completion, D0 entry, resource assignment, root-bus creation; and
//! `hv_pci_bus_exit`, which the probe's error paths and the removal share.

use crate::guest::{BusState, LinuxGuest, errno};
use crate::objects::{FrameId, HpDevId, LockId, Wait};
use crate::{ContextId, GuestEnv};
use std::time::Duration;
use vpci_protocol::wire::{D0EntryBody, Empty, ResourcesHead, SlotBody, VersionBody};
use vpci_protocol::{Fixed, Message, ProtocolVersion, ResourcesAssigned, Status, WinSlot};
use zerocopy::little_endian::{U32, U64};

const C: ContextId = ContextId::ProbePath;

/// Where the probe's error path starts unwinding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unwind {
    /// `exit_d0`: `hv_pci_bus_exit(hdev, true)`.
    ExitD0,
    /// `release_state_lock` (6.3).
    ReleaseState,
    /// `close`: `vmbus_close`.
    Close,
    /// `destroy_wq`: `destroy_workqueue` drains the queue.
    Drain,
    /// `free_bus`: `kfree(hbus)`.
    Free,
}

/// Where the probe path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ProbePc {
    #[default]
    Start,
    Negotiate(usize),
    NegotiateWait {
        idx: usize,
        tid: u64,
    },
    QueryRelations,
    QueryWait(FrameId),
    QueryFlush {
        frame: FrameId,
        ret: i32,
    },
    LockState,
    D0Send,
    D0Wait(u64),
    D0Retry,
    ResNext(u32),
    ResSend {
        slot: u32,
        hp: HpDevId,
    },
    ResWait {
        slot: u32,
        hp: HpDevId,
        tid: u64,
    },
    Prepopulate,
    Scan,
    AddLock,
    AddDevices,
    Finish,
    Unwind {
        stage: Unwind,
        ret: i32,
    },
    Done,
}

/// The probe thread.
#[derive(Debug, Clone)]
pub(crate) struct ProbeState {
    pub(crate) pc: ProbePc,
    pub(crate) wait: Option<Wait>,
    pub(crate) result: Option<Result<(), i32>>,
    pub(crate) bus_exit: Option<BusExit>,
    /// The single D0-entry retry is still available.
    pub d0_retry: bool,
}

impl Default for ProbeState {
    fn default() -> Self {
        Self {
            pc: ProbePc::Start,
            wait: None,
            result: None,
            bus_exit: None,
            d0_retry: true,
        }
    }
}

impl ProbeState {
    pub(crate) fn is_done(&self) -> bool {
        self.pc == ProbePc::Done
    }
}

/// Where `hv_pci_bus_exit` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BxPc {
    Start,
    Release(i32),
    D0Exit,
    D0ExitWait(u64),
}

/// An `hv_pci_bus_exit` call in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BusExit {
    pub(crate) keep_devs: bool,
    pub(crate) pc: BxPc,
}

/// What one step of `hv_pci_bus_exit` led to.
pub(crate) enum BxStep {
    Continue,
    Wait(Wait),
    Done(i32),
}

impl BusExit {
    pub(crate) fn new(keep_devs: bool) -> Self {
        Self {
            keep_devs,
            pc: BxPc::Start,
        }
    }
}

impl LinuxGuest {
    /// Models `hv_pci_bus_exit`, one scheduling point per call: nothing once rescinded;
    /// otherwise (without `keep_devs`) drop every child, send RESOURCES_RELEASED per slot
    /// from `wslot_res_allocated` down, then BUS_D0EXIT with a 10-second wait.
    pub(crate) fn bus_exit_step(
        &mut self,
        env: &mut dyn GuestEnv,
        ctx: ContextId,
        bx: &mut BusExit,
    ) -> BxStep {
        const F: &str = "hv_pci_bus_exit";
        loop {
            match bx.pc {
                BxPc::Start => {
                    if self.chan.rescinded {
                        self.log(ctx, F, "channel rescinded: nothing to tell the host");
                        return BxStep::Done(0);
                    }
                    if !bx.keep_devs {
                        for id in self.bus.children.clone() {
                            self.unlink_child(ctx, F, id);
                            self.put_child(ctx, F, id);
                            self.put_child(ctx, F, id);
                        }
                    }
                    bx.pc = BxPc::Release(self.bus.wslot_res_allocated);
                }
                BxPc::Release(mut slot) => {
                    let found = loop {
                        if slot < 0 {
                            break None;
                        }
                        let raw = slot as u32;
                        if let Some(id) = self.get_pcichild_wslot(WinSlot::from_raw(raw)) {
                            self.put_child(ctx, F, id);
                            break Some(raw);
                        }
                        slot -= 1;
                    };
                    match found {
                        Some(raw) => {
                            let msg = Message::ResourcesReleased(Fixed::new(SlotBody {
                                wslot: WinSlot::from_raw(raw),
                            }));
                            if let Err(e) =
                                self.send_msg(env, ctx, "hv_send_resources_released", &msg, false)
                            {
                                return BxStep::Done(e);
                            }
                            self.bus.wslot_res_allocated = slot - 1;
                            bx.pc = BxPc::Release(slot - 1);
                            return BxStep::Continue;
                        }
                        None => {
                            self.bus.wslot_res_allocated = -1;
                            bx.pc = BxPc::D0Exit;
                        }
                    }
                }
                BxPc::D0Exit => {
                    let msg = Message::BusD0Exit(Fixed::new(Empty {}));
                    match self.send_msg(env, ctx, F, &msg, true) {
                        Ok(Some(tid)) => {
                            bx.pc = BxPc::D0ExitWait(tid);
                            return BxStep::Wait(Wait::TimedResponse {
                                tid,
                                deadline: self.now + Duration::from_secs(10),
                            });
                        }
                        Ok(None) => return BxStep::Done(0),
                        Err(e) => return BxStep::Done(e),
                    }
                }
                BxPc::D0ExitWait(tid) => {
                    let ready = self
                        .chan
                        .requests
                        .get(&tid)
                        .is_some_and(|r| r.reply.is_some());
                    if ready {
                        let _ = self.take_reply(tid);
                        return BxStep::Done(0);
                    }
                    self.forget_request(tid);
                    self.log(ctx, F, "BUS_D0EXIT timed out");
                    return BxStep::Done(errno::ETIMEDOUT);
                }
            }
        }
    }

    /// Runs the probe path (`hv_pci_probe` and the functions it calls) to its next
    /// scheduling point.
    pub(crate) fn step_probe(&mut self, env: &mut dyn GuestEnv) {
        self.probe.wait = None;
        loop {
            if self.failed() {
                return;
            }
            let pc = self.probe.pc;
            let next = match pc {
                ProbePc::Start => {
                    self.chan.open = true;
                    self.log(
                        C,
                        "hv_pci_probe",
                        "hbus allocated, workqueue created, channel opened",
                    );
                    self.probe.pc = ProbePc::Negotiate(0);
                    return;
                }
                ProbePc::Negotiate(idx) => {
                    let Some(v) = self.cfg.versions.get(idx).copied() else {
                        self.log(C, "hv_pci_protocol_negotiation", "no supported version");
                        self.probe.pc = ProbePc::Unwind {
                            stage: Unwind::Close,
                            ret: errno::EPROTO,
                        };
                        continue;
                    };
                    let msg = Message::QueryProtocolVersion(Fixed::new(VersionBody {
                        protocol_version: U32::new(v.0),
                    }));
                    match self.send_msg(env, C, "hv_pci_protocol_negotiation", &msg, true) {
                        Ok(Some(tid)) => {
                            self.wait_then(Wait::Response(tid), ProbePc::NegotiateWait { idx, tid })
                        }
                        _ => self.unwind(Unwind::Close, errno::ENODEV),
                    }
                }
                ProbePc::NegotiateWait { idx, tid } => match self.take_reply(tid) {
                    Err(e) => self.unwind(Unwind::Close, e),
                    Ok(r) if r.status >= 0 => {
                        let v = self
                            .cfg
                            .versions
                            .get(idx)
                            .copied()
                            .unwrap_or(ProtocolVersion::V1_1);
                        self.chan.version = Some(v);
                        crate::tlog!(self, C, "hv_pci_protocol_negotiation", "using version {v}");
                        Some(ProbePc::QueryRelations)
                    }
                    Ok(r) if r.status as u32 == Status::REVISION_MISMATCH.0 => {
                        Some(ProbePc::Negotiate(idx + 1))
                    }
                    Ok(_) => self.unwind(Unwind::Close, errno::EPROTO),
                },
                ProbePc::QueryRelations => {
                    const F: &str = "hv_pci_query_relations";
                    if self.bus.survey_event.is_some() {
                        self.unwind(Unwind::Close, errno::ENOTEMPTY)
                    } else {
                        let frame = self.objs.push_frame();
                        self.bus.survey_event = Some(frame);
                        let msg = Message::QueryBusRelations(Fixed::new(Empty {}));
                        match self.send_msg(env, C, F, &msg, false) {
                            Ok(_) => self.wait_then(Wait::Survey(frame), ProbePc::QueryWait(frame)),
                            Err(e) => Some(self.after_query_wait(frame, e)),
                        }
                    }
                }
                ProbePc::QueryWait(frame) => {
                    let ret = if self.objs.frame_completed(frame) {
                        0
                    } else {
                        errno::ENODEV
                    };
                    Some(self.after_query_wait(frame, ret))
                }
                ProbePc::QueryFlush { frame, ret } => {
                    self.objs.pop_frame(frame);
                    crate::tlog!(self, C, "hv_pci_query_relations", "returns {ret}");
                    if ret != 0 {
                        self.unwind(Unwind::Close, ret)
                    } else if self.fixed() {
                        Some(ProbePc::LockState)
                    } else {
                        Some(ProbePc::D0Send)
                    }
                }
                ProbePc::LockState => {
                    if self.try_lock(C, LockId::StateLock) {
                        Some(ProbePc::D0Send)
                    } else {
                        self.wait_then(Wait::Lock(LockId::StateLock), ProbePc::LockState)
                    }
                }
                ProbePc::D0Send => {
                    let msg = Message::BusD0Entry(Fixed::new(D0EntryBody {
                        reserved: U32::new(0),
                        mmio_base: U64::new(self.cfg.mmio_base),
                    }));
                    match self.send_msg(env, C, "hv_pci_enter_d0", &msg, true) {
                        Ok(Some(tid)) => self.wait_then(Wait::Response(tid), ProbePc::D0Wait(tid)),
                        _ => self.d0_failed(errno::ENODEV),
                    }
                }
                ProbePc::D0Wait(tid) => match self.take_reply(tid) {
                    Err(e) => self.d0_failed(e),
                    Ok(r) if r.status < 0 => {
                        crate::tlog!(
                            self,
                            C,
                            "hv_pci_enter_d0",
                            "D0 entry failed with status {:#x}",
                            r.status as u32
                        );
                        if self.probe.d0_retry {
                            self.probe.d0_retry = false;
                            self.bus.wslot_res_allocated = 255;
                            self.probe.bus_exit = Some(BusExit::new(true));
                            Some(ProbePc::D0Retry)
                        } else {
                            self.d0_failed(errno::EPROTO)
                        }
                    }
                    Ok(_) => Some(ProbePc::ResNext(0)),
                },
                ProbePc::D0Retry => {
                    let mut bx = self.probe.bus_exit.take().unwrap_or(BusExit::new(true));
                    match self.bus_exit_step(env, C, &mut bx) {
                        BxStep::Continue => {
                            self.probe.bus_exit = Some(bx);
                            return;
                        }
                        BxStep::Wait(w) => {
                            self.probe.bus_exit = Some(bx);
                            self.probe.wait = Some(w);
                            return;
                        }
                        // 6.2 restarts from the relations query; 6.3 resends D0 entry.
                        BxStep::Done(0) if self.fixed() => Some(ProbePc::D0Send),
                        BxStep::Done(0) => Some(ProbePc::QueryRelations),
                        BxStep::Done(e) => {
                            self.d0_failed(if self.fixed() { errno::EPROTO } else { e })
                        }
                    }
                }
                ProbePc::ResNext(cursor) => {
                    let next = self
                        .bus
                        .children
                        .iter()
                        .filter_map(|&id| self.objs.hpdevs.get(id).map(|h| (h.desc.slot.raw(), id)))
                        .filter(|(raw, _)| *raw >= cursor && *raw < 256)
                        .min();
                    match next {
                        None => Some(ProbePc::Prepopulate),
                        Some((raw, _)) => {
                            // get_pcichild_wslot, fill the packet, put_pcichild: the packet
                            // is ready but not sent yet.
                            match self.get_pcichild_wslot(WinSlot::from_raw(raw)) {
                                Some(id) => {
                                    self.put_child(C, "hv_send_resources_allocated", id);
                                    self.probe.pc = ProbePc::ResSend { slot: raw, hp: id };
                                    return;
                                }
                                None => Some(ProbePc::ResNext(raw + 1)),
                            }
                        }
                    }
                }
                ProbePc::ResSend { slot, hp } => {
                    let version = self.chan.version.unwrap_or(ProtocolVersion::V1_1);
                    let head = ResourcesHead {
                        wslot: WinSlot::from_raw(slot),
                        ..ResourcesHead::default()
                    };
                    let msg = if version < ProtocolVersion::V1_2 {
                        Message::ResourcesAssigned(ResourcesAssigned {
                            head,
                            msi_resources: Vec::new(),
                            trailing: vec![0; 12],
                        })
                    } else {
                        Message::ResourcesAssigned2(ResourcesAssigned {
                            head,
                            msi_resources: Vec::new(),
                            trailing: vec![0; 66],
                        })
                    };
                    match self.send_msg(env, C, "hv_send_resources_allocated", &msg, true) {
                        Ok(Some(tid)) => {
                            self.wait_then(Wait::Response(tid), ProbePc::ResWait { slot, hp, tid })
                        }
                        Ok(None) => Some(ProbePc::ResNext(slot + 1)),
                        Err(e) => self.unwind(Unwind::ExitD0, e),
                    }
                }
                ProbePc::ResWait { slot, hp, tid } => match self.take_reply(tid) {
                    Err(e) => self.unwind(Unwind::ExitD0, e),
                    Ok(r) if r.status < 0 => {
                        crate::tlog!(
                            self,
                            C,
                            "hv_send_resources_allocated",
                            "resource allocated returned {:#x}",
                            r.status as u32
                        );
                        self.unwind(Unwind::ExitD0, errno::EPROTO)
                    }
                    Ok(_) => {
                        self.bus.wslot_res_allocated = slot as i32;
                        if let Some(h) = self.objs.hpdevs.get_mut(hp) {
                            h.resources_assigned = true;
                        }
                        Some(ProbePc::ResNext(slot + 1))
                    }
                },
                ProbePc::Prepopulate => {
                    self.prepopulate_bars(env);
                    self.bus.state = BusState::Probed;
                    self.log(C, "hv_pci_probe", "state = probed");
                    self.probe.pc = ProbePc::Scan;
                    return;
                }
                ProbePc::Scan => {
                    if self.scan_one_device(env, C, "pci_scan_root_bus_bridge") {
                        return;
                    }
                    Some(ProbePc::AddLock)
                }
                ProbePc::AddLock => {
                    if self.try_lock(C, LockId::RescanRemove) {
                        self.assign_slots();
                        Some(ProbePc::AddDevices)
                    } else {
                        self.wait_then(Wait::Lock(LockId::RescanRemove), ProbePc::AddLock)
                    }
                }
                ProbePc::AddDevices => match self.add_next_device(C, "pci_bus_add_devices") {
                    Some(Some(raw)) => self.wait_then(Wait::Driver(raw), ProbePc::AddDevices),
                    Some(None) => Some(ProbePc::AddDevices),
                    None => {
                        self.unlock(C, LockId::RescanRemove);
                        self.bus.state = BusState::Installed;
                        self.log(C, "create_root_hv_pci_bus", "state = installed");
                        Some(ProbePc::Finish)
                    }
                },
                ProbePc::Finish => {
                    if self.fixed() {
                        self.unlock(C, LockId::StateLock);
                    }
                    self.probe.result = Some(Ok(()));
                    self.log(C, "hv_pci_probe", "returns 0");
                    Some(ProbePc::Done)
                }
                ProbePc::Unwind { stage, ret } => self.unwind_step(env, stage, ret),
                ProbePc::Done => return,
            };
            match next {
                // A wait set on the way ends the step.
                Some(pc) => {
                    self.probe.pc = pc;
                    if self.probe.wait.is_some() {
                        return;
                    }
                }
                None => return,
            }
        }
    }

    /// Sets a wait and the place to resume; ends the step.
    fn wait_then(&mut self, wait: Wait, resume: ProbePc) -> Option<ProbePc> {
        self.probe.wait = Some(wait);
        self.probe.pc = resume;
        None
    }

    /// The end of `hv_pci_query_relations`' wait: 6.3 flushes the workqueue before the frame
    /// holding the survey completion goes away (patch 1); 6.2 returns at once.
    fn after_query_wait(&mut self, frame: FrameId, ret: i32) -> ProbePc {
        if self.fixed() {
            self.log(C, "hv_pci_query_relations", "flush_workqueue");
            self.probe.wait = Some(Wait::Flush(self.wq.queued_seq));
        }
        ProbePc::QueryFlush { frame, ret }
    }

    /// `hv_pci_enter_d0` failed: 6.3 leaves through `release_state_lock`, 6.2 through
    /// `free_irq_domain` (both end at `close`).
    fn d0_failed(&mut self, ret: i32) -> Option<ProbePc> {
        self.unwind(Unwind::ReleaseState, ret)
    }

    /// Starts the error path.
    fn unwind(&mut self, stage: Unwind, ret: i32) -> Option<ProbePc> {
        crate::tlog!(self, C, "hv_pci_probe", "failed ({ret}): unwinding");
        if stage == Unwind::ExitD0 {
            self.probe.bus_exit = Some(BusExit::new(true));
        }
        Some(ProbePc::Unwind { stage, ret })
    }

    /// One stage of `hv_pci_probe`'s error labels (`exit_d0`, `release_state_lock`, `close`,
    /// `destroy_wq`, `free_bus`).
    fn unwind_step(&mut self, env: &mut dyn GuestEnv, stage: Unwind, ret: i32) -> Option<ProbePc> {
        match stage {
            Unwind::ExitD0 => {
                let mut bx = self.probe.bus_exit.take().unwrap_or(BusExit::new(true));
                match self.bus_exit_step(env, C, &mut bx) {
                    BxStep::Continue => {
                        self.probe.bus_exit = Some(bx);
                        None
                    }
                    BxStep::Wait(w) => {
                        self.probe.bus_exit = Some(bx);
                        self.probe.wait = Some(w);
                        None
                    }
                    BxStep::Done(_) => Some(ProbePc::Unwind {
                        stage: Unwind::ReleaseState,
                        ret,
                    }),
                }
            }
            Unwind::ReleaseState => {
                if self.fixed() && self.locks.get(&LockId::StateLock) == Some(&C) {
                    self.unlock(C, LockId::StateLock);
                }
                Some(ProbePc::Unwind {
                    stage: Unwind::Close,
                    ret,
                })
            }
            Unwind::Close => {
                self.chan.closed = true;
                self.chan.inbound.clear();
                self.chan.tasklet_disabled = false;
                self.log(C, "hv_pci_probe", "vmbus_close; destroy_workqueue (drain)");
                self.probe.wait = Some(Wait::Drain);
                self.probe.pc = ProbePc::Unwind {
                    stage: Unwind::Drain,
                    ret,
                };
                None
            }
            Unwind::Drain => {
                self.wq.destroyed = true;
                Some(ProbePc::Unwind {
                    stage: Unwind::Free,
                    ret,
                })
            }
            Unwind::Free => {
                self.bus.freed = true;
                self.probe.result = Some(Err(ret));
                crate::tlog!(self, C, "hv_pci_probe", "hbus freed; returns {ret}");
                Some(ProbePc::Done)
            }
        }
    }

    /// Models `prepopulate_bars`: clear memory decoding, then program each child's BARs
    /// through the config window.
    fn prepopulate_bars(&mut self, env: &mut dyn GuestEnv) {
        const F: &str = "prepopulate_bars";
        let children: Vec<(WinSlot, [u32; 6])> = self
            .bus
            .children
            .iter()
            .filter_map(|&id| self.objs.hpdevs.get(id))
            .map(|h| (h.desc.slot, h.probed_bar))
            .collect();
        for (slot, bars) in &children {
            let cmd = self.config_read(env, C, F, *slot, crate::pci_core::PCI_COMMAND, 2);
            self.config_write(
                env,
                (C, F),
                *slot,
                crate::pci_core::PCI_COMMAND,
                2,
                cmd & !0x2 & 0xffff,
            );
            for (i, bar) in bars.iter().enumerate() {
                if *bar != 0 {
                    let base = 0xc000_0000u32 + (i as u32) * 0x10_0000;
                    self.config_write(env, (C, F), *slot, 0x10 + 4 * i as u16, 4, base);
                }
            }
        }
    }
}
