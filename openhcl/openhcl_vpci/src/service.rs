//! The running service: one event loop that owns the [`BusTable`], the two peer connections
//! and the running relays, fed by small threads (one reader per connection, the guest and
//! control listeners, the signal watcher, each bus's thread when its relay stops).
//!
//! Only the event loop writes to the peers, one whole frame at a time, so a shutdown never
//! leaves a message half-sent.

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
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vmbus_channel::{RingChannel, RingChannelConfig};
use vpci_protocol::WinSlot;
use vpci_relay::{Backing, ConfigAccess, ConfigAction, DriverExit};

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
    GuestRing(String, u64, Result<RingChannel, ControlError>),
    /// A bus's relay stopped.
    BusStopped(String, u64, DriverExit),
    /// An inspect query (path, JSON), answered on the sender.
    Inspect(String, bool, mpsc::Sender<Result<String, String>>),
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
    ring: RingChannelConfig,
    closing: bool,
}

fn spawn_reader(
    name: &str,
    stream: UnixStream,
    sender: mpsc::Sender<Event>,
    on_msg: impl Fn(Message, Option<OwnedFd>) -> Event + Send + 'static,
    on_end: impl FnOnce(Option<ControlError>) -> Event + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let end = loop {
                match control::recv(&stream) {
                    Ok(Some((m, fd))) => {
                        if sender.send(on_msg(m, fd)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            let _ = sender.send(on_end(end));
        })?;
    Ok(())
}

fn all_ones(len: u8) -> u32 {
    match len {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
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
        spawn_reader(
            "host-reader",
            host.try_clone()?,
            sender.clone(),
            Event::Host,
            Event::HostGone,
        )?;
        let _ = std::fs::remove_file(&endpoints.guest);
        let guests = UnixListener::bind(&endpoints.guest)?;
        let tx = sender.clone();
        std::thread::Builder::new()
            .name("guest-listener".into())
            .spawn(move || {
                for (id, stream) in (1u64..).zip(guests.incoming()) {
                    match stream {
                        Ok(s) => {
                            if tx.send(Event::GuestConnected(id, s)).is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "guest accept failed"),
                    }
                }
            })?;
        inspect_server::listen(&endpoints.control, sender.clone())?;
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])?;
        let tx = sender.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    tracing::info!(signal, "shutting down");
                    let _ = tx.send(Event::Shutdown);
                }
            })?;
        tracing::info!(
            guest = %endpoints.guest.display(),
            control = %endpoints.control.display(),
            "listening"
        );
        let relays = RelayService::new();
        Ok(Self {
            config,
            endpoints,
            events,
            sender,
            table: BusTable::new(),
            relays,
            running: BTreeMap::new(),
            stopped: BTreeMap::new(),
            host: Some(host),
            guest: None,
            pending: HashMap::new(),
            next_mmio: 1,
            ring: RingChannelConfig::default(),
            closing: false,
        })
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
            Event::GuestRing(bus, generation, ring) => self.guest_ring(bus, generation, ring),
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
                // Its accesses still at the host: the guest must not wait on a bus that
                // stopped, so each is answered now (the host's late answer is then ignored).
                let stopped: Vec<u64> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.bus == bus && p.generation == generation)
                    .map(|(&id, _)| id)
                    .collect();
                for id in stopped {
                    if let Some(p) = self.pending.remove(&id) {
                        self.master_abort(&p);
                    }
                }
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
            Message::AllOffersDelivered => self.table.host_all_offers_delivered(),
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
                    // The guest sends its ring right after the open; a guest that does not
                    // only stalls this helper thread.
                    std::thread::Builder::new()
                        .name(format!("ring-{bus}"))
                        .spawn(move || {
                            let ring = control::accept_ring(fd);
                            let _ = tx.send(Event::GuestRing(bus, generation, ring));
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
        let reader = stream.try_clone().and_then(|s| {
            spawn_reader(
                "guest-reader",
                s,
                self.sender.clone(),
                move |m, fd| Event::Guest(id, m, fd),
                move |e| Event::GuestGone(id, e),
            )
        });
        if let Err(e) = reader {
            tracing::error!(error = %e, "cannot serve the guest");
            return;
        }
        tracing::info!("guest connected");
        self.guest = Some((id, stream));
        match self.table.guest_connected() {
            Ok(actions) => self.apply(actions),
            Err(e) => tracing::error!(error = %e, "guest refused"),
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
            let tx = self.sender.clone();
            let name = bus.clone();
            self.relays.add_bus_waiting_on(
                self.config.relay_config(&bus),
                host,
                guest,
                bars.clone(),
                sources,
                move |exit| {
                    let _ = tx.send(Event::BusStopped(name, generation, exit));
                },
            )?;
            self.stopped.remove(&bus);
            self.running.insert(
                bus.clone(),
                Running {
                    generation,
                    bars,
                    revoke,
                },
            );
            Ok(())
        });
        if let Err(e) = started {
            tracing::error!(bus = %bus, error = %e, "cannot start the bus");
            let actions = self.table.bus_stopped(&bus, generation);
            self.apply(actions);
        }
    }

    fn mmio(&mut self, id: u64, bus: String, op: MmioOp) {
        let reply = |value| Message::MmioDone { id, value };
        let Some(running) = self.running.get(&bus) else {
            let value = match op {
                MmioOp::ConfigRead { len, .. } => Some(all_ones(len)),
                MmioOp::ConfigWrite { .. } => Some(0),
                _ => None,
            };
            self.send_guest(&reply(value));
            return;
        };
        let generation = running.generation;
        let port = self.relays.port(&bus);
        let local = match op {
            MmioOp::ConfigRead { slot, offset, len } => {
                let slot = WinSlot::from_raw(slot);
                let access = ConfigAccess::Read { slot, offset, len };
                match port.and_then(|mut p| block_on(p.access(access))) {
                    Some(ConfigAction::Forward) => None,
                    Some(ConfigAction::Answer(v)) => Some(Some(v)),
                    Some(ConfigAction::Drop) | None => Some(Some(all_ones(len))),
                }
            }
            MmioOp::ConfigWrite {
                slot,
                offset,
                len,
                value,
            } => {
                let slot = WinSlot::from_raw(slot);
                let access = ConfigAccess::Write {
                    slot,
                    offset,
                    len,
                    value,
                };
                match port.and_then(|mut p| block_on(p.access(access))) {
                    Some(ConfigAction::Forward) => None,
                    _ => Some(Some(0)),
                }
            }
            MmioOp::BarRead { slot, len, .. } => match running.bars.get(WinSlot::from_raw(slot)) {
                Backing::Device => None,
                Backing::Shield => Some(Some(all_ones(len))),
                Backing::Released => Some(None),
            },
            MmioOp::BarWrite { slot, .. } => match running.bars.get(WinSlot::from_raw(slot)) {
                Backing::Device => None,
                Backing::Shield => Some(Some(0)),
                Backing::Released => Some(None),
            },
        };
        // A guest cannot make the service remember more accesses than this for a host that
        // does not answer: beyond it they fault (config reads: all ones).
        let local = match local {
            None if self.pending.len() >= MAX_PENDING_MMIO => {
                tracing::warn!(bus = %bus, "too many accesses outstanding at the host");
                Some(match op {
                    MmioOp::ConfigRead { len, .. } => Some(all_ones(len)),
                    _ => None,
                })
            }
            other => other,
        };
        match local {
            Some(value) => self.send_guest(&reply(value)),
            None => {
                let host_id = self.next_mmio;
                self.next_mmio += 1;
                self.pending.insert(
                    host_id,
                    Pending {
                        guest_id: id,
                        bus: bus.clone(),
                        generation,
                        op,
                    },
                );
                self.send_host(&Message::Mmio {
                    id: host_id,
                    bus,
                    op,
                });
            }
        }
    }

    fn mmio_done(&mut self, id: u64, value: Option<u32>) {
        let Some(p) = self.pending.remove(&id) else {
            tracing::warn!(id, "host answered an access nobody asked");
            return;
        };
        if let (MmioOp::ConfigRead { slot, offset, len }, Some(v)) = (p.op, value) {
            if let Some(mut port) = self.relays.port(&p.bus) {
                block_on(port.read_result(WinSlot::from_raw(slot), offset, len, v));
            }
        }
        self.send_guest(&Message::MmioDone {
            id: p.guest_id,
            value,
        });
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

    /// Answers an access the host will not answer (any more) as a master abort: a config
    /// read reads all ones, anything else faults.
    fn master_abort(&mut self, p: &Pending) {
        let value = match p.op {
            MmioOp::ConfigRead { len, .. } => Some(all_ones(len)),
            _ => None,
        };
        self.send_guest(&Message::MmioDone {
            id: p.guest_id,
            value,
        });
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
