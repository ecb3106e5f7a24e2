//! [`LoopClock`]: the bus threads' [`Clock`], whose timers are their waiting loop's own
//! timeout.
//!
//! `vpci_relay::SystemClock` arms every relay deadline through `futures-timer`: a process-wide
//! timer thread that wakes when a deadline is armed, dropped or due, and then wakes the bus
//! thread. On a bus thread that waits in [`block_on_sources`](super::block_on_sources) that
//! thread is needless: the loop already waits with a timeout, and a [`Sleep`](super::Sleep)
//! made by [`sleep_until`] becomes it. A relay deadline then costs the bus thread at most its
//! own wake-up at the deadline and nothing when it is armed or dropped.
//!
//! A bus driver keeps its timer in itself and makes it in its `run` future, so the timer is
//! made and polled on the bus's thread, under its loop; a driver stopped for an update drops
//! its timer before it is handed on. Should a timer still be polled outside any loop (a driver
//! run by another executor), it waits through `futures-timer` instead and completes all the
//! same.

use super::sleep_until;
use std::time::Duration;
use vpci_relay::driver::Sleep as RelaySleep;
use vpci_relay::{Clock, TimeBase};

/// The relay's time on the monotonic clock ([`TimeBase`], as `vpci_relay::SystemClock` reads
/// it), with timers from [`sleep_until`] (see the module's documentation).
#[derive(Clone, Debug, Default)]
pub struct LoopClock {
    base: TimeBase,
}

impl LoopClock {
    /// A clock that reads zero now.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock that reads `start` now: for a restored relay, the saved relay's time plus the
    /// time the bus spent stopped ([`TimeBase::starting_at`]).
    pub fn starting_at(start: Duration) -> Self {
        Self {
            base: TimeBase::starting_at(start),
        }
    }
}

impl Clock for LoopClock {
    fn now(&self) -> Duration {
        self.base.now()
    }

    fn sleep_until(&self, deadline: Duration) -> RelaySleep {
        match self.base.instant_of(deadline) {
            Some(at) => Box::pin(sleep_until(at)),
            None => Box::pin(std::future::pending()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{TIMERS, block_on_sources};
    use super::*;
    use std::task::Poll;
    use std::time::Instant;

    /// How many timers this thread's loop holds armed (`None` outside any loop).
    fn armed() -> Option<usize> {
        TIMERS.with(|t| t.borrow().as_ref().map(|t| t.armed.len()))
    }

    /// The instant this thread's loop wakes for its next timer, if any.
    fn next_wake() -> Option<Instant> {
        TIMERS.with(|t| t.borrow().as_ref().and_then(|t| t.next_deadline()))
    }

    /// A clock made to start at `start` reads `start` plus no more than the time since it
    /// was made, and a new one starts at zero.
    #[test]
    fn starts_at_the_given_time() {
        let start = Duration::from_secs(1000);
        let before = Instant::now();
        let clock = LoopClock::starting_at(start);
        let read = clock.now();
        let bound = before.elapsed();
        assert!(read >= start, "{read:?}");
        assert!(read <= start + bound, "{read:?} vs {bound:?}");
        let before = Instant::now();
        let read = LoopClock::new().now();
        assert!(read <= before.elapsed(), "{read:?}");
    }

    /// Successive readings, on one clock and its clones, never go backwards.
    #[test]
    fn never_runs_backwards() {
        let clock = LoopClock::starting_at(Duration::from_millis(5));
        let copy = clock.clone();
        let mut last = clock.now();
        for i in 0..10_000 {
            let now = if i % 2 == 0 { clock.now() } else { copy.now() };
            assert!(now >= last, "{now:?} after {last:?}");
            last = now;
        }
    }

    /// Under a loop a sleep is that loop's timer (armed in its list, no `futures-timer`) and
    /// completes once the clock has reached its deadline, for a restored clock's time base too;
    /// a deadline before the clock's start is due at once, and one past what an instant holds
    /// never fires.
    #[test]
    fn sleep_completes_at_its_deadline_under_the_loop() {
        let clock = LoopClock::starting_at(Duration::from_secs(3600));
        let wait = Duration::from_millis(20);
        let (armed_while_pending, reached, armed_after) = block_on_sources(
            async {
                let before = Instant::now();
                let deadline = clock.now() + wait;
                let after = Instant::now();
                let mut sleep = clock.sleep_until(deadline);
                let pending = futures::poll!(sleep.as_mut()).is_pending();
                let armed_while_pending = pending.then(armed).flatten();
                // The loop wakes `wait` after the clock was read, whatever the clock's start.
                let wake = next_wake();
                assert!(
                    wake.is_some_and(|w| w >= before + wait && w <= after + wait),
                    "{wake:?} not within {before:?}..{after:?} + {wait:?}"
                );
                sleep.await;
                (armed_while_pending, clock.now() >= deadline, armed())
            },
            Vec::new(),
        );
        assert_eq!(armed_while_pending, Some(1));
        assert!(reached);
        assert_eq!(armed_after, Some(0));

        let (past, never, armed_never) = block_on_sources(
            async {
                let past = futures::poll!(clock.sleep_until(Duration::from_secs(1)));
                let mut never = clock.sleep_until(Duration::MAX);
                let pending = futures::poll!(never.as_mut());
                (past, pending, armed())
            },
            Vec::new(),
        );
        assert_eq!(past, Poll::Ready(()));
        assert_eq!(never, Poll::Pending);
        assert_eq!(armed_never, Some(0));
    }

    /// A sleep polled outside any loop (another executor) still completes at its deadline.
    #[test]
    fn sleep_outside_a_loop_still_completes() {
        let clock = LoopClock::starting_at(Duration::from_secs(7));
        let deadline = clock.now() + Duration::from_millis(5);
        assert_eq!(armed(), None);
        futures::executor::block_on(clock.sleep_until(deadline));
        assert!(clock.now() >= deadline);
    }
}
