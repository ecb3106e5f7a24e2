//! The running service: one event loop that owns the [`BusTable`], the two peer connections
//! and the running relays, fed by small threads (one reader per connection, the guest and
//! control listeners, the signal watcher, each bus's thread when its relay stops).
//!
//! Only the event loop writes to the peers, one whole frame at a time, so a shutdown never
//! leaves a message half-sent.

mod exec;
mod fds;
pub mod handover;
mod mmio;
mod resume;
pub mod saved;
mod signals;
pub(crate) mod threads;
mod update;

pub use exec::RESUME_FLAG;
pub use update::{RestoreInfo, UpdateRequest};

use crate::RelayService;
use crate::bars::RecordingBars;
use crate::config::ServiceConfig;
use crate::control::{self, ControlError, Message, MmioOp};
use crate::inspect_server;
use crate::revocable::{Revocable, RevokeHandle};
use crate::table::{Action, BusTable};
use futures::executor::block_on;
use inspect::Node;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmbus_channel::{RingChannel, RingChannelConfig};
use vpci_relay::{AccessId, DriverExit};

/// The most guest accesses outstanding at the host at once.
pub const MAX_PENDING_MMIO: usize = 1024;

/// Where the service's sockets are.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// The host endpoint's socket (connected to).
    pub host: PathBuf,
    /// The socket the guest connects to (listened on).
    pub guest: PathBuf,
    /// The control socket for `openhcl-vpci inspect` (listened on).
    pub control: PathBuf,
    /// How long to keep trying to reach the host at start.
    pub connect_timeout: Duration,
    /// How long shutdown waits for each bus to stop.
    pub shutdown_timeout: Duration,
}

/// What the event loop reacts to.
#[derive(Debug)]
pub enum Event {
    /// A message from the host.
    Host(Message, Option<OwnedFd>),
    /// The host connection ended (or broke the protocol).
    HostGone(Option<ControlError>),
    /// A guest connected.
    GuestConnected(u64, UnixStream),
    /// A message from guest connection `id`.
    Guest(u64, Message, Option<OwnedFd>),
    /// Guest connection `id` ended (or broke the protocol).
    GuestGone(u64, Option<ControlError>),
    /// The guest's ring of a bus arrived (or failed).
    GuestRing(String, u64, Box<Result<RingChannel, ControlError>>),
    /// A bus's relay stopped.
    BusStopped(String, u64, DriverExit),
    /// An inspect query (path, JSON), answered on the sender.
    Inspect(String, bool, mpsc::Sender<Result<String, String>>),
    /// A bus's relay stopped on request, for an update: its driver and ring waiting.
    BusParked(String, u64, Box<update::ParkedBus>),
    /// A control client asks for the service to be replaced by a new binary.
    Update(UpdateRequest),
    /// SIGTERM or SIGINT.
    Shutdown,
}

struct Running {
    generation: u64,
    bars: RecordingBars,
    revoke: RevokeHandle,
}

struct Pending {
    guest_id: u64,
    bus: String,
    generation: u64,
    op: MmioOp,
    /// The relay's id for a config access it forwarded: reported done when the access ends,
    /// however it ends (the relay holds the bus busy until then).
    access: Option<AccessId>,
}

/// The service's state. Build with [`Service::start`], then [`Service::run`].
pub struct Service {
    config: ServiceConfig,
    endpoints: Endpoints,
    events: mpsc::Receiver<Event>,
    sender: mpsc::Sender<Event>,
    table: BusTable,
    relays: RelayService,
    running: BTreeMap<String, Running>,
    /// Each stopped bus's final relay tree (shown as `last_relay` until it runs again).
    stopped: BTreeMap<String, Node>,
    host: Option<UnixStream>,
    guest: Option<(u64, UnixStream)>,
    pending: HashMap<u64, Pending>,
    next_mmio: u64,
    /// Forwarded accesses the host answered with a fault (its device memory pulled while
    /// the relay still saw the function listed), answered to the guest as master aborts,
    /// since this image started.
    mmio_host_faults: u64,
    ring: RingChannelConfig,
    closing: bool,
    /// Pauses the reader and listener threads for an update.
    pause: threads::Pause,
    /// The peer connections' reader threads.
    readers: Vec<JoinHandle<()>>,
    /// The guest listener's thread (gives the listener back when paused).
    guest_listener: Option<JoinHandle<Option<UnixListener>>>,
    /// The control listener's thread (likewise).
    control_listener: Option<JoinHandle<Option<UnixListener>>>,
    /// The id the next guest connection gets.
    next_guest_id: Arc<AtomicU64>,
    /// Guest rings being received by helper threads (an update waits for them).
    accepting: usize,
    /// Where this image came from, if it was restored by an update.
    restored: Option<RestoreInfo>,
    /// SIGTERM or SIGINT arrived while an update was under way: the update gives up and the
    /// service shuts down after it.
    shutdown_during_update: bool,
    /// The thread that takes SIGTERM and SIGINT (none while an update hands over).
    signals: Option<signals::Watcher>,
}

