//! The bus threads' executor: [`block_on_sources`] waits in `poll(2)` on the bus's ring
//! doorbells itself, so a packet's arrival wakes the bus thread directly.
//!
//! A ring channel's own way to wait is a notifier thread per end, blocked on the end's eventfd,
//! that wakes whichever task waits: a packet crossing the relay then costs two wake-ups on the
//! relay's side (the notifier, then the bus thread), and a bus two notifier threads. The
//! service takes each ring's waiting over ([`vmbus_channel::RingChannel::wait_source`]) and
//! polls both rings' descriptors and an eventfd of its own (for timers and other wakers) from
//! the bus thread.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// Wakes a [`block_on_sources`] loop through an eventfd it polls with its rings' doorbells.
struct FdSignal {
    woken: AtomicBool,
    fd: std::os::fd::OwnedFd,
}

impl Wake for FdSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
        }
    }
}

/// Runs `future` to completion on this thread, waiting in `poll(2)` on `sources` (its ring
/// channels' doorbells and liveness sockets, taken over from their notifier threads with
/// [`vmbus_channel::RingChannel::wait_source`]) and on its own wake-up eventfd (timers and
/// other wakers). A packet's arrival thus wakes this thread directly: one wake-up per packet
/// instead of two (notifier thread, then this one), and no notifier threads. If the eventfd
/// cannot be made, it falls back to `futures`' `block_on` with the sources serviced by a
/// helper thread.
pub fn block_on_sources<F: Future>(
    future: F,
    sources: Vec<vmbus_channel::WaitSource>,
) -> F::Output {
    block_on_sources_returning(future, sources).0
}

/// [`block_on_sources`], giving the sources back with the output (a stopped bus hands them to
/// its successor).
pub fn block_on_sources_returning<F: Future>(
    future: F,
    mut sources: Vec<vmbus_channel::WaitSource>,
) -> (F::Output, Vec<vmbus_channel::WaitSource>) {
    use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
    let fd = match eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "no eventfd: waiting through a helper thread");
            return block_on_with_helper(future, sources);
        }
    };
    let mut future = pin!(future);
    let signal = Arc::new(FdSignal {
        woken: AtomicBool::new(false),
        fd,
    });
    let waker = Waker::from(signal.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        signal.woken.store(false, Ordering::Release);
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return (out, sources);
        }
        if signal.woken.load(Ordering::Acquire) {
            continue;
        }
        let ready: Vec<usize> = {
            let source_fds: Vec<Vec<std::os::fd::BorrowedFd<'_>>> =
                sources.iter().map(|s| s.fds()).collect();
            let mut fds = vec![PollFd::new(&signal.fd, PollFlags::IN)];
            let mut owner = vec![usize::MAX];
            for (i, list) in source_fds.iter().enumerate() {
                for fd in list {
                    fds.push(PollFd::new(fd, PollFlags::IN | PollFlags::RDHUP));
                    owner.push(i);
                }
            }
            match poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "poll failed: waiting through a helper thread");
                    return block_on_with_helper(future, sources);
                }
            }
            let mut ready: Vec<usize> = fds
                .iter()
                .zip(&owner)
                .filter(|(fd, _)| !fd.revents().is_empty())
                .map(|(_, &i)| i)
                .collect();
            ready.dedup();
            ready
        };
        for i in ready {
            if i == usize::MAX {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&signal.fd, &mut buf);
            } else if let Some(source) = sources.get_mut(i) {
                source.ready();
            }
        }
    }
}

/// `futures`' `block_on` with `sources` serviced by a helper thread every millisecond.
fn block_on_with_helper<F: Future>(
    future: F,
    sources: Vec<vmbus_channel::WaitSource>,
) -> (F::Output, Vec<vmbus_channel::WaitSource>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let helper = std::thread::spawn(move || {
        let mut sources = sources;
        while !flag.load(Ordering::Acquire) {
            for s in &mut sources {
                s.ready();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sources
    });
    let out = futures::executor::block_on(future);
    stop.store(true, Ordering::Release);
    let sources = helper.join().unwrap_or_default();
    (out, sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receive on a ring end whose waiting this thread took over completes when the peer
    /// sends, and a timer-like wake from another thread is seen too.
    #[test]
    fn sources_wake_the_thread() {
        use vmbus_channel::{ChannelExt, Packet, RingChannelConfig, ring_channel_pair};
        let (mut a, mut b) = ring_channel_pair(RingChannelConfig::default()).unwrap();
        let source = b.wait_source().unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            futures::executor::block_on(a.send(&Packet::in_band(3, vec![1; 8]))).unwrap();
            a
        });
        let p = block_on_sources(async { b.recv().await }, vec![source]).unwrap();
        assert_eq!(p.transaction_id, 3);
        drop(sender.join().unwrap());
        let (tx, rx) = futures::channel::oneshot::channel();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            let _ = tx.send(1u8);
        });
        assert_eq!(block_on_sources(rx, Vec::new()), Ok(1));
        t.join().unwrap();
    }
}
