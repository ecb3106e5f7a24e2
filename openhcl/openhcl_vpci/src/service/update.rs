//! Servicing the service itself: on a control client's request the running image stops its
//! buses between two packets, saves everything, and `exec`s the new binary with every socket,
//! listener and ring handed over; the new image restores it all and answers the client. The
//! host and the guest keep their connections and rings throughout and notice nothing but a
//! pause: what they send meanwhile waits in the rings and sockets, in order.
//!
//! The steps, in the old image:
//!
//! 1. pause the reader and listener threads between two frames (what they had not read stays
//!    in the sockets) and handle every event already queued, waiting for guest rings being
//!    received;
//! 2. stop each bus's driver between two packets ([`vpci_relay::BusPort::stop`]) and take
//!    back its driver and ring waiting;
//! 3. save the table, the accesses outstanding at the host, and each bus (its driver's own
//!    saved state, its backing, its ring ends' [`vmbus_channel::RingHandoff`]s);
//! 4. write the state and the descriptors into a socket pair ([`super::handover`]) and exec
//!    the new binary with the other end as its standard input.
//!
//! If anything fails before the exec takes effect, the old image resumes from the very
//! handover it wrote, in-process, and answers the client with the error: an update either
//! happens or leaves the service as it was.

use super::exec::{check_binary, exec_keeping_signals_blocked, injected_exec_failure};
use super::fds::{FdList, saved_ring};
use super::handover;
use super::saved::{FORMAT, SavedBar, SavedBusEntry, SavedGuest, SavedMmio, SavedService};
use super::threads;
use super::{Event, Service};
use crate::Parked;
use crate::bars::RecordingBars;
use crate::executor::LoopClock;
use crate::revocable::Revocable;
use inspect::Node;
use prost::Message as _;
use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};
use vmbus_channel::RingChannel;
use vpci_relay::{AccessId, Backing, BusDriver};

/// The driver type of a service bus.
pub(crate) type BusDriverOf =
    BusDriver<Revocable<RingChannel>, RingChannel, LoopClock, RecordingBars>;
/// A service bus stopped for an update.
pub(crate) type ParkedBus = Parked<Revocable<RingChannel>, RingChannel, RecordingBars>;

/// The saved state, the descriptors it names, and how many buses it carries.
type Handover = (Vec<u8>, Vec<OwnedFd>, usize);

/// A stopped bus with what the service kept of it while it ran.
pub(crate) struct StoppedBus {
    bus: String,
    generation: u64,
    parked: ParkedBus,
    running: Option<super::Running>,
    port: Option<vpci_relay::BusPort>,
}

/// How long an update waits for queued events to settle and for its buses to stop.
const SETTLE: Duration = Duration::from_secs(5);

/// A control client's request to replace the service ([`crate::control::Message::Update`]).
#[derive(Debug)]
pub struct UpdateRequest {
    /// The new binary; the running one's if `None`.
    pub binary: Option<PathBuf>,
    /// The client's connection, handed to the new image so it can answer.
    pub requester: Option<UnixStream>,
    /// Where the old image answers if the update is refused or fails.
    pub reply: mpsc::Sender<Result<String, String>>,
}

/// Where a restored image came from, shown by inspect under `service/restored`.
#[derive(Clone, Debug)]
pub struct RestoreInfo {
    /// The predecessor's package version.
    pub from_version: String,
    /// The saved state's format.
    pub format: u32,
    /// When this image restored it.
    pub at: SystemTime,
    /// How long the service was stopped (from the save to the end of the restore).
    pub downtime: Duration,
    /// How many updates this service has been through, this one included.
    pub updates: u64,
    /// How many buses were carried across.
    pub buses: usize,
}

impl RestoreInfo {
    /// The inspect node.
    pub fn inspect(&self) -> Node {
        let at = self
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Node::dir()
            .child("from_version", Node::str(&self.from_version))
            .child("format", Node::display(&self.format))
            .child("at_unix_ms", Node::display(&at.as_millis()))
            .child("downtime", Node::debug(&self.downtime))
            .child("updates", Node::display(&self.updates))
            .child("buses", Node::display(&self.buses))
            .build()
    }
}

