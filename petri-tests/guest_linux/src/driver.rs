//! A device driver bound to one function, modelled on NVMe: probe enables the device, reads a
//! status register, and sets up MSI-X vectors through `hv_compose_msi_msg` and
//! `hv_irq_unmask`; remove reads the status register, frees the vectors (`hv_msi_free`) and
//! disables the device.

use crate::guest::LinuxGuest;
use crate::objects::{Fault, HpDevId, Irq};
use crate::pci_core::PCI_COMMAND;
use crate::{ContextId, DriverConfig, FailureKind, GuestEnv};
use vpci_protocol::wire::{
    CreateInterrupt2Body, CreateInterrupt3Body, CreateInterruptBody, DeleteInterruptBody, MsiDesc,
    MsiDesc2, MsiDesc3, TranIntDesc,
};
use vpci_protocol::{Fixed, Message, ProtocolVersion, WinSlot};
use zerocopy::little_endian::{U16, U32, U64};

/// Where the MSI-X table sits in the driver's BAR (16 bytes per entry).
const MSIX_TABLE: u64 = 0x2000;

/// What the driver was called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DriverOp {
    Probe,
    Remove,
}

impl DriverOp {
    /// The kernel function a status-register read stands for: NVMe reads CSTS when it
    /// enables the controller in probe and when it disables it in remove.
    fn status_read_fn(self) -> &'static str {
        match self {
            DriverOp::Probe => "nvme_pci_enable (driver probe)",
            DriverOp::Remove => "nvme_dev_disable (driver remove)",
        }
    }
}

/// Where the driver is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrvPc {
    Enable,
    ReadStatus,
    Compose(usize),
    Poll { vec: usize, hp: HpDevId, tid: u64 },
    WriteMsg(usize),
    Unmask(usize),
    ProbeDone,
    RemoveReadStatus,
    FreeVector(usize),
    Disable,
    RemoveDone,
}

/// A driver call in progress for one function.
#[derive(Debug, Clone)]
pub(crate) struct DriverState {
    pub(crate) slot: WinSlot,
    pub(crate) op: DriverOp,
    pub(crate) pc: DrvPc,
    pub(crate) wait: Option<crate::objects::Wait>,
    pub(crate) cfg: DriverConfig,
    /// Who called the driver (and waits for it).
    pub(crate) caller: ContextId,
}

impl DriverState {
    pub(crate) fn probe(slot: WinSlot, cfg: DriverConfig, caller: ContextId) -> Self {
        Self {
            slot,
            op: DriverOp::Probe,
            pc: DrvPc::Enable,
            wait: None,
            cfg,
            caller,
        }
    }

    pub(crate) fn remove(slot: WinSlot, cfg: DriverConfig, caller: ContextId) -> Self {
        Self {
            slot,
            op: DriverOp::Remove,
            pc: DrvPc::RemoveReadStatus,
            wait: None,
            cfg,
            caller,
        }
    }

    pub(crate) fn is_polling(&self) -> bool {
        matches!(self.pc, DrvPc::Poll { .. })
    }

    /// The request a polling driver waits for.
    pub(crate) fn poll_request(&self) -> Option<u64> {
        match self.pc {
            DrvPc::Poll { tid, .. } => Some(tid),
            _ => None,
        }
    }
}

impl LinuxGuest {
    /// Runs the driver call for `raw` (a `pci_driver`'s probe or remove, called by the PCI
    /// core) to its next scheduling point.
    pub(crate) fn step_driver(&mut self, raw: u32, env: &mut dyn GuestEnv) {
        let Some(mut d) = self.drivers.remove(&raw) else {
            return;
        };
        d.wait = None;
        let next = self.driver_step(env, &d);
        match next {
            Some(pc) if !self.failed() => {
                d.pc = pc;
                self.drivers.insert(raw, d);
            }
            Some(_) => {
                self.drivers.insert(raw, d);
            }
            None => {
                let what = match d.op {
                    DriverOp::Probe => "probe",
                    DriverOp::Remove => "remove",
                };
                crate::tlog!(
                    self,
                    ContextId::Driver(d.slot),
                    d.cfg.name,
                    "{what} returns to {:?}",
                    d.caller
                );
            }
        }
    }

