//! Test harness pieces shared by every simulation of the relay (its own tests, petri's VMs,
//! kernel_shim's real-driver tests): a [`BusDriver`] over in-memory channels polled by hand
//! ([`RelayRig`]), and a [`BarControl`] that records what the relay asked for
//! ([`RecordedBacking`]).
//!
//! Only with the `sim` feature, which test harnesses and dev-dependencies turn on; never a
//! production build.

use crate::driver::BarControl;
use crate::{
    AccessId, Backing, BusDriver, BusPort, BusRelay, ConfigAccess, ConfigAction, DriverExit,
    RelayConfig, RelayEvent, RestoreError, SavedBus, VirtualClock,
};
use futures::task::noop_waker_ref;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use thiserror::Error;
use vmbus_channel::{Channel, ChannelError, MemoryChannel, Packet, channel_pair};
use vpci_protocol::WinSlot;

/// One call a [`BarControl`] received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarCall {
    /// `map_device(slot)`.
    MapDevice(WinSlot),
    /// `map_shield(slot)`.
    MapShield(WinSlot),
    /// `unmap(slot)`.
    Unmap(WinSlot),
}

impl BarCall {
    /// The slot the call is about.
    pub fn slot(self) -> WinSlot {
        match self {
            Self::MapDevice(s) | Self::MapShield(s) | Self::Unmap(s) => s,
        }
    }

    /// The backing the call leaves its slot with.
    pub fn backing(self) -> Backing {
        match self {
            Self::MapDevice(_) => Backing::Device,
            Self::MapShield(_) => Backing::Shield,
            Self::Unmap(_) => Backing::Released,
        }
    }
}

/// A [`BarControl`] that keeps each slot's backing as the VMM in a paravisor would carry it
/// out, and records its calls in order (unless made with [`RecordedBacking::state_only`], as
/// long runs are, to keep memory flat). Clones share the record, so a test keeps one and hands
/// the other to the driver.
#[derive(Clone, Debug)]
pub struct RecordedBacking(Arc<Mutex<Record>>);

#[derive(Debug)]
struct Record {
    calls: Option<Vec<BarCall>>,
    now: BTreeMap<u32, Backing>,
}

impl Default for RecordedBacking {
    fn default() -> Self {
        Self::with_calls(true)
    }
}

impl RecordedBacking {
    /// A backing that keeps each slot's state but not the calls that led there.
    pub fn state_only() -> Self {
        Self::with_calls(false)
    }

    fn with_calls(calls: bool) -> Self {
        Self(Arc::new(Mutex::new(Record {
            calls: calls.then(Vec::new),
            now: BTreeMap::new(),
        })))
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The calls so far, in order (none for a [`RecordedBacking::state_only`] one).
    pub fn calls(&self) -> Vec<BarCall> {
        self.record().calls.clone().unwrap_or_default()
    }

    /// The backing of `slot` now: what its last call left (`Released` if there was none).
    pub fn get(&self, slot: WinSlot) -> Backing {
        self.record()
            .now
            .get(&slot.raw())
            .copied()
            .unwrap_or(Backing::Released)
    }

    fn push(&self, call: BarCall) {
        let mut record = self.record();
        record.now.insert(call.slot().raw(), call.backing());
        if let Some(calls) = &mut record.calls {
            calls.push(call);
        }
    }
}

impl BarControl for RecordedBacking {
    fn map_device(&mut self, slot: WinSlot) {
        self.push(BarCall::MapDevice(slot));
    }

    fn map_shield(&mut self, slot: WinSlot) {
        self.push(BarCall::MapShield(slot));
    }

