//! A bare forwarder for the latency and 64-bus benchmarks: a process that sits where the service sits
//! (one ring to the host endpoint, one to the guest) and copies every packet across without
//! looking at it. No relay, no control plane beyond opening the two rings, the same waiting
//! as the service's bus threads (poll on the rings' doorbells). Through it, a round trip pays
//! the extra hop's wake-ups and copies alone, so against the service it shows what the relay
//! itself adds, and against the direct ring what any process in the middle costs.

use crate::client::{Offers, wait_any};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::task::{Context, Poll};
use vmbus_channel::{Channel, RingChannel, RingChannelConfig, WaitSource};

/// One side of the forwarder: its ring, the ring's waiting, and a packet for it that did not
/// fit yet.
struct End {
    ring: RingChannel,
    source: WaitSource,
    held: Option<vmbus_channel::Packet>,
}

impl End {
    fn new(mut ring: RingChannel) -> Self {
        let source = ring.wait_source().expect("wait source");
        Self {
            ring,
            source,
            held: None,
        }
    }
}

/// Runs the forwarder for `buses` buses: opens each bus the host at `host` offers, then for
/// each (in offer order) accepts one guest connection on `guest` (a Unix socket it creates;
/// the guest opens the ring sent over it with `RingChannel::open_from`) and copies packets
/// both ways on a thread of the bus's own, as the service runs a thread per bus, until
/// either side goes away.
pub(crate) fn run(host: &Path, guest: &Path, buses: usize) {
    let offers = Offers::connect(host);
    let names = offers.offers(buses);
    let hosts: Vec<RingChannel> = names.iter().map(|b| offers.open(b)).collect();
    let listener = UnixListener::bind(guest).expect("guest socket");
    let threads: Vec<_> = hosts
        .into_iter()
        .map(|host| {
            let (stream, _) = listener.accept().expect("guest");
            let ring =
                RingChannel::create_over(OwnedFd::from(stream), RingChannelConfig::default())
                    .expect("guest ring");
            std::thread::spawn(move || forward(End::new(host), End::new(ring)))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Copies packets between `host` and `guest` until either side goes away.
fn forward(mut host: End, mut guest: End) {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    loop {
        let (Some(up), Some(down)) = (
            pump(&mut host, &mut guest, &mut cx),
            pump(&mut guest, &mut host, &mut cx),
        ) else {
            return;
        };
        if up || down {
            continue;
        }
        wait_any(&mut [&mut host.source, &mut guest.source]);
    }
}

/// Moves every packet `from` has to `to` (holding one that does not fit until it does);
/// whether any moved. `None` once either side has gone away (the forwarder then ends).
fn pump(from: &mut End, to: &mut End, cx: &mut Context<'_>) -> Option<bool> {
    let mut moved = false;
    loop {
        // A packet that did not fit goes first; until it does, nothing more is read.
        let packet = match to.held.take() {
            Some(p) => p,
            None => match from.ring.poll_recv(cx) {
                Poll::Ready(Ok(packet)) => packet,
                Poll::Ready(Err(_)) => return None,
                Poll::Pending => return Some(moved),
            },
        };
        match to.ring.poll_send(cx, &packet) {
            Poll::Ready(Ok(())) => moved = true,
            Poll::Ready(Err(_)) => return None,
            Poll::Pending => {
                to.held = Some(packet);
                return Some(moved);
            }
        }
    }
}
