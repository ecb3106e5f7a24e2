//! A tiny scripted Hyper-V host for the model tests, and a harness that steps the guest in a
//! chosen order.

#![allow(dead_code, unreachable_pub)]

use guest_linux::{ContextId, GuestConfig, GuestEnv, KernelModel, LinuxGuest};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::wire::{
    CreateInterruptReply, FunctionDescription2, ResourceRequirementsReply, SlotBody, TranIntDesc,
    VersionReply,
};
use vpci_protocol::{
    BusRelations, Completion, CompletionBody, Fixed, Message, MessageType, ProtocolVersion, Sender,
    Status, WinSlot, decode, encode,
};
use zerocopy::little_endian::{U16, U32, U64};

/// One function the host exposes.
#[derive(Debug, Clone)]
pub struct HostFunction {
    pub vendor: u16,
    pub device: u16,
    pub serial: u32,
    /// Listed in BUS_RELATIONS.
    pub listed: bool,
    /// Its BARs are mapped (device memory backed).
    pub bars_backed: bool,
    /// It is still assigned to the VM (config space answers).
    pub assigned: bool,
    /// Its config window is backed (`false`: accesses fault).
    pub config_backed: bool,
}

/// A scripted host: answers every request at once (unless told to hold some completions),
/// and lets the test inject EJECT and relations at chosen points.
#[derive(Debug, Default)]
pub struct FakeHost {
    pub now: Duration,
    pub max_version: Option<ProtocolVersion>,
    pub functions: BTreeMap<u32, HostFunction>,
    /// Packets for the guest, in order.
    pub to_guest: VecDeque<Packet>,
    /// Completions of these request types are held back.
    pub hold: BTreeSet<MessageType>,
    pub held: Vec<Packet>,
    /// CREATE_INTERRUPT_MESSAGE is answered with a failure.
    pub fail_interrupts: bool,
    /// eject() unmaps the function's BARs at once (the C7 host).
    pub pull_memory_on_eject: bool,
    /// eject() unmaps the function's config window at once (the other C7 host).
    pub pull_config_on_eject: bool,
    /// How many BUS_D0ENTRY requests fail before one succeeds.
    pub d0_failures: u32,
    /// Functions added to the relations sent after BUS_D0ENTRY.
    pub add_at_d0: Vec<(u32, HostFunction)>,
    /// Every message the guest sent, decoded.
    pub log: Vec<Message>,
    pub retargets: Vec<(WinSlot, u32)>,
}

impl FakeHost {
    pub fn new() -> Self {
        Self {
            max_version: Some(ProtocolVersion::V1_4),
            ..Self::default()
        }
    }

    pub fn with_function(mut self, slot: u32, serial: u32) -> Self {
        self.functions.insert(slot, function(serial));
        self
    }

    fn push(&mut self, mut packet: Packet) {
        // VMBus delivers payloads padded to 8 bytes.
        vmbus_channel::pad_payload(&mut packet.payload);
        self.to_guest.push_back(packet);
    }

    fn complete(&mut self, ty: MessageType, tid: u64, c: Completion) {
        let packet = Packet::completion(tid, vmbus_channel::padded(c.encode()));
        if self.hold.contains(&ty) {
            self.held.push(packet);
        } else {
            self.to_guest.push_back(packet);
        }
    }

    /// BUS_RELATIONS2 listing the functions the host currently lists.
    pub fn relations(&self) -> Packet {
        let functions = self
            .functions
            .iter()
            .filter(|(_, f)| f.listed)
            .map(|(&slot, f)| FunctionDescription2 {
                v_id: U16::new(f.vendor),
                d_id: U16::new(f.device),
                wslot: WinSlot::from_raw(slot),
                ser: U32::new(f.serial),
                ..FunctionDescription2::default()
            })
            .collect();
        Packet::in_band(
            0,
            encode(&Message::BusRelations2(BusRelations {
                functions,
                trailing: Vec::new(),
            })),
        )
    }

    pub fn send_relations(&mut self) {
        let p = self.relations();
        self.push(p);
    }

    /// The host wants the function back: EJECT goes to the guest (and, for a C7 host, the
    /// BARs are unmapped at once). Like Hyper-V, the host keeps listing the function in
    /// relations until the guest's EJECTION_COMPLETE.
    pub fn eject(&mut self, slot: u32) {
        if let Some(f) = self.functions.get_mut(&slot) {
            if self.pull_memory_on_eject {
                f.bars_backed = false;
            }
            if self.pull_config_on_eject {
                f.config_backed = false;
            }
        }
        let msg = Message::Eject(Fixed::new(SlotBody {
            wslot: WinSlot::from_raw(slot),
        }));
        self.push(Packet::in_band(0, encode(&msg)));
    }

