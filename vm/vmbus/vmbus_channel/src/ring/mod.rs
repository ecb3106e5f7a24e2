//! The ring-backed channel: two VMBus rings over a memfd, eventfd doorbells, any two threads
//! or processes.
//!
//! # Setting up
//!
//! One side *creates* the channel ([`RingChannel::create`]): a sealed memfd holding a channel
//! page and two rings (layout in the private `layout` module), and two eventfd doorbells, one
//! per side. It gets its own end and a [`RingChannelPeer`], the descriptors of the other end.
//! The peer end is then opened:
//!
//! - in the same process (another thread): [`RingChannelPeer::open`], or [`ring_channel_pair`]
//!   for both steps at once;
//! - in another process: the descriptors travel as one `SCM_RIGHTS` message over a connected
//!   Unix socket. [`RingChannel::create_over`] creates and sends, [`RingChannel::open_from`]
//!   receives and opens. Both keep the socket afterwards as a liveness signal: when the other
//!   process exits (even by crashing, without closing the channel) the socket hangs up and
//!   this end reads the channel as [`EndReason::Closed`].
//!
//! SCM_RIGHTS was chosen over fork/exec inheritance because it needs no agreement on fd
//! numbers, works between unrelated processes, and the socket it uses doubles as the liveness
//! signal. Inheritance remains possible: hand the child one end of a socket pair (for example
//! as its standard input, as the cross-process test does).
//!
//! # Handing an end on
//!
//! A process that is replaced while the channel runs (a serviced paravisor) takes each end
//! apart with [`RingChannel::into_handoff`] and its successor resumes it with
//! [`RingChannel::from_handoff`]; the descriptors travel with [`send_with_fds`] (or by
//! inheritance) and the end's small private state ([`HandoffState`]) in the successor's saved
//! state. The peer notices nothing and nothing in the rings is lost.
//!
//! # Signalling
//!
//! The rules are `vmbus_ring`'s: a writer rings the reader's doorbell only when its write
//! outcome says so (the ring was empty and the reader had not masked interrupts); a reader
//! rings the writer's doorbell only when a commit says so (a pending send size was crossed).
//! The reader masks interrupts while it finds packets and unmasks (then re-checks) before it
//! waits; a writer facing a full ring sets the pending send size (then re-checks) before it
//! waits. Closing or revoking writes this side's end word in the channel page and always rings
//! the peer.
//!
//! Waiting is done by a small notifier thread per end, blocked in `poll(2)` on the end's
//! doorbell and liveness socket, which wakes the tasks registered by `poll_recv`/`poll_send`.
//! This keeps the crate free of any async runtime: any executor's waker works.

mod handoff;
mod layout;
mod os;

pub use handoff::{HandoffState, RingHandoff};
pub use layout::{RingChannelConfig, SetupError};
pub use os::{MAX_FDS, WaitSource, recv_with_fds, send_with_fds};

use crate::channel::{Channel, ChannelError, ChannelState, EndReason};
use crate::packet::{Packet, PacketError, PacketFlags, PacketKind};
use layout::{Window, load_end, read_header, store_end, write_header};
use os::{Doorbell, Notifier};
use shared_mem::{MemfdMem, SharedMem};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use vmbus_ring::{PacketMeta, Ring, RingReader, RingWriter, WriteError};

type Mem = Window<Arc<MemfdMem>>;

/// The creating side's number; it writes ring 0.
const CREATOR: usize = 0;
/// The opening side's number; it writes ring 1.
const OPENER: usize = 1;
/// The bytes of a handoff message, before its descriptors.
const HANDOFF_MAGIC: [u8; 8] = *b"VMBCHFD1";
/// Descriptors in a handoff: memfd, the opener's doorbell, the creator's doorbell.
const HANDOFF_FDS: usize = 3;
/// The receive buffer a channel starts with; it grows to the largest packet read.
const INITIAL_READ_BUF: usize = 1024;

/// Creates both ends of a ring-backed channel in this process (for two threads).
pub fn ring_channel_pair(
    config: RingChannelConfig,
) -> Result<(RingChannel, RingChannel), SetupError> {
    let (creator, peer) = RingChannel::create(config)?;
    Ok((creator, peer.open()?))
}