impl Service {
    /// Handles an update request: refuses it, fails and resumes, or never returns (the new
    /// image runs).
    pub(super) fn update(&mut self, request: UpdateRequest) {
        let binary = match request.binary.clone() {
            Some(b) => b,
            None => match std::env::current_exe() {
                Ok(b) => b,
                Err(e) => {
                    let _ = request
                        .reply
                        .send(Err(format!("cannot find my own binary: {e}")));
                    return;
                }
            },
        };
        let version = match check_binary(&binary) {
            Ok(version) => version,
            Err(e) => {
                let _ = request.reply.send(Err(e));
                return;
            }
        };
        if self.closing {
            let _ = request
                .reply
                .send(Err("the service is shutting down".into()));
            return;
        }
        tracing::info!(binary = %binary.display(), %version, "update requested");
        let error = self.hand_over(&binary, request.requester);
        tracing::error!(error = %error, "update failed; running on");
        let _ = request.reply.send(Err(error));
        if std::mem::take(&mut self.shutdown_during_update) {
            let _ = self.sender.send(Event::Shutdown);
        }
    }

    /// Steps 1-4; returns only if the update failed, with the service running again.
    fn hand_over(&mut self, binary: &std::path::Path, requester: Option<UnixStream>) -> String {
        let started = Instant::now();
        // 1. Quiesce the threads that read from outside.
        if let Err(e) = self.pause.set() {
            return format!("cannot pause the service's threads: {e}");
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let guest_listener = self
            .guest_listener
            .take()
            .and_then(|h| h.join().ok().flatten());
        let control_listener = self
            .control_listener
            .take()
            .and_then(|h| h.join().ok().flatten());
        self.settle();

        // 2. Stop the buses.
        let parked = self.stop_buses();
        // A failpoint for the tests: a window with every bus stopped, for a signal to land in.
        fail::fail_point!("update-stopped");
        // From here a shutdown signal stays pending (for this image if the update gives up,
        // or across the exec for the successor) instead of being taken and lost with us.
        self.stop_watcher();
        self.settle_signals();
        if self.shutdown_during_update {
            // A shutdown asked for now would be lost with this image: run on, then shut down.
            for stopped in parked {
                self.run_stopped(stopped);
            }
            self.restart_threads(guest_listener, control_listener);
            return "the service is shutting down".to_owned();
        }

        // 3 and 4. Save, hand over, exec.
        let (state, fds, buses) = match self.save_all(
            parked,
            guest_listener.as_ref(),
            control_listener.as_ref(),
            requester.as_ref(),
        ) {
            Ok(saved) => saved,
            Err((error, parked)) => {
                // Nothing was taken apart yet: everything runs on as it was.
                for stopped in parked {
                    self.run_stopped(stopped);
                }
                self.restart_threads(guest_listener, control_listener);
                return error;
            }
        };
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
        let result = (|| -> std::io::Result<std::io::Error> {
            let (ours, theirs) = UnixStream::pair()?;
            handover::send(&ours, &state, &borrowed)?;
            drop(ours);
            let keep = theirs.try_clone()?;
            tracing::info!(
                binary = %binary.display(),
                buses = buses,
                bytes = state.len(),
                descriptors = fds.len(),
                stopped_for = ?started.elapsed(),
                "handing over"
            );
            // A failpoint for the tests: the last moment before the exec, for a signal to land
            // in (it must reach the successor).
            fail::fail_point!("update-handover");
            let error = match injected_exec_failure() {
                Some(error) => error,
                None => exec_keeping_signals_blocked(binary, &theirs),
            };
            // Still here: the exec failed. Read our own handover back.
            drop(theirs);
            drop(keep);
            Ok(error)
        })();
        let error = match result {
            Ok(e) => format!("cannot exec {}: {e}", binary.display()),
            Err(e) => format!("cannot write the handover: {e}"),
        };
        // Resume from the state just written: the descriptors are still ours.
        drop(borrowed);
        match self.resume_from_saved(&state, fds, false) {
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot resume after a failed update"),
        }
        self.start_watcher();
        error
    }

    /// Stops the signal watcher for the handover (a signal taken before is queued as
    /// [`Event::Shutdown`](super::Event::Shutdown)).
    fn stop_watcher(&mut self) {
        if let Some(watcher) = self.signals.take() {
            watcher.stop();
        }
    }

    /// Starts the signal watcher again after an update that did not exec; a signal that
    /// arrived meanwhile is taken at once.
    fn start_watcher(&mut self) {
        if self.signals.is_none() {
            match super::signals::Watcher::start(self.sender.clone()) {
                Ok(watcher) => self.signals = Some(watcher),
                Err(e) => tracing::error!(error = %e, "cannot watch for signals"),
            }
        }
    }

    /// Handles every event already queued, and waits (up to [`SETTLE`]) for guest rings being
    /// received, so nothing half-started is left behind.
    fn settle(&mut self) {
        let deadline = Instant::now() + SETTLE;
        loop {
            match self.events.try_recv() {
                Ok(event) => self.handle_during_update(event),
                Err(_) if self.accepting == 0 => return,
                Err(_) => {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        tracing::warn!(accepting = self.accepting, "guest rings still arriving");
                        return;
                    };
                    if let Ok(event) = self.events.recv_timeout(left) {
                        self.handle_during_update(event);
                    }
                }
            }
        }
    }

