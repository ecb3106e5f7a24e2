//! The guest's side of the channel and of the device: sends, completions taken by waiters,
//! config-window and BAR accesses, each checked against what the guest already gave back.

use crate::guest::{LinuxGuest, errno};
use crate::objects::{Fault, Reply, Request};
use crate::{ContextId, FailureKind, GuestEnv};
use vmbus_channel::Packet;
use vpci_protocol::{Message, MessageType, WinSlot, encode};

impl LinuxGuest {
    /// Fails if the guest touches a slot it already gave back with EJECTION_COMPLETE.
    fn check_not_ejected(
        &mut self,
        ctx: ContextId,
        function: &'static str,
        slot: WinSlot,
        what: &str,
    ) -> bool {
        if self.ejected.contains(&slot.raw()) {
            self.fail(
                ctx,
                function,
                Fault::new(
                    FailureKind::EjectedDeviceAccess,
                    format!("{what} for function {slot} after EJECTION_COMPLETE was sent for it"),
                ),
            );
            return false;
        }
        true
    }

    /// `vmbus_sendpacket`: `Ok(Some(tid))` when a completion was requested. Fails with
    /// `-ENODEV` once the channel is rescinded; after `vmbus_close` (not rescinded) the ring
    /// buffers are gone and a send is a use after free.
    pub(crate) fn send_msg(
        &mut self,
        env: &mut dyn GuestEnv,
        ctx: ContextId,
        function: &'static str,
        msg: &Message,
        want_completion: bool,
    ) -> Result<Option<u64>, i32> {
        let ty = msg.message_type();
        let name = ty.name().unwrap_or("?");
        if self.chan.rescinded {
            crate::tlog!(
                self,
                ctx,
                function,
                "send {name} failed: channel rescinded (-ENODEV)"
            );
            return Err(errno::ENODEV);
        }
        if !self.chan.open || self.chan.closed {
            // vmbus_close freed the ring buffers; hv_ringbuffer_write would use them.
            self.fail(
                ctx,
                function,
                Fault::new(
                    FailureKind::UseAfterFree,
                    format!("{name} sent on a channel that vmbus_close already tore down"),
                ),
            );
            return Err(errno::ENODEV);
        }
        if let Some(slot) = msg.wslot()
            && ty != MessageType::EJECTION_COMPLETE
            && !self.check_not_ejected(ctx, function, slot, name)
        {
            return Err(errno::EIO);
        }
        let payload = encode(msg);
        let (packet, tid) = if want_completion {
            let Some(id) = self.chan.alloc_request_id() else {
                crate::tlog!(
                    self,
                    ctx,
                    function,
                    "send {name} failed: requestor full (-EAGAIN)"
                );
                return Err(errno::EAGAIN);
            };
            let handle = self.chan.next_handle;
            self.chan.next_handle += 1;
            self.chan
                .requests
                .insert(handle, Request { ty, reply: None });
            self.chan.rqstor.insert(id, handle);
            (Packet::request(id, payload), Some(handle))
        } else {
            (Packet::in_band(0, payload), None)
        };
        let what = match msg.wslot() {
            Some(s) => format!("send {name} for {s}"),
            None => format!("send {name}"),
        };
        self.log(ctx, function, what);
        env.send(packet);
        Ok(tid)
    }

    /// Consumes the outcome of a `wait_for_response` on the request `tid` (a handle, not the
    /// wire id): the reply, or `-ENODEV` on rescind.
    pub(crate) fn take_reply(&mut self, tid: u64) -> Result<Reply, i32> {
        match self.chan.requests.get(&tid).and_then(|r| r.reply) {
            Some(reply) => {
                self.chan.requests.remove(&tid);
                Ok(reply)
            }
            None => {
                // The waiter gives up (rescind). Its requestor slot stays mapped in the
                // kernel, but no callback runs after a rescind, so nothing can complete it.
                self.forget_request(tid);
                Err(errno::ENODEV)
            }
        }
    }

    /// The waiter gives up on a request: `vmbus_request_addr_match` unmaps its transaction id
    /// (which becomes free for the next request) so a late completion finds nothing.
    pub(crate) fn forget_request(&mut self, handle: u64) {
        self.chan.requests.remove(&handle);
        let id = self
            .chan
            .rqstor
            .iter()
            .find(|(_, h)| **h == handle)
            .map(|(id, _)| *id);
        if let Some(id) = id {
            self.chan.rqstor.remove(&id);
            self.chan.free_ids.push(id);
        }
    }

    /// A config-space read through the window (`_hv_pcifront_read_config`'s MMIO part).
    pub(crate) fn config_read(
        &mut self,
        env: &mut dyn GuestEnv,
        ctx: ContextId,
        function: &'static str,
        slot: WinSlot,
        offset: u16,
        len: u8,
    ) -> u32 {
        if !self.check_not_ejected(ctx, function, slot, "config read") {
            return u32::MAX;
        }
        match env.config_read(slot, offset, len) {
            Some(v) => v,
            None => {
                self.fail(
                    ctx,
                    function,
                    Fault::new(
                        FailureKind::UnbackedAccess,
                        format!("config read of {slot}+{offset:#x}: nothing backs the config window (page fault)"),
                    ),
                );
                u32::MAX
            }
        }
    }

    /// A config-space write through the window.
    pub(crate) fn config_write(
        &mut self,
        env: &mut dyn GuestEnv,
        (ctx, function): (ContextId, &'static str),
        slot: WinSlot,
        offset: u16,
        len: u8,
        value: u32,
    ) {
        if self.check_not_ejected(ctx, function, slot, "config write")
            && !env.config_write(slot, offset, len, value)
        {
            self.fail(
                ctx,
                function,
                Fault::new(
                    FailureKind::UnbackedAccess,
                    format!("config write of {slot}+{offset:#x}: nothing backs the config window (page fault)"),
                ),
            );
        }
    }

    /// A device-memory read; nothing backing it is a fault.
    pub(crate) fn bar_read(
        &mut self,
        env: &mut dyn GuestEnv,
        ctx: ContextId,
        function: &'static str,
        slot: WinSlot,
        bar: u8,
        offset: u64,
    ) -> Option<u32> {
        if !self.check_not_ejected(ctx, function, slot, "BAR read") {
            return None;
        }
        let v = env.bar_read(slot, bar, offset, 4);
        if v.is_none() {
            self.fail(
                ctx,
                function,
                Fault::new(
                    FailureKind::UnbackedAccess,
                    format!(
                        "read of BAR{bar}+{offset:#x} of {slot}: nothing backs it (page fault)"
                    ),
                ),
            );
        } else {
            crate::tlog!(self, ctx, function, "read BAR{bar}+{offset:#x} of {slot}");
        }
        v
    }

    /// A device-memory write; nothing backing it is a fault.
    pub(crate) fn bar_write(
        &mut self,
        env: &mut dyn GuestEnv,
        (ctx, function): (ContextId, &'static str),
        slot: WinSlot,
        bar: u8,
        offset: u64,
        value: u32,
    ) -> bool {
        if !self.check_not_ejected(ctx, function, slot, "BAR write") {
            return false;
        }
        let ok = env.bar_write(slot, bar, offset, 4, value);
        if !ok {
            self.fail(
                ctx,
                function,
                Fault::new(
                    FailureKind::UnbackedAccess,
                    format!(
                        "write to BAR{bar}+{offset:#x} of {slot}: nothing backs it (page fault)"
                    ),
                ),
            );
        }
        ok
    }
}
