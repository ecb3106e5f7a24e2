//! The paravisor's vPCI relay service: one [`vpci_relay::BusDriver`] per virtual PCI bus, each
//! on a thread of its own, with their inspect trees gathered under one root.
//!
//! In an OpenHCL-style paravisor every vPCI bus the host offers arrives as a VMBus channel;
//! the paravisor offers the guest a channel of its own for it and relays between the two.
//! [`RelayService::add_bus`] takes such a pair, with the VMM's [`BarControl`] for the bus's
//! BAR and config-space backing, and starts the bus. Buses share no thread, executor, lock or
//! queue (guarantee 6 of the relay): a guest stuck on one bus cannot delay another, and buses
//! probe concurrently.
//!
//! The `openhcl-vpci` process ([`service`]) gets its channels from a small VMBus-like
//! control plane ([`control`]) over Unix sockets: offers from a host endpoint, rings as memfds
//! and eventfds, offers of its own to a guest endpoint. [`table`] keeps where each bus's two
//! offers stand, [`config`] reads the TOML file, [`bars`] records the relay's BAR backing and
//! [`inspect_server`] answers `openhcl-vpci inspect`.

#![forbid(unsafe_code)]

pub mod bars;
pub mod config;
pub mod control;
pub mod executor;
pub mod inspect_server;
pub mod revocable;
pub mod service;
pub mod table;

use executor::LoopClock;
use futures::executor::block_on;
use inspect::Node;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use vmbus_channel::Channel;
use vpci_relay::{BarControl, BusDriver, BusPort, BusRelay, DriverExit, RelayConfig};

/// A bus whose driver stopped on request ([`DriverExit::Stopped`]): the driver with its
/// channels and relay, and the ring waiting its thread had taken over, for a successor.
pub struct Parked<H, G, B> {
    /// The stopped driver.
    pub driver: BusDriver<H, G, LoopClock, B>,
    /// The wait sources the bus thread polled, in the order it was given them.
    pub sources: Vec<vmbus_channel::WaitSource>,
}

impl<H, G, B> std::fmt::Debug for Parked<H, G, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

/// One running bus.
#[derive(Debug)]
struct Bus {
    name: String,
    port: BusPort,
    thread: JoinHandle<DriverExit>,
    /// The bus's inspect tree when its driver stopped.
    last: Arc<Mutex<Option<Node>>>,
}

/// The set of running buses.
#[derive(Debug, Default)]
pub struct RelayService {
    buses: Vec<Bus>,
}

impl RelayService {
    /// A service with no buses.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts relaying one bus between its host-facing and guest-facing channels, on a new
    /// thread named after the bus.
    ///
    /// `bars` is the VMM's memory-mapping side for this bus: the driver calls its
    /// [`BarControl::map_device`], [`BarControl::map_shield`] and [`BarControl::unmap`] as the
    /// relay decides, on the bus's thread. It is a value rather than a factory because the
    /// caller knows the bus (its MMIO ranges, its config window) when it adds it; it moves to
    /// the bus's thread, so buses share no backing object unless the caller puts shared state
    /// inside one (which guarantee 6 asks it not to lock across buses).
    pub fn add_bus<H, G, B>(
        &mut self,
        config: RelayConfig,
        host: H,
        guest: G,
        bars: B,
    ) -> std::io::Result<()>
    where
        H: Channel + Send + 'static,
        G: Channel + Send + 'static,
        B: BarControl + Send + 'static,
    {
        self.add_bus_with(config, host, guest, bars, |_| {})
    }

    /// [`add_bus_with`](Self::add_bus_with) for ring channels whose waiting the caller took
    /// over ([`vmbus_channel::RingChannel::wait_source`]): the bus's thread waits on `sources`
    /// itself ([`executor::block_on_sources`]), so a packet wakes it directly.
    pub fn add_bus_waiting_on<H, G, B>(
        &mut self,
        config: RelayConfig,
        host: H,
        guest: G,
        bars: B,
        sources: Vec<vmbus_channel::WaitSource>,
        on_exit: impl FnOnce(DriverExit) + Send + 'static,
    ) -> std::io::Result<()>
    where
        H: Channel + Send + 'static,
        G: Channel + Send + 'static,
        B: BarControl + Send + 'static,
    {
        self.start(config, host, guest, bars, sources, on_exit)
    }

    /// [`add_bus`](Self::add_bus), and calls `on_exit` on the bus's thread when its driver
    /// stops. The bus's thread runs the driver under its own loop
    /// ([`executor::block_on_sources`]) with no sources: the channels wake it through their
    /// own means, and the relay's timers ([`LoopClock`]) are the loop's timeout.
    pub fn add_bus_with<H, G, B>(
        &mut self,
        config: RelayConfig,
        host: H,
        guest: G,
        bars: B,
        on_exit: impl FnOnce(DriverExit) + Send + 'static,
    ) -> std::io::Result<()>
    where
        H: Channel + Send + 'static,
        G: Channel + Send + 'static,
        B: BarControl + Send + 'static,
    {
        self.start(config, host, guest, bars, Vec::new(), on_exit)
    }