    pub fn release_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        self.to_guest.extend(held);
    }

    pub fn sent(&self, ty: MessageType) -> usize {
        self.log.iter().filter(|m| m.message_type() == ty).count()
    }

    pub fn position(&self, ty: MessageType) -> Option<usize> {
        self.log.iter().position(|m| m.message_type() == ty)
    }
}

pub fn function(serial: u32) -> HostFunction {
    HostFunction {
        vendor: 0x1414,
        device: 0xb111,
        serial,
        listed: true,
        bars_backed: true,
        assigned: true,
        config_backed: true,
    }
}

impl GuestEnv for FakeHost {
    fn now(&self) -> Duration {
        self.now
    }

    fn send(&mut self, packet: Packet) {
        self.now += Duration::from_micros(10);
        let Ok(msg) = decode(&packet.payload, Sender::Guest, ProtocolVersion::V1_7) else {
            panic!("the guest sent a malformed packet: {packet:?}");
        };
        assert!(
            packet.kind != PacketKind::Completion,
            "the guest never sends completions"
        );
        let tid = packet.transaction_id;
        let ty = msg.message_type();
        self.log.push(msg.clone());
        let ok = |ty| Completion::status_only(ty, Status::SUCCESS);
        match &msg {
            Message::QueryProtocolVersion(m) => {
                let v = m.body.protocol_version.get();
                let accepted = self.max_version.is_some_and(|max| v <= max.0);
                let status = if accepted {
                    Status::SUCCESS
                } else {
                    Status::REVISION_MISMATCH
                };
                let c = Completion {
                    request: ty,
                    status,
                    body: CompletionBody::ProtocolVersion(Fixed::new(VersionReply {
                        protocol_version: U32::new(v),
                    })),
                };
                self.complete(ty, tid, c);
            }
            Message::QueryBusRelations(_) => self.send_relations(),
            Message::QueryResourceRequirements(m) => {
                let slot = m.body.wslot.raw();
                let c = if self.functions.get(&slot).is_some_and(|f| f.assigned) {
                    let mut probed_bar = [U32::new(0); 6];
                    probed_bar[0] = U32::new(0xffff_c004);
                    probed_bar[1] = U32::new(0xffff_ffff);
                    Completion {
                        request: ty,
                        status: Status::SUCCESS,
                        body: CompletionBody::ResourceRequirements(Fixed::new(
                            ResourceRequirementsReply { probed_bar },
                        )),
                    }
                } else {
                    Completion::status_only(ty, Status::UNSUCCESSFUL)
                };
                self.complete(ty, tid, c);
            }
            Message::BusD0Entry(_) => {
                for (slot, f) in std::mem::take(&mut self.add_at_d0) {
                    self.functions.insert(slot, f);
                }
                self.send_relations();
                if self.d0_failures > 0 {
                    self.d0_failures -= 1;
                    self.complete(ty, tid, Completion::status_only(ty, Status::UNSUCCESSFUL));
                } else {
                    self.complete(ty, tid, ok(ty));
                }
            }
            Message::BusD0Exit(_)
            | Message::ResourcesAssigned(_)
            | Message::ResourcesAssigned2(_)
            | Message::ResourcesAssigned3(_) => self.complete(ty, tid, ok(ty)),
            Message::CreateInterruptMessage(_)
            | Message::CreateInterruptMessage2(_)
            | Message::CreateInterruptMessage3(_) => {
                let slot = msg.wslot().map_or(0, |s| s.raw());
                let present = self.functions.get(&slot).is_some_and(|f| f.assigned);
                let c = if self.fail_interrupts || !present {
                    Completion::status_only(ty, Status::UNSUCCESSFUL)
                } else {
                    Completion {
                        request: ty,
                        status: Status::SUCCESS,
                        body: CompletionBody::CreateInterrupt(Fixed::new(CreateInterruptReply {
                            reserved: U32::new(0),
                            int_desc: TranIntDesc {
                                reserved: U16::new(0),
                                vector_count: U16::new(1),
                                data: U32::new(0x4041),
                                address: U64::new(0xfee0_0000),
                            },
                        })),
                    }
                };
                self.complete(ty, tid, c);
            }
            Message::EjectionComplete(m) => {
                // The host removes the device once the guest let go.
                if let Some(f) = self.functions.get_mut(&m.body.wslot.raw()) {
                    f.listed = false;
                    f.assigned = false;
                    f.bars_backed = false;
                }
            }
            _ => {}
        }
    }

    fn config_read(&mut self, slot: WinSlot, offset: u16, len: u8) -> Option<u32> {
        if self
            .functions
            .get(&slot.raw())
            .is_some_and(|f| !f.config_backed)
        {
            return None;
        }
        let Some(f) = self.functions.get(&slot.raw()).filter(|f| f.assigned) else {
            return Some(u32::MAX);
        };
        let v = match offset {
            0 => u32::from(f.vendor) | (u32::from(f.device) << 16),
            _ => 0,
        };
        Some(match len {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        })
    }

