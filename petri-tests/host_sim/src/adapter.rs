//! A thin async adapter: runs a [`HostBus`] over any [`Channel`], with time from a
//! [`HostClock`]. Runtime-free: any executor (petri's deterministic one included) drives it.

use crate::action::{ActionError, HostAction};
use crate::bus::HostBus;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use vmbus_channel::{Channel, ChannelError, EndReason, Packet};

/// A timer future, as a [`HostClock`] hands it out.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Time for the adapter: a [`Duration`] since the clock's epoch, and timers. Petri's virtual
/// clock implements it in a few lines; the bus itself never sees a clock.
pub trait HostClock {
    /// The current time.
    fn now(&self) -> Duration;
    /// A future that completes once [`now`](Self::now) has reached `deadline`.
    fn sleep_until(&self, deadline: Duration) -> Sleep;
}

impl<C: HostClock + ?Sized> HostClock for &C {
    fn now(&self) -> Duration {
        (**self).now()
    }
    fn sleep_until(&self, deadline: Duration) -> Sleep {
        (**self).sleep_until(deadline)
    }
}

impl<C: HostClock + ?Sized> HostClock for Arc<C> {
    fn now(&self) -> Duration {
        (**self).now()
    }
    fn sleep_until(&self, deadline: Duration) -> Sleep {
        (**self).sleep_until(deadline)
    }
}

struct Shared {
    bus: HostBus,
    /// The running adapter's task, woken when someone else changed the bus.
    waker: Option<Waker>,
}

/// A [`HostBus`] shared between the running adapter and the rest of the simulation (the
/// config-window trap, host actions from a test, event readers).
#[derive(Clone)]
pub struct SharedBus {
    inner: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for SharedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedBus").field(&self.lock().bus).finish()
    }
}

impl SharedBus {
    /// Shares `bus`.
    pub fn new(bus: HostBus) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Shared { bus, waker: None })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the bus, then wakes the adapter so it sends what `f` produced.
    pub fn with<R>(&self, f: impl FnOnce(&mut HostBus) -> R) -> R {
        let (r, waker) = {
            let mut shared = self.lock();
            let r = f(&mut shared.bus);
            (r, shared.waker.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
        r
    }

    /// Carries out a host action at `now`.
    pub fn act(&self, now: Duration, action: HostAction) -> Result<(), ActionError> {
        self.with(|bus| bus.act(now, action))
    }
}

/// Why [`run_bus`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunExit {
    /// The host rescinded the bus; the adapter revoked the channel after its last packet.
    Rescinded,
    /// The guest side closed or revoked the channel.
    GuestEnded(EndReason),
}

/// Runs `bus` over `channel` until the host rescinds it or the guest side ends the channel:
/// received packets go to [`HostBus::handle_packet`], timers to [`HostBus::handle_timeout`],
/// and everything the bus transmits is sent. Packets the channel rejects for their size are
/// dropped (the channel stays usable); a broken transport is returned as an error.
pub async fn run_bus<C, K>(
    bus: SharedBus,
    mut channel: C,
    clock: K,
) -> Result<RunExit, ChannelError>
where
    C: Channel,
    K: HostClock,
{
    let mut pending: Option<Packet> = None;
    let mut sleep: Option<(Duration, Sleep)> = None;
    poll_fn(move |cx| poll_once(&bus, &mut channel, &clock, &mut pending, &mut sleep, cx)).await
}

fn poll_once<C: Channel, K: HostClock>(
    bus: &SharedBus,
    channel: &mut C,
    clock: &K,
    pending: &mut Option<Packet>,
    sleep: &mut Option<(Duration, Sleep)>,
    cx: &mut Context<'_>,
) -> Poll<Result<RunExit, ChannelError>> {
    loop {
        // Register first, so a change made by someone else after this point wakes us.
        bus.lock().waker = Some(cx.waker().clone());

        // Send everything the bus has for the guest.
        loop {
            if pending.is_none() {
                *pending = bus.lock().bus.poll_transmit();
            }
            let Some(p) = pending.as_ref() else { break };
            match channel.poll_send(cx, p) {
                Poll::Ready(Ok(())) => *pending = None,
                Poll::Ready(Err(ChannelError::Packet(e))) => {
                    tracing::warn!(error = %e, "host packet rejected by the channel");
                    *pending = None;
                }
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(match e.end_reason() {
                        Some(r) => Ok(RunExit::GuestEnded(r)),
                        None => Err(e),
                    });
                }
                Poll::Pending => break,
            }
        }
        if pending.is_none() && bus.lock().bus.rescinded() {
            channel.revoke();
            return Poll::Ready(Ok(RunExit::Rescinded));
        }

        match channel.poll_recv(cx) {
            Poll::Ready(Ok(p)) => {
                let now = clock.now();
                bus.lock().bus.handle_packet(now, p);
                continue;
            }
            Poll::Ready(Err(ChannelError::Packet(e))) => {
                tracing::warn!(error = %e, "guest packet rejected by the channel");
                continue;
            }
            Poll::Ready(Err(e)) => {
                return Poll::Ready(match e.end_reason() {
                    Some(r) => Ok(RunExit::GuestEnded(r)),
                    None => Err(e),
                });
            }
            Poll::Pending => {}
        }

        let deadline = bus.lock().bus.poll_timeout();
        let Some(deadline) = deadline else {
            *sleep = None;
            return Poll::Pending;
        };
        let now = clock.now();
        if now >= deadline {
            bus.lock().bus.handle_timeout(now);
            continue;
        }
        if sleep.as_ref().is_none_or(|(d, _)| *d != deadline) {
            *sleep = Some((deadline, clock.sleep_until(deadline)));
        }
        if let Some((_, s)) = sleep.as_mut() {
            if s.as_mut().poll(cx).is_ready() {
                *sleep = None;
                let now = clock.now();
                bus.lock().bus.handle_timeout(now);
                continue;
            }
        }
        return Poll::Pending;
    }
}