    /// Handles what is queued without waiting (a signal that arrived while the buses stopped).
    fn settle_signals(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.handle_during_update(event);
        }
    }

    /// An event that arrives while an update is under way: a second update is refused, a
    /// shutdown is put back for after it; the rest is handled as usual.
    fn handle_during_update(&mut self, event: Event) {
        match event {
            Event::Update(request) => {
                let _ = request
                    .reply
                    .send(Err("an update is already under way".into()));
            }
            Event::Shutdown => {
                // The update gives up before the exec, and the service shuts down after it.
                self.shutdown_during_update = true;
            }
            Event::BusParked(bus, generation, parked) => {
                self.resume_parked(bus, generation, *parked);
            }
            other => self.handle(other),
        }
    }

    /// Stops every running bus and collects its parked driver. A bus that ended on its own
    /// meanwhile goes the usual way ([`Event::BusStopped`]).
    fn stop_buses(&mut self) -> Vec<StoppedBus> {
        let mut waiting = HashSet::new();
        for bus in self.running.keys().cloned().collect::<Vec<_>>() {
            if let Some(mut port) = self.relays.port(&bus) {
                if futures::executor::block_on(port.stop()) {
                    waiting.insert(bus);
                }
            }
        }
        let mut parked = Vec::new();
        let deadline = Instant::now() + SETTLE;
        while !waiting.is_empty() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                tracing::warn!(buses = ?waiting, "buses did not stop in time");
                break;
            };
            match self.events.recv_timeout(left) {
                Ok(Event::BusParked(bus, generation, p)) => {
                    waiting.remove(&bus);
                    parked.push(self.take_stopped(bus, generation, *p));
                }
                Ok(Event::BusStopped(bus, generation, exit)) => {
                    waiting.remove(&bus);
                    self.handle(Event::BusStopped(bus, generation, exit));
                }
                Ok(other) => self.handle_during_update(other),
                Err(_) => {}
            }
        }
        parked
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn backing_code(backing: Backing) -> u32 {
    match backing {
        Backing::Device => 1,
        Backing::Shield => 2,
        Backing::Released => 0,
    }
}