    fn unmap(&mut self, slot: WinSlot) {
        self.push(BarCall::Unmap(slot));
    }
}

/// The driver a [`RelayRig`] runs.
type Driver = BusDriver<MemoryChannel, MemoryChannel, VirtualClock, RecordedBacking>;

/// A change made to a bus's saved state between its save and its restore (test-only: a
/// deliberately lossy servicing, to show that a check of servicing can fail).
pub type Tamper = fn(&mut SavedBus);

/// Why [`RelayRig::service`] could not service the bus: a fault of the harness or of the
/// relay's save/restore, never the guest's doing.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The rig was made without the configuration a restored relay needs
    /// ([`RelayRig::serviceable`]).
    #[error("the relay rig has no configuration to restore with")]
    NoConfig,
    /// The encoded state did not decode.
    #[error("the saved bus did not decode: {0}")]
    Decode(#[source] RestoreError),
    /// The restore refused the state (the bus is closed: guest channel revoked, host's
    /// closed).
    #[error("the saved bus was refused on restore: {0}")]
    Restore(#[source] RestoreError),
}

/// What one [`RelayRig::exchange`] moved.
#[derive(Debug, Default)]
pub struct Exchange {
    /// Packets the relay sent to the host, in order.
    pub to_host: Vec<Packet>,
    /// Packets the relay sent to the guest, in order.
    pub to_guest: Vec<Packet>,
    /// The relay's guest channel has ended (revoked or closed): the relay dropped the bus.
    pub guest_ended: bool,
    /// Whether anything moved (a packet taken in or given out).
    pub moved: bool,
}

/// One bus's relay ([`BusDriver`] over two in-memory channel pairs and a virtual clock),
/// polled by hand so that a simulation stays single-threaded and deterministic.
pub struct RelayRig {
    /// `None` only after a restore refused the saved state.
    driver: Option<Driver>,
    port: BusPort,
    /// The end the simulated host reads and writes.
    pub host_end: MemoryChannel,
    /// The end the guest reads and writes.
    pub guest_end: MemoryChannel,
    /// The BAR backing the relay asked for.
    pub bars: RecordedBacking,
    events: Arc<Mutex<Vec<RelayEvent>>>,
    record: bool,
    exit: Option<DriverExit>,
    /// The configuration a restored relay gets (`None`: the rig cannot be serviced).
    config: Option<RelayConfig>,
    servicings: u64,
    tamper: Option<Tamper>,
}

impl std::fmt::Debug for RelayRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayRig")
            .field("exit", &self.exit)
            .field("servicings", &self.servicings)
            .finish_non_exhaustive()
    }
}