impl Service {
    /// Connects to the host (retrying until `connect_timeout`), listens for the guest and
    /// for inspect clients, and watches SIGTERM/SIGINT.
    pub fn start(config: ServiceConfig, endpoints: Endpoints) -> anyhow::Result<Self> {
        let (sender, events) = mpsc::channel();
        let deadline = Instant::now() + endpoints.connect_timeout;
        let host = loop {
            match UnixStream::connect(&endpoints.host) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    anyhow::bail!("cannot reach the host at {}: {e}", endpoints.host.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        tracing::info!(host = %endpoints.host.display(), "connected to the host");
        let _ = std::fs::remove_file(&endpoints.guest);
        let guests = UnixListener::bind(&endpoints.guest)?;
        let _ = std::fs::remove_file(&endpoints.control);
        let control = UnixListener::bind(&endpoints.control)?;
        let mut service = Self::assemble(config, endpoints, sender, events, None)?;
        service.serve_host(host)?;
        service.listen(guests, control)?;
        tracing::info!(
            guest = %service.endpoints.guest.display(),
            control = %service.endpoints.control.display(),
            "listening"
        );
        Ok(service)
    }

    /// The service's state around its event channel, with the signal watcher running and no
    /// connection yet.
    fn assemble(
        config: ServiceConfig,
        endpoints: Endpoints,
        sender: mpsc::Sender<Event>,
        events: mpsc::Receiver<Event>,
        restored: Option<RestoreInfo>,
    ) -> anyhow::Result<Self> {
        // Before any thread starts: only the watcher takes the shutdown signals.
        signals::block_in_this_thread()?;
        let watcher = signals::Watcher::start(sender.clone())?;
        Ok(Self {
            config,
            endpoints,
            events,
            sender,
            table: BusTable::new(),
            relays: RelayService::new(),
            running: BTreeMap::new(),
            stopped: BTreeMap::new(),
            host: None,
            guest: None,
            pending: HashMap::new(),
            next_mmio: 1,
            mmio_host_faults: 0,
            ring: RingChannelConfig::default(),
            closing: false,
            pause: threads::Pause::new()?,
            readers: Vec::new(),
            guest_listener: None,
            control_listener: None,
            next_guest_id: Arc::new(AtomicU64::new(1)),
            accepting: 0,
            restored,
            shutdown_during_update: false,
            signals: Some(watcher),
        })
    }

    /// Starts reading the host connection.
    fn serve_host(&mut self, host: UnixStream) -> std::io::Result<()> {
        let reader = threads::spawn_reader(
            "host-reader",
            host.try_clone()?,
            self.sender.clone(),
            self.pause.clone(),
            Event::Host,
            Event::HostGone,
        )?;
        self.readers.push(reader);
        self.host = Some(host);
        Ok(())
    }

    /// Starts accepting guests and control clients.
    fn listen(&mut self, guests: UnixListener, control: UnixListener) -> std::io::Result<()> {
        let tx = self.sender.clone();
        let ids = self.next_guest_id.clone();
        self.guest_listener = Some(threads::spawn_listener(
            "guest-listener",
            guests,
            self.pause.clone(),
            move |stream| {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                tx.send(Event::GuestConnected(id, stream)).is_ok()
            },
        )?);
        self.control_listener = Some(inspect_server::listen(
            control,
            self.pause.clone(),
            self.sender.clone(),
        )?);
        Ok(())
    }

    /// Runs until SIGTERM or SIGINT, then shuts down in order.
    pub fn run(mut self) -> anyhow::Result<()> {
        while let Ok(event) = self.events.recv() {
            if let Event::Shutdown = event {
                break;
            }
            self.handle(event);
        }
        self.shutdown();
        Ok(())
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Host(message, fd) => {
                tracing::debug!(?message, "from host");
                if let Err(e) = self.on_host(message, fd) {
                    tracing::error!(error = %e, "host broke the control protocol: disconnecting");
                    self.lose_host();
                }
            }
            Event::HostGone(error) => {
                if self.host.is_some() {
                    match error {
                        Some(e) => tracing::error!(error = %e, "host connection failed"),
                        None => tracing::warn!("host connection closed"),
                    }
                    self.lose_host();
                }
            }
            Event::GuestConnected(id, stream) => self.guest_connected(id, stream),
            Event::Guest(id, message, fd) => {
                if self.guest.as_ref().is_some_and(|(g, _)| *g == id) {
                    tracing::debug!(?message, "from guest");
                    if let Err(e) = self.on_guest(message, fd) {
                        tracing::error!(error = %e, "guest broke the control protocol: disconnecting");
                        self.lose_guest();
                    }
                }
            }
            Event::GuestGone(id, error) => {
                if self.guest.as_ref().is_some_and(|(g, _)| *g == id) {
                    match error {
                        Some(e) => tracing::error!(error = %e, "guest connection failed"),
                        None => tracing::info!("guest connection closed"),
                    }
                    self.lose_guest();
                }
            }
            Event::GuestRing(bus, generation, ring) => {
                self.accepting = self.accepting.saturating_sub(1);
                self.guest_ring(bus, generation, *ring)
            }
            Event::BusParked(bus, generation, parked) => {
                // Only an update stops buses, and it waits for them itself; a parked bus seen
                // here (its update gave up waiting) is resumed as it was.
                self.resume_parked(bus, generation, *parked);
            }
            Event::Update(request) => self.update(request),
            Event::BusStopped(bus, generation, exit) => {
                tracing::info!(bus = %bus, ?exit, "bus stopped");
                if self
                    .running
                    .get(&bus)
                    .is_some_and(|r| r.generation == generation)
                {
                    self.running.remove(&bus);
                    if let Some(tree) = self.relays.final_inspect(&bus) {
                        self.stopped.insert(bus.clone(), tree);
                    }
                    self.relays.remove(&bus);
                }
                self.abort_bus_accesses(&bus, generation);
                let actions = self.table.bus_stopped(&bus, generation);
                self.apply(actions);
            }
            Event::Inspect(path, json, reply) => {
                let tree = self.inspect();
                let answer = tree.query(&path).map_err(|e| e.to_string()).map(|n| {
                    if json {
                        n.to_json_pretty()
                    } else {
                        n.to_text()
                    }
                });
                let _ = reply.send(answer);
            }
            Event::Shutdown => {}
        }
    }

    fn on_host(&mut self, message: Message, _fd: Option<OwnedFd>) -> Result<(), ControlError> {
        let actions = match message {
            Message::Offer { bus } => {
                tracing::info!(bus = %bus, "host offered a bus");
                self.table.host_offer(&bus)?
            }
            Message::Rescind { bus } => {
                tracing::info!(bus = %bus, "host rescinded a bus");
                self.table.host_rescind(&bus)?
            }
            Message::AllOffersDelivered {} => self.table.host_all_offers_delivered(),
            Message::MmioDone { id, value } => {
                self.mmio_done(id, value);
                vec![]
            }
            other => return Err(ControlError::Unexpected(format!("{other:?}"))),
        };
        self.apply(actions);
        Ok(())
    }

    fn on_guest(&mut self, message: Message, fd: Option<OwnedFd>) -> Result<(), ControlError> {
        let actions = match message {
            Message::Open { bus } => {
                let actions = self.table.guest_open(&bus)?;
                if let (Some(Action::Start { generation, .. }), Some(fd)) = (actions.first(), fd) {
                    let generation = *generation;
                    let tx = self.sender.clone();
                    self.accepting += 1;
                    // The guest sends its ring right after the open; a guest that does not
                    // only stalls this helper thread.
                    std::thread::Builder::new()
                        .name(format!("ring-{bus}"))
                        .spawn(move || {
                            let ring = control::accept_ring(fd);
                            let _ = tx.send(Event::GuestRing(bus, generation, Box::new(ring)));
                        })?;
                }
                vec![]
            }
            Message::Close { bus } => self.table.guest_close(&bus)?,
            Message::Release { bus } => {
                tracing::info!(bus = %bus, "guest released a bus");
                self.table.guest_release(&bus)?
            }
            Message::Mmio { id, bus, op } => {
                self.mmio(id, bus, op);
                vec![]
            }
            other => return Err(ControlError::Unexpected(format!("{other:?}"))),
        };
        self.apply(actions);
        Ok(())
    }

    fn guest_connected(&mut self, id: u64, stream: UnixStream) {
        if self.guest.is_some() {
            tracing::warn!("a second guest connected: refused");
            return;
        }
        if !self.adopt_guest(id, stream) {
            return;
        }
        tracing::info!("guest connected");
        match self.table.guest_connected() {
            Ok(actions) => self.apply(actions),
            Err(e) => tracing::error!(error = %e, "guest refused"),
        }
    }

    /// Starts reading guest connection `id`; false if it cannot be served.
    fn adopt_guest(&mut self, id: u64, stream: UnixStream) -> bool {
        let reader = stream.try_clone().and_then(|s| {
            threads::spawn_reader(
                "guest-reader",
                s,
                self.sender.clone(),
                self.pause.clone(),
                move |m, fd| Event::Guest(id, m, fd),
                move |e| Event::GuestGone(id, e),
            )
        });
        match reader {
            Ok(handle) => {
                self.readers.push(handle);
                self.guest = Some((id, stream));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot serve the guest");
                false
            }
        }
    }

    fn guest_ring(
        &mut self,
        bus: String,
        generation: u64,
        ring: Result<RingChannel, ControlError>,
    ) {
        if self.table.running(&bus) != Some(generation) {
            return;
        }
        let started = ring.and_then(|mut guest| {
            let host = self
                .host
                .as_ref()
                .ok_or_else(|| ControlError::Unexpected("no host".into()))?;
            let mut host = control::open_ring(host, &bus, self.ring)?;
            // The bus's thread waits on both rings itself: one wake-up per packet.
            let sources = vec![host.wait_source()?, guest.wait_source()?];
            let (host, revoke) = Revocable::new(host);
            let bars = RecordingBars::new(&bus);
            let (driver, port) = vpci_relay::BusDriver::new(
                vpci_relay::BusRelay::new(self.config.relay_config(&bus)),
                host,
                guest,
                crate::executor::LoopClock::new(),
                bars.clone(),
            );
            self.run_bus(&bus, generation, driver, port, sources, bars, revoke)?;
            Ok(())
        });
        if let Err(e) = started {
            tracing::error!(bus = %bus, error = %e, "cannot start the bus");
            let actions = self.table.bus_stopped(&bus, generation);
            self.apply(actions);
        }
    }

    /// Runs a bus's driver on its own thread; its end comes back as [`Event::BusStopped`], or
    /// as [`Event::BusParked`] when an update stopped it.
    #[allow(clippy::too_many_arguments)]
    fn run_bus(
        &mut self,
        bus: &str,
        generation: u64,
        driver: update::BusDriverOf,
        port: vpci_relay::BusPort,
        sources: Vec<vmbus_channel::WaitSource>,
        bars: RecordingBars,
        revoke: RevokeHandle,
    ) -> std::io::Result<()> {
        let tx = self.sender.clone();
        let name = bus.to_owned();
        self.relays.add_driver_waiting_on(
            name.clone(),
            driver,
            port,
            sources,
            move |exit, parked| {
                let _ = match parked {
                    Some(p) => tx.send(Event::BusParked(name, generation, Box::new(p))),
                    None => tx.send(Event::BusStopped(name, generation, exit)),
                };
            },
        )?;
        self.stopped.remove(bus);
        self.running.insert(
            bus.to_owned(),
            Running {
                generation,
                bars,
                revoke,
            },
        );
        Ok(())
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::ToGuest(m) => self.send_guest(&m),
                // At shutdown the host did not rescind: the service closes the bus instead.
                Action::ToHost(Message::Release { bus }) if self.closing => {
                    self.send_host(&Message::Close { bus })
                }
                Action::ToHost(m) => self.send_host(&m),
                Action::Start { .. } => {}
                Action::RevokeHost { bus } => {
                    if let Some(r) = self.running.get(&bus) {
                        r.revoke.revoke();
                    }
                }
            }
        }
    }

    fn send_guest(&mut self, message: &Message) {
        if let Some((_, stream)) = &self.guest {
            tracing::debug!(?message, "to guest");
            if let Err(e) = control::send(stream, message, None) {
                tracing::warn!(error = %e, "cannot reach the guest");
                self.lose_guest();
            }
        }
    }

    fn send_host(&mut self, message: &Message) {
        if let Some(stream) = &self.host {
            tracing::debug!(?message, "to host");
            if let Err(e) = control::send(stream, message, None) {
                tracing::warn!(error = %e, "cannot reach the host");
                self.lose_host();
            }
        }
    }

    fn lose_host(&mut self) {
        if let Some(stream) = self.host.take() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        // Accesses the host will never answer: master aborts.
        for (_, p) in std::mem::take(&mut self.pending) {
            self.master_abort(&p);
        }
        let actions = self.table.host_gone();
        self.apply(actions);
    }

    fn lose_guest(&mut self) {
        if let Some((_, stream)) = self.guest.take() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        let actions = self.table.guest_gone();
        self.apply(actions);
    }

    /// The whole tree: the service, then each bus's states, backing and relay.
    fn inspect(&mut self) -> Node {
        let mut buses = Node::dir();
        for bus in self.table.buses() {
            let mut node = Node::dir();
            if let Some(Node::Dir(children)) = self.table.inspect_bus(&bus) {
                for (name, child) in children {
                    node = node.child(name, child);
                }
            }
            if let Some(r) = self.running.get(&bus) {
                node = node.child("bars", r.bars.inspect());
                if let Some(mut port) = self.relays.port(&bus) {
                    if let Some(tree) = block_on(port.inspect()) {
                        node = node.child("relay", tree);
                    }
                }
            } else if let Some(tree) = self.stopped.get(&bus) {
                node = node.child("last_relay", tree.clone());
            }
            buses = buses.child(bus, node.build());
        }
        Node::dir()
            .child(
                "host",
                Node::str(if self.host.is_some() {
                    "connected"
                } else {
                    "gone"
                }),
            )
            .child(
                "guest",
                Node::str(if self.guest.is_some() {
                    "connected"
                } else {
                    "none"
                }),
            )
            .child("mmio_pending", Node::display(&self.pending.len()))
            .child("mmio_host_faults", Node::display(&self.mmio_host_faults))
            .child(
                "restored",
                match &self.restored {
                    Some(info) => info.inspect(),
                    None => Node::str("never"),
                },
            )
            .child("buses", buses.build())
            .build()
    }

    /// Stops every running bus in order (the relay's rescind path: the guest's functions
    /// ejected at a safe point, its channel closed), tells both peers (the guest a rescind,
    /// the host a close), then closes the connections. Events keep being handled meanwhile:
    /// the guest's removal path still reads config space through the service.
    fn shutdown(&mut self) {
        self.closing = true;
        let buses = self.table.running_buses();
        tracing::info!(buses = buses.len(), "closing buses");
        for bus in buses {
            match self.table.host_rescind(&bus) {
                Ok(actions) => self.apply(actions),
                Err(e) => tracing::warn!(bus = %bus, error = %e, "cannot close the bus"),
            }
            let deadline = Instant::now() + self.endpoints.shutdown_timeout;
            while self.running.contains_key(&bus) {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    tracing::warn!(bus = %bus, "bus did not stop in time");
                    break;
                };
                match self.events.recv_timeout(left) {
                    Ok(Event::GuestConnected(..) | Event::Shutdown) => {}
                    Ok(event) => self.handle(event),
                    Err(_) => {}
                }
            }
            tracing::info!(bus = %bus, "bus closed");
        }
        if let Some((_, g)) = self.guest.take() {
            let _ = g.shutdown(std::net::Shutdown::Both);
        }
        if let Some(h) = self.host.take() {
            let _ = h.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.endpoints.guest);
        let _ = std::fs::remove_file(&self.endpoints.control);
        tracing::info!("stopped");
    }
}
