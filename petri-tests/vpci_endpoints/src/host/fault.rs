//! Faults the host endpoint plays on one bus for the service's fault tests (`fault=KIND` in
//! its spec, with `fault_bus=N` and `fault_after=N`). Each waits until the service has sent
//! `fault_after` packets on the bus's ring (the storm under way), then:
//!
//! - `close_ring`: at the next guest request for a function the service forwards (asking for
//!   a completion), holds it unanswered and closes the bus's ring;
//! - `close_control`: at the next config-space or BAR access to the bus the service forwards,
//!   holds it unanswered and shuts the control connection down (the rings stay open);
//! - `hold_access`: at the next config-space or BAR access to the bus the service forwards,
//!   closes the bus's ring and answers the access only `fault_hold_ms` later (4 s by
//!   default), as a host slow to answer whose bus ends meanwhile;
//! - `garbage`: writes a write index past the end of the data area into the host's own ring
//!   of the bus, wakes the service, and sends nothing more on that ring;
//! - `pull_bars`: from then on answers every BAR access to the bus the service forwards with
//!   a fault (nothing backs it), as a host that pulled its devices' memory without telling
//!   (or before its EJECT reaches the relay) would; the bus runs on otherwise.
//!
//! Each prints `@@ host fault BUS KIND ...` when it strikes.

use crate::SpecError;
use crate::tap::RingTap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use vmbus_channel::{Channel, ChannelError, ChannelState, Packet, PacketKind, RingChannel};
use vpci_protocol::MessageType;

/// Which fault the host plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Close the bus's ring while a forwarded guest request is held unanswered.
    CloseRing,
    /// Shut the control connection down while a forwarded access to the bus is held.
    CloseControl,
    /// Close the bus's ring while a forwarded access to the bus is held, answering it late.
    HoldAccess,
    /// Write an invalid write index into the host's ring of the bus.
    Garbage,
    /// Answer every forwarded BAR access to the bus with a fault.
    PullBars,
}

impl FaultKind {
    /// Parses `close_ring`, `close_control`, `hold_access`, `garbage` or `pull_bars`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "close_ring" => Some(Self::CloseRing),
            "close_control" => Some(Self::CloseControl),
            "hold_access" => Some(Self::HoldAccess),
            "garbage" => Some(Self::Garbage),
            "pull_bars" => Some(Self::PullBars),
            _ => None,
        }
    }
}

/// The fault the host plays, on which bus, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultSpec {
    /// The fault.
    pub kind: FaultKind,
    /// The bus's index (`bus1` is 1).
    pub bus: usize,
    /// How many packets the service sends on the bus's ring before the fault is armed.
    pub after: u32,
    /// How long `hold_access` holds the access.
    pub hold: std::time::Duration,
}

impl FaultSpec {
    /// Builds a fault from its spec values: `kind` (required if any other is given), `bus`
    /// (0 by default), `after` (20 by default) and `hold_ms` (4000 by default).
    pub fn from_parts(
        kind: Option<&str>,
        bus: Option<u32>,
        after: Option<u32>,
        hold_ms: Option<u32>,
    ) -> Result<Option<Self>, SpecError> {
        let Some(kind) = kind else {
            if bus.is_some() || after.is_some() || hold_ms.is_some() {
                return Err(SpecError::Conflict("fault_* settings without fault"));
            }
            return Ok(None);
        };
        let kind = FaultKind::parse(kind).ok_or_else(|| SpecError::BadItem(kind.to_owned()))?;
        let bus = usize::try_from(bus.unwrap_or(0))
            .map_err(|_| SpecError::BadItem("fault_bus".to_owned()))?;
        Ok(Some(Self {
            kind,
            bus,
            after: after.unwrap_or(20),
            hold: std::time::Duration::from_millis(u64::from(hold_ms.unwrap_or(4000))),
        }))
    }
}

/// Where the fault stands (shared by the bus's ring and the control loop).
#[derive(Clone, Debug, Default)]
pub(super) struct Armed {
    armed: Arc<AtomicBool>,
    close: Arc<AtomicBool>,
}

impl Armed {
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// The bus's ring has carried enough packets for the fault to strike.
    pub(super) fn is_armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }

    /// Asks the ring to close (it does at its next poll: wake its adapter).
    pub(super) fn close_ring(&self) {
        self.close.store(true, Ordering::SeqCst);
    }

    fn closing(&self) -> bool {
        self.close.load(Ordering::SeqCst)
    }
}

/// The ring of the faulted bus, playing the fault on the host's side.
pub(super) struct FaultyRing {
    inner: RingChannel,
    tap: Option<RingTap>,
    spec: FaultSpec,
    bus: String,
    seen: u32,
    armed: Armed,
    fired: bool,
}

