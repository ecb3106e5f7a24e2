//! The channel callback (`hv_pci_onchannelcallback`): completions wake their waiters,
//! relations become queued records plus a work item, EJECT queues the eject work.

use crate::guest::{BusState, LinuxGuest};
use crate::objects::{Fault, FuncDesc, IntDesc, Reply};
use crate::work::WorkItem;
use crate::{ContextId, FailureKind, GuestEnv};
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::{
    CompletionBody, Message, ProtocolVersion, Sender, WinSlot, decode, decode_completion,
};

impl LinuxGuest {
    /// Models `hv_pci_onchannelcallback` run as the channel tasklet: reads one packet per step
    /// (another CPU may interleave between two packets).
    pub(crate) fn step_callback(&mut self, env: &mut dyn GuestEnv) {
        if let Some(packet) = self.chan.inbound.pop_front() {
            self.handle_packet(env, ContextId::ChannelCallback, packet);
        }
    }

    /// Models `hv_pci_onchannelcallback` called inline from `hv_compose_msi_msg`'s polling
    /// loop: drains every queued packet in the caller's context.
    pub(crate) fn run_callback_inline(&mut self, env: &mut dyn GuestEnv, ctx: ContextId) {
        while !self.failed() {
            let Some(packet) = self.chan.inbound.pop_front() else {
                break;
            };
            self.handle_packet(env, ctx, packet);
        }
    }

    /// Models the body of `hv_pci_onchannelcallback` for one packet.
    fn handle_packet(&mut self, _env: &mut dyn GuestEnv, ctx: ContextId, packet: Packet) {
        const F: &str = "hv_pci_onchannelcallback";
        if self.bus.freed {
            self.fail(
                ctx,
                F,
                Fault::new(
                    FailureKind::UseAfterFree,
                    "channel callback on a freed hbus",
                ),
            );
            return;
        }
        // Anything no larger than a bare response header is dropped.
        if packet.payload.len() <= 4 {
            self.log(ctx, F, "dropped a packet too short to be a response");
            return;
        }
        match packet.kind {
            PacketKind::Completion => self.complete_request(ctx, &packet),
            PacketKind::InBand => self.handle_host_message(ctx, &packet.payload),
            other => crate::tlog!(self, ctx, F, "unhandled packet type {}", other.to_raw()),
        }
    }

    /// Models the VM_PKT_COMP branch: find the request by transaction id and run its
    /// completion function (generic, resource requirements, or compose).
    fn complete_request(&mut self, ctx: ContextId, packet: &Packet) {
        const F: &str = "hv_pci_onchannelcallback";
        let tid = packet.transaction_id;
        let version = self.chan.version.unwrap_or(ProtocolVersion::V1_1);
        // The requestor maps the id back to the request and frees the id at once: the next
        // request reuses it, so a late or duplicated completion reaches whoever holds it now.
        let Some(handle) = self.chan.rqstor.remove(&tid) else {
            crate::tlog!(self, ctx, F, "invalid transaction id {tid:#x}");
            return;
        };
        self.chan.free_ids.push(tid);
        let Some(req) = self.chan.requests.get_mut(&handle) else {
            crate::tlog!(
                self,
                ctx,
                F,
                "completion {tid:#x} for a request nobody waits for"
            );
            return;
        };
        let ty = req.ty;
        let reply = match decode_completion(&packet.payload, ty, version) {
            Ok(c) => {
                let mut reply = Reply {
                    status: c.status.0 as i32,
                    probed_bar: None,
                    int_desc: None,
                };
                match &c.body {
                    CompletionBody::ResourceRequirements(f) => {
                        reply.probed_bar = Some(f.body.probed_bar.map(|b| b.get()));
                    }
                    CompletionBody::CreateInterrupt(f) => {
                        let d = &f.body.int_desc;
                        reply.int_desc = Some(IntDesc {
                            address: d.address.get(),
                            data: d.data.get(),
                            vector_count: d.vector_count.get(),
                        });
                    }
                    _ => {}
                }
                reply
            }
            // A response shorter than its layout counts as a failure (status -1).
            Err(_) => Reply {
                status: -1,
                probed_bar: None,
                int_desc: None,
            },
        };
        req.reply = Some(reply);
        let name = ty.name().unwrap_or("?");
        crate::tlog!(
            self,
            ctx,
            F,
            "completion of {name} (status {:#x})",
            reply.status as u32
        );
    }

