//! A raw vPCI guest for the service's benchmarks: opens a bus offered on a control socket and
//! speaks the protocol itself (no model, no config accesses), so the figures are the
//! transport's and the relay's, not a guest's.
//!
//! Each bus's thread waits on its ring's doorbell itself, as a guest's channel callback runs
//! from the VMBus interrupt, rather than through the ring's notifier thread (a second
//! wake-up per packet that no guest has). The host endpoint's bus threads do the same, so
//! the direct path and the path through the service pay alike.

use openhcl_vpci::control::{self, Message};
use rustix::event::{PollFd, PollFlags, poll};
use std::os::unix::net::UnixStream;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use vmbus_channel::{
    Channel, Packet, PacketKind, RingChannel, RingChannelConfig, WaitSource, padded,
};
use vpci_protocol::{MessageType, ProtocolVersion, WinSlot, build};

/// The control connection to an offerer (the service's guest socket, or a host endpoint).
pub struct Offers {
    /// The connection.
    pub stream: UnixStream,
}

impl Offers {
    /// Connects to `socket`, retrying for up to 10 s.
    pub fn connect(socket: &std::path::Path) -> Self {
        let start = Instant::now();
        loop {
            match UnixStream::connect(socket) {
                Ok(stream) => return Self { stream },
                Err(e) if start.elapsed() > Duration::from_secs(10) => {
                    panic!("cannot reach {}: {e}", socket.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Reads offers until `n` buses were offered; returns their ids.
    pub fn offers(&self, n: usize) -> Vec<String> {
        let mut buses = Vec::new();
        while buses.len() < n {
            match control::recv(&self.stream) {
                Ok(Some((Message::Offer { bus }, _))) => buses.push(bus),
                Ok(Some(_)) => {}
                other => panic!("the offerer went away: {other:?}"),
            }
        }
        buses
    }

    /// Opens `bus`'s ring.
    pub fn open(&self, bus: &str) -> RingChannel {
        control::open_ring(&self.stream, bus, RingChannelConfig::default()).expect("open ring")
    }
}

/// Sleeps in `poll(2)` until a descriptor of one of `sources` is ready, then tells each source
/// which of its descriptors are.
pub fn wait_any(sources: &mut [&mut WaitSource]) {
    let ready: Vec<(usize, usize)> = {
        let fds: Vec<Vec<_>> = sources.iter().map(|s| s.fds()).collect();
        let mut polled: Vec<PollFd<'_>> = fds
            .iter()
            .flatten()
            .map(|fd| PollFd::new(fd, PollFlags::IN | PollFlags::RDHUP))
            .collect();
        match poll(&mut polled, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("poll: {e}"),
        }
        let owners = fds
            .iter()
            .enumerate()
            .flat_map(|(s, f)| (0..f.len()).map(move |i| (s, i)));
        owners
            .zip(&polled)
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(owner, _)| owner)
            .collect()
    };
    for (s, i) in ready {
        if let Some(source) = sources.get_mut(s) {
            source.ready_fd(i);
        }
    }
}

/// One bus as the raw guest drives it.
pub struct RawBus {
    ring: RingChannel,
    /// The ring's waiting, taken over from its notifier thread.
    source: WaitSource,
    next_id: u64,
}

impl RawBus {
    /// A bus over `ring`.
    pub fn new(mut ring: RingChannel) -> Self {
        let source = ring.wait_source().expect("wait source");
        Self {
            ring,
            source,
            next_id: 1,
        }
    }

    /// Runs `op` on the ring until it is ready, sleeping in `poll(2)` on the ring's
    /// descriptors in between.
    fn wait<T>(&mut self, mut op: impl FnMut(&mut RingChannel, &mut Context<'_>) -> Poll<T>) -> T {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(out) = op(&mut self.ring, &mut cx) {
                return out;
            }
            wait_any(&mut [&mut self.source]);
        }
    }

    fn send(&mut self, packet: &Packet) {
        self.wait(|ring, cx| ring.poll_send(cx, packet))
            .expect("send");
    }

    fn recv(&mut self) -> Packet {
        self.wait(|ring, cx| ring.poll_recv(cx)).expect("recv")
    }

    /// Sends a request and waits for its completion (other packets are dropped).
    pub fn call(&mut self, payload: Vec<u8>) -> Packet {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&Packet::request(id, padded(payload)));
        loop {
            let p = self.recv();
            if p.kind == PacketKind::Completion && p.transaction_id == id {
                return p;
            }
        }
    }

    /// Waits for the host's relations.
    fn relations(&mut self) {
        self.send(&Packet::in_band(0, padded(build::query_relations())));
        loop {
            let p = self.recv();
            let kind = p.payload.get(0..4).map(|b| [b[0], b[1], b[2], b[3]]);
            let relations = [MessageType::BUS_RELATIONS.0, MessageType::BUS_RELATIONS2.0];
            if p.kind == PacketKind::InBand
                && kind.is_some_and(|k| relations.contains(&u32::from_le_bytes(k)))
            {
                return;
            }
        }
    }

    /// The vPCI part of a probe of `slots`: version, relations, requirements, D0 entry,
    /// resources.
    pub fn probe(&mut self, slots: &[u32]) {
        self.call(build::query_version(ProtocolVersion::V1_4));
        self.relations();
        for &s in slots {
            self.call(build::query_requirements(WinSlot::from_raw(s)));
        }
        self.call(build::d0_entry(0xf000_0000));
        for &s in slots {
            let memory = [(0xf100_0000 + u64::from(s) * 0x10_0000, 0x4000)];
            self.call(build::resources_assigned2(WinSlot::from_raw(s), &memory));
        }
    }

    /// One steady-state request and its completion: the function's requirements.
    pub fn round_trip(&mut self, slot: u32) {
        self.call(build::query_requirements(WinSlot::from_raw(slot)));
    }
}
