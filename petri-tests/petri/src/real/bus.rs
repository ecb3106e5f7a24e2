//! The host side of a real-guest run: host_sim's bus, the optional relay, the packets on
//! their way to the guest, and the pump that moves packets between them until nothing moves.

use crate::relay_rig::RelayRig;
use crate::trace::{Lane, Mark, Trace};
use crate::vm::{describe, flush, on_the_wire};
use futures::task::noop_waker_ref;
use host_sim::{HostBus, HostEventKind};
use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::Duration;
use vmbus_channel::{Channel, ChannelError, Packet};
use vpci_protocol::WinSlot;

/// Something on its way to the guest's channel.
pub(super) enum Delivery {
    /// A packet, from the host (direct) or the relay.
    Packet(Packet, Lane),
    /// The channel's rescind.
    Rescind(Lane),
}

/// The world outside the real guest on its one bus.
pub(super) struct HostSide {
    pub(super) host: HostBus,
    pub(super) relay: Option<RelayRig>,
    to_relay_host: VecDeque<Packet>,
    to_relay_guest: VecDeque<Packet>,
    /// The guest's sends not yet pumped.
    pub(super) outbox: Vec<Packet>,
    /// What is in flight to the guest, in order; when each arrives is a scheduling choice.
    pub(super) in_flight: VecDeque<Delivery>,
    host_rescind_sent: bool,
    /// The guest's channel has been (or is being) rescinded.
    pub(super) guest_rescind_sent: bool,
    /// Slots whose EJECT the host gave up on (Hyper-V's 60 s).
    pub(super) eject_timeouts: Vec<WinSlot>,
    /// The relay lost its host link for a reason of its own (not the host's rescind).
    relay_lost_host: bool,
    /// The relay may have work (time moved, a config access, a host action).
    pub(super) relay_dirty: bool,
}

impl HostSide {
    pub(super) fn new(host: HostBus, relay: Option<RelayRig>) -> Self {
        Self {
            host,
            relay,
            to_relay_host: VecDeque::new(),
            to_relay_guest: VecDeque::new(),
            outbox: Vec::new(),
            in_flight: VecDeque::new(),
            host_rescind_sent: false,
            guest_rescind_sent: false,
            eject_timeouts: Vec::new(),
            relay_lost_host: false,
            relay_dirty: true,
        }
    }

    /// Whether the channel to the guest ended (host rescind, or the relay closed it).
    pub(super) fn channel_ended(&self) -> bool {
        self.host.rescinded() || self.guest_rescind_sent
    }

    /// Whether the relay dropped the bus: it closed the guest's channel, or lost its host
    /// link (whoever's fault that was).
    pub(super) fn relay_dropped(&self) -> bool {
        (self.relay.is_some() && self.guest_rescind_sent) || self.relay_lost_host
    }

    /// Moves packets host <-> relay <-> guest until nothing moves, noting each in `trace`.
    pub(super) fn pump(&mut self, now: Duration, mut trace: Option<&mut Trace>) {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut note = |from: Lane, to: Lane, label: String, mark: Mark| {
            if let Some(t) = trace.as_deref_mut() {
                t.push(now, from, to, label, mark);
            }
        };
        for _ in 0..10_000 {
            let mut moved = false;
            let relayed = self.relay.is_some();
            for p in std::mem::take(&mut self.outbox) {
                let p = on_the_wire(p);
                moved = true;
                let to = if relayed { Lane::Relay } else { Lane::Host };
                note(Lane::Guest, to, describe(&p), Mark::None);
                if relayed {
                    self.to_relay_guest.push_back(p);
                } else if !self.host.rescinded() {
                    self.host.handle_packet(now, p);
                }
            }
            while let Some(p) = self.host.poll_transmit() {
                let p = on_the_wire(p);
                moved = true;
                if relayed {
                    note(Lane::Host, Lane::Relay, describe(&p), Mark::None);
                    self.to_relay_host.push_back(p);
                } else {
                    self.in_flight.push_back(Delivery::Packet(p, Lane::Host));
                }
            }
            while let Some(e) = self.host.poll_event() {
                match e.kind {
                    HostEventKind::EjectTimedOut { slot } => {
                        self.eject_timeouts.push(slot);
                        note(
                            Lane::Host,
                            Lane::Host,
                            format!("EJECT({slot}) timed out: removed by force"),
                            Mark::None,
                        );
                    }
                    HostEventKind::BarsTornDown { slot } => note(
                        Lane::Host,
                        Lane::Host,
                        format!("{slot} device memory torn down"),
                        Mark::None,
                    ),
                    HostEventKind::ScriptStepFired { step } => note(
                        Lane::Host,
                        Lane::Host,
                        format!("script step {step}"),
                        Mark::None,
                    ),
                    _ => {}
                }
            }
            if self.host.rescinded() && !self.host_rescind_sent && self.to_relay_host.is_empty() {
                self.host_rescind_sent = true;
                moved = true;
                note(Lane::Host, Lane::Host, "rescind".to_owned(), Mark::None);
                match &mut self.relay {
                    Some(relay) => relay.host_end.revoke(),
                    None => {
                        self.guest_rescind_sent = true;
                        self.in_flight.push_back(Delivery::Rescind(Lane::Host));
                    }
                }
            }
            let poll_relay = moved
                || self.relay_dirty
                || !self.to_relay_host.is_empty()
                || !self.to_relay_guest.is_empty();
            self.relay_dirty = false;
            if let Some(relay) = self.relay.as_mut().filter(|_| poll_relay) {
                moved |= flush(&mut self.to_relay_host, &mut relay.host_end, &mut cx);
                moved |= flush(&mut self.to_relay_guest, &mut relay.guest_end, &mut cx);
                relay.poll();
                while let Poll::Ready(Ok(p)) = relay.host_end.poll_recv(&mut cx) {
                    let p = on_the_wire(p);
                    moved = true;
                    note(Lane::Relay, Lane::Host, describe(&p), Mark::None);
                    if !self.host.rescinded() {
                        self.host.handle_packet(now, p);
                    }
                }
                loop {
                    match relay.guest_end.poll_recv(&mut cx) {
                        Poll::Ready(Ok(p)) => {
                            moved = true;
                            self.in_flight
                                .push_back(Delivery::Packet(on_the_wire(p), Lane::Relay));
                        }
                        Poll::Ready(Err(ChannelError::Revoked | ChannelError::Closed)) => {
                            if !self.guest_rescind_sent {
                                self.guest_rescind_sent = true;
                                moved = true;
                                self.in_flight.push_back(Delivery::Rescind(Lane::Relay));
                            }
                            break;
                        }
                        Poll::Ready(Err(_)) | Poll::Pending => break,
                    }
                }
                for e in relay.take_events() {
                    if matches!(e, vpci_relay::RelayEvent::HostLost { rescinded: false }) {
                        self.relay_lost_host = true;
                    }
                    if let Some((label, mark)) = crate::vm::relay_note(&e) {
                        note(Lane::Relay, Lane::Relay, label, mark);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }
}