    /// One scheduling point of the driver's `probe` (`nvme_probe`-like: `pci_enable_device`,
    /// a status read, `pci_alloc_irq_vectors` and `request_irq` per vector) or `remove`
    /// (`nvme_remove`-like: a status read, `pci_free_irq_vectors`, `pci_disable_device`).
    /// `None`: the call returned.
    fn driver_step(&mut self, env: &mut dyn GuestEnv, d: &DriverState) -> Option<DrvPc> {
        let ctx = ContextId::Driver(d.slot);
        let slot = d.slot;
        let cfg = &d.cfg;
        match d.pc {
            DrvPc::Enable => {
                self.pci_config_rmw(env, ctx, "pci_enable_device", slot, 0x2);
                Some(if cfg.probe_reads_bar {
                    DrvPc::ReadStatus
                } else {
                    DrvPc::Compose(0)
                })
            }
            DrvPc::ReadStatus => {
                self.bar_read(
                    env,
                    ctx,
                    d.op.status_read_fn(),
                    slot,
                    cfg.bar,
                    cfg.status_offset,
                );
                Some(DrvPc::Compose(0))
            }
            DrvPc::Compose(vec) => {
                if vec >= usize::from(cfg.vectors) {
                    return Some(DrvPc::ProbeDone);
                }
                if vec == 0
                    && let Some(dev) = self.pci_devs.get_mut(&slot.raw())
                {
                    dev.irqs = (0..cfg.vectors)
                        .map(|i| Irq {
                            chip_data: None,
                            vector: 0x30 + u32::from(i),
                        })
                        .collect();
                }
                Some(self.compose_start(env, ctx, slot, vec))
            }
            DrvPc::Poll { vec, hp, tid } => Some(self.compose_poll(env, ctx, slot, vec, hp, tid)),
            DrvPc::WriteMsg(vec) => {
                // __pci_write_msi_msg: the composed address/data go into the MSI-X table.
                let data = self
                    .irq(slot, vec)
                    .and_then(|i| i.chip_data)
                    .map_or(0, |c| c.data);
                self.bar_write(
                    env,
                    (ctx, "__pci_write_msi_msg"),
                    slot,
                    cfg.bar,
                    MSIX_TABLE + 16 * vec as u64 + 8,
                    data,
                );
                Some(DrvPc::Unmask(vec))
            }
            DrvPc::Unmask(vec) => {
                self.irq_unmask(env, ctx, slot, vec, cfg.bar);
                Some(DrvPc::Compose(vec + 1))
            }
            DrvPc::ProbeDone => {
                if let Some(dev) = self.pci_devs.get_mut(&slot.raw()) {
                    dev.bound = true;
                }
                None
            }
            DrvPc::RemoveReadStatus => {
                if cfg.remove_reads_bar {
                    self.bar_read(
                        env,
                        ctx,
                        d.op.status_read_fn(),
                        slot,
                        cfg.bar,
                        cfg.status_offset,
                    );
                }
                Some(DrvPc::FreeVector(0))
            }
            DrvPc::FreeVector(vec) => {
                let n = self.pci_devs.get(&slot.raw()).map_or(0, |d| d.irqs.len());
                if vec >= n {
                    return Some(DrvPc::Disable);
                }
                // free_irq masks the vector, then pci_free_irq_vectors frees it.
                self.bar_write(
                    env,
                    (ctx, "pci_msix_mask"),
                    slot,
                    cfg.bar,
                    MSIX_TABLE + 16 * vec as u64 + 12,
                    1,
                );
                self.msi_free(env, ctx, slot, vec);
                Some(DrvPc::FreeVector(vec + 1))
            }
            DrvPc::Disable => {
                self.pci_config_rmw(env, ctx, "pci_disable_device", slot, 0);
                Some(DrvPc::RemoveDone)
            }
            DrvPc::RemoveDone => {
                if let Some(dev) = self.pci_devs.get_mut(&slot.raw()) {
                    dev.bound = false;
                    dev.irqs.clear();
                }
                None
            }
        }
    }

    fn irq(&self, slot: WinSlot, vec: usize) -> Option<&Irq> {
        self.pci_devs.get(&slot.raw())?.irqs.get(vec)
    }

    fn irq_mut(&mut self, slot: WinSlot, vec: usize) -> Option<&mut Irq> {
        self.pci_devs.get_mut(&slot.raw())?.irqs.get_mut(vec)
    }

