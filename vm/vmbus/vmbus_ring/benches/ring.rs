//! Ring benchmarks, each next to the baseline it is judged against:
//!
//! * `round_trip`: a request and its completion over a pair of rings between two busy-polling
//!   threads, next to a raw cross-core ping-pong of one atomic (the ratio is the figure).
//! * `stream_64`: 64-byte packets streamed one way (packets/s).
//! * `stream_4k`: 4 KiB packets streamed one way (bytes/s), next to a plain memcpy of 4 KiB.
//!
//! Both stream groups also run the reader with one commit per drained batch, and a
//! cross-core baseline (`memcpy_cross_core`: memcpy into and out of 64 slots between the same
//! two threads), which is what a shared-memory transport can hope for: the single-core memcpy
//! copies L1-resident bytes and never pays for moving cache lines between cores.
//!
//! At the end a short summary prints the two ratios from a direct measurement, so a CI smoke
//! run does not need to parse criterion's output.
//!
//! # What a round trip moves
//!
//! A round trip is one request over ring A (client writes, server reads) and one completion
//! over ring B (server writes, client reads); both directions are alike. A request is 40
//! bytes (16-byte descriptor, 16 of payload, 8-byte trailer) and a completion 32, so in a
//! 64 KiB ring a packet covers one data line or, about every other packet, straddles two. The control
//! page's first line holds `write_index`, `read_index`, `interrupt_mask` and
//! `pending_send_sz`; `feature_bits` (offset 64) is on the next line, read only when a
//! writer has asked for space. Per direction, with an eager reader (the behaviour before
//! issue 15, still the default):
//!
//! | step | access | line | transfer |
//! | --- | --- | --- | --- |
//! | writer | five relaxed word stores of descriptor, payload and trailer (one copy) | data | RFO: the reader holds it shared since it read the previous packet there |
//! | writer | release store of `write_index` | control | RFO: the reader holds it (modified after its `read_index` store, or shared while polling) |
//! | writer | full fence | - | waits for both RFOs to drain from the store buffer; the writer only polls the other ring next, so off the critical path |
//! | writer | load `interrupt_mask` (set: no signal, done; clear: load `read_index`) | control | none, the line is the writer's now |
//! | reader | polling acquire load of `write_index` | control | fetch from the writer: **critical path** |
//! | reader | relaxed loads of the packet (one 40-byte prefix copy; the trailer is in it) | data | fetch from the writer, issued only once the index load has resolved: **critical path** |
//! | reader | release store of `read_index` | control | upgrade shared -> modified, invalidating the writer's copy |
//! | reader | full fence | - | waits for that upgrade before the reader does anything else, such as writing its completion: **critical path** |
//! | reader | load `pending_send_sz` | control | none |
//!
//! So each direction moves the control line three times (writer RFO, reader fetch, reader
//! upgrade) and one or two data lines twice (writer RFO, reader fetch), with three
//! cross-core latencies in a row on the reader's critical path (index, data, fenced upgrade)
//! against the ping-pong's one line per direction.
//!
//! With a lazy reader (`RingReader::set_lazy_publish`, timed as `ring_pair_lazy_publish` and
//! in the summary) the reader's commit is only a load of `pending_send_sz`, from the control
//! line it has just fetched for `write_index`: no store, no fence, no upgrade. The control
//! line then moves twice per direction (writer RFO, reader fetch) like the ping-pong's line,
//! and the read index is published only when the writer asks, before the reader unmasks, or
//! once a quarter of the ring is unpublished (one store and fence per ~400 round trips here).
//!
//! Measured (issue 15, 2-core AMD EPYC guest, three undisturbed runs): the lazy reader does
//! not shorten the round trip: eager 228-240 ns, lazy 251-263 ns, atomic 62-66 ns. Neither
//! does dropping its commit on an empty ring, nor touching the next packet's line while
//! polling (tried, no gain, removed). What the line count misses is the code: the summary's
//! single-thread round trip (the same two writes and two reads, every line in L1) takes
//! 98-102 ns, 1.6 times the whole ping-pong. Validation, staging copies and the atomic word
//! copies of `shared_mem` cost more here than the upgrade and fence the lazy reader saves.
//!
//! The layout sets a floor, and it is not the one-line ping-pong. The summary times three
//! ring-free floors (`ring/floors.rs`): per direction a 40- or 32-byte packet's words stored
//! on data lines, then an index on a line of its own (release), the other side polling the
//! index (acquire) and then loading the words. With every packet at the same place (`Fixed`,
//! which no ring can do) the floor is 1.08-1.13 times the atomic ping-pong (fast runs) and the
//! data line's fetch overlaps the index line's. With packets one after another as a ring puts
//! them (`Rotating`), about every other packet spills onto a line the writer last wrote a lap
//! ago, and the floor is 137-139 ns, 2.19-2.23 times the atomic: already past the 2x target
//! with no ring code at all. (In the slow runs, when the host's ping-pong takes 323-356 ns,
//! a scratch copy of the same floors measured fixed 417-472 ns, rotating 634-687 ns: 1.9-2.1
//! times.) A writer that stores a word one line past the next packet's start after each
//! publish (`RotatingOwnAhead`: that line's ownership moves while nobody waits) brings the
//! floor to 100-102 ns, 1.61-1.64 times; the same store in `RingWriter::publish` did not
//! shorten the ring (three A/B runs each: 208-215 ns with it, 212-213 without), so it is not
//! in the ring. The ring's round trip is the rotating floor plus its code, almost exactly:
//! 210-216 ns = 137-139 + 72 (the code alone, one thread). Before the code cuts below it was
//! 3.7-3.8 times the fixed floor, its code about 100 ns. Within 2 times the ping-pong would
//! need the writer's early ownership to pay off and the four packet operations of a round trip
//! (two writes, two validated reads) in about 25 ns together.
//!
//! The code, measured (issue 15's ring target, `perf record` of the single-thread round
//! trip): a third of it was `write_packet` assembling small packets in a zeroed 256-byte byte
//! stage with a libc `memmove` per part, re-reading the descriptor's fields as bytes (a
//! store-forwarding stall) and handing the bytes to `shared_mem`'s general byte copy with its
//! partial-word splitting; the reader zeroed a 128-byte prefix stage per packet. Small packets
//! are now staged as words (the descriptor's two built from its fields) and stored with
//! `SharedMem::write_words`, and the reader fetches up to 8 words with `read_words` and parses
//! the descriptor from that one copy: single thread 99-103 ns -> 76-77 -> 71-73 ns (three runs
//! each). Tried and dropped: a 16-word read stage (4 ns slower: its zeroing), the stage kept
//! in the reader (10 ns slower), reading the payload straight into the caller's buffer through
//! the byte copy (about 25 ns slower). What remains per round trip: the writer's full fence (one per
//! direction, the Dekker handshake, kept), libc `memcpy` calls the compiler makes of
//! the variable-length word loops (the payload into the stage, the prefix into the caller's
//! buffer), and the `Result` plumbing of each bounds-checked shared-memory access. (The
//! cross-core figures of the runs that measured the cuts step by step were left out: the
//! host's one-atomic ping-pong had moved from 66 ns to 334-350 ns for a while; the figures
//! above are from after it came back.)
//!
//! What stays, and why: the writer's full fence between publishing `write_index` and loading
//! `interrupt_mask` is the Dekker handshake with a reader that unmasks then re-checks (without
//! it both may read the other's old value and the reader sleeps on a packet); it holds the
//! writer until its stores are visible, which the peer waits for anyway. The reader's fence remains wherever it publishes
//! (against a writer that sets `pending_send_sz` then re-reads the read index), and in
//! `unmask_interrupts`. The writer already caches the read index (reloaded only when the
//! space it last saw is not enough, or for the signalling check when the reader is
//! unmasked), the reader caches the write index, small packets are one copy with their
//! trailer (large ones now carry their last bytes and the trailer in one copy too), and a
//! masked reader costs the writer no `read_index` load.