impl Service {
    /// Step 3: the whole service as saved state plus the descriptors it names. Buses that
    /// cannot be taken apart are lost (their rings close; the guest sees them go), never
    /// half-saved.
    fn save_all(
        &mut self,
        parked: Vec<StoppedBus>,
        guest_listener: Option<&UnixListener>,
        control_listener: Option<&UnixListener>,
        requester: Option<&UnixStream>,
    ) -> Result<Handover, (String, Vec<StoppedBus>)> {
        let mut fds = FdList::default();
        let (Some(guest_listener), Some(control_listener)) = (guest_listener, control_listener)
        else {
            return Err((
                "a listener thread ended; its listener cannot be handed over".into(),
                parked,
            ));
        };
        // The service's own descriptors first: if one cannot be kept, nothing is lost yet.
        let own = (|| -> std::io::Result<_> {
            let guest_listener_fd = fds.push(guest_listener.as_fd())?;
            let control_listener_fd = fds.push(control_listener.as_fd())?;
            let host_fd = match &self.host {
                Some(h) => Some(fds.push(h.as_fd())?),
                None => None,
            };
            let guest = match &self.guest {
                Some((id, g)) => Some(SavedGuest {
                    id: *id,
                    fd: fds.push(g.as_fd())?,
                }),
                None => None,
            };
            let requester_fd = match requester {
                Some(r) => Some(fds.push(r.as_fd())?),
                None => None,
            };
            Ok((
                guest_listener_fd,
                control_listener_fd,
                host_fd,
                guest,
                requester_fd,
            ))
        })();
        let (guest_listener_fd, control_listener_fd, host_fd, guest, requester_fd) = match own {
            Ok(own) => own,
            Err(e) => return Err((format!("cannot keep a descriptor: {e}"), parked)),
        };
        let mut buses = Vec::new();
        for stopped in parked {
            let (bus, generation) = (stopped.bus.clone(), stopped.generation);
            match park(stopped, &mut fds) {
                Ok(entry) => buses.push(entry),
                Err(e) => {
                    tracing::error!(bus = %bus, error = %e, "cannot save the bus; it is lost");
                    let actions = self.table.bus_stopped(&bus, generation);
                    self.apply(actions);
                }
            }
        }
        let count = buses.len();
        let state = SavedService {
            format: FORMAT,
            writer_version: env!("CARGO_PKG_VERSION").to_owned(),
            table: Some(self.table.save()),
            pending: self
                .pending
                .iter()
                .map(|(host_id, p)| SavedMmio {
                    host_id: *host_id,
                    guest_id: p.guest_id,
                    bus: p.bus.clone(),
                    generation: p.generation,
                    op_json: serde_json::to_string(&p.op).unwrap_or_default(),
                    relay_access: p.access.map(AccessId::to_raw),
                })
                .collect(),
            next_mmio: self.next_mmio,
            host_fd,
            guest,
            guest_listener_fd,
            control_listener_fd,
            requester_fd,
            next_guest_id: self
                .next_guest_id
                .load(std::sync::atomic::Ordering::Relaxed),
            buses,
            updates: self.restored.as_ref().map_or(0, |r| r.updates),
            saved_at_unix_ns: unix_ns(SystemTime::now()),
        };
        Ok((state.encode_to_vec(), fds.fds, count))
    }

    /// Restarts the reader and listener threads after an update that took nothing apart.
    fn restart_threads(
        &mut self,
        guest_listener: Option<UnixListener>,
        control_listener: Option<UnixListener>,
    ) {
        self.start_watcher();
        match threads::Pause::new() {
            Ok(pause) => self.pause = pause,
            Err(e) => tracing::error!(error = %e, "cannot make a new pause latch"),
        }
        if let Some(host) = self.host.take() {
            if let Err(e) = self.serve_host(host) {
                tracing::error!(error = %e, "cannot serve the host");
                self.lose_host();
            }
        }
        if let Some((id, guest)) = self.guest.take() {
            if !self.adopt_guest(id, guest) {
                self.lose_guest();
            }
        }
        match (guest_listener, control_listener) {
            (Some(g), Some(c)) => {
                if let Err(e) = self.listen(g, c) {
                    tracing::error!(error = %e, "cannot listen");
                }
            }
            _ => tracing::error!("a listener was lost: no new guest or control client"),
        }
    }

    /// Takes a parked bus's entries out of the running set.
    fn take_stopped(&mut self, bus: String, generation: u64, parked: ParkedBus) -> StoppedBus {
        let port = self.relays.port(&bus);
        self.relays.remove(&bus);
        let running = self
            .running
            .remove(&bus)
            .filter(|r| r.generation == generation);
        StoppedBus {
            bus,
            generation,
            parked,
            running,
            port,
        }
    }