    fn config_write(&mut self, slot: WinSlot, _offset: u16, _len: u8, _value: u32) -> bool {
        self.functions
            .get(&slot.raw())
            .is_none_or(|f| f.config_backed)
    }

    fn bar_read(&mut self, slot: WinSlot, _bar: u8, _offset: u64, _len: u8) -> Option<u32> {
        self.functions
            .get(&slot.raw())
            .filter(|f| f.bars_backed)
            .map(|_| 1)
    }

    fn bar_write(&mut self, slot: WinSlot, _bar: u8, _offset: u64, _len: u8, _value: u32) -> bool {
        self.functions
            .get(&slot.raw())
            .is_some_and(|f| f.bars_backed)
    }

    fn retarget_interrupt(&mut self, slot: WinSlot, vector: u32) {
        self.retargets.push((slot, vector));
    }
}

/// A guest wired to a fake host, stepped by the test.
pub struct Vm {
    pub guest: LinuxGuest,
    pub host: FakeHost,
    pub steps: usize,
}

/// The guest handles host messages promptly: callback (and a polling driver), then work, then
/// the probe path, then removal.
pub const PROMPT: &[ContextId] = &[
    ContextId::ChannelCallback,
    ContextId::Workqueue,
    ContextId::ProbePath,
    ContextId::Removal,
];

impl Vm {
    pub fn new(model: KernelModel, host: FakeHost) -> Self {
        Self {
            guest: LinuxGuest::new(GuestConfig::new(model)),
            host,
            steps: 0,
        }
    }

    /// Hands every packet the host produced to the guest.
    pub fn deliver(&mut self) {
        while let Some(p) = self.host.to_guest.pop_front() {
            self.guest.receive(p);
        }
    }

    /// Steps one context if it can run; returns whether it did.
    pub fn step(&mut self, ctx: ContextId) -> bool {
        self.deliver();
        if !self.guest.runnable().contains(&ctx) {
            return false;
        }
        self.guest.step(ctx, &mut self.host);
        self.steps += 1;
        self.deliver();
        true
    }

    /// Picks the first runnable context in `prio`; drivers, which are not listed, rank right
    /// after the callback.
    fn pick(&self, prio: &[ContextId]) -> Option<ContextId> {
        let runnable = self.guest.runnable();
        for p in prio {
            if runnable.contains(p) {
                return Some(*p);
            }
            if *p == ContextId::ChannelCallback
                && let Some(d) = runnable.iter().find(|c| matches!(c, ContextId::Driver(_)))
            {
                return Some(*d);
            }
        }
        runnable.first().copied()
    }

    /// Runs in priority order until `stop` holds, nothing can run, or the guest failed.
    /// Returns whether `stop` held.
    pub fn run_until(&mut self, prio: &[ContextId], stop: impl Fn(&Vm) -> bool) -> bool {
        for _ in 0..10_000 {
            self.deliver();
            if stop(self) {
                return true;
            }
            if self.guest.failure().is_some() {
                return false;
            }
            let Some(ctx) = self.pick(prio) else {
                return false;
            };
            self.step(ctx);
        }
        panic!("no end after 10000 steps:\n{}", self.trace());
    }

    /// Runs in priority order until nothing can run (or the guest failed).
    pub fn run(&mut self, prio: &[ContextId]) {
        self.run_until(prio, |_| false);
    }

    /// Steps only `ctx` until `stop` holds or it cannot run; returns whether `stop` held.
    pub fn step_until(&mut self, ctx: ContextId, stop: impl Fn(&Vm) -> bool) -> bool {
        loop {
            if stop(self) {
                return true;
            }
            if self.guest.failure().is_some() || !self.step(ctx) {
                return false;
            }
        }
    }

    /// Steps `ctx` while it can run.
    pub fn drain(&mut self, ctx: ContextId) {
        while self.guest.failure().is_none() && self.step(ctx) {}
    }

    pub fn failure_kind(&self) -> Option<guest_linux::FailureKind> {
        self.guest.failure().map(|f| f.kind)
    }

    /// The trace, one line per entry (for assertion messages).
    pub fn trace(&self) -> String {
        self.guest
            .trace()
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A booted guest: probe finished (or failed) with the host answering at once.
pub fn booted(model: KernelModel, host: FakeHost) -> Vm {
    let mut vm = Vm::new(model, host);
    vm.run(PROMPT);
    vm
}

pub const SLOT0: u32 = 0;
pub const SLOT1: u32 = 1;

pub fn slot(raw: u32) -> WinSlot {
    WinSlot::from_raw(raw)
}