use criterion::Criterion;
use criterion::Throughput;
use shared_mem::HeapMem;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;
use vmbus_ring::CONTROL_PAGE_SIZE;
use vmbus_ring::PacketMeta;
use vmbus_ring::Ring;
use vmbus_ring::RingReader;
use vmbus_ring::RingWriter;
use vmbus_ring::WriteError;
use vmbus_ring::packet_type;

#[path = "ring/floors.rs"]
mod floors;

use floors::{Floor, Lanes, atomic_round_trips, start_ponger};

type Mem = Arc<HeapMem>;

/// A fresh ring with `data_size` bytes of data, opened at both ends, the reader polling
/// (interrupts masked, as a busy-polling reader would) and publishing its read index lazily
/// if `lazy`.
fn ring(data_size: usize, lazy: bool) -> (RingWriter<Mem>, RingReader<Mem>) {
    let mem = Arc::new(HeapMem::new(CONTROL_PAGE_SIZE + data_size));
    Ring::new(mem.clone()).unwrap().initialize().unwrap();
    let mut reader = RingReader::new(mem.clone()).unwrap();
    reader.set_lazy_publish(lazy);
    reader.mask_interrupts().unwrap();
    (RingWriter::new(mem).unwrap(), reader)
}

fn meta(packet_type: u16, transaction_id: u64) -> PacketMeta {
    PacketMeta {
        packet_type,
        flags: 0,
        transaction_id,
    }
}

