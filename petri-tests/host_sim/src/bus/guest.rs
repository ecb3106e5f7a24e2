//! Answers to guest messages, as OpenVMM's emulated bus and Hyper-V give them.
//!
//! Facts followed (OpenVMM `vm/devices/pci/vpci/src/device.rs`, Linux `pci-hyperv.c`): a
//! completion is sent only when the request asked for one; a request the host cannot handle
//! (undecodable, wrong slot, refused interrupt) is completed with BAD_DATA; QUERY_BUS_RELATIONS
//! is completed (if asked) before the relations go out; BUS_D0ENTRY sends the relations again
//! and completes after them; RESET_DEVICE and TDISP are NOT_SUPPORTED.
//!
//! Where this host differs from OpenVMM's, on purpose:
//! - QUERY_PROTOCOL_VERSION after a version was agreed is answered again (and may change
//!   the version); OpenVMM stops serving the channel. Linux never sends it twice.
//! - The version reply names the accepted version (or, on REVISION_MISMATCH, the host's
//!   highest); OpenVMM always names 1.3. Linux reads only the status.
//! - QUERY_RESOURCE_RESOURCES is NOT_SUPPORTED (OpenVMM answers with a resource list that
//!   has no status); Linux never sends it.
//! - Requests before a version is agreed get BAD_DATA; OpenVMM stops serving the channel.

use super::function::{Interrupt, msi_address};
use super::{HostBus, Out};
use crate::config::UnknownSlot;
use crate::device::cfg;
use crate::event::{GuestError, HostEventKind};
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::wire::{
    CreateInterruptReply, MSI_RESOURCE_SIZES, MsiDesc, MsiDesc2, MsiDesc3, PowerStateReply,
    ResourceDescriptor, ResourceRequirementsReply, TranIntDesc, VersionReply,
};
use vpci_protocol::{
    Completion, CompletionBody, Fixed, Message, MessageType, ProtocolVersion, ResourcesAssigned,
    Sender, Status, WinSlot, decode,
};
use zerocopy::{FromBytes, IntoBytes};

/// D0 and D3 as POWER_STATE_CHANGE numbers them.
const POWER_D0: u32 = 1;
const POWER_D3: u32 = 4;

/// The most vectors one interrupt may ask for (OpenVMM's PCI_MAX_MSI_VECTOR_COUNT).
const MAX_VECTOR_COUNT: u16 = 32;
/// The most processors one interrupt may target.
const MAX_PROCESSORS: u32 = 32;
/// What MSI-resource replies to RESOURCES_ASSIGNED2 and 3 are padded to (OpenVMM answers
/// both with its version-2 layout).
const MSI_REPLY_SIZE_V2: usize = 72;

/// An interrupt request in any of its three wire forms.
struct IntRequest {
    vector: u32,
    delivery_mode: u8,
    vector_count: u16,
    /// The processors named (count) and the first of them.
    processors: u32,
    first_cpu: u32,
}

impl IntRequest {
    /// Protocol 1.0/1.1: a processor mask. Linux sends all ones (`CPU_AFFINITY_ALL`: any
    /// processor), which Hyper-V takes as "deliver anywhere"; that counts as one target here,
    /// not 64. (OpenVMM's emulated bus refuses more than 32 bits; the hosts Linux meets at
    /// 1.1 do not.) Any other mask names its processors.
    fn v1(d: &MsiDesc) -> Self {
        let mask = d.cpu_mask.get();
        Self {
            vector: u32::from(d.vector),
            delivery_mode: d.delivery_mode,
            vector_count: d.vector_count.get(),
            processors: if mask == u64::MAX {
                1
            } else {
                mask.count_ones()
            },
            first_cpu: if mask == 0 { 0 } else { mask.trailing_zeros() },
        }
    }

    fn v2(d: &MsiDesc2) -> Self {
        Self {
            vector: u32::from(d.vector),
            delivery_mode: d.delivery_mode,
            vector_count: d.vector_count.get(),
            processors: u32::from(d.processor_count.get()),
            first_cpu: d.processor_array.first().map_or(0, |c| u32::from(c.get())),
        }
    }

    fn v3(d: &MsiDesc3) -> Self {
        Self {
            vector: d.vector.get(),
            delivery_mode: d.delivery_mode,
            vector_count: d.vector_count.get(),
            processors: u32::from(d.processor_count.get()),
            first_cpu: d.processor_array.first().map_or(0, |c| u32::from(c.get())),
        }
    }
}

