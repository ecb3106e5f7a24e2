//! [`Pool`]: many tasks on one thread, each with the ring ends it waits on, for a peer that
//! serves many buses (the host endpoint of the multi-process tests and benches). Where
//! [`block_on_sources`](super::block_on_sources) gives each bus a thread, and so a wake-up per
//! packet per bus, a pool's thread wakes once for whatever is ready on any of its buses: many
//! buses busy at once share their wake-ups. The service itself never uses one: its buses share
//! no thread (guarantee 6 of the relay).

use super::{OWN, TimerScope, fire_due, wait_timeout};
use rustix::event::{EventfdFlags, epoll, eventfd};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::task::{Context, Wake, Waker};
use vmbus_channel::WaitSource;

/// A task's future.
type TaskFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the pool's thread shares with the wakers and the spawners.
struct Shared {
    /// Tasks woken since the thread last looked, by slot.
    queue: Mutex<Vec<usize>>,
    /// Set from just before the thread's last look at `queue` until its wait returned.
    sleeping: AtomicBool,
    /// Written to wake the thread while it sleeps.
    fd: OwnedFd,
}

impl Shared {
    fn push(&self, slot: usize) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot);
        if self.sleeping.load(Ordering::SeqCst) {
            let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
        }
    }

    fn take(&self) -> Vec<usize> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// One task's waker: queues the task's slot (once until it is polled).
struct TaskWaker {
    slot: usize,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::SeqCst) {
            self.shared.push(self.slot);
        }
    }
}

struct Task {
    future: TaskFuture,
    sources: Vec<WaitSource>,
    waker: Arc<TaskWaker>,
}

/// A new task on its way to the pool's thread.
struct Spawn(TaskFuture, Vec<WaitSource>);

/// A thread running many tasks (see the module's documentation). It ends once every
/// [`Pool`] handle is gone and its tasks have finished.
#[derive(Clone)]
pub struct Pool {
    tx: mpsc::Sender<Spawn>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// Starts the pool's thread, named `name`.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let fd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            &fd,
            epoll::EventData::new_u64(OWN),
            epoll::EventFlags::IN,
        )?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::new()),
            sleeping: AtomicBool::new(false),
            fd,
        });
        let (tx, rx) = mpsc::channel();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(&thread_shared, &epoll, &rx))?;
        Ok(Self { tx, shared })
    }

    /// Runs `future` on the pool's thread, which waits on `sources` (ring ends' waiting taken
    /// over with [`vmbus_channel::RingChannel::wait_source`]) for it. Timers made with
    /// [`sleep_until`](super::sleep_until) in it are the thread's wait timeout. A pool whose
    /// thread has ended drops the task.
    pub fn spawn(
        &self,
        future: impl Future<Output = ()> + Send + 'static,
        sources: Vec<WaitSource>,
    ) {
        if self.tx.send(Spawn(Box::pin(future), sources)).is_ok() {
            // Slot `usize::MAX` only wakes the thread, which then takes the new task in.
            self.shared.push(usize::MAX);
        }
    }
}

/// The epoll data of task `slot`'s source `i`, descriptor `j`.
fn data(slot: usize, i: usize, j: usize) -> u64 {
    (slot as u64) << 32 | (i as u64) << 16 | j as u64
}