    /// Models `hv_pcifront_read_config` + `hv_pcifront_write_config` on PCI_COMMAND: without a
    /// linked child both fail with PCIBIOS_DEVICE_NOT_FOUND and touch nothing.
    fn pci_config_rmw(
        &mut self,
        env: &mut dyn GuestEnv,
        ctx: ContextId,
        function: &'static str,
        slot: WinSlot,
        set: u32,
    ) {
        let Some(id) = self.get_pcichild_wslot(slot) else {
            crate::tlog!(
                self,
                ctx,
                function,
                "config access to {slot}: device not found"
            );
            return;
        };
        let cmd = self.config_read(env, ctx, function, slot, PCI_COMMAND, 2);
        let value = if set == 0 {
            cmd & !0x6
        } else {
            cmd | set | 0x4
        };
        self.config_write(env, (ctx, function), slot, PCI_COMMAND, 2, value & 0xffff);
        self.put_child(ctx, function, id);
    }

    /// Models `hv_compose_msi_msg` up to the start of its polling loop: look up the child,
    /// send CREATE_INTERRUPT_MESSAGE(1/2/3), disable the channel tasklet.
    fn compose_start(
        &mut self,
        env: &mut dyn GuestEnv,
        ctx: ContextId,
        slot: WinSlot,
        vec: usize,
    ) -> DrvPc {
        const F: &str = "hv_compose_msi_msg";
        let Some(hp) = self.get_pcichild_wslot(slot) else {
            crate::tlog!(
                self,
                ctx,
                F,
                "no child for {slot}: NULL message, no interrupt descriptor"
            );
            return DrvPc::WriteMsg(vec);
        };
        let vector = self.irq(slot, vec).map_or(0x30, |i| i.vector);
        let version = self.chan.version.unwrap_or(ProtocolVersion::V1_1);
        let msg = if version >= ProtocolVersion::V1_4 {
            let mut desc = MsiDesc3 {
                vector: U32::new(vector),
                delivery_mode: 0,
                reserved: 0,
                vector_count: U16::new(1),
                processor_count: U16::new(1),
                processor_array: [U16::new(0); 32],
            };
            desc.processor_array[0] = U16::new(0);
            Message::CreateInterruptMessage3(Fixed::new(CreateInterrupt3Body {
                wslot: slot,
                int_desc: desc,
            }))
        } else if version >= ProtocolVersion::V1_2 {
            let desc = MsiDesc2 {
                vector: vector as u8,
                delivery_mode: 0,
                vector_count: U16::new(1),
                processor_count: U16::new(1),
                processor_array: [U16::new(0); 32],
            };
            Message::CreateInterruptMessage2(Fixed::new(CreateInterrupt2Body {
                wslot: slot,
                int_desc: desc,
            }))
        } else {
            let desc = MsiDesc {
                vector: vector as u8,
                delivery_mode: 0,
                vector_count: U16::new(1),
                reserved: U32::new(0),
                cpu_mask: U64::new(u64::MAX),
            };
            Message::CreateInterruptMessage(Fixed::new(CreateInterruptBody {
                wslot: slot,
                int_desc: desc,
            }))
        };
        match self.send_msg(env, ctx, F, &msg, true) {
            Ok(Some(tid)) => {
                self.chan.tasklet_disabled = true;
                DrvPc::Poll { vec, hp, tid }
            }
            _ => {
                self.put_child(ctx, F, hp);
                DrvPc::WriteMsg(vec)
            }
        }
    }