/// The descriptors of a ring channel's other end, not yet opened.
///
/// Open it in this process with [`open`](Self::open), send it to another process with
/// [`send_over`](Self::send_over), or take the descriptors with
/// [`into_fds`](Self::into_fds) to pass them some other way.
#[derive(Debug)]
pub struct RingChannelPeer {
    memfd: OwnedFd,
    /// Rung by the creator to wake the opener.
    opener_doorbell: OwnedFd,
    /// Rung by the opener to wake the creator.
    creator_doorbell: OwnedFd,
}

impl RingChannelPeer {
    /// Opens the peer end in this process.
    pub fn open(self) -> Result<RingChannel, SetupError> {
        RingChannel::open_fds(self, None)
    }

    /// Sends the descriptors over a connected Unix socket as one `SCM_RIGHTS` message; the
    /// other process opens them with [`RingChannel::open_from`].
    pub fn send_over(self, socket: BorrowedFd<'_>) -> Result<(), SetupError> {
        send_with_fds(
            socket,
            &HANDOFF_MAGIC,
            &[
                self.memfd.as_fd(),
                self.opener_doorbell.as_fd(),
                self.creator_doorbell.as_fd(),
            ],
        )?;
        Ok(())
    }

    /// The descriptors: memfd, the opener's doorbell (rung to wake the opener), the creator's
    /// doorbell (rung to wake the creator).
    pub fn into_fds(self) -> [OwnedFd; 3] {
        [self.memfd, self.opener_doorbell, self.creator_doorbell]
    }

    /// Rebuilds the peer from descriptors given in [`into_fds`](Self::into_fds) order. They
    /// are validated when opened.
    pub fn from_fds(fds: [OwnedFd; 3]) -> Self {
        let [memfd, opener_doorbell, creator_doorbell] = fds;
        Self {
            memfd,
            opener_doorbell,
            creator_doorbell,
        }
    }
}

/// One end of a ring-backed channel. See the [module documentation](self).
pub struct RingChannel {
    side: usize,
    config: RingChannelConfig,
    /// The channel page.
    control: Mem,
    writer: RingWriter<Mem>,
    reader: RingReader<Mem>,
    /// Rung to wake the peer.
    peer_doorbell: Doorbell,
    /// Waits on our doorbell (and liveness socket) and wakes our tasks.
    notifier: Notifier,
    /// Receive buffer: grown to the largest packet read so far (vPCI packets are a few
    /// hundred bytes; a buffer as large as the ring would cost every idle channel its size in
    /// resident memory).
    buf: Vec<u8>,
    /// Whether we told the writer not to signal us.
    masked: bool,
    /// How this end ended the channel, if it did.
    local_end: Option<EndReason>,
    /// The first end this side observed from the peer, latched so that a peer rewriting its
    /// end word cannot reopen the channel (0: none, else [`encode_end`]).
    peer_end: AtomicU8,
    /// Set when the peer broke the ring's rules: the rings are not touched again.
    broken: bool,
    /// Set when the end was taken apart for a handoff: dropping it must not end the channel.
    handed_off: bool,
}

impl RingChannel {
    /// Creates the shared memory and doorbells of a new channel and returns this end (the
    /// creator) and the peer's descriptors.
    pub fn create(config: RingChannelConfig) -> Result<(Self, RingChannelPeer), SetupError> {
        config.validate()?;
        let mem = Arc::new(MemfdMem::create("vmbus-channel", config.region_len())?);
        let control = window(&mem, 0, layout::PAGE)?;
        write_header(&control, &config)?;
        for side in [CREATOR, OPENER] {
            Ring::new(window(
                &mem,
                config.ring_offset(side),
                config.ring_region_len(),
            )?)
            .and_then(|ring| ring.initialize())
            .map_err(|err| SetupError::Ring(err.to_string()))?;
        }
        let own = Doorbell::new()?;
        let peer_bell = Doorbell::new()?;
        let peer = RingChannelPeer {
            memfd: mem.try_clone_fd()?,
            opener_doorbell: peer_bell.as_fd().try_clone_to_owned()?,
            creator_doorbell: own.as_fd().try_clone_to_owned()?,
        };
        let channel = Self::new(CREATOR, config, mem, own, peer_bell, None)?;
        Ok((channel, peer))
    }

