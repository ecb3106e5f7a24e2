//! Time for the relay's drivers: the [`Clock`] trait the async [`BusDriver`] reads the time
//! and arms its timers through, and its two implementations.
//!
//! [`SystemClock`] is real time (the monotonic clock, timers from `futures-timer`, so no
//! particular executor is needed). [`VirtualClock`] is time for deterministic simulation: it
//! stands still until the caller moves it with [`VirtualClock::advance_to`], which wakes
//! exactly the sleepers that have come due.
//!
//! The relay itself ([`BusRelay`]) never reads a clock: it is handed the time with every
//! input. Only the driver, which turns a deadline into a timer, needs one.
//!
//! [`BusDriver`]: crate::BusDriver
//! [`BusRelay`]: crate::BusRelay

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A timer future, as a [`Clock`] hands it out.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A source of time and timers. Time is a [`Duration`] since the clock's own epoch.
pub trait Clock {
    /// The current time.
    fn now(&self) -> Duration;
    /// A future that completes once [`now`](Self::now) has reached `deadline`.
    fn sleep_until(&self, deadline: Duration) -> Sleep;
}

/// A relay's time on the monotonic clock: a [`Duration`] that reads `start` when the base is
/// made and runs with [`Instant`] from then on. Every real-time [`Clock`] reads the relay's
/// time through one (this crate's [`SystemClock`], the service's loop clock), so they agree on
/// what a restored relay's time is and differ only in how they wait.
#[derive(Clone, Copy, Debug)]
pub struct TimeBase {
    epoch: Instant,
    /// What the base reads at `epoch`: zero for a new relay; for a restored one, the saved
    /// relay's time plus the time the bus was stopped.
    start: Duration,
}

impl TimeBase {
    /// A base that reads zero now.
    pub fn new() -> Self {
        Self::starting_at(Duration::ZERO)
    }

    /// A base that reads `start` now: for a restored relay, the saved relay's time plus the
    /// time the bus spent stopped (measured on a time base that survives servicing), so that
    /// the restored relay's time continues the old one's ([`BusRelay::restore`](crate::BusRelay::restore)).
    pub fn starting_at(start: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            start,
        }
    }

    /// The relay's time now.
    pub fn now(&self) -> Duration {
        self.start.saturating_add(self.epoch.elapsed())
    }

    /// The instant at which the base reads `deadline` (a deadline before the base's start is
    /// already due: its instant is the epoch, which has passed); `None` if that is past what
    /// an [`Instant`] can hold (a timer that never fires).
    pub fn instant_of(&self, deadline: Duration) -> Option<Instant> {
        self.epoch.checked_add(deadline.saturating_sub(self.start))
    }
}

impl Default for TimeBase {
    fn default() -> Self {
        Self::new()
    }
}

/// Real time, from the monotonic clock ([`TimeBase`]); timers from `futures-timer` (no
/// runtime needed).
#[derive(Clone, Debug, Default)]
pub struct SystemClock {
    base: TimeBase,
}

impl SystemClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock that reads `start` now ([`TimeBase::starting_at`]).
    pub fn starting_at(start: Duration) -> Self {
        Self {
            base: TimeBase::starting_at(start),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.base.now()
    }

    fn sleep_until(&self, deadline: Duration) -> Sleep {
        let wait = deadline.saturating_sub(self.now());
        Box::pin(futures_timer::Delay::new(wait))
    }
}

/// Virtual time for deterministic simulation: it moves only when [`advance_to`] is called,
/// and then wakes every sleeper whose deadline has come.
///
/// [`advance_to`]: VirtualClock::advance_to
#[derive(Clone, Debug, Default)]
pub struct VirtualClock {
    inner: Arc<Mutex<VirtualInner>>,
}

#[derive(Debug, Default)]
struct VirtualInner {
    now: Duration,
    next_id: u64,
    /// Pending sleeps by id: one entry per live, not yet due [`Sleep`], whatever how often it
    /// was polled; a sleep dropped before its time takes its entry with it.
    sleepers: BTreeMap<u64, (Duration, Waker)>,
}

impl VirtualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VirtualInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves time forward to `t` (never backwards) and wakes the sleepers that are due.
    pub fn advance_to(&self, t: Duration) {
        let due: Vec<Waker> = {
            let mut inner = self.lock();
            inner.now = inner.now.max(t);
            let now = inner.now;
            let due: Vec<u64> = inner
                .sleepers
                .iter()
                .filter(|(_, (d, _))| *d <= now)
                .map(|(id, _)| *id)
                .collect();
            due.iter()
                .filter_map(|id| inner.sleepers.remove(id))
                .map(|(_, w)| w)
                .collect()
        };
        due.into_iter().for_each(Waker::wake);
    }

    /// The earliest deadline anyone sleeps until, if any.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.lock().sleepers.values().map(|(d, _)| *d).min()
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Duration {
        self.lock().now
    }

    fn sleep_until(&self, deadline: Duration) -> Sleep {
        let id = {
            let mut inner = self.lock();
            inner.next_id += 1;
            inner.next_id
        };
        Box::pin(VirtualSleep {
            clock: self.clone(),
            deadline,
            id,
        })
    }
}

/// A sleep on a [`VirtualClock`]: registered once under its id, re-polling only refreshes
/// its waker, and dropping it unregisters it, so the clock's next deadline is always one a
/// live sleeper waits for.
struct VirtualSleep {
    clock: VirtualClock,
    deadline: Duration,
    id: u64,
}

impl Future for VirtualSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.clock.lock();
        if inner.now >= self.deadline {
            inner.sleepers.remove(&self.id);
            Poll::Ready(())
        } else {
            inner
                .sleepers
                .insert(self.id, (self.deadline, cx.waker().clone()));
            Poll::Pending
        }
    }
}

impl Drop for VirtualSleep {
    fn drop(&mut self) {
        self.clock.lock().sleepers.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base made to start at `start` reads `start` plus no more than the time since it was
    /// made; a deadline maps to the instant the base reads it (an earlier one to the epoch,
    /// one past what an `Instant` holds to none); both real clocks read the same base.
    #[test]
    fn a_time_base_continues_from_its_start() {
        let start = Duration::from_secs(5);
        let before = Instant::now();
        let base = TimeBase::starting_at(start);
        let read = base.now();
        let elapsed = before.elapsed();
        assert!(read >= start && read <= start + elapsed, "{read:?}");
        let at = base.instant_of(start + Duration::from_millis(10)).unwrap();
        let epoch = base.instant_of(Duration::ZERO).unwrap();
        assert_eq!(at - epoch, Duration::from_millis(10));
        assert_eq!(base.instant_of(start), Some(epoch));
        assert_eq!(base.instant_of(Duration::MAX), None);
        assert!(TimeBase::new().now() < start);
        let clock = SystemClock::starting_at(start);
        assert!(clock.now() >= start);
    }
}