fn completion(p: &Packet, c: Completion, slot: Option<WinSlot>) -> Option<Out> {
    p.completion_requested().then(|| Out {
        packet: Packet::completion(p.transaction_id, c.encode()),
        answers: Some((c.request, slot)),
    })
}

fn status_only(p: &Packet, t: MessageType, s: Status, slot: Option<WinSlot>) -> Option<Out> {
    completion(p, Completion::status_only(t, s), slot)
}

impl HostBus {
    /// Decodes and answers one guest packet: the message (if it decoded) and the answers.
    pub(super) fn on_guest_packet(
        &mut self,
        p: &Packet,
    ) -> (Option<(MessageType, Option<WinSlot>)>, Vec<Out>) {
        match p.kind {
            PacketKind::InBand => {}
            PacketKind::Completion => {
                self.guest_error(GuestError::UnexpectedCompletion(p.transaction_id));
                return (None, Vec::new());
            }
            other => {
                self.guest_error(GuestError::UnexpectedKind(other.to_raw()));
                return (None, Vec::new());
            }
        }
        let version = self.version.unwrap_or(ProtocolVersion::V1_0);
        let msg = match decode(&p.payload, Sender::Guest, version) {
            Ok(m) => m,
            Err(e) => {
                self.guest_error(GuestError::Decode(e));
                let out = p.completion_requested().then(|| Out {
                    packet: Packet::completion(
                        p.transaction_id,
                        Status::BAD_DATA.0.to_le_bytes().to_vec(),
                    ),
                    answers: None,
                });
                return (None, out.into_iter().collect());
            }
        };
        let t = msg.message_type();
        let slot = msg.wslot();
        self.emit(HostEventKind::Received {
            message: t,
            slot,
            transaction_id: p.transaction_id,
        });
        // Before a version is agreed only the negotiation is served, and the answer to an
        // EJECT the host itself sent (a host may eject before the guest has spoken; the
        // guest's, or its paravisor's, EJECTION_COMPLETE then ends that eject).
        let allowed = matches!(
            t,
            MessageType::QUERY_PROTOCOL_VERSION | MessageType::EJECTION_COMPLETE
        );
        if self.version.is_none() && !allowed {
            self.guest_error(GuestError::NotNegotiated(t));
            let out = status_only(p, t, Status::BAD_DATA, slot);
            return (Some((t, slot)), out.into_iter().collect());
        }
        let outs = self.answer(p, msg);
        (Some((t, slot)), outs)
    }

    fn guest_error(&mut self, e: GuestError) {
        self.counters.guest_errors += 1;
        self.emit(HostEventKind::GuestError(e));
    }