    /// Creates a channel and sends the peer's descriptors over `socket` (a connected Unix
    /// stream socket); the socket is then kept to notice the peer process going away.
    pub fn create_over(socket: OwnedFd, config: RingChannelConfig) -> Result<Self, SetupError> {
        let (channel, peer) = Self::create(config)?;
        peer.send_over(socket.as_fd())?;
        channel.with_liveness(socket)
    }

    /// Receives a peer end sent by [`create_over`](Self::create_over) or
    /// [`RingChannelPeer::send_over`] and opens it; the socket is then kept to notice the
    /// creating process going away. Everything received is validated: the memfd's seals and
    /// size, and the channel header.
    pub fn open_from(socket: OwnedFd) -> Result<Self, SetupError> {
        let mut magic = [0u8; HANDOFF_MAGIC.len()];
        let fds = recv_with_fds(socket.as_fd(), &mut magic)?;
        if magic != HANDOFF_MAGIC {
            return Err(SetupError::BadRegion(format!(
                "handoff message {magic:02x?} is not a ring channel's"
            )));
        }
        let received = fds.len();
        let fds: [OwnedFd; HANDOFF_FDS] =
            fds.try_into().map_err(|_| SetupError::BadDescriptors {
                expected: HANDOFF_FDS,
                received,
            })?;
        Self::open_fds(RingChannelPeer::from_fds(fds), Some(socket))
    }

    fn open_fds(peer: RingChannelPeer, liveness: Option<OwnedFd>) -> Result<Self, SetupError> {
        let RingChannelPeer {
            memfd,
            opener_doorbell,
            creator_doorbell,
        } = peer;
        let mem = Arc::new(MemfdMem::from_fd(memfd)?);
        let config = read_header(&window(&mem, 0, layout::PAGE)?, mem.len())?;
        Self::new(
            OPENER,
            config,
            mem,
            Doorbell::from_fd(opener_doorbell)?,
            Doorbell::from_fd(creator_doorbell)?,
            liveness,
        )
    }

    fn new(
        side: usize,
        config: RingChannelConfig,
        mem: Arc<MemfdMem>,
        own_doorbell: Doorbell,
        peer_doorbell: Doorbell,
        liveness: Option<OwnedFd>,
    ) -> Result<Self, SetupError> {
        let ring_err = |err: vmbus_ring::RingError| SetupError::Ring(err.to_string());
        let control = window(&mem, 0, layout::PAGE)?;
        let ring = |side| window(&mem, config.ring_offset(side), config.ring_region_len());
        let writer = RingWriter::new(ring(side)?).map_err(ring_err)?;
        let reader = RingReader::new(ring(1 - side)?).map_err(ring_err)?;
        let buf = vec![0; INITIAL_READ_BUF.min(reader.max_packet_len())];
        let notifier = Notifier::start(Arc::new(own_doorbell), liveness)?;
        Ok(Self {
            side,
            config,
            control,
            writer,
            reader,
            peer_doorbell,
            notifier,
            buf,
            masked: false,
            local_end: None,
            peer_end: AtomicU8::new(0),
            broken: false,
            handed_off: false,
        })
    }

    /// Replaces the notifier with one that also watches `socket`.
    fn with_liveness(mut self, socket: OwnedFd) -> Result<Self, SetupError> {
        let own = self.notifier.doorbell().clone();
        self.notifier = Notifier::start(own, Some(socket))?;
        Ok(self)
    }

    /// Stops this end's notifier thread and returns its waiting, for a caller that waits on
    /// the end's descriptors in its own event loop (see [`WaitSource`]). Until the caller
    /// calls [`WaitSource::ready`], nothing wakes this end's tasks.
    pub fn wait_source(&mut self) -> std::io::Result<WaitSource> {
        self.notifier.detach()
    }

    /// The channel's configuration (the creator's, as validated by the opener).
    pub fn config(&self) -> &RingChannelConfig {
        &self.config
    }

