//! The bus threads' executor: [`block_on_sources`] waits in `epoll_wait(2)` on the bus's ring
//! doorbells itself, so a packet's arrival wakes the bus thread directly.
//!
//! A ring channel's own way to wait is a notifier thread per end, blocked on the end's eventfd,
//! that wakes whichever task waits: a packet crossing the relay then costs two wake-ups on the
//! relay's side (the notifier, then the bus thread), and a bus two notifier threads. The
//! service takes each ring's waiting over ([`vmbus_channel::RingChannel::wait_source`]) and
//! polls both rings' descriptors and an eventfd of its own (for other wakers) from the bus
//! thread.
//!
//! Timers made with [`sleep_until`] on such a thread are the loop's `epoll_wait(2)` timeout: no
//! timer thread to wake when one is armed, dropped or due. Elsewhere they fall back to
//! `futures-timer`. [`LoopClock`] hands such timers to the relay's bus drivers.

mod clock;
mod pool;

pub use clock::LoopClock;
pub use pool::Pool;

use rustix::event::epoll;
use std::cell::RefCell;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// Wakes a [`block_on_sources`] loop through an eventfd it polls with its rings' doorbells,
/// but only while the loop sleeps (or is about to): a wake while it runs (a doorbell it
/// serviced itself, another thread's wake meanwhile) is a flag it looks at before sleeping,
/// which spares a write, a second wait and a read of the eventfd per wake-up.
struct FdSignal {
    woken: AtomicBool,
    /// Set from just before the loop's last look at `woken` until its wait returned.
    sleeping: AtomicBool,
    fd: std::os::fd::OwnedFd,
}

impl Wake for FdSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        // SeqCst with the loop's store to `sleeping` and load of `woken`: either the loop sees
        // this wake before it sleeps, or this sees the loop asleep and writes.
        if !self.woken.swap(true, Ordering::SeqCst) && self.sleeping.load(Ordering::SeqCst) {
            let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
        }
    }
}

/// The timers armed on a [`block_on_sources`] thread: each live [`Sleep`]'s deadline and the
/// waker to wake when it is due.
#[derive(Default)]
struct Timers {
    armed: Vec<(u64, Instant, Waker)>,
}

impl Timers {
    fn arm(&mut self, id: u64, deadline: Instant, waker: &Waker) {
        match self.armed.iter_mut().find(|(i, _, _)| *i == id) {
            Some(entry) => {
                entry.1 = deadline;
                if !entry.2.will_wake(waker) {
                    entry.2 = waker.clone();
                }
            }
            None => self.armed.push((id, deadline, waker.clone())),
        }
    }

    fn disarm(&mut self, id: u64) {
        self.armed.retain(|(i, _, _)| *i != id);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.armed.iter().map(|(_, d, _)| *d).min()
    }

    /// Takes out the timers due at `now`; their wakers, except the loop's own (`own`: the
    /// loop polls its future again anyway, without a round trip through its eventfd).
    fn take_due(&mut self, now: Instant, own: &Waker) -> Vec<Waker> {
        let mut due = Vec::new();
        self.armed.retain(|(_, d, w)| {
            if *d > now {
                return true;
            }
            if !w.will_wake(own) {
                due.push(w.clone());
            }
            false
        });
        due
    }
}

thread_local! {
    /// The timers of the [`block_on_sources`] loop running on this thread, if one is.
    static TIMERS: RefCell<Option<Timers>> = const { RefCell::new(None) };
}

/// Installs a timer list for this thread's loop and takes it out again when dropped (a loop
/// nested in another one's future keeps the outer list aside meanwhile).
struct TimerScope {
    outer: Option<Timers>,
}

impl TimerScope {
    fn enter() -> Self {
        Self {
            outer: TIMERS.with(|t| t.replace(Some(Timers::default()))),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Timers) -> R) -> Option<R> {
        TIMERS.with(|t| t.borrow_mut().as_mut().map(f))
    }
}

impl Drop for TimerScope {
    fn drop(&mut self) {
        let outer = self.outer.take();
        TIMERS.with(|t| *t.borrow_mut() = outer);
    }
}

/// Ids of [`Sleep`]s, unique in the process (a sleep may move between threads).
static NEXT_SLEEP: AtomicU64 = AtomicU64::new(1);

