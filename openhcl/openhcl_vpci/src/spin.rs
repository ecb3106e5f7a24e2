//! The bus threads' executor: `block_on` that, after each wake, keeps polling for a short
//! window before it parks.
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
}