    fn peer(&self) -> usize {
        1 - self.side
    }

    /// How the channel has ended as seen from here: our own end first, then the peer's end
    /// word, then the peer process going away. A peer end, once seen, stays.
    fn end_state(&self) -> Option<EndReason> {
        if let Some(reason) = self.local_end {
            return Some(reason);
        }
        if let Some(reason) = decode_end(self.peer_end.load(Ordering::Acquire)) {
            return Some(reason);
        }
        let notify = self.notifier.state();
        let seen = match load_end(&self.control, self.peer()) {
            Ok(Some(reason)) => reason,
            Err(_) => EndReason::Closed,
            Ok(None)
                if notify.peer_gone.load(Ordering::Acquire)
                    || notify.failed.load(Ordering::Acquire) =>
            {
                EndReason::Closed
            }
            Ok(None) => return None,
        };
        // Keep the first reason seen if another thread raced us (`state` takes `&self`).
        let _ = self.peer_end.compare_exchange(
            0,
            encode_end(seen),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        decode_end(self.peer_end.load(Ordering::Acquire))
    }

    fn end(&mut self, reason: EndReason) {
        if self.end_state().is_some() {
            return;
        }
        self.local_end = Some(reason);
        // If either step fails the peer still learns of the end from the liveness socket or
        // its own next failure; there is nobody to report the error to.
        let _ = store_end(&self.control, self.side, reason);
        let _ = self.peer_doorbell.ring();
    }

    /// The peer broke the ring: stop using it, end the channel, report why.
    fn broke(&mut self, error: impl std::error::Error + Send + Sync + 'static) -> ChannelError {
        tracing::warn!(side = self.side, %error, "peer broke the ring protocol; closing");
        self.broken = true;
        self.end(EndReason::Closed);
        ChannelError::Protocol(Box::new(error))
    }

    /// Rings the peer's doorbell because the ring said so. If that fails the peer may wait
    /// forever, so the channel is ended; the packet that caused the signal still counts.
    fn signal_peer(&mut self) {
        if let Err(error) = self.peer_doorbell.ring() {
            tracing::warn!(side = self.side, %error, "cannot signal the peer; closing");
            self.end(EndReason::Closed);
        }
    }

    /// Reads one packet if there is one.
    fn try_read(&mut self) -> Result<Option<Packet>, ChannelError> {
        if self.broken {
            return Ok(None);
        }
        let read = loop {
            match self.reader.read_packet(&mut self.buf) {
                // The packet stays in the ring: grow the buffer to it and read it again.
                Err(vmbus_ring::RingError::PacketTooLarge { len, .. })
                    if len > self.buf.len() && len <= self.reader.max_packet_len() =>
                {
                    self.buf.resize(len, 0);
                }
                other => break other,
            }
        };
        let read = match read {
            Ok(Some(read)) => read,
            Ok(None) => return Ok(None),
            Err(err) => return Err(self.broke(err)),
        };
        if read.signal_writer {
            self.signal_peer();
        }
        if !self.masked {
            // We are reading anyway; the writer need not signal until we unmask before waiting.
            if let Err(err) = self.reader.mask_interrupts() {
                return Err(self.broke(err));
            }
            self.masked = true;
        }
        let payload = read.info.payload(&self.buf);
        let max = self.config.limits.max_payload;
        if payload.len() > max {
            return Err(PacketError::PayloadTooLarge {
                len: payload.len(),
                max,
            }
            .into());
        }
        let meta = read.info.header.meta;
        Ok(Some(Packet {
            kind: PacketKind::from_raw(meta.packet_type),
            flags: PacketFlags(meta.flags),
            transaction_id: meta.transaction_id,
            payload: payload.to_vec(),
        }))
    }

    /// Writes `packet`; `Ok(Err(needed))` when the ring is full.
    fn try_write(&mut self, packet: &Packet) -> Result<Result<(), usize>, ChannelError> {
        let meta = PacketMeta {
            packet_type: packet.kind.to_raw(),
            flags: packet.flags.0,
            transaction_id: packet.transaction_id,
        };
        match self.writer.write_packet(&meta, &packet.payload) {
            Ok(outcome) => {
                if outcome.signal_reader {
                    self.signal_peer();
                }
                Ok(Ok(()))
            }
            Err(WriteError::Full { needed, .. }) => Ok(Err(needed)),
            Err(WriteError::TooLarge { needed, data_size }) => {
                Err(ChannelError::Packet(PacketError::PayloadTooLarge {
                    len: needed,
                    max: data_size,
                }))
            }
            Err(err @ (WriteError::Packet(_) | WriteError::Ring(_))) => Err(self.broke(err)),
        }
    }
}

fn encode_end(reason: EndReason) -> u8 {
    match reason {
        EndReason::Closed => 1,
        EndReason::Revoked => 2,
    }
}

fn decode_end(value: u8) -> Option<EndReason> {
    match value {
        0 => None,
        2 => Some(EndReason::Revoked),
        _ => Some(EndReason::Closed),
    }
}

fn window(mem: &Arc<MemfdMem>, offset: usize, len: usize) -> Result<Mem, SetupError> {
    Window::new(mem.clone(), offset, len).ok_or_else(|| {
        SetupError::BadRegion(format!("no room for {len:#x} bytes at offset {offset:#x}"))
    })
}

impl fmt::Debug for RingChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingChannel")
            .field("side", &self.side)
            .field("config", &self.config)
            .field("state", &self.state())
            .field("broken", &self.broken)
            .finish()
    }
}