    fn start<H, G, B>(
        &mut self,
        config: RelayConfig,
        host: H,
        guest: G,
        bars: B,
        sources: Vec<vmbus_channel::WaitSource>,
        on_exit: impl FnOnce(DriverExit) + Send + 'static,
    ) -> std::io::Result<()>
    where
        H: Channel + Send + 'static,
        G: Channel + Send + 'static,
        B: BarControl + Send + 'static,
    {
        let name = config.name.clone();
        let (driver, port) =
            BusDriver::new(BusRelay::new(config), host, guest, LoopClock::new(), bars);
        self.spawn(name, driver, port, sources, move |exit, _| on_exit(exit))
    }

    /// Runs an existing driver (a restored one) on a new thread named after its bus, waiting
    /// on `sources` itself. `on_exit` gets the driver back when it stopped on request
    /// ([`DriverExit::Stopped`], after [`BusPort::stop`]), with the sources, so the caller can
    /// save it for a successor.
    pub fn add_driver_waiting_on<H, G, B>(
        &mut self,
        name: String,
        driver: BusDriver<H, G, LoopClock, B>,
        port: BusPort,
        sources: Vec<vmbus_channel::WaitSource>,
        on_exit: impl FnOnce(DriverExit, Option<Parked<H, G, B>>) + Send + 'static,
    ) -> std::io::Result<()>
    where
        H: Channel + Send + 'static,
        G: Channel + Send + 'static,
        B: BarControl + Send + 'static,
    {
        self.spawn(name, driver, port, sources, on_exit)
    }

    fn spawn<H, G, B>(
        &mut self,
        name: String,
        mut driver: BusDriver<H, G, LoopClock, B>,
        port: BusPort,
        sources: Vec<vmbus_channel::WaitSource>,
        on_exit: impl FnOnce(DriverExit, Option<Parked<H, G, B>>) + Send + 'static,
    ) -> std::io::Result<()>
    where
        H: Channel + Send + 'static,
        G: Channel + Send + 'static,
        B: BarControl + Send + 'static,
    {
        let thread_name = name.clone();
        let last = Arc::new(Mutex::new(None));
        let keep = last.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vpci-{name}"))
            .spawn(move || {
                // Under this thread's own loop even without sources to wait on: the driver's
                // timers (`LoopClock`) are then the loop's timeout, not a timer thread's.
                let (exit, sources) = executor::block_on_sources_returning(driver.run(), sources);
                tracing::info!(bus = %thread_name, ?exit, "bus relay stopped");
                *keep.lock().unwrap_or_else(PoisonError::into_inner) = Some(driver.inspect_tree());
                let parked = (exit == DriverExit::Stopped).then_some(Parked { driver, sources });
                on_exit(exit, parked);
                exit
            })?;
        tracing::info!(bus = %name, "bus relay started");
        self.buses.push(Bus {
            name,
            port,
            thread,
            last,
        });
        Ok(())
    }

    /// A handle to the running bus named `name` (the latest one of that name).
    pub fn port(&self, name: &str) -> Option<BusPort> {
        self.buses
            .iter()
            .rev()
            .find(|b| b.name == name)
            .map(|b| b.port.clone())
    }

    /// The inspect tree the bus named `name` (the latest one of that name) had when its driver
    /// stopped: how its host link ended, its counters. `None` while it runs.
    pub fn final_inspect(&self, name: &str) -> Option<Node> {
        let bus = self.buses.iter().rev().find(|b| b.name == name)?;
        bus.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the (stopped or stopping) bus named `name` and waits for its thread; `None` if
    /// there is no such bus or its thread panicked.
    pub fn remove(&mut self, name: &str) -> Option<DriverExit> {
        let index = self.buses.iter().position(|b| b.name == name)?;
        let bus = self.buses.remove(index);
        bus.thread.join().ok()
    }

    /// The inspect tree of every bus, by name (each as [`BusPort::inspect`] gives it: the
    /// relay's tree with the driver's counters under `driver`). A bus whose driver has
    /// stopped shows as `"stopped"`.
    pub fn inspect(&mut self) -> Node {
        let mut root = Node::dir();
        for bus in &mut self.buses {
            let node = block_on(bus.port.inspect()).unwrap_or_else(|| Node::str("stopped"));
            root = root.child(bus.name.clone(), node);
        }
        root.build()
    }

    /// Waits for every bus to stop (each stops when its guest channel ends) and returns how
    /// each one ended; a bus whose thread panicked is reported as `None`.
    pub fn join(self) -> Vec<(String, Option<DriverExit>)> {
        self.buses
            .into_iter()
            .map(|b| (b.name, b.thread.join().ok()))
            .collect()
    }
}