    fn answer(&mut self, p: &Packet, msg: Message) -> Vec<Out> {
        let t = msg.message_type();
        let slot = msg.wslot();
        if let Some(s) = slot {
            let needs_function = !matches!(
                msg,
                Message::EjectionComplete(_)
                    | Message::InvalidateDevice(_)
                    | Message::QueryStop(_)
                    | Message::Reenable(_)
                    | Message::QueryStopFailed(_)
            );
            if needs_function && !self.functions.contains_key(&s.raw()) {
                return self.unknown_slot(p, t, s);
            }
        }
        let ok = |c: CompletionBody| Completion {
            request: t,
            status: Status::SUCCESS,
            body: c,
        };
        let out: Option<Out> = match msg {
            Message::QueryProtocolVersion(m) => {
                let offered = ProtocolVersion(m.body.protocol_version.get());
                return self.negotiate(p, offered).into_iter().collect();
            }
            Message::QueryBusRelations(_) => {
                // OpenVMM completes (if asked, with an empty payload) before it sends.
                let mut outs: Vec<Out> = p
                    .completion_requested()
                    .then(|| Out {
                        packet: Packet::completion(p.transaction_id, Vec::new()),
                        answers: None,
                    })
                    .into_iter()
                    .collect();
                outs.extend(self.relations_out(Some((t, None))));
                return outs;
            }
            Message::BusD0Entry(m) => {
                let mmio_base = m.body.mmio_base.get();
                self.d0 = Some(mmio_base);
                self.emit(HostEventKind::D0Entered { mmio_base });
                let mut outs: Vec<Out> = self.relations_out(None).into_iter().collect();
                let done = status_only(p, t, Status::SUCCESS, None);
                if done.is_none() {
                    // Without a completion, the relations are the answer.
                    if let Some(o) = outs.first_mut() {
                        o.answers = Some((t, None));
                    }
                }
                outs.extend(done);
                return outs;
            }
            Message::BusD0Exit(_) => {
                self.d0 = None;
                self.emit(HostEventKind::D0Exited);
                status_only(p, t, Status::SUCCESS, None)
            }
            Message::QueryResourceRequirements(m) => {
                let s = m.body.wslot;
                let probed = self.function_mut(s).map(|f| f.device.probed_bars());
                let reply = ResourceRequirementsReply {
                    probed_bar: probed.unwrap_or_default().map(Into::into),
                };
                completion(
                    p,
                    ok(CompletionBody::ResourceRequirements(Fixed::new(reply))),
                    Some(s),
                )
            }
            Message::QueryResourceResources(m) => {
                status_only(p, t, Status::NOT_SUPPORTED, Some(m.body.wslot))
            }
            Message::ResourcesAssigned(m) => self.resources_assigned(p, t, m, 0),
            Message::ResourcesAssigned2(m) => self.resources_assigned(p, t, m, 1),
            Message::ResourcesAssigned3(m) => self.resources_assigned(p, t, m, 2),
            Message::ResourcesReleased(m) => {
                let s = m.body.wslot;
                if let Some(f) = self.function_mut(s) {
                    f.interrupts.clear();
                    f.resources_assigned = false;
                    for i in 0..6u16 {
                        f.device.config_write(cfg::BAR0 + 4 * i, 0, !0);
                    }
                }
                self.emit(HostEventKind::ResourcesReleased { slot: s });
                status_only(p, t, Status::SUCCESS, Some(s))
            }
            Message::CreateInterruptMessage(m) => {
                let r = IntRequest::v1(&m.body.int_desc);
                self.create_interrupt(p, t, m.body.wslot, r)
            }
            Message::CreateInterruptMessage2(m) => {
                let r = IntRequest::v2(&m.body.int_desc);
                self.create_interrupt(p, t, m.body.wslot, r)
            }
            Message::CreateInterruptMessage3(m) => {
                let r = IntRequest::v3(&m.body.int_desc);
                self.create_interrupt(p, t, m.body.wslot, r)
            }
            Message::DeleteInterruptMessage(m) | Message::DeleteInterruptMessage2(m) => {
                let s = m.body.wslot;
                let address = m.body.int_desc.address.get();
                let data = m.body.int_desc.data.get();
                let removed = self.function_mut(s).and_then(|f| {
                    let i = f
                        .interrupts
                        .iter()
                        .position(|x| x.address == address && x.data == data)?;
                    Some(f.interrupts.remove(i))
                });
                if removed.is_some() {
                    self.emit(HostEventKind::InterruptDeleted {
                        slot: s,
                        address,
                        data,
                    });
                    status_only(p, t, Status::SUCCESS, Some(s))
                } else {
                    self.guest_error(GuestError::UnknownInterrupt {
                        slot: s,
                        address,
                        data,
                    });
                    status_only(p, t, Status::BAD_DATA, Some(s))
                }
            }
            Message::PowerStateChange(m) => {
                let s = m.body.wslot;
                let state = m.body.power_state.get();
                if matches!(state, POWER_D0 | POWER_D3) {
                    if let Some(f) = self.function_mut(s) {
                        f.power_state = state;
                    }
                    self.emit(HostEventKind::PowerStateChanged { slot: s, state });
                    let reply = PowerStateReply {
                        wslot: s,
                        resultant_state: state.into(),
                        reserved: 0.into(),
                    };
                    completion(
                        p,
                        ok(CompletionBody::PowerStateChange(Fixed::new(reply))),
                        Some(s),
                    )
                } else {
                    self.guest_error(GuestError::BadPowerState { slot: s, state });
                    status_only(p, t, Status::BAD_DATA, Some(s))
                }
            }
            Message::ReadBlock(m) => {
                let s = m.body.wslot;
                let id = m.body.block_id.get();
                let len = m.body.bytes_requested.get() as usize;
                let mut bytes = self
                    .function_mut(s)
                    .and_then(|f| f.blocks.get(&id).cloned())
                    .unwrap_or_default();
                bytes.resize(len, 0);
                completion(p, ok(CompletionBody::ReadBlock(bytes)), Some(s))
            }
            Message::WriteBlock(m) => {
                let s = m.head.wslot;
                let id = m.head.block_id.get();
                let max = self.policy.max_config_blocks;
                let stored = self.function_mut(s).is_some_and(|f| {
                    if f.blocks.len() >= max && !f.blocks.contains_key(&id) {
                        return false;
                    }
                    f.blocks.insert(id, m.bytes);
                    true
                });
                if stored {
                    status_only(p, t, Status::SUCCESS, Some(s))
                } else {
                    self.guest_error(GuestError::TooManyBlocks(s));
                    status_only(p, t, Status::UNSUCCESSFUL, Some(s))
                }
            }
            Message::EjectionComplete(m) => {
                let s = m.body.wslot;
                if !self.ejection_complete(s) {
                    self.guest_error(GuestError::UnexpectedEjectionComplete(s));
                    return status_only(p, t, Status::BAD_DATA, Some(s))
                        .into_iter()
                        .collect();
                }
                None
            }
            Message::ResetDevice(_)
            | Message::TdispCommand(_)
            | Message::QueryIsolatedResources(_) => status_only(p, t, Status::NOT_SUPPORTED, slot),
            Message::InvalidateDevice(_)
            | Message::InvalidateBus(_)
            | Message::QueryStop(_)
            | Message::Reenable(_)
            | Message::QueryStopFailed(_)
            | Message::BusRelations(_)
            | Message::BusRelations2(_)
            | Message::Eject(_)
            | Message::InvalidateBlock(_) => {
                self.guest_error(GuestError::Unsupported(t));
                status_only(p, t, Status::BAD_DATA, slot)
            }
        };
        out.into_iter().collect()
    }