/// Writes, spinning while the ring is full.
fn put(writer: &mut RingWriter<Mem>, meta: &PacketMeta, payload: &[u8]) {
    loop {
        match writer.write_packet(meta, payload) {
            Ok(_) => return,
            Err(WriteError::Full { .. }) => std::hint::spin_loop(),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Reads one packet, spinning while the ring is empty; returns its transaction id. Commits
/// on an empty ring, as a lazy reader must (a no-op for an eager one).
fn take(reader: &mut RingReader<Mem>, buf: &mut [u8]) -> u64 {
    loop {
        if let Some(p) = reader.read_packet(buf).unwrap() {
            return p.info.header.meta.transaction_id;
        }
        let _ = reader.commit().unwrap();
        std::hint::spin_loop();
    }
}

/// A server thread that completes every request on `requests` into `completions`.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(mut requests: RingReader<Mem>, mut completions: RingWriter<Mem>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0; 4096];
                let status = [0u8; 8];
                while !stop.load(Ordering::Relaxed) {
                    match requests.read_packet(&mut buf).unwrap() {
                        Some(p) => {
                            let id = p.info.header.meta.transaction_id;
                            put(&mut completions, &meta(packet_type::COMP, id), &status);
                        }
                        None => {
                            let _ = requests.commit().unwrap();
                            std::hint::spin_loop();
                        }
                    }
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Times `iters` request/completion round trips.
fn ring_round_trips(
    requests: &mut RingWriter<Mem>,
    completions: &mut RingReader<Mem>,
    iters: u64,
) -> Duration {
    let request = [0u8; 16];
    let mut buf = [0u8; 64];
    let start = Instant::now();
    for i in 0..iters {
        put(requests, &meta(packet_type::DATA_INBAND, i), &request);
        let id = take(completions, &mut buf);
        debug_assert_eq!(id, i);
    }
    start.elapsed()
}

/// The same round trips on one thread (request written and read, completion written and
/// read, lazy readers): what the ring's code costs with no cache line crossing cores.
fn loopback_round_trips(iters: u64) -> Duration {
    let (mut req_w, mut req_r) = ring(64 * 1024, true);
    let (mut comp_w, mut comp_r) = ring(64 * 1024, true);
    let request = [0u8; 16];
    let status = [0u8; 8];
    let mut buf = [0u8; 64];
    let start = Instant::now();
    for i in 0..iters {
        put(&mut req_w, &meta(packet_type::DATA_INBAND, i), &request);
        let id = take(&mut req_r, &mut buf);
        put(&mut comp_w, &meta(packet_type::COMP, id), &status);
        black_box(take(&mut comp_r, &mut buf));
    }
    start.elapsed()
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");
    group.throughput(Throughput::Elements(1));
    for (name, lazy) in [("ring_pair", false), ("ring_pair_lazy_publish", true)] {
        let (mut req_w, req_r) = ring(64 * 1024, lazy);
        let (comp_w, mut comp_r) = ring(64 * 1024, lazy);
        let _server = Server::start(req_r, comp_w);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| ring_round_trips(&mut req_w, &mut comp_r, iters))
        });
    }
    {
        let cell = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let t = start_ponger(cell.clone(), stop.clone());
        group.bench_function("raw_atomic_ping_pong", |b| {
            b.iter_custom(|iters| atomic_round_trips(&cell, iters))
        });
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
    group.finish();
}

/// A producer thread writing `size`-byte packets while the number written is below `budget`.
struct Producer {
    budget: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Producer {
    fn start(mut writer: RingWriter<Mem>, size: usize) -> Self {
        let budget = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (budget, stop) = (budget.clone(), stop.clone());
            std::thread::spawn(move || {
                let payload = vec![0x5a; size - 16];
                let mut written = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if written < budget.load(Ordering::Acquire) {
                        match writer
                            .write_packet(&meta(packet_type::DATA_INBAND, written), &payload)
                        {
                            Ok(_) => written += 1,
                            Err(WriteError::Full { .. }) => std::hint::spin_loop(),
                            Err(e) => panic!("{e}"),
                        }
                    } else {
                        std::hint::spin_loop();
                    }
                }
            })
        };
        Self {
            budget,
            stop,
            thread: Some(thread),
        }
    }

    /// Lets the producer write `n` more packets, reads them all and returns the time taken.
    /// `batched`: drain whatever is there with peek/consume and commit once per drain (as
    /// Linux's reader does), instead of `read_packet`'s commit per packet.
    fn stream(
        &self,
        reader: &mut RingReader<Mem>,
        buf: &mut [u8],
        n: u64,
        batched: bool,
    ) -> Duration {
        let start = Instant::now();
        self.budget.fetch_add(n, Ordering::Release);
        if batched {
            let mut got = 0;
            while got < n {
                while got < n {
                    match reader.peek(buf).unwrap() {
                        Some(info) => {
                            black_box(info);
                            reader.consume();
                            got += 1;
                        }
                        None => break,
                    }
                }
                let _ = reader.commit().unwrap();
                std::hint::spin_loop();
            }
        } else {
            for _ in 0..n {
                black_box(take(reader, buf));
            }
        }
        start.elapsed()
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// The cross-core baseline: a producer memcpys each packet into one of 64 slots and the
/// consumer memcpys it out, with head/tail counters and no validation. Safe code, so each
/// slot is behind an (uncontended) mutex; the copies themselves are plain memcpy.
struct SlotStream {
    slots: Arc<Vec<std::sync::Mutex<Vec<u8>>>>,
    head: Arc<AtomicU64>,
    tail: Arc<AtomicU64>,
    budget: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const SLOTS: u64 = 64;

impl SlotStream {
    fn start(size: usize) -> Self {
        let slots: Arc<Vec<_>> = Arc::new(
            (0..SLOTS)
                .map(|_| std::sync::Mutex::new(vec![0u8; size]))
                .collect(),
        );
        let head = Arc::new(AtomicU64::new(0));
        let tail = Arc::new(AtomicU64::new(0));
        let budget = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (slots, head, tail, budget, stop) = (
                slots.clone(),
                head.clone(),
                tail.clone(),
                budget.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let src = vec![0x5au8; size];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if i < budget.load(Ordering::Acquire)
                        && i - tail.load(Ordering::Acquire) < SLOTS
                    {
                        slots[(i % SLOTS) as usize]
                            .lock()
                            .unwrap()
                            .copy_from_slice(&src);
                        i += 1;
                        head.store(i, Ordering::Release);
                    } else {
                        std::hint::spin_loop();
                    }
                }
            })
        };
        Self {
            slots,
            head,
            tail,
            budget,
            stop,
            thread: Some(thread),
        }
    }

    fn stream(&self, buf: &mut [u8], n: u64) -> Duration {
        let start = Instant::now();
        let first = self.tail.load(Ordering::Relaxed);
        self.budget.fetch_add(n, Ordering::Release);
        for i in first..first + n {
            while self.head.load(Ordering::Acquire) <= i {
                std::hint::spin_loop();
            }
            buf.copy_from_slice(&self.slots[(i % SLOTS) as usize].lock().unwrap());
            black_box(&mut *buf);
            self.tail.store(i + 1, Ordering::Release);
        }
        start.elapsed()
    }
}

impl Drop for SlotStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Streams `packet_size`-byte packets (descriptor included) through a 256 KiB ring.
fn stream_group(c: &mut Criterion, name: &str, packet_size: usize, bytes: bool) {
    let mut group = c.benchmark_group(name);
    group.throughput(if bytes {
        Throughput::Bytes(packet_size as u64)
    } else {
        Throughput::Elements(1)
    });
    {
        let (writer, mut reader) = ring(256 * 1024, false);
        let producer = Producer::start(writer, packet_size);
        let mut buf = vec![0u8; packet_size];
        group.bench_function("ring", |b| {
            b.iter_custom(|iters| producer.stream(&mut reader, &mut buf, iters, false))
        });
        group.bench_function("ring_batched_commit", |b| {
            b.iter_custom(|iters| producer.stream(&mut reader, &mut buf, iters, true))
        });
    }
    {
        let slots = SlotStream::start(packet_size);
        let mut buf = vec![0u8; packet_size];
        group.bench_function("memcpy_cross_core", |b| {
            b.iter_custom(|iters| slots.stream(&mut buf, iters))
        });
    }
    let src = vec![0x5au8; packet_size];
    let mut dst = vec![0u8; packet_size];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });
    group.finish();
}

