//! The bus threads' executors: [`block_on_sources`], which waits in `poll(2)` on the bus's
//! ring doorbells itself (what the service uses), and [`block_on`], which after each wake can
//! keep polling for a short window before it parks.
//!
//! A packet crossing the relay costs a wake-up on each side (the peer rings an eventfd, the
//! ring's notifier thread wakes, then the bus thread). The answer to a request the relay has
//! just forwarded usually comes back within tens of microseconds; a bus thread that polls its
//! rings meanwhile finds it there without being woken, so the relay adds little to a round
//! trip beyond its own work. Spinning costs CPU, so it is bounded twice: by the window, and
//! by a budget of buses spinning at once (half the CPUs, at least one) shared by every bus of
//! the process; a bus over the budget parks at once. Many busy buses therefore cost no more
//! CPU than without spinning, and a quiet service spins not at all.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Buses spinning now, process-wide.
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// How many buses may spin at once.
fn budget() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

struct Signal {
    woken: AtomicBool,
    thread: Thread,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// A slot in the spin budget, given back when dropped.
struct Spinner;

impl Spinner {
    fn take() -> Option<Self> {
        let budget = budget();
        SPINNING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < budget).then_some(n + 1)
            })
            .ok()
            .map(|_| Spinner)
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        SPINNING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs `future` to completion on this thread; after each poll that leaves it pending, polls
/// it again for up to `spin` (if the process's spin budget allows) before parking until woken.
/// `spin` of zero is plain `block_on`.
pub fn block_on<F: Future>(future: F, spin: Duration) -> F::Output {
    let mut future = pin!(future);
    let signal = Arc::new(Signal {
        woken: AtomicBool::new(false),
        thread: std::thread::current(),
    });
    let waker = Waker::from(signal.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        signal.woken.store(false, Ordering::Release);
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        if !spin.is_zero() {
            if let Some(_slot) = Spinner::take() {
                let start = Instant::now();
                while start.elapsed() < spin && !signal.woken.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                    if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                        return out;
                    }
                }
            }
        }
        while !signal.woken.swap(false, Ordering::AcqRel) {
            std::thread::park();
        }
    }
}

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
/// cannot be made, it falls back to [`block_on`] with the sources serviced by a thread.
pub fn block_on_sources<F: Future>(
    future: F,
    mut sources: Vec<vmbus_channel::WaitSource>,
) -> F::Output {
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
            return out;
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

/// [`block_on`] with `sources` serviced by a helper thread (the notifier threads' way).
fn block_on_with_helper<F: Future>(
    future: F,
    sources: Vec<vmbus_channel::WaitSource>,
) -> F::Output {
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
    });
    let out = block_on(future, Duration::ZERO);
    stop.store(true, Ordering::Release);
    let _ = helper.join();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A future woken from another thread completes, with and without spinning; the budget
    /// is given back.
    #[test]
    fn completes_when_woken() {
        for spin in [Duration::ZERO, Duration::from_micros(50)] {
            let (tx, rx) = futures::channel::oneshot::channel();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(5));
                let _ = tx.send(7u32);
            });
            assert_eq!(block_on(rx, spin), Ok(7));
            t.join().unwrap();
        }
        assert_eq!(SPINNING.load(Ordering::Acquire), 0);
    }

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