    /// A bus that stopped for an update that then gave up on it: it runs on as it was.
    pub(super) fn resume_parked(&mut self, bus: String, generation: u64, parked: ParkedBus) {
        let stopped = self.take_stopped(bus, generation, parked);
        self.run_stopped(stopped);
    }

    fn run_stopped(&mut self, stopped: StoppedBus) {
        let StoppedBus {
            bus,
            generation,
            parked: Parked { driver, sources },
            running,
            port,
        } = stopped;
        let started = match (running, port) {
            (Some(running), Some(port)) => self
                .run_bus(
                    &bus,
                    generation,
                    driver,
                    port,
                    sources,
                    running.bars,
                    running.revoke,
                )
                .map_err(|e| e.to_string()),
            _ => Err("its records are gone".to_owned()),
        };
        if let Err(e) = started {
            tracing::error!(bus = %bus, error = %e, "cannot resume the bus");
            let actions = self.table.bus_stopped(&bus, generation);
            self.apply(actions);
        }
    }
}

/// Takes one parked bus apart: the driver's saved state, its backing, its two ring ends.
fn park(stopped: StoppedBus, fds: &mut FdList) -> Result<SavedBusEntry, String> {
    let StoppedBus {
        bus,
        generation,
        parked: Parked { driver, sources },
        running,
        port: _,
    } = stopped;
    let bars = running.map(|r| r.bars).ok_or("its records are gone")?;
    let mut sources = sources.into_iter();
    let (host_wait, guest_wait) = (sources.next(), sources.next());
    let (saved, relay_now, host, guest) = save_driver(driver)?;
    let (host, host_revoked) = host.into_inner();
    let host = host
        .into_handoff(host_wait)
        .map_err(|e| format!("host ring: {e}"))?;
    let guest = guest
        .into_handoff(guest_wait)
        .map_err(|e| format!("guest ring: {e}"))?;
    Ok(SavedBusEntry {
        bus,
        generation,
        driver: saved,
        host_ring: Some(saved_ring(host, fds)),
        guest_ring: Some(saved_ring(guest, fds)),
        host_revoked,
        relay_now_ns: u64::try_from(relay_now.as_nanos()).unwrap_or(u64::MAX),
        bars: bars
            .snapshot()
            .into_iter()
            .map(|(slot, backing)| SavedBar {
                slot: slot.raw(),
                backing: backing_code(backing),
            })
            .collect(),
    })
}

/// Stops a parked bus's driver for good and saves it: its saved state (the relay's own
/// encoding), the relay's time, and its two channels. Host packets that arrive from now on
/// wait in the ring, which the successor reads first: the ring is the queue.
fn save_driver(
    driver: BusDriverOf,
) -> Result<(Vec<u8>, Duration, Revocable<RingChannel>, RingChannel), String> {
    let stopped = driver.stop();
    let saved = stopped.save();
    let relay_now = saved
        .relay
        .as_ref()
        .map_or(Duration::ZERO, |r| Duration::from_nanos(r.now_ns));
    let bytes = saved.to_bytes();
    let (host, guest, _clock, _bars) = stopped.into_parts();
    Ok((bytes, relay_now, host, guest))
}

/// A driver restored from [`save_driver`]'s bytes; on a refused state the driver has closed
/// both channels (the guest sees the bus go).
pub(super) fn restore_driver(
    config: vpci_relay::RelayConfig,
    bytes: &[u8],
    host: Revocable<RingChannel>,
    guest: RingChannel,
    clock: LoopClock,
    bars: RecordingBars,
) -> Result<(BusDriverOf, vpci_relay::BusPort), String> {
    let saved = match vpci_relay::SavedBus::from_bytes(bytes) {
        Ok(saved) => saved,
        Err(e) => {
            let (mut host, mut guest) = (host, guest);
            vmbus_channel::Channel::revoke(&mut guest);
            vmbus_channel::Channel::close(&mut host);
            return Err(e.to_string());
        }
    };
    BusDriver::restore(config, &saved, host, guest, clock, bars).map_err(|e| e.to_string())
}
