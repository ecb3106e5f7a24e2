//! The async driver: one task per bus that owns the bus's two channels and a clock, feeds the
//! [`BusRelay`] and carries out what it asks for.
//!
//! The driver is generic over the channels ([`vmbus_channel::Channel`]: in-memory pairs in
//! tests and simulation, rings across threads or processes in production) and over the
//! [`Clock`] ([`SystemClock`] for real time, [`VirtualClock`] for deterministic simulation).
//! It needs no particular executor. Buses share nothing: each driver owns its relay, its
//! channels and its timers, so a stuck guest on one bus cannot delay another.

use crate::{AccessId, Backing, BusRelay, ConfigAccess, ConfigAction, RelayEvent, Transmit};
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use inspect::Inspect;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Context, Poll};
use std::time::Duration;
use vmbus_channel::{Channel, ChannelError, Packet};
use vpci_protocol::WinSlot;

mod servicing;

pub use servicing::{MAX_HOST_QUEUE, StoppedBus};

// The clocks live in their own module; their old paths under `driver` keep working.
pub use crate::clock::{Clock, Sleep, SystemClock, VirtualClock};

/// The memory-mapping side of a bus, implemented by the VMM: what backs each function's
/// BARs and config space for the guest.
///
/// The driver turns each backing change the relay decides ([`BusRelay::poll_backing`]) into
/// one call, in the relay's order, on the bus's own task (so an implementation for one bus
/// is never called from another bus's task). For one function the calls follow its life:
/// [`map_device`](Self::map_device) when the guest is told of it,
/// [`map_shield`](Self::map_shield) when the host removes it while the guest still holds it,
/// and [`unmap`](Self::unmap) once the guest has let it go. When the driver stops, slots
/// still mapped stay as they are; tearing down the bus is the VMM's business. The calls cannot fail: whatever
/// happens inside, an implementation must never leave a slot the guest still holds unbacked
/// (guarantee 8; OpenVMM issue #3077 is a guest that faulted reading such a BAR).
pub trait BarControl {
    /// The function in `slot` is being shown to the guest: from now on the guest's accesses
    /// to its BARs reach the device, and its config-space accesses (through the config
    /// window, after [`BusPort::access`] says [`ConfigAction::Forward`]) reach the device's
    /// config space.
    fn map_device(&mut self, slot: WinSlot);

    /// The host has removed the function in `slot` but the guest still holds it: replace
    /// the device's mapping by the shield, with no moment in between where the BARs are
    /// unbacked. Under the shield BAR reads return all ones and BAR writes are dropped; the
    /// device is not touched any more. Config-space accesses keep going through
    /// [`BusPort::access`], which answers reads from the relay's copy and drops writes.
    fn map_shield(&mut self, slot: WinSlot);

    /// The guest has let the function in `slot` go (it sent EJECTION_COMPLETE): nothing
    /// backs the slot's BARs any more and the VMM may reclaim their ranges. The relay
    /// answers config reads for the slot as for an absent function.
    fn unmap(&mut self, slot: WinSlot);
}

impl<B: BarControl + ?Sized> BarControl for Box<B> {
    fn map_device(&mut self, slot: WinSlot) {
        (**self).map_device(slot)
    }

    fn map_shield(&mut self, slot: WinSlot) {
        (**self).map_shield(slot)
    }

    fn unmap(&mut self, slot: WinSlot) {
        (**self).unmap(slot)
    }
}

enum ConfigRequest {
    Access(ConfigAccess, oneshot::Sender<ConfigAction>),
    Inspect(oneshot::Sender<inspect::Node>),
    Stop,
    Done(AccessId, Option<u32>, oneshot::Sender<Option<u32>>),
}

/// A handle on one bus's running driver: the config-window trap asks it about each guest
/// config access before carrying it out, and diagnostics ask it for the bus's inspect tree.
#[derive(Clone, Debug)]
pub struct BusPort {
    tx: mpsc::Sender<ConfigRequest>,
}

impl std::fmt::Debug for ConfigRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigRequest::Access(a, _) => f.debug_tuple("Access").field(a).finish(),
            ConfigRequest::Inspect(_) => f.write_str("Inspect"),
            ConfigRequest::Stop => f.write_str("Stop"),
            ConfigRequest::Done(id, result, _) => {
                f.debug_tuple("Done").field(id).field(result).finish()
            }
        }
    }
}

