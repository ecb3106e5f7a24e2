//! The baselines the ring's round trip is judged against, with no ring code in them: the
//! one-atomic cross-core ping-pong (the target's yardstick) and the floors under the Hyper-V
//! layout: per direction a packet's words on data lines and an index on a control line.
//!
//! Two floors, because where a packet lands matters. [`Floor::Fixed`] writes every packet at
//! the same place, so its data line is the one the reader fetched last time. A ring cannot do
//! that: each packet goes right after the previous one, so packets walk through the data area
//! and about every other one spills onto a line the writer has not written for a whole lap of
//! the ring ([`Floor::Rotating`]). [`Floor::RotatingOwnAhead`] adds what the ring's writer does
//! against that cost: after publishing, it stores a word one line past the next packet's
//! start (free space it owns), so that line's ownership moves while nobody waits for it.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

/// A thread that answers every odd value of `cell` with the next even one.
pub(crate) fn start_ponger(cell: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let v = cell.load(Ordering::Acquire);
            if v % 2 == 1 {
                cell.store(v + 1, Ordering::Release);
            } else {
                std::hint::spin_loop();
            }
        }
    })
}

/// Times `iters` ping-pongs of one atomic between two threads.
pub(crate) fn atomic_round_trips(cell: &AtomicU64, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let v = cell.load(Ordering::Relaxed) + 1;
        cell.store(v, Ordering::Release);
        while cell.load(Ordering::Acquire) != v + 1 {
            std::hint::spin_loop();
        }
    }
    start.elapsed()
}

/// Where each packet of a floor lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Floor {
    /// Always at the start of the data area.
    Fixed,
    /// Right after the previous packet, as in a ring.
    Rotating,
    /// As `Rotating`, the writer storing a word one line past the next packet's start after
    /// each publish.
    RotatingOwnAhead,
}

/// Words in a direction's data area: 64 KiB, the bench rings' size.
const DATA_WORDS: usize = 64 * 1024 / 8;
/// A request's words (16-byte descriptor, 16 of payload, trailer) and a completion's.
const REQUEST_WORDS: usize = 5;
const COMPLETION_WORDS: usize = 4;
/// How far past the next packet's start the writer takes a line (`RotatingOwnAhead`).
const AHEAD_WORDS: usize = 8;

/// An index on a line (and its adjacent-line prefetch pair) of its own.
#[repr(align(128))]
#[derive(Default)]
struct Index(AtomicU64);

/// One direction: its index and data area.
struct Lane {
    index: Index,
    data: Box<[AtomicU64]>,
}

impl Lane {
    fn new() -> Self {
        Self {
            index: Index::default(),
            data: (0..DATA_WORDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        // `at` is always reduced modulo the area's size.
        &self.data[at % DATA_WORDS]
    }
}

/// One side's position in a lane.
struct Cursor {
    floor: Floor,
    at: usize,
}

impl Cursor {
    fn new(floor: Floor) -> Self {
        Self { floor, at: 0 }
    }

    /// Writes a packet of `words` words with value `v`, then publishes `n`.
    fn write(&mut self, lane: &Lane, words: usize, v: u64, n: u64) {
        for k in 0..words {
            lane.word(self.at + k).store(v, Ordering::Relaxed);
        }
        if self.floor != Floor::Fixed {
            self.at = (self.at + words) % DATA_WORDS;
        }
        lane.index.0.store(n, Ordering::Release);
        if self.floor == Floor::RotatingOwnAhead {
            lane.word(self.at + AHEAD_WORDS).store(0, Ordering::Relaxed);
        }
    }

    /// Reads a packet of `words` words (its index already seen); their sum.
    fn read(&mut self, lane: &Lane, words: usize) -> u64 {
        let mut sum = 0u64;
        for k in 0..words {
            sum = sum.wrapping_add(lane.word(self.at + k).load(Ordering::Relaxed));
        }
        if self.floor != Floor::Fixed {
            self.at = (self.at + words) % DATA_WORDS;
        }
        sum
    }
}

/// A request lane and a completion lane, with a server thread answering each request.
pub(crate) struct Lanes {
    request: Arc<Lane>,
    completion: Arc<Lane>,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
    floor: Floor,
    requests: Cursor,
    completions: Cursor,
    sent: u64,
}

impl Lanes {
    /// Starts the server of a `floor` pair of lanes.
    pub(crate) fn start(floor: Floor) -> Self {
        let (request, completion) = (Arc::new(Lane::new()), Arc::new(Lane::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (request, completion, stop) = (request.clone(), completion.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut reads, mut writes) = (Cursor::new(floor), Cursor::new(floor));
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = request.index.0.load(Ordering::Acquire);
                    if i == seen {
                        std::hint::spin_loop();
                        continue;
                    }
                    seen = i;
                    let sum = reads.read(&request, REQUEST_WORDS);
                    writes.write(&completion, COMPLETION_WORDS, black_box(sum), i);
                }
            })
        };
        Self {
            request,
            completion,
            stop,
            server: Some(server),
            floor,
            requests: Cursor::new(floor),
            completions: Cursor::new(floor),
            sent: 0,
        }
    }

    /// Times `iters` request/completion round trips.
    pub(crate) fn round_trips(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            self.sent += 1;
            let n = self.sent;
            self.requests.write(&self.request, REQUEST_WORDS, n, n);
            while self.completion.index.0.load(Ordering::Acquire) != n {
                std::hint::spin_loop();
            }
            black_box(self.completions.read(&self.completion, COMPLETION_WORDS));
        }
        start.elapsed()
    }

    /// The floor these lanes measure.
    pub(crate) fn floor(&self) -> Floor {
        self.floor
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}