    fn unknown_slot(&mut self, p: &Packet, t: MessageType, s: WinSlot) -> Vec<Out> {
        self.counters.unknown_slot += 1;
        self.emit(HostEventKind::UnknownSlot {
            message: t,
            slot: s,
        });
        match self.policy.unknown_slot {
            UnknownSlot::Fail(status) => status_only(p, t, Status(status), Some(s))
                .into_iter()
                .collect(),
            UnknownSlot::Ignore => Vec::new(),
        }
    }

    fn negotiate(&mut self, p: &Packet, offered: ProtocolVersion) -> Option<Out> {
        let t = MessageType::QUERY_PROTOCOL_VERSION;
        let accepted = self.versions.contains(&offered);
        let (status, reply_version) = if accepted {
            self.version = Some(offered);
            self.emit(HostEventKind::Negotiated { version: offered });
            self.observations
                .push_back(crate::script::Observation::Negotiated);
            (Status::SUCCESS, offered)
        } else {
            self.emit(HostEventKind::VersionRejected { offered });
            let highest = self.versions.iter().max().copied().unwrap_or(offered);
            (Status::REVISION_MISMATCH, highest)
        };
        let reply = VersionReply {
            protocol_version: reply_version.0.into(),
        };
        completion(
            p,
            Completion {
                request: t,
                status,
                body: CompletionBody::ProtocolVersion(Fixed::new(reply)),
            },
            None,
        )
    }

    fn create_interrupt(
        &mut self,
        p: &Packet,
        t: MessageType,
        s: WinSlot,
        r: IntRequest,
    ) -> Option<Out> {
        match self.allocate_interrupt(s, &r) {
            Ok(desc) => {
                let reply = CreateInterruptReply {
                    reserved: 0.into(),
                    int_desc: desc,
                };
                let c = Completion {
                    request: t,
                    status: Status::SUCCESS,
                    body: CompletionBody::CreateInterrupt(Fixed::new(reply)),
                };
                completion(p, c, Some(s))
            }
            Err(reason) => {
                self.guest_error(GuestError::BadInterrupt { slot: s, reason });
                status_only(p, t, Status::BAD_DATA, Some(s))
            }
        }
    }