/// Sends what `queue` holds into `channel` as far as it takes it; a channel that has ended
/// takes nothing more (the rest is dropped). Returns whether anything was sent.
pub fn flush(queue: &mut VecDeque<Packet>, channel: &mut MemoryChannel) -> bool {
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut sent = false;
    while let Some(p) = queue.front() {
        match channel.poll_send(&mut cx, p) {
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

impl RelayRig {
    /// Starts a driver for `relay` on `clock`; `record` keeps the relay's events for
    /// [`RelayRig::take_events`] and its backing calls for [`RecordedBacking::calls`].
    pub fn new(relay: BusRelay, clock: VirtualClock, record: bool) -> Self {
        let (host_end, relay_host) = channel_pair();
        let (relay_guest, guest_end) = channel_pair();
        let bars = RecordedBacking::with_calls(record);
        let events = Arc::new(Mutex::new(Vec::new()));
        let (driver, port) = BusDriver::new(relay, relay_host, relay_guest, clock, bars.clone());
        let driver = driver.on_event(event_sink(&events, record));
        Self {
            driver: Some(driver),
            port,
            host_end,
            guest_end,
            bars,
            events,
            record,
            exit: None,
            config: None,
            servicings: 0,
            tamper: None,
        }
    }

    /// Lets [`RelayRig::service`] restore the relay, under `config` (the one the relay was
    /// made with, as a new version of the paravisor would be given it). A restored relay has
    /// every safeguard on.
    pub fn serviceable(mut self, config: RelayConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Test-only: `tamper` changes every saved state before it is encoded, so that a test
    /// can show that a lossy servicing is caught. `None` services faithfully.
    pub fn set_tamper(&mut self, tamper: Option<Tamper>) {
        self.tamper = tamper;
    }

    /// Services the bus as a new paravisor version would: the driver stopped where it is
    /// (between two polls is a packet boundary), host packets already in its channel
    /// queued, everything saved, encoded to bytes and decoded again, the old driver dropped,
    /// and a new one restored over the same channels, clock and BAR backing; the port is
    /// replaced. Returns the size of the encoded state, or `None` when no driver was
    /// serviced (once it has stopped there is nothing left to carry across).
    ///
    /// On an error the bus is gone (a refused state closes it, as in production); the
    /// caller reports a harness error, never the guest's outcome.
    pub fn service(&mut self) -> Result<Option<usize>, ServiceError> {
        if self.exit.is_some() || self.driver.is_none() {
            return Ok(None);
        }
        let Some(config) = self.config.clone() else {
            return Err(ServiceError::NoConfig);
        };
        let Some(driver) = self.driver.take() else {
            return Ok(None);
        };
        let mut stopped = driver.stop();
        let mut cx = Context::from_waker(noop_waker_ref());
        // Ready (queue full or channel ended) or Pending (channel empty): either way, what
        // the host had sent so far is queued or left in its channel for the new driver.
        let _ = stopped.poll_queue_host(&mut cx);
        let mut saved = stopped.save();
        if let Some(tamper) = self.tamper {
            tamper(&mut saved);
        }
        let bytes = saved.to_bytes();
        let (host, guest, clock, bars) = stopped.into_parts();
        let saved = match SavedBus::from_bytes(&bytes) {
            Ok(saved) => saved,
            Err(e) => {
                let mut guest = guest;
                let mut host = host;
                guest.revoke();
                host.close();
                return Err(ServiceError::Decode(e));
            }
        };
        let (driver, port) = BusDriver::restore(config, &saved, host, guest, clock, bars)
            .map_err(ServiceError::Restore)?;
        self.driver = Some(driver.on_event(event_sink(&self.events, self.record)));
        self.port = port;
        self.servicings += 1;
        Ok(Some(bytes.len()))
    }

    /// How many times [`RelayRig::service`] has serviced the bus.
    pub fn servicings(&self) -> u64 {
        self.servicings
    }

    /// Lets the driver do all it can now.
    pub fn poll(&mut self) {
        let mut cx = Context::from_waker(noop_waker_ref());
        self.poll_driver(&mut cx);
    }

    /// Polls the driver once (its `run` holds nothing between polls, so a fresh one each
    /// time is the same driver), noting its exit.
    fn poll_driver(&mut self, cx: &mut Context<'_>) {
        if self.exit.is_some() {
            return;
        }
        let Some(driver) = self.driver.as_mut() else {
            return;
        };
        if let Poll::Ready(exit) = pin!(driver.run()).poll(cx) {
            self.exit = Some(exit);
        }
    }

    /// Whether the driver has stopped, and how.
    pub fn exit(&self) -> Option<DriverExit> {
        self.exit
    }

    /// One round of the relay's leg of a pump: sends what waits for it from the host
    /// (`from_host`) and the guest (`from_guest`) as far as its channels take it, lets the
    /// driver run, and takes what it sent either way.
    pub fn exchange(
        &mut self,
        from_host: &mut VecDeque<Packet>,
        from_guest: &mut VecDeque<Packet>,
    ) -> Exchange {
        let mut out = Exchange::default();
        out.moved |= flush(from_host, &mut self.host_end);
        self.finish_exchange(out, from_guest)
    }

    /// As [`RelayRig::exchange`], but when host packets arrive and nothing waits from the
    /// guest, the bus is serviced ([`RelayRig::service`]) while they wait unread in its
    /// channel: the stopped bus queues them, the queue is saved with the rest, and the
    /// restored relay handles them first, as they would have been handled live. (With
    /// guest packets waiting too, the live driver would interleave the two sides, so
    /// the bus is not serviced then.)
    pub fn exchange_servicing(
        &mut self,
        from_host: &mut VecDeque<Packet>,
        from_guest: &mut VecDeque<Packet>,
    ) -> Result<Exchange, ServiceError> {
        let mut out = Exchange::default();
        let arrived = flush(from_host, &mut self.host_end);
        out.moved |= arrived;
        if arrived && from_guest.is_empty() {
            self.service()?;
        }
        Ok(self.finish_exchange(out, from_guest))
    }

    /// The rest of an exchange once the host's packets are in its channel: the guest's
    /// sent, the driver run, what it sent either way taken.
    fn finish_exchange(
        &mut self,
        mut out: Exchange,
        from_guest: &mut VecDeque<Packet>,
    ) -> Exchange {
        let mut cx = Context::from_waker(noop_waker_ref());
        out.moved |= flush(from_guest, &mut self.guest_end);
        self.poll();
        while let Poll::Ready(Ok(p)) = self.host_end.poll_recv(&mut cx) {
            out.moved = true;
            out.to_host.push(p);
        }
        loop {
            match self.guest_end.poll_recv(&mut cx) {
                Poll::Ready(Ok(p)) => {
                    out.moved = true;
                    out.to_guest.push(p);
                }
                Poll::Ready(Err(ChannelError::Revoked | ChannelError::Closed)) => {
                    out.guest_ended = true;
                    break;
                }
                Poll::Ready(Err(_)) | Poll::Pending => break,
            }
        }
        out
    }

    /// Polls `request` (a request to the driver through its port) and the driver in turn
    /// until the request completes. `None` if the driver stops first.
    fn drive<T>(&mut self, mut request: Pin<Box<dyn Future<Output = T> + '_>>) -> Option<T> {
        let mut cx = Context::from_waker(noop_waker_ref());
        for _ in 0..16 {
            if let Poll::Ready(answer) = request.as_mut().poll(&mut cx) {
                return Some(answer);
            }
            if self.exit.is_some() || self.driver.is_none() {
                return None;
            }
            self.poll_driver(&mut cx);
        }
        None
    }

    /// Asks the relay about a config-window access, running the driver until it answers.
    /// `None` if the driver has stopped.
    pub fn access(&mut self, access: ConfigAccess) -> Option<ConfigAction> {
        let mut port = self.port.clone();
        self.drive(Box::pin(async move { port.access(access).await }))
            .flatten()
    }

    /// Reports a forwarded config access done ([`BusPort::access_done`](crate::BusPort::access_done)):
    /// a read's value (`None`: the access failed). Returns what the guest must read for a
    /// read (`None` for a write, or a stopped driver).
    pub fn access_done(&mut self, id: AccessId, result: Option<u32>) -> Option<u32> {
        let mut port = self.port.clone();
        self.drive(Box::pin(async move { port.access_done(id, result).await }))
            .flatten()
    }

    /// The bus's inspect tree (the relay's and the driver's), running the driver until it
    /// answers. `None` if the driver has stopped.
    pub fn inspect(&mut self) -> Option<inspect::Node> {
        let mut port = self.port.clone();
        self.drive(Box::pin(async move { port.inspect().await }))
            .flatten()
    }

    /// The relay events since the last call (none unless the rig was made to record them).
    pub fn take_events(&mut self) -> Vec<RelayEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The callback that keeps a driver's relay events in `events` (when `record`).
fn event_sink(
    events: &Arc<Mutex<Vec<RelayEvent>>>,
    record: bool,
) -> impl FnMut(&RelayEvent) + Send + 'static {
    let sink = events.clone();
    move |e| {
        if record {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rig() -> RelayRig {
        RelayRig::new(
            BusRelay::new(RelayConfig::default()),
            VirtualClock::new(),
            true,
        )
    }

    /// A rig made without a configuration refuses to service (and keeps running); one made
    /// serviceable counts each servicing and keeps its channels.
    #[test]
    fn service_needs_a_configuration_and_counts() {
        let mut plain = rig();
        assert!(matches!(plain.service(), Err(ServiceError::NoConfig)));
        assert!(plain.inspect().is_some(), "the driver still runs");
        let mut rig = rig().serviceable(RelayConfig::default());
        for n in 1..=3 {
            assert!(
                rig.service()
                    .expect("service")
                    .is_some_and(|bytes| bytes > 0)
            );
            assert_eq!(rig.servicings(), n);
        }
        let tree = rig.inspect().expect("the restored driver answers");
        assert!(tree.query("restored/from_format").is_ok(), "{tree:?}");
    }

    /// A state the restore refuses closes the bus: the guest sees its channel end, and the
    /// rig services nothing more.
    #[test]
    fn a_refused_restore_closes_the_bus() {
        let mut rig = rig().serviceable(RelayConfig::default());
        rig.set_tamper(Some(|saved: &mut SavedBus| {
            if let Some(relay) = saved.relay.as_mut() {
                relay.format = 99;
            }
        }));
        assert!(matches!(rig.service(), Err(ServiceError::Restore(_))));
        let out = rig.exchange(&mut VecDeque::new(), &mut VecDeque::new());
        assert!(out.guest_ended);
        assert_eq!(rig.servicings(), 0);
        assert!(matches!(rig.service(), Ok(None)));
        assert!(rig.inspect().is_none());
    }
}
