//! The real relay in a VM run: one [`BusDriver`] per bus over in-memory channels and the
//! run's virtual clock, polled by hand so the run stays single-threaded and deterministic.

use futures::task::noop_waker_ref;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use vmbus_channel::{MemoryChannel, channel_pair};
use vpci_protocol::WinSlot;
use vpci_relay::driver::BarControl;
use vpci_relay::{
    Backing, BusDriver, BusPort, BusRelay, ConfigAccess, ConfigAction, DriverExit, RelayEvent,
    VirtualClock,
};

/// How the relay backs each function's BARs, as the VMM in a paravisor would carry it out.
#[derive(Clone, Debug, Default)]
pub struct SimBars(Arc<Mutex<BTreeMap<u32, Backing>>>);

impl SimBars {
    /// The backing of `slot` now (`Released` if the relay never mapped it).
    pub fn get(&self, slot: WinSlot) -> Backing {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&slot.raw())
            .copied()
            .unwrap_or(Backing::Released)
    }

    fn set(&self, slot: WinSlot, backing: Backing) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(slot.raw(), backing);
    }
}

impl BarControl for SimBars {
    fn map_device(&mut self, slot: WinSlot) {
        self.set(slot, Backing::Device);
    }

    fn map_shield(&mut self, slot: WinSlot) {
        self.set(slot, Backing::Shield);
    }

    fn unmap(&mut self, slot: WinSlot) {
        self.set(slot, Backing::Released);
    }
}

type DriverFuture = Pin<Box<dyn Future<Output = DriverExit>>>;

/// One bus's relay and the VM's ends of its two channels.
pub struct RelayRig {
    driver: DriverFuture,
    port: BusPort,
    /// The end the simulated host reads and writes.
    pub host_end: MemoryChannel,
    /// The end the guest reads and writes.
    pub guest_end: MemoryChannel,
    /// The BAR backing the relay asked for.
    pub bars: SimBars,
    events: Arc<Mutex<Vec<RelayEvent>>>,
    exit: Option<DriverExit>,
}

impl std::fmt::Debug for RelayRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayRig")
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl RelayRig {
    /// Starts a driver for `relay` on `clock`; `record` keeps the relay's events for the
    /// trace.
    pub fn new(relay: BusRelay, clock: VirtualClock, record: bool) -> Self {
        let (host_end, relay_host) = channel_pair();
        let (relay_guest, guest_end) = channel_pair();
        let bars = SimBars::default();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let (driver, port) = BusDriver::new(relay, relay_host, relay_guest, clock, bars.clone());
        let mut driver = driver.on_event(move |e| {
            if record {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(e.clone());
            }
        });
        let future: DriverFuture = Box::pin(async move { driver.run().await });
        Self {
            driver: future,
            port,
            host_end,
            guest_end,
            bars,
            events,
            exit: None,
        }
    }

    /// Lets the driver do all it can now.
    pub fn poll(&mut self) {
        if self.exit.is_some() {
            return;
        }
        let mut cx = Context::from_waker(noop_waker_ref());
        if let Poll::Ready(exit) = self.driver.as_mut().poll(&mut cx) {
            self.exit = Some(exit);
        }
    }

    /// Whether the driver has stopped, and how.
    pub fn exit(&self) -> Option<DriverExit> {
        self.exit
    }

    /// Polls `request` (a request to the driver through its port) and the driver in turn
    /// until the request completes. `None` if the driver stops first.
    fn drive<T>(&mut self, mut request: Pin<Box<dyn Future<Output = T> + '_>>) -> Option<T> {
        let mut cx = Context::from_waker(noop_waker_ref());
        for _ in 0..16 {
            if let Poll::Ready(answer) = request.as_mut().poll(&mut cx) {
                return Some(answer);
            }
            if self.exit.is_some() {
                return None;
            }
            if let Poll::Ready(exit) = self.driver.as_mut().poll(&mut cx) {
                self.exit = Some(exit);
            }
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

    /// Reports the value a forwarded config read returned, so the relay can answer it after
    /// the host has removed the function.
    pub fn read_result(&mut self, slot: WinSlot, offset: u16, len: u8, value: u32) {
        let mut port = self.port.clone();
        let _ = self.drive(Box::pin(async move {
            port.read_result(slot, offset, len, value).await
        }));
    }

    /// The bus's inspect tree (the relay's and the driver's), running the driver until it
    /// answers. `None` if the driver has stopped.
    pub fn inspect(&mut self) -> Option<inspect::Node> {
        let mut port = self.port.clone();
        self.drive(Box::pin(async move { port.inspect().await }))
            .flatten()
    }

    /// The relay events since the last call.
    pub fn take_events(&mut self) -> Vec<RelayEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