    /// Models the VM_PKT_DATA_INBAND branch.
    fn handle_host_message(&mut self, ctx: ContextId, payload: &[u8]) {
        const F: &str = "hv_pci_onchannelcallback";
        // Linux does not check the version of host messages; decode permissively.
        let msg = match decode(payload, Sender::Host, ProtocolVersion::V1_7) {
            Ok(m) => m,
            Err(e) => {
                crate::tlog!(self, ctx, F, "malformed host message dropped: {e}");
                return;
            }
        };
        match msg {
            Message::BusRelations(m) => {
                let funcs = m
                    .functions
                    .iter()
                    .map(|f| FuncDesc {
                        slot: f.wslot,
                        vendor: f.v_id.get(),
                        device: f.d_id.get(),
                        serial: f.ser.get(),
                    })
                    .collect();
                self.devices_present(ctx, "hv_pci_devices_present", funcs);
            }
            Message::BusRelations2(m) => {
                let funcs = m
                    .functions
                    .iter()
                    .map(|f| FuncDesc {
                        slot: f.wslot,
                        vendor: f.v_id.get(),
                        device: f.d_id.get(),
                        serial: f.ser.get(),
                    })
                    .collect();
                self.devices_present(ctx, "hv_pci_devices_present2", funcs);
            }
            Message::Eject(m) => self.eject_message(ctx, m.body.wslot),
            Message::InvalidateBlock(m) => {
                if let Some(id) = self.get_pcichild_wslot(m.body.wslot) {
                    self.put_child(ctx, F, id);
                }
            }
            other => {
                let name = other.message_type().name().unwrap_or("?");
                crate::tlog!(self, ctx, F, "unimplemented protocol message {name}");
            }
        }
    }

    /// Models `hv_pci_devices_present(2)` and `hv_pci_start_relations_work`: queue the record;
    /// queue the work only if no record was already pending (that work will see this one).
    fn devices_present(&mut self, ctx: ContextId, function: &'static str, funcs: Vec<FuncDesc>) {
        if self.bus.state == BusState::Removing {
            self.log(ctx, function, "BUS_RELATIONS ignored: bus is being removed");
            return;
        }
        let n = funcs.len();
        let pending = !self.bus.dr_list.is_empty();
        self.bus.dr_list.push(funcs);
        if pending {
            crate::tlog!(
                self,
                ctx,
                function,
                "relations record ({n} functions) queued behind a pending one"
            );
        } else {
            crate::tlog!(
                self,
                ctx,
                function,
                "relations record ({n} functions) queued with a work item"
            );
            self.queue_work(ctx, function, WorkItem::Relations);
        }
    }

    /// Models the PCI_EJECT branch and `hv_pci_eject_device`.
    fn eject_message(&mut self, ctx: ContextId, slot: WinSlot) {
        const F: &str = "hv_pci_eject_device";
        let Some(id) = self.get_pcichild_wslot(slot) else {
            crate::tlog!(self, ctx, F, "EJECT for unknown function {slot} ignored");
            return;
        };
        if self.bus.state == BusState::Removing {
            self.log(ctx, F, "EJECT ignored: bus is being removed");
        } else {
            let fixed = self.fixed();
            let r = self.objs.hpdev_mut(id).map(|h| {
                if !fixed {
                    h.ejecting = true;
                }
            });
            if self.check(ctx, F, r).is_none() {
                return;
            }
            let r = self.objs.get(id);
            if self.check(ctx, F, r).is_none() {
                return;
            }
            crate::tlog!(self, ctx, F, "EJECT {slot}: eject work queued");
            self.queue_work(ctx, F, WorkItem::Eject(id));
        }
        self.put_child(ctx, "hv_pci_onchannelcallback", id);
    }
}