/// The driver has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverExit {
    /// The relay closed the guest channel after the host's rescind (the normal end).
    GuestClosedByRelay,
    /// The guest closed or revoked its channel.
    GuestGone,
    /// Stopped on request ([`BusPort::stop`]) between two packets: nothing half-handled, both
    /// channels still open. The driver can be saved for a successor, or run again.
    Stopped,
}

impl BusPort {
    /// Asks what to do with a guest config access. `None` if the bus's driver has stopped
    /// (treat the function as absent).
    pub async fn access(&mut self, access: ConfigAccess) -> Option<ConfigAction> {
        let (tx, rx) = oneshot::channel();
        futures::SinkExt::send(&mut self.tx, ConfigRequest::Access(access, tx))
            .await
            .ok()?;
        rx.await.ok()
    }

    /// The bus's inspect tree as the driver sees it now ([`BusDriver::inspect_tree`]: the
    /// relay's tree plus a `driver` child with the [`DriverCounters`]). `None` if the driver
    /// has stopped.
    pub async fn inspect(&mut self) -> Option<inspect::Node> {
        let (tx, rx) = oneshot::channel();
        futures::SinkExt::send(&mut self.tx, ConfigRequest::Inspect(tx))
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Asks the driver to stop between two packets: its [`BusDriver::run`] returns
    /// [`DriverExit::Stopped`] with both channels open and everything not yet sent still
    /// queued. False if the driver has already stopped.
    pub async fn stop(&mut self) -> bool {
        futures::SinkExt::send(&mut self.tx, ConfigRequest::Stop)
            .await
            .is_ok()
    }

    /// Reports a forwarded config access done ([`BusRelay::handle_config_done`]): `result`
    /// is a read's value, `None` if the access failed. Returns what the guest must read for
    /// a read (the device's value, or the removal shield's when the device turned out gone);
    /// `None` for a write, or if the driver has stopped. Every [`ConfigAction::Forward`] must
    /// be reported once, or the bus stays busy until `departed_request_timeout` after its
    /// function departs (a lost host's functions depart with it).
    pub async fn access_done(&mut self, id: AccessId, result: Option<u32>) -> Option<u32> {
        let (tx, rx) = oneshot::channel();
        futures::SinkExt::send(&mut self.tx, ConfigRequest::Done(id, result, tx))
            .await
            .ok()?;
        rx.await.ok().flatten()
    }
}

/// What the driver counts itself: packets a channel refused, which the relay never sees.
///
/// A packet the host's channel rejects on *receive* is not here: that is the host breaking
/// the transport's rules, which the relay handles (and counts as `PacketFault::Transport`)
/// by taking the host's bus away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Inspect)]
pub struct DriverCounters {
    /// Packets for the host that its channel refused on send (`ChannelError::Packet`: too
    /// large for its limits, or of a kind it cannot carry). Each was dropped; nothing reached
    /// the host, and the host link stayed up.
    pub host_send_rejected: u64,
    /// Packets for the guest that its channel refused on send; each was dropped, and the
    /// guest channel stayed open.
    pub guest_send_rejected: u64,
    /// Packets from the guest that its channel rejected on receive (`ChannelError::Packet`:
    /// consumed and dropped by the channel, never seen by the relay).
    pub guest_recv_rejected: u64,
}

/// How many packets may wait for one side before the driver stops reading from the other
/// (so a peer that does not drain its channel cannot make the relay queue without bound).
const MAX_QUEUED: usize = 64;

/// The driver for one bus.
pub struct BusDriver<H, G, C, B> {
    relay: BusRelay,
    host: H,
    guest: G,
    clock: C,
    bars: B,
    config_rx: mpsc::Receiver<ConfigRequest>,
    to_host: VecDeque<Packet>,
    to_guest: VecDeque<Packet>,
    host_open: bool,
    close_guest: bool,
    timer: Option<(Duration, Sleep)>,
    on_event: Box<dyn FnMut(&RelayEvent) + Send>,
    counters: DriverCounters,
}

impl<H, G, C, B> BusDriver<H, G, C, B>
where
    H: Channel,
    G: Channel,
    C: Clock,
    B: BarControl,
{
    /// A driver for `relay` between the host and guest channels of one bus, carrying out
    /// backing changes on `bars`. Returns it with the handle the config-window trap uses.
    pub fn new(relay: BusRelay, host: H, guest: G, clock: C, bars: B) -> (Self, BusPort) {
        let (tx, config_rx) = mpsc::channel(16);
        let driver = Self {
            relay,
            host,
            guest,
            clock,
            bars,
            config_rx,
            to_host: VecDeque::new(),
            to_guest: VecDeque::new(),
            host_open: true,
            close_guest: false,
            timer: None,
            on_event: Box::new(|_| {}),
            counters: DriverCounters::default(),
        };
        (driver, BusPort { tx })
    }

    /// Calls `f` for every relay event (for logs, metrics or tests).
    pub fn on_event(mut self, f: impl FnMut(&RelayEvent) + Send + 'static) -> Self {
        self.on_event = Box::new(f);
        self
    }

    /// The relay, for inspection.
    pub fn relay(&self) -> &BusRelay {
        &self.relay
    }

    /// What the driver itself has counted (packets the channels refused).
    pub fn counters(&self) -> &DriverCounters {
        &self.counters
    }

    /// The bus's inspect tree: the relay's tree, with the driver's counters added as its
    /// `driver` child (so every path of the relay's own tree stays where it was).
    pub fn inspect_tree(&self) -> inspect::Node {
        inspect::Node::dir()
            .merge("relay", inspect::Inspect::inspect(&self.relay))
            .field("driver", &self.counters)
            .build()
    }

    /// Runs the bus until the guest channel ends.
    pub async fn run(&mut self) -> DriverExit {
        poll_fn(|cx| self.poll_run(cx)).await
    }

    fn drain_relay(&mut self) {
        while let Some(t) = self.relay.poll_transmit() {
            match t {
                Transmit::ToHost(p) => self.to_host.push_back(p),
                Transmit::ToGuest(p) => self.to_guest.push_back(p),
                Transmit::CloseGuest => self.close_guest = true,
            }
        }
        while let Some((slot, backing)) = self.relay.poll_backing() {
            match backing {
                Backing::Device => self.bars.map_device(slot),
                Backing::Shield => self.bars.map_shield(slot),
                Backing::Released => self.bars.unmap(slot),
            }
        }
        while let Some(e) = self.relay.poll_event() {
            (self.on_event)(&e);
        }
    }

    /// Sends queued host packets until the channel has no room; true if anything changed (a
    /// packet sent or dropped, or the host link ended).
    ///
    /// A `ChannelError::Packet` means nothing was sent and the channel is still usable: that
    /// one packet is dropped and counted. A closed or revoked channel is the host's rescind;
    /// any other error is a broken transport, and the host loses its bus.
    ///
    /// The relay is told of a dropped packet, so a guest request in it is answered with a
    /// failure rather than by no one.
    fn send_to_host(&mut self, cx: &mut Context<'_>) -> bool {
        let mut changed = false;
        while self.host_open {
            let Some(p) = self.to_host.front() else { break };
            match self.host.poll_send(cx, p) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(ChannelError::Packet(error))) => {
                    tracing::warn!(%error, "host channel refused a packet; dropped");
                    self.counters.host_send_rejected += 1;
                    self.relay.handle_host_send_refused(self.clock.now(), p);
                }
                Poll::Ready(Err(error)) => {
                    self.host_open = false;
                    let now = self.clock.now();
                    if error.end_reason().is_some() {
                        self.relay.handle_host_closed(now);
                    } else {
                        tracing::warn!(%error, "host channel failed on send");
                        self.relay.handle_host_transport_error(now);
                    }
                    changed = true;
                    break;
                }
                Poll::Pending => break,
            }
            self.to_host.pop_front();
            changed = true;
        }
        if !self.host_open && !self.to_host.is_empty() {
            self.to_host.clear();
            changed = true;
        }
        changed
    }

    /// Sends queued guest packets until the channel has no room; `Ok(true)` if any was sent or
    /// dropped. As for the host, a `ChannelError::Packet` drops and counts that one packet;
    /// any other error ends the driver (the guest is gone).
    fn send_to_guest(&mut self, cx: &mut Context<'_>) -> Result<bool, DriverExit> {
        let mut changed = false;
        while let Some(p) = self.to_guest.front() {
            match self.guest.poll_send(cx, p) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(ChannelError::Packet(error))) => {
                    tracing::warn!(%error, "guest channel refused a packet; dropped");
                    self.counters.guest_send_rejected += 1;
                }
                Poll::Ready(Err(error)) => return Err(self.guest_gone(cx, &error)),
                Poll::Pending => break,
            }
            self.to_guest.pop_front();
            changed = true;
        }
        Ok(changed)
    }

    /// The guest channel ended or broke: the relay answers what the host is still owed (its
    /// EJECTs), sent as far as the host channel takes it now (the driver does not wait on a
    /// host that does not read), and the driver stops.
    fn guest_gone(&mut self, cx: &mut Context<'_>, error: &ChannelError) -> DriverExit {
        let transport = error.end_reason().is_none();
        if transport {
            tracing::warn!(%error, "guest channel failed");
        }
        self.relay.handle_guest_gone(self.clock.now(), transport);
        self.drain_relay();
        self.to_guest.clear();
        self.send_to_host(cx);
        DriverExit::GuestGone
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<DriverExit> {
        loop {
            self.drain_relay();
            let mut progress = false;

            // Send what is queued, as far as each channel takes it.
            progress |= self.send_to_host(cx);
            match self.send_to_guest(cx) {
                Ok(sent) => progress |= sent,
                Err(exit) => return Poll::Ready(exit),
            }
            if self.close_guest && self.to_guest.is_empty() {
                self.guest.revoke();
                return Poll::Ready(DriverExit::GuestClosedByRelay);
            }

            // Receive, unless the other side is backed up.
            if self.host_open && self.to_guest.len() < MAX_QUEUED {
                match self.host.poll_recv(cx) {
                    Poll::Ready(Ok(p)) => {
                        self.relay.handle_host(self.clock.now(), p);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        match e {
                            ChannelError::Closed | ChannelError::Revoked => {
                                self.relay.handle_host_closed(self.clock.now());
                            }
                            // Anything else (a corrupt ring, an oversized packet) is the host
                            // breaking the rules: it loses its bus.
                            _ => self.relay.handle_host_transport_error(self.clock.now()),
                        }
                        self.host_open = false;
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            if self.to_host.len() < MAX_QUEUED {
                match self.guest.poll_recv(cx) {
                    Poll::Ready(Ok(p)) => {
                        self.relay.handle_guest(self.clock.now(), p);
                        progress = true;
                    }
                    Poll::Ready(Err(ChannelError::Packet(error))) => {
                        // The channel consumed and dropped an oversized packet; it stays
                        // usable. The relay never saw the packet, so the driver counts it.
                        tracing::warn!(%error, "guest channel rejected a packet on receive; dropped");
                        self.counters.guest_recv_rejected += 1;
                        progress = true;
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(self.guest_gone(cx, &error)),
                    Poll::Pending => {}
                }
            }
            match self.config_rx.poll_next_unpin(cx) {
                Poll::Ready(Some(ConfigRequest::Access(access, reply))) => {
                    let now = self.clock.now();
                    let action = self.relay.handle_config_access(now, access);
                    if let Err(ConfigAction::Forward(id)) = reply.send(action) {
                        // The caller is gone: nobody carries the access out or reports it.
                        self.relay.handle_config_done(now, id, None);
                    }
                    progress = true;
                }
                Poll::Ready(Some(ConfigRequest::Stop)) => {
                    // Whatever the relay has decided is in the queues now (drained at the top
                    // of this loop), so nothing it produced is lost with the stop.
                    self.drain_relay();
                    self.timer = None;
                    return Poll::Ready(DriverExit::Stopped);
                }
                Poll::Ready(Some(ConfigRequest::Inspect(reply))) => {
                    let _ = reply.send(self.inspect_tree());
                    progress = true;
                }
                Poll::Ready(Some(ConfigRequest::Done(id, result, reply))) => {
                    let value = self.relay.handle_config_done(self.clock.now(), id, result);
                    let _ = reply.send(value);
                    progress = true;
                }
                Poll::Ready(None) | Poll::Pending => {}
            }

            // Timers: keep one armed for the relay's next deadline.
            match self.relay.poll_timeout() {
                Some(deadline) => {
                    if self.timer.as_ref().is_none_or(|(d, _)| *d != deadline) {
                        self.timer = Some((deadline, self.clock.sleep_until(deadline)));
                    }
                    if let Some((_, sleep)) = &mut self.timer {
                        if sleep.poll_unpin(cx).is_ready() {
                            self.timer = None;
                            self.relay.handle_timeout(self.clock.now());
                            progress = true;
                        }
                    }
                }
                None => self.timer = None,
            }

            if !progress {
                return Poll::Pending;
            }
        }
    }
}