    /// Checks an interrupt request and adds it to the function's table.
    fn allocate_interrupt(
        &mut self,
        s: WinSlot,
        r: &IntRequest,
    ) -> Result<TranIntDesc, &'static str> {
        if r.delivery_mode > 1 {
            return Err("delivery mode is neither fixed nor lowest priority");
        }
        if r.vector_count > MAX_VECTOR_COUNT {
            return Err("more than 32 vectors");
        }
        if r.processors > MAX_PROCESSORS {
            return Err("more than 32 processors");
        }
        let max = self.policy.max_interrupts_per_function;
        let f = self.function_mut(s).ok_or("no such function")?;
        if r.vector_count == 0 {
            // Nothing to map (OpenVMM skips such requests and answers with zeros).
            return Ok(TranIntDesc::default());
        }
        if f.interrupts.len() >= max {
            return Err("the function's interrupt table is full");
        }
        let entry = Interrupt {
            address: msi_address(r.first_cpu),
            data: r.vector,
            vector: r.vector,
            vector_count: r.vector_count,
            cpu: r.first_cpu,
        };
        f.interrupts.push(entry);
        self.emit(HostEventKind::InterruptCreated {
            slot: s,
            address: entry.address,
            data: entry.data,
        });
        Ok(TranIntDesc {
            reserved: 0.into(),
            vector_count: entry.vector_count.into(),
            data: entry.data.into(),
            address: entry.address.into(),
        })
    }

    /// RESOURCES_ASSIGNED(2,3): programs the BARs, maps any MSI resources, and answers with
    /// the translated resources as OpenVMM does (Linux reads only the status).
    fn resources_assigned(
        &mut self,
        p: &Packet,
        t: MessageType,
        m: ResourcesAssigned,
        form: usize,
    ) -> Option<Out> {
        let s = m.head.wslot;
        let entry = MSI_RESOURCE_SIZES.get(form).copied().unwrap_or(16);
        let requests: Vec<IntRequest> = m
            .msi_resources
            .chunks_exact(entry)
            .filter_map(|c| match form {
                0 => MsiDesc::read_from_prefix(c)
                    .ok()
                    .map(|(d, _)| IntRequest::v1(&d)),
                1 => MsiDesc2::read_from_prefix(c)
                    .ok()
                    .map(|(d, _)| IntRequest::v2(&d)),
                _ => MsiDesc3::read_from_prefix(c)
                    .ok()
                    .map(|(d, _)| IntRequest::v3(&d)),
            })
            .collect();
        let max = self.policy.max_interrupts_per_function;
        let held = self.function_mut(s).map_or(0, |f| f.interrupts.len());
        if held.saturating_add(requests.len()) > max {
            self.guest_error(GuestError::BadInterrupt {
                slot: s,
                reason: "too many MSI resources",
            });
            return status_only(p, t, Status::BAD_DATA, Some(s));
        }
        let reply_entry = if form == 0 { 16 } else { MSI_REPLY_SIZE_V2 };
        let mut msi_reply = Vec::with_capacity(requests.len() * reply_entry);
        for r in &requests {
            match self.allocate_interrupt(s, r) {
                Ok(desc) => {
                    let start = msi_reply.len();
                    msi_reply.extend_from_slice(desc.as_bytes());
                    msi_reply.resize(start + reply_entry, 0);
                }
                Err(reason) => {
                    self.guest_error(GuestError::BadInterrupt { slot: s, reason });
                    return status_only(p, t, Status::BAD_DATA, Some(s));
                }
            }
        }
        if let Some(f) = self.function_mut(s) {
            program_bars(f.device.as_mut(), &m.head.memory_range);
            f.resources_assigned = true;
        }
        self.emit(HostEventKind::ResourcesAssigned { slot: s });
        let mut head = m.head;
        head.msi_descriptor_count = (requests.len() as u32).into();
        head.reserved = 0.into();
        let c = Completion {
            request: t,
            status: Status::SUCCESS,
            body: CompletionBody::ResourcesAssigned(ResourcesAssigned {
                head,
                msi_resources: msi_reply,
                trailing: Vec::new(),
            }),
        };
        completion(p, c, Some(s))
    }
}

/// Writes the assigned memory ranges into the BAR registers (the high half of a 64-bit BAR
/// too), as OpenVMM's host does before it answers RESOURCES_ASSIGNED.
fn program_bars(device: &mut dyn crate::device::Device, ranges: &[ResourceDescriptor; 6]) {
    let probed = device.probed_bars();
    for (i, r) in ranges.iter().enumerate() {
        let len = match r.resource_type {
            3 => u64::from(r.length.get()),
            7 => {
                let flags = r.flags.get();
                let shift = if flags & (1 << 9) != 0 {
                    8
                } else if flags & (1 << 10) != 0 {
                    16
                } else if flags & (1 << 11) != 0 {
                    32
                } else {
                    continue;
                };
                u64::from(r.length.get()) << shift
            }
            _ => continue,
        };
        if len == 0 {
            continue;
        }
        let address = r.address.get();
        let reg = cfg::BAR0 + 4 * i as u16;
        device.config_write(reg, address as u32, !0);
        let bits64 = probed.get(i).is_some_and(|m| m & 0b110 == 0b100);
        if bits64 && i < 5 {
            device.config_write(reg + 4, (address >> 32) as u32, !0);
        }
    }
}
