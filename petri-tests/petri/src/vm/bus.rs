//! One bus of a VM: its host, guest, optional relay, the packets in flight, and the pump
//! that moves packets between them until nothing moves.

use super::Mark;
use crate::relay_rig::RelayRig;
use crate::trace::{Lane, Trace};
use futures::task::noop_waker_ref;
use guest_linux::LinuxGuest;
use host_sim::{HostBus, HostEventKind};
use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::Duration;
use vmbus_channel::{Channel, ChannelError, MemoryChannel, Packet, PacketKind};
use vpci_protocol::{MessageType, WinSlot};
use vpci_relay::RelayEvent;

/// Something on its way to the guest over the bus's channel.
pub(super) enum Delivery {
    /// A packet, from the host (direct) or the relay.
    Packet(Packet, Lane),
    /// The channel's rescind.
    Rescind(Lane),
}

/// One bus of the VM.
pub(super) struct Bus {
    pub(super) host: HostBus,
    pub(super) guest: LinuxGuest,
    pub(super) relay: Option<RelayRig>,
    /// Packets waiting for room in a relay channel: towards the relay's host side and guest
    /// side.
    pub(super) to_relay_host: VecDeque<Packet>,
    pub(super) to_relay_guest: VecDeque<Packet>,
    /// The guest's sends of the current step.
    pub(super) outbox: Vec<Packet>,
    /// Packets (and the rescind) on their way to the guest, in order. When each arrives is
    /// a scheduling choice, as VMBus's latency is.
    pub(super) in_flight: VecDeque<Delivery>,
    pub(super) host_rescind_sent: bool,
    pub(super) guest_rescind_sent: bool,
    pub(super) eject_timeouts: Vec<WinSlot>,
    /// The relay lost its host link for a reason of its own (not the host's rescind).
    pub(super) relay_lost_host: bool,
    /// When the guest's probe path returned successfully.
    pub(super) probed_at: Option<Duration>,
    /// The relay may have something to do (time moved, a config access, a host action), so
    /// the next pump polls it even if no packet moved.
    pub(super) relay_dirty: bool,
}

/// Sends what `queue` holds into `channel` as far as it takes it; a channel that has ended
/// takes nothing more. Returns whether anything was sent.
pub(crate) fn flush(
    queue: &mut VecDeque<Packet>,
    channel: &mut MemoryChannel,
    cx: &mut Context<'_>,
) -> bool {
    let mut sent = false;
    while let Some(p) = queue.front() {
        match channel.poll_send(cx, p) {
            Poll::Ready(Ok(())) => {
                queue.pop_front();
                sent = true;
            }
            Poll::Ready(Err(_)) => queue.clear(),
            Poll::Pending => break,
        }
    }
    sent
}

/// The packet as VMBus delivers it: the payload padded with zeros to a multiple of 8 bytes
/// (the ring stores whole 8-byte units, and the reader gets them all).
pub(crate) fn on_the_wire(mut packet: Packet) -> Packet {
    vmbus_channel::pad_payload(&mut packet.payload);
    packet
}

/// A short description of a vPCI packet for traces: the message type and its slot, or the
/// completion's status.
pub fn describe(packet: &Packet) -> String {
    let word = |at: usize| {
        packet
            .payload
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
    };
    match packet.kind {
        PacketKind::Completion => match word(0) {
            Some(status) => format!("completion {status:#010x}"),
            None => "completion (short)".to_owned(),
        },
        PacketKind::InBand => {
            let Some(ty) = word(0) else {
                return "empty packet".to_owned();
            };
            let ty = MessageType(ty);
            let name = ty.to_string();
            let name = name.strip_prefix("PCI_").unwrap_or(&name).to_owned();
            let has_slot = !matches!(
                ty,
                MessageType::BUS_RELATIONS
                    | MessageType::BUS_RELATIONS2
                    | MessageType::QUERY_BUS_RELATIONS
                    | MessageType::QUERY_PROTOCOL_VERSION
                    | MessageType::BUS_D0ENTRY
                    | MessageType::BUS_D0EXIT
            );
            match word(4) {
                Some(slot) if has_slot => format!("{name}({slot})"),
                _ => name,
            }
        }
        other => format!("packet kind {}", other.to_raw()),
    }
}

pub(crate) fn relay_note(event: &RelayEvent) -> Option<(String, Mark)> {
    Some(match event {
        RelayEvent::EjectHeld { slot } => (format!("EJECT({slot}) held: not settled"), Mark::Held),
        RelayEvent::RelationsHeld => ("relations held".to_owned(), Mark::Held),
        RelayEvent::Coalesced { slot } => (
            format!("slot {slot} added and removed unseen: coalesced"),
            Mark::Coalesced,
        ),
        RelayEvent::AnsweredLocally { slot, request } => {
            let slot = slot.map(|s| format!("({s})")).unwrap_or_default();
            (format!("{request}{slot} answered locally"), Mark::Local)
        }
        RelayEvent::EjectAnsweredLocally { slot } => {
            (format!("EJECT({slot}) answered locally"), Mark::Local)
        }
        RelayEvent::Backing { slot, backing } => {
            (format!("{slot} backed by {backing:?}"), Mark::None)
        }
        RelayEvent::HostLost { rescinded } => (
            format!(
                "host lost ({})",
                if *rescinded { "rescind" } else { "fault" }
            ),
            Mark::None,
        ),
        RelayEvent::Malformed { side, fault } => {
            (format!("{side:?} packet refused: {fault}"), Mark::None)
        }
        _ => return None,
    })
}