fn streams(c: &mut Criterion) {
    stream_group(c, "stream_64", 64, false);
    stream_group(c, "stream_4k", 4096, true);
}

/// A direct measurement of the two headline ratios, printed for CI smoke runs.
fn summary() {
    let iters = 200_000;
    let pair = |lazy| {
        let (mut req_w, req_r) = ring(64 * 1024, lazy);
        let (comp_w, mut comp_r) = ring(64 * 1024, lazy);
        let server = Server::start(req_r, comp_w);
        ring_round_trips(&mut req_w, &mut comp_r, iters / 10);
        let took = ring_round_trips(&mut req_w, &mut comp_r, iters);
        drop(server);
        took
    };
    let ring_eager = pair(false);
    let ring_rt = pair(true);
    loopback_round_trips(iters / 10);
    let loopback = loopback_round_trips(iters);
    let cell = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t = start_ponger(cell.clone(), stop.clone());
    atomic_round_trips(&cell, iters / 10);
    let atomic_rt = atomic_round_trips(&cell, iters);
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    let floor = |floor| {
        let mut lanes = Lanes::start(floor);
        lanes.round_trips(iters / 10);
        (lanes.floor(), lanes.round_trips(iters))
    };
    let floors = [
        floor(Floor::Fixed),
        floor(Floor::Rotating),
        floor(Floor::RotatingOwnAhead),
    ];

    let (writer, mut reader) = ring(256 * 1024, false);
    let producer = Producer::start(writer, 4096);
    let mut buf = vec![0u8; 4096];
    let n = 100_000;
    producer.stream(&mut reader, &mut buf, n / 10, false);
    let ring_4k = producer.stream(&mut reader, &mut buf, n, false);
    drop(producer);
    let slots = SlotStream::start(4096);
    slots.stream(&mut buf, n / 10);
    let cross_4k = slots.stream(&mut buf, n);
    drop(slots);
    let src = vec![0x5au8; 4096];
    let mut dst = vec![0u8; 4096];
    let start = Instant::now();
    for _ in 0..n {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    }
    let memcpy_4k = start.elapsed();

    let per = |d: Duration, n: u64| d.as_secs_f64() * 1e9 / n as f64;
    let gbps = |d: Duration| (n as f64 * 4096.0) / d.as_secs_f64() / 1e9;
    eprintln!(
        "summary: round trip ring {:.0} ns (lazy publish; eager {:.0} ns), atomic {:.0} ns, \
         ratio {:.2} (eager {:.2}; target <= 2.0)",
        per(ring_rt, iters),
        per(ring_eager, iters),
        per(atomic_rt, iters),
        ring_rt.as_secs_f64() / atomic_rt.as_secs_f64(),
        ring_eager.as_secs_f64() / atomic_rt.as_secs_f64()
    );
    eprintln!(
        "summary: the same round trip on one thread (the code alone, no line crossing cores) \
         {:.0} ns",
        per(loopback, iters)
    );
    for (floor, took) in floors {
        let what = match floor {
            Floor::Fixed => "every packet at the same place (not a ring)",
            Floor::Rotating => "packets one after another, as in a ring",
            Floor::RotatingOwnAhead => "as in a ring, the writer owning the next line ahead",
        };
        eprintln!(
            "summary: floor {floor:?} ({what}, no ring code) {:.0} ns: {:.2}x the atomic; the \
             ring {:.2}x it",
            per(took, iters),
            took.as_secs_f64() / atomic_rt.as_secs_f64(),
            ring_rt.as_secs_f64() / took.as_secs_f64()
        );
    }
    eprintln!(
        "summary: 4 KiB stream ring {:.2} GB/s, single-core memcpy {:.2} GB/s, {:.0}% of it \
         (a figure, no target)",
        gbps(ring_4k),
        gbps(memcpy_4k),
        100.0 * memcpy_4k.as_secs_f64() / ring_4k.as_secs_f64()
    );
    eprintln!(
        "summary: 4 KiB cross-core memcpy slots {:.2} GB/s; ring at {:.0}% of it",
        gbps(cross_4k),
        100.0 * cross_4k.as_secs_f64() / ring_4k.as_secs_f64()
    );
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    round_trip(&mut c);
    streams(&mut c);
    c.final_summary();
    summary();
}