/// A timer: completes once `deadline` has passed. Polled on a [`block_on_sources`] (or
/// [`Pool`]) thread it becomes that loop's `epoll_wait(2)` timeout; polled anywhere else it
/// waits through `futures-timer`. A blocking executor nested inside the loop's future on the
/// same thread (`futures::executor::block_on` in a task) would wait on it forever: the loop
/// that fires it is the one blocked.
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    id: u64,
    fallback: Option<futures_timer::Delay>,
}

/// A [`Sleep`] until `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        id: NEXT_SLEEP.fetch_add(1, Ordering::Relaxed),
        fallback: None,
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let now = Instant::now();
        if now >= this.deadline {
            this.disarm();
            return Poll::Ready(());
        }
        let (id, deadline) = (this.id, this.deadline);
        let armed = TIMERS.with(|t| match t.borrow_mut().as_mut() {
            Some(timers) => {
                timers.arm(id, deadline, cx.waker());
                true
            }
            None => false,
        });
        if armed {
            return Poll::Pending;
        }
        let delay = this.fallback.get_or_insert_with(|| {
            futures_timer::Delay::new(deadline.saturating_duration_since(now))
        });
        Pin::new(delay).poll(cx)
    }
}

impl Sleep {
    fn disarm(&self) {
        let id = self.id;
        // `try_with`: a sleep dropped while its thread's locals are torn down has nothing to do.
        let _ = TIMERS.try_with(|t| {
            if let Ok(mut timers) = t.try_borrow_mut() {
                if let Some(timers) = timers.as_mut() {
                    timers.disarm(id);
                }
            }
        });
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// Runs `future` to completion on this thread, waiting in `epoll_wait(2)` on `sources` (its ring
/// channels' doorbells and liveness sockets, taken over from their notifier threads with
/// [`vmbus_channel::RingChannel::wait_source`]) and on its own wake-up eventfd (other
/// wakers), with the next [`Sleep`] deadline as the timeout. A packet's arrival thus wakes
/// this thread directly: one wake-up per packet instead of two (notifier thread, then this
/// one), and no notifier threads. If the eventfd cannot be made, it falls back to `futures`'
/// `block_on` with the sources serviced by a helper thread.
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
    use rustix::event::{EventfdFlags, eventfd};
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
        sleeping: AtomicBool::new(false),
        fd,
    });
    let waker = Waker::from(signal.clone());
    let mut cx = Context::from_waker(&waker);
    let timers = TimerScope::enter();
    // The descriptors are registered once with an epoll instance (the loop's own eventfd as
    // `OWN`, source `i`'s descriptor `j` as `i << 32 | j`): a wait then costs the same however
    // many there are, where poll(2) looked each one up and asked each whether it was ready.
    // A liveness socket a source drops (its peer hung up) leaves the set when it is closed.
    let epoll = match register(&signal.fd, &sources) {
        Ok(epoll) => epoll,
        Err(e) => {
            tracing::warn!(error = %e, "no epoll: waiting through a helper thread");
            drop(timers);
            return block_on_with_helper(future, sources);
        }
    };
    let mut events: Vec<epoll::Event> = Vec::with_capacity(8);
    loop {
        signal.woken.store(false, Ordering::SeqCst);
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return (out, sources);
        }
        signal.sleeping.store(true, Ordering::SeqCst);
        if signal.woken.load(Ordering::SeqCst) {
            signal.sleeping.store(false, Ordering::SeqCst);
            continue;
        }
        let Some(timeout) = wait_timeout(&timers) else {
            signal.sleeping.store(false, Ordering::SeqCst);
            fire_due(&timers, &waker);
            continue;
        };
        events.clear();
        let waited = epoll::wait(
            &epoll,
            rustix::buffer::spare_capacity(&mut events),
            timeout.as_ref(),
        );
        signal.sleeping.store(false, Ordering::SeqCst);
        match waited {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "epoll failed: waiting through a helper thread");
                drop(timers);
                return block_on_with_helper(future, sources);
            }
        }
        for event in &events {
            let data = event.data.u64();
            if data == OWN {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&signal.fd, &mut buf);
            } else {
                let (i, j) = ((data >> 32) as usize, (data & 0xffff_ffff) as usize);
                if let Some(source) = sources.get_mut(i) {
                    source.ready_fd(j);
                }
            }
        }
        fire_due(&timers, &waker);
    }
}