impl Channel for RingChannel {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Packet, ChannelError>> {
        // The end state is sampled before each look at the ring: the peer writes its last
        // packets before its end word, so seeing the end and then an empty ring means
        // everything sent before the end has been received.
        let end = self.end_state();
        if let Some(packet) = self.try_read().transpose() {
            return Poll::Ready(packet);
        }
        if let Some(reason) = end {
            return Poll::Ready(Err(reason.error()));
        }
        self.notifier.state().recv.register(cx.waker());
        if self.masked && !self.broken {
            if let Err(err) = self.reader.unmask_interrupts() {
                return Poll::Ready(Err(self.broke(err)));
            }
            self.masked = false;
        }
        let end = self.end_state();
        if let Some(packet) = self.try_read().transpose() {
            return Poll::Ready(packet);
        }
        if let Some(reason) = end {
            return Poll::Ready(Err(reason.error()));
        }
        Poll::Pending
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        packet: &Packet,
    ) -> Poll<Result<(), ChannelError>> {
        if let Err(err) = self.config.limits.check(packet) {
            return Poll::Ready(Err(err.into()));
        }
        let raw = packet.kind.to_raw();
        if !vmbus_ring::packet_type::is_known(raw) {
            return Poll::Ready(Err(PacketError::UnsupportedKind { raw }.into()));
        }
        if let Some(reason) = self.end_state() {
            return Poll::Ready(Err(reason.error()));
        }
        let needed = match self.try_write(packet) {
            Ok(Ok(())) => return Poll::Ready(Ok(())),
            Ok(Err(needed)) => needed,
            Err(err) => return Poll::Ready(Err(err)),
        };
        self.notifier.state().send.register(cx.waker());
        match self.writer.set_pending_send_size(needed) {
            Ok(false) => Poll::Pending,
            Ok(true) => match self.try_write(packet) {
                Ok(Ok(())) => Poll::Ready(Ok(())),
                // The reader freed some space but not enough for us yet; it was asked to
                // signal, but to be safe poll again rather than rely on that.
                Ok(Err(_)) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Err(err) => Poll::Ready(Err(err)),
            },
            Err(err) => Poll::Ready(Err(self.broke(err))),
        }
    }

    fn close(&mut self) {
        self.end(EndReason::Closed);
    }

    fn revoke(&mut self) {
        self.end(EndReason::Revoked);
    }

    fn state(&self) -> ChannelState {
        match self.end_state() {
            None => ChannelState::Open,
            Some(reason) => ChannelState::Ended(reason),
        }
    }
}

impl Drop for RingChannel {
    fn drop(&mut self) {
        if !self.handed_off {
            self.close();
        }
    }
}