fn run(shared: &Arc<Shared>, epoll: &OwnedFd, rx: &mpsc::Receiver<Spawn>) {
    let timers = TimerScope::enter();
    let mut tasks: Vec<Option<Task>> = Vec::new();
    let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
    let noop = Waker::noop();
    let mut spawners_gone = false;
    loop {
        // Take new tasks in.
        loop {
            match rx.try_recv() {
                Ok(Spawn(future, sources)) => {
                    let slot = tasks
                        .iter()
                        .position(Option::is_none)
                        .unwrap_or(tasks.len());
                    for (i, source) in sources.iter().enumerate() {
                        for (j, fd) in source.fds().into_iter().enumerate() {
                            let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
                            let event = epoll::EventData::new_u64(data(slot, i, j));
                            if let Err(e) = epoll::add(epoll, fd, event, flags) {
                                tracing::warn!(error = %e, "pool: cannot wait on a ring");
                            }
                        }
                    }
                    let waker = Arc::new(TaskWaker {
                        slot,
                        queued: AtomicBool::new(true),
                        shared: shared.clone(),
                    });
                    let task = Task {
                        future,
                        sources,
                        waker,
                    };
                    match tasks.get_mut(slot) {
                        Some(free) => *free = Some(task),
                        None => tasks.push(Some(task)),
                    }
                    shared
                        .queue
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(slot);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    spawners_gone = true;
                    break;
                }
            }
        }
        // Poll the woken tasks.
        for slot in shared.take() {
            let Some(Some(task)) = tasks.get_mut(slot) else {
                continue;
            };
            task.waker.queued.store(false, Ordering::SeqCst);
            let waker = Waker::from(task.waker.clone());
            let mut cx = Context::from_waker(&waker);
            if task.future.as_mut().poll(&mut cx).is_ready() {
                if let Some(done) = tasks.get_mut(slot).and_then(Option::take) {
                    for source in &done.sources {
                        for fd in source.fds() {
                            let _ = epoll::delete(epoll, fd);
                        }
                    }
                }
            }
        }
        if spawners_gone && tasks.iter().all(Option::is_none) {
            return;
        }
        shared.sleeping.store(true, Ordering::SeqCst);
        if !shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
        {
            shared.sleeping.store(false, Ordering::SeqCst);
            continue;
        }
        let Some(timeout) = wait_timeout(&timers) else {
            shared.sleeping.store(false, Ordering::SeqCst);
            fire_due(&timers, noop);
            continue;
        };
        events.clear();
        let waited = epoll::wait(
            epoll,
            rustix::buffer::spare_capacity(&mut events),
            timeout.as_ref(),
        );
        shared.sleeping.store(false, Ordering::SeqCst);
        if let Err(e) = waited {
            if e != rustix::io::Errno::INTR {
                tracing::error!(error = %e, "pool: epoll failed; its tasks stop");
                return;
            }
        }
        for event in &events {
            let data = event.data.u64();
            if data == OWN {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&shared.fd, &mut buf);
                continue;
            }
            let slot = (data >> 32) as usize;
            let (i, j) = (((data >> 16) & 0xffff) as usize, (data & 0xffff) as usize);
            if let Some(Some(task)) = tasks.get_mut(slot) {
                if let Some(source) = task.sources.get_mut(i) {
                    source.ready_fd(j);
                }
            }
        }
        fire_due(&timers, noop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use vmbus_channel::{ChannelExt, Packet, RingChannelConfig, ring_channel_pair};

    /// Tasks on one pool each finish: one woken by its ring's doorbell (the pool waits on the
    /// ring for it), one by a timer (the pool's wait timeout), one from another thread; a
    /// slot freed by a finished task is used again.
    #[test]
    fn tasks_woken_by_rings_timers_and_threads_finish() {
        let pool = Pool::start("test-pool").unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        let (mut a, mut b) = ring_channel_pair(RingChannelConfig::default()).unwrap();
        let source = b.wait_source().unwrap();
        let done = done_tx.clone();
        pool.spawn(
            async move {
                let p = b.recv().await.unwrap();
                let _ = done.send(("ring", p.transaction_id));
            },
            vec![source],
        );
        let done = done_tx.clone();
        let start = Instant::now();
        pool.spawn(
            async move {
                super::super::sleep_until(start + Duration::from_millis(20)).await;
                let _ = done.send((
                    "timer",
                    u64::from(start.elapsed() >= Duration::from_millis(20)),
                ));
            },
            Vec::new(),
        );
        let (tx, rx) = futures::channel::oneshot::channel::<u64>();
        let done = done_tx.clone();
        pool.spawn(
            async move {
                let _ = done.send(("thread", rx.await.unwrap()));
            },
            Vec::new(),
        );
        std::thread::sleep(Duration::from_millis(5));
        futures::executor::block_on(a.send(&Packet::in_band(9, vec![1; 8]))).unwrap();
        tx.send(4).unwrap();
        let mut got: Vec<_> = (0..3).map(|_| done_rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, vec![("ring", 9), ("thread", 4), ("timer", 1)]);
        // A fourth task, in a freed slot.
        let done = done_tx.clone();
        pool.spawn(
            async move {
                let _ = done.send(("again", 0));
            },
            Vec::new(),
        );
        assert_eq!(done_rx.recv().unwrap(), ("again", 0));
    }
}