impl FaultyRing {
    /// Wraps the ring of `bus`; `armed` is set once the fault may strike. Fails if the ring
    /// cannot be tapped (for `garbage`).
    pub(super) fn new(
        ring: RingChannel,
        spec: FaultSpec,
        bus: &str,
        armed: Armed,
    ) -> Result<Self, vmbus_channel::ring::SetupError> {
        let (inner, tap) = if spec.kind == FaultKind::Garbage {
            let (ring, tap) = RingTap::split(ring)?;
            (ring, Some(tap))
        } else {
            (ring, None)
        };
        Ok(Self {
            inner,
            tap,
            spec,
            bus: bus.to_owned(),
            seen: 0,
            armed,
            fired: false,
        })
    }

    /// Plays the fault on `packet`, the latest from the service; what to return instead of
    /// it, if anything.
    fn strike(&mut self, packet: &Packet) -> Option<Result<Packet, ChannelError>> {
        match self.spec.kind {
            FaultKind::CloseControl | FaultKind::HoldAccess | FaultKind::PullBars => {
                self.armed.arm();
                None
            }
            FaultKind::CloseRing => {
                let ty = held_request(packet)?;
                self.fired = true;
                println!("@@ host fault {} close_ring holding {ty}", self.bus);
                self.inner.close();
                Some(Err(ChannelError::Closed))
            }
            FaultKind::Garbage => {
                self.fired = true;
                match self.tap.as_ref().map(RingTap::corrupt_write_index) {
                    Some(Ok(v)) => {
                        println!("@@ host fault {} garbage write_index={v:#x}", self.bus)
                    }
                    other => println!("@@ host fault {} garbage failed: {other:?}", self.bus),
                }
                None
            }
        }
    }
}

/// The type of a guest request for a function that asks for a completion, if `packet` is one.
fn held_request(packet: &Packet) -> Option<MessageType> {
    if packet.kind != PacketKind::InBand || !packet.completion_requested() {
        return None;
    }
    let raw: [u8; 4] = packet.payload.get(..4)?.try_into().ok()?;
    let ty = MessageType(u32::from_le_bytes(raw));
    [
        MessageType::QUERY_RESOURCE_REQUIREMENTS,
        MessageType::RESOURCES_ASSIGNED,
        MessageType::RESOURCES_ASSIGNED2,
        MessageType::RESOURCES_ASSIGNED3,
        MessageType::CREATE_INTERRUPT_MESSAGE,
        MessageType::CREATE_INTERRUPT_MESSAGE2,
        MessageType::CREATE_INTERRUPT_MESSAGE3,
    ]
    .contains(&ty)
    .then_some(ty)
}

impl FaultyRing {
    /// Closes the ring if the control loop asked for it (`hold_access`).
    fn close_if_asked(&mut self) -> bool {
        if self.spec.kind == FaultKind::HoldAccess && !self.fired && self.armed.closing() {
            self.fired = true;
            println!("@@ host fault {} hold_access closed the ring", self.bus);
            self.inner.close();
        }
        self.fired && self.spec.kind == FaultKind::HoldAccess
    }
}

impl Channel for FaultyRing {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Packet, ChannelError>> {
        if self.close_if_asked() {
            return Poll::Ready(Err(ChannelError::Closed));
        }
        let packet = match self.inner.poll_recv(cx) {
            Poll::Ready(Ok(p)) => p,
            other => return other,
        };
        self.seen = self.seen.saturating_add(1);
        if self.fired || self.seen <= self.spec.after {
            return Poll::Ready(Ok(packet));
        }
        match self.strike(&packet) {
            Some(instead) => Poll::Ready(instead),
            None => Poll::Ready(Ok(packet)),
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        packet: &Packet,
    ) -> Poll<Result<(), ChannelError>> {
        if self.close_if_asked() {
            return Poll::Ready(Err(ChannelError::Closed));
        }
        // After the garbage index nothing more is written: a valid index would mend it.
        if self.fired && self.spec.kind == FaultKind::Garbage {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_send(cx, packet)
    }

    fn close(&mut self) {
        self.inner.close();
    }

    fn revoke(&mut self) {
        self.inner.revoke();
    }

    fn state(&self) -> ChannelState {
        self.inner.state()
    }
}

/// A host ring that reads to the end: once the service has ended the channel, a send is
/// dropped (as on any channel that has ended) instead of ending host_sim's adapter at once,
/// so the adapter still reads every packet the service wrote before its end (the relay's
/// answer to an EJECT among them) and then meets the end on receive.
pub(super) struct ReadToEnd<C>(pub(super) C);

impl<C: Channel> Channel for ReadToEnd<C> {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Packet, ChannelError>> {
        self.0.poll_recv(cx)
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        packet: &Packet,
    ) -> Poll<Result<(), ChannelError>> {
        match self.0.poll_send(cx, packet) {
            Poll::Ready(Err(e)) if e.end_reason().is_some() => Poll::Ready(Ok(())),
            other => other,
        }
    }

    fn close(&mut self) {
        self.0.close();
    }

    fn revoke(&mut self) {
        self.0.revoke();
    }

    fn state(&self) -> ChannelState {
        self.0.state()
    }
}