impl Bus {
    /// Moves packets between the host, the relay and the guest until nothing moves, noting
    /// each in `trace` when recording.
    pub(super) fn pump(&mut self, now: Duration, mut trace: Option<&mut Trace>) {
        let mut cx = Context::from_waker(noop_waker_ref());
        let recording = trace.is_some();
        let bus = self;
        for _ in 0..10_000 {
            let mut moved = false;
            // Notes for the trace; built only when recording (formatting is most of a
            // long run's cost otherwise).
            let mut notes: Vec<(Lane, Lane, String, Mark)> = Vec::new();
            let mut note = |from: Lane, to: Lane, label: &dyn Fn() -> String, mark: Mark| {
                if recording {
                    notes.push((from, to, label(), mark));
                }
            };
            let relayed = bus.relay.is_some();
            // The guest's sends.
            for p in bus.outbox.drain(..) {
                let p = on_the_wire(p);
                moved = true;
                let to = if relayed { Lane::Relay } else { Lane::Host };
                note(Lane::Guest, to, &|| describe(&p), Mark::None);
                if relayed {
                    bus.to_relay_guest.push_back(p);
                } else {
                    bus.host.handle_packet(now, p);
                }
            }
            // The host's sends, and its rescind once they are out.
            while let Some(p) = bus.host.poll_transmit() {
                let p = on_the_wire(p);
                moved = true;
                if relayed {
                    note(Lane::Host, Lane::Relay, &|| describe(&p), Mark::None);
                    bus.to_relay_host.push_back(p);
                } else {
                    bus.in_flight.push_back(Delivery::Packet(p, Lane::Host));
                }
            }
            while let Some(e) = bus.host.poll_event() {
                match e.kind {
                    HostEventKind::EjectTimedOut { slot } => {
                        bus.eject_timeouts.push(slot);
                        note(
                            Lane::Host,
                            Lane::Host,
                            &|| format!("EJECT({slot}) timed out: removed by force"),
                            Mark::None,
                        );
                    }
                    HostEventKind::BarsTornDown { slot } => {
                        note(
                            Lane::Host,
                            Lane::Host,
                            &|| format!("{slot} device memory torn down"),
                            Mark::None,
                        );
                    }
                    HostEventKind::ScriptStepFired { step } => {
                        note(
                            Lane::Host,
                            Lane::Host,
                            &|| format!("script step {step}"),
                            Mark::None,
                        );
                    }
                    _ => {}
                }
            }
            if bus.host.rescinded() && !bus.host_rescind_sent && bus.to_relay_host.is_empty() {
                bus.host_rescind_sent = true;
                moved = true;
                note(Lane::Host, Lane::Host, &|| "rescind".to_owned(), Mark::None);
                match &mut bus.relay {
                    Some(relay) => relay.host_end.revoke(),
                    None => {
                        bus.guest_rescind_sent = true;
                        bus.in_flight.push_back(Delivery::Rescind(Lane::Host));
                    }
                }
            }
            let poll_relay = moved
                || bus.relay_dirty
                || !bus.to_relay_host.is_empty()
                || !bus.to_relay_guest.is_empty();
            bus.relay_dirty = false;
            if let Some(relay) = bus.relay.as_mut().filter(|_| poll_relay) {
                moved |= flush(&mut bus.to_relay_host, &mut relay.host_end, &mut cx);
                moved |= flush(&mut bus.to_relay_guest, &mut relay.guest_end, &mut cx);
                relay.poll();
                while let Poll::Ready(Ok(p)) = relay.host_end.poll_recv(&mut cx) {
                    let p = on_the_wire(p);
                    moved = true;
                    note(Lane::Relay, Lane::Host, &|| describe(&p), Mark::None);
                    if !bus.host.rescinded() {
                        bus.host.handle_packet(now, p);
                    }
                }
                loop {
                    match relay.guest_end.poll_recv(&mut cx) {
                        Poll::Ready(Ok(p)) => {
                            let p = on_the_wire(p);
                            moved = true;
                            bus.in_flight.push_back(Delivery::Packet(p, Lane::Relay));
                        }
                        Poll::Ready(Err(ChannelError::Revoked | ChannelError::Closed)) => {
                            if !bus.guest_rescind_sent {
                                bus.guest_rescind_sent = true;
                                moved = true;
                                bus.in_flight.push_back(Delivery::Rescind(Lane::Relay));
                            }
                            break;
                        }
                        Poll::Ready(Err(_)) | Poll::Pending => break,
                    }
                }
                for e in relay.take_events() {
                    if matches!(e, RelayEvent::HostLost { rescinded: false }) {
                        bus.relay_lost_host = true;
                    }
                    if let Some((label, mark)) = relay_note(&e) {
                        note(Lane::Relay, Lane::Relay, &|| label.clone(), mark);
                    }
                }
            }
            if let Some(trace) = trace.as_deref_mut() {
                for (from, to, label, mark) in notes {
                    trace.push(now, from, to, label, mark);
                }
            }
            if !moved {
                return;
            }
        }
    }
}