/// How long the loop may wait: until the next timer (rounded up to the microsecond, so a
/// timer is never looked at before it is due), forever without one; `None` when a timer is
/// due now.
fn wait_timeout(timers: &TimerScope) -> Option<Option<rustix::event::Timespec>> {
    let Some(deadline) = timers.with(|t| t.next_deadline()).flatten() else {
        return Some(None);
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    let t = left.saturating_add(Duration::from_nanos(999));
    Some(Some(rustix::event::Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_micros()) * 1000,
    }))
}

/// The epoll data of the loop's own eventfd.
const OWN: u64 = u64::MAX;

/// An epoll instance with `own` and every descriptor of `sources` registered for reading.
fn register(
    own: &std::os::fd::OwnedFd,
    sources: &[vmbus_channel::WaitSource],
) -> std::io::Result<std::os::fd::OwnedFd> {
    let flags = epoll::EventFlags::IN;
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(&epoll, own, epoll::EventData::new_u64(OWN), flags)?;
    for (i, source) in sources.iter().enumerate() {
        for (j, fd) in source.fds().into_iter().enumerate() {
            let data = (i as u64) << 32 | j as u64;
            let flags = flags | epoll::EventFlags::RDHUP;
            epoll::add(&epoll, fd, epoll::EventData::new_u64(data), flags)?;
        }
    }
    Ok(epoll)
}

/// Wakes the tasks whose timers are due (the loop's own task is polled next anyway).
fn fire_due(timers: &TimerScope, own: &Waker) {
    let now = Instant::now();
    for w in timers.with(|t| t.take_due(now, own)).unwrap_or_default() {
        w.wake();
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

    /// A task that wakes itself while the loop runs is polled again (the wake is a flag, not
    /// an eventfd write), and wakes from another thread still reach a sleeping loop: a
    /// thousand hand-offs between the two threads all complete.
    #[test]
    fn wakes_while_running_and_while_sleeping_are_seen() {
        let mut yielded = false;
        let out = block_on_sources(
            std::future::poll_fn(|cx| {
                if yielded {
                    Poll::Ready(7)
                } else {
                    yielded = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }),
            Vec::new(),
        );
        assert_eq!(out, 7);
        let (to_loop, from_peer) =
            std::sync::mpsc::channel::<futures::channel::oneshot::Sender<u32>>();
        let peer = std::thread::spawn(move || {
            for (i, tx) in from_peer.iter().enumerate() {
                let _ = tx.send(u32::try_from(i).unwrap());
            }
        });
        let sum = block_on_sources(
            async move {
                let mut sum = 0;
                for _ in 0..1000 {
                    let (tx, rx) = futures::channel::oneshot::channel();
                    to_loop.send(tx).unwrap();
                    sum += rx.await.unwrap();
                }
                sum
            },
            Vec::new(),
        );
        assert_eq!(sum, (0..1000u32).sum::<u32>());
        peer.join().unwrap();
    }

    /// A sleep on a loop's thread is that loop's poll timeout: it completes once its deadline
    /// passed, without ever making a `futures-timer` delay (which would mean a timer thread).
    #[test]
    fn sleep_on_the_loop_is_its_poll_timeout() {
        let start = Instant::now();
        let (elapsed, used_fallback) = block_on_sources(
            async {
                let mut sleep = sleep_until(start + Duration::from_millis(20));
                (&mut sleep).await;
                (start.elapsed(), sleep.fallback.is_some())
            },
            Vec::new(),
        );
        assert!(elapsed >= Duration::from_millis(20), "{elapsed:?}");
        assert!(!used_fallback);
    }

    /// A sleep dropped before its deadline leaves no timer armed behind it; one polled
    /// outside any loop waits through `futures-timer`.
    #[test]
    fn dropped_sleep_disarms_and_elsewhere_falls_back() {
        let armed_after_drop = block_on_sources(
            async {
                let mut sleep = Box::pin(sleep_until(Instant::now() + Duration::from_secs(60)));
                let pending = futures::poll!(sleep.as_mut()).is_pending();
                let armed = TIMERS.with(|t| t.borrow().as_ref().map(|t| t.armed.len()));
                drop(sleep);
                let after = TIMERS.with(|t| t.borrow().as_ref().map(|t| t.armed.len()));
                (pending, armed, after)
            },
            Vec::new(),
        );
        assert_eq!(armed_after_drop, (true, Some(1), Some(0)));
        let start = Instant::now();
        let mut sleep = sleep_until(start + Duration::from_millis(5));
        futures::executor::block_on(&mut sleep);
        assert!(start.elapsed() >= Duration::from_millis(5));
        assert!(sleep.fallback.is_some());
    }
}