    /// Models one iteration of `hv_compose_msi_msg`'s polling loop.
    fn compose_poll(
        &mut self,
        env: &mut dyn GuestEnv,
        ctx: ContextId,
        slot: WinSlot,
        vec: usize,
        hp: HpDevId,
        tid: u64,
    ) -> DrvPc {
        const F: &str = "hv_compose_msi_msg";
        let done = self
            .chan
            .requests
            .get(&tid)
            .is_some_and(|r| r.reply.is_some());
        if done {
            self.chan.tasklet_disabled = false;
            let reply = self.take_reply(tid);
            match reply {
                Ok(r) if r.status >= 0 && r.int_desc.is_some() => {
                    if let Some(irq) = self.irq_mut(slot, vec) {
                        irq.chip_data = r.int_desc;
                    }
                    crate::tlog!(self, ctx, F, "interrupt {vec} of {slot} composed");
                }
                Ok(r) => {
                    crate::tlog!(
                        self,
                        ctx,
                        F,
                        "request for interrupt failed: {:#x}",
                        r.status as u32
                    );
                }
                Err(_) => {}
            }
            self.put_child(ctx, F, hp);
            return DrvPc::WriteMsg(vec);
        }
        // hv_pcifront_get_vendor_id reads through the window.
        let r = self.objs.hpdev(hp).map(|_| ());
        if self.check(ctx, "hv_pcifront_get_vendor_id", r).is_none() {
            return DrvPc::WriteMsg(vec);
        }
        let vendor = self.config_read(env, ctx, "hv_pcifront_get_vendor_id", slot, 0, 2);
        if self.failed() {
            return DrvPc::WriteMsg(vec);
        }
        let give_up = if vendor & 0xffff == 0xffff {
            Some("the device has gone")
        } else if self.chan.rescinded || self.chan.closed {
            Some("the channel callback is gone")
        } else {
            self.run_callback_inline(env, ctx);
            if self.failed() {
                return DrvPc::WriteMsg(vec);
            }
            let ejecting = self.objs.hpdevs.get(hp).is_some_and(|h| h.ejecting);
            if !self.fixed() && ejecting {
                Some("the device is being ejected")
            } else {
                None
            }
        };
        match give_up {
            None => DrvPc::Poll { vec, hp, tid },
            Some(why) => {
                self.chan.tasklet_disabled = false;
                self.forget_request(tid);
                crate::tlog!(self, ctx, F, "{why}: giving up, no interrupt descriptor");
                self.put_child(ctx, F, hp);
                DrvPc::WriteMsg(vec)
            }
        }
    }

    /// Models `hv_irq_unmask`: `hv_arch_irq_unmask` retargets through the hypercall using
    /// `chip_data` (6.2 dereferences it unchecked; 6.3 warns and returns when it is NULL), then
    /// the MSI-X entry is unmasked.
    fn irq_unmask(
        &mut self,
        env: &mut dyn GuestEnv,
        ctx: ContextId,
        slot: WinSlot,
        vec: usize,
        bar: u8,
    ) {
        const F: &str = "hv_arch_irq_unmask";
        let (chip, vector) = match self.irq(slot, vec) {
            Some(i) => (i.chip_data, i.vector),
            None => (None, 0),
        };
        match chip {
            Some(_) => {
                crate::tlog!(self, ctx, F, "retarget interrupt {vec} of {slot}");
                env.retarget_interrupt(slot, vector);
            }
            None if self.fixed() => {
                crate::tlog!(
                    self,
                    ctx,
                    F,
                    "can not unmask irq {vec} of {slot} (no descriptor)"
                );
            }
            None => {
                self.fail(
                    ctx,
                    F,
                    Fault::new(
                        FailureKind::NullDeref,
                        format!("irq_data->chip_data of interrupt {vec} of {slot} is NULL; the retarget reads int_desc->address"),
                    ),
                );
                return;
            }
        }
        self.bar_write(
            env,
            (ctx, "pci_msi_unmask_irq"),
            slot,
            bar,
            MSIX_TABLE + 16 * vec as u64 + 12,
            0,
        );
    }

    /// Models `hv_msi_free` and `hv_int_desc_free`: DELETE_INTERRUPT_MESSAGE for a composed
    /// vector while the child is still on the bus.
    fn msi_free(&mut self, env: &mut dyn GuestEnv, ctx: ContextId, slot: WinSlot, vec: usize) {
        const F: &str = "hv_msi_free";
        let Some(desc) = self.irq_mut(slot, vec).and_then(|i| i.chip_data.take()) else {
            return;
        };
        let Some(hp) = self.get_pcichild_wslot(slot) else {
            crate::tlog!(
                self,
                ctx,
                F,
                "child {slot} gone: descriptor freed without telling the host"
            );
            return;
        };
        if desc.vector_count != 0 {
            let msg = Message::DeleteInterruptMessage(Fixed::new(DeleteInterruptBody {
                wslot: slot,
                int_desc: TranIntDesc {
                    reserved: U16::new(0),
                    vector_count: U16::new(desc.vector_count),
                    data: U32::new(desc.data),
                    address: U64::new(desc.address),
                },
            }));
            let _ = self.send_msg(env, ctx, "hv_int_desc_free", &msg, false);
        }
        self.put_child(ctx, F, hp);
    }
}
