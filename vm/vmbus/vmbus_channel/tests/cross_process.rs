//! A ring-backed channel between two processes: 100,000 request/completion pairs with random
//! sizes up to the maximum payload, every byte checked on both sides.
//!
//! The test binary re-executes itself: the parent runs [`cross_process_requests_complete`],
//! which spawns this same binary filtered to [`child_server`] with `VMBUS_CHANNEL_CHILD` set
//! and one end of a Unix socket pair as its standard input. The ring memory and doorbells cross
//! that socket (SCM_RIGHTS); the socket then stays open as a liveness signal.
//!
//! Payload bytes are derived from a seed, the transaction id and the direction, so both
//! sides can check every byte without sharing anything else. The test fails if a byte is
//! wrong (either side), a completion is lost or duplicated (the transaction table), or the
//! server saw a different number of requests than were sent (its exit status).

use futures::executor::block_on;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmbus_channel::ring::{RingChannel, RingChannelConfig};
use vmbus_channel::{
    Channel, ChannelError, ChannelExt, Packet, PacketKind, PacketLimits, TransactionConfig,
    Transactions,
};

const CHILD_ENV: &str = "VMBUS_CHANNEL_CHILD";
const SEED_ENV: &str = "VMBUS_CHANNEL_SEED";
const COUNT_ENV: &str = "VMBUS_CHANNEL_COUNT";
const CORRUPT_ENV: &str = "VMBUS_CHANNEL_CORRUPT";
const DIE_ENV: &str = "VMBUS_CHANNEL_DIE";

const COUNT: u64 = 100_000;
const MAX_PAYLOAD: usize = 4096;
const RING_SIZE: usize = 256 * 1024;
/// Requests in flight; small enough that a window of maximum-size packets fits in one ring,
/// so neither side can block sending while the other is blocked sending too.
const WINDOW: usize = 32;

const REQUEST: u64 = 0x5245_5155_4553_5400;
const RESPONSE: u64 = 0x5245_5350_4f4e_5300;

fn mix(mut x: u64) -> u64 {
    // splitmix64's finalizer.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The key of one payload: seed, transaction id and direction.
fn key(seed: u64, id: u64, direction: u64) -> u64 {
    mix(seed ^ mix(id ^ direction))
}

/// The payload length for a key: uniform in `0..=MAX_PAYLOAD`.
fn payload_len(key: u64) -> usize {
    (mix(key) % (MAX_PAYLOAD as u64 + 1)) as usize
}

/// The random bytes payloads are cut from: `TAPE_LEN` bytes derived from a fixed seed.
///
/// A payload is the `len` bytes of the tape starting at an offset derived from its key, so
/// making one is a single copy and checking one a single comparison (fast even in debug
/// builds), while every byte still depends on the seed, the id and the direction: a byte
/// from the wrong packet, the wrong place or the wrong direction does not match.
fn tape() -> &'static [u8] {
    static TAPE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TAPE.get_or_init(|| {
        let mut state = 0x7a9e_u64;
        let mut tape = Vec::with_capacity(TAPE_LEN + MAX_PAYLOAD);
        while tape.len() < TAPE_LEN + MAX_PAYLOAD {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            tape.extend_from_slice(&mix(state).to_le_bytes());
        }
        tape
    })
}

const TAPE_LEN: usize = 1 << 20;

/// The payload for a key.
fn payload(key: u64) -> Vec<u8> {
    expected(key).to_vec()
}

fn expected(key: u64) -> &'static [u8] {
    let offset = (mix(key ^ 0x0ff5_e700) % TAPE_LEN as u64) as usize;
    &tape()[offset..offset + payload_len(key)]
}

/// Checks a received payload: the expected bytes, then zero padding up to 8 bytes.
fn check_payload(key: u64, received: &[u8]) -> Result<(), String> {
    let expected = expected(key);
    let padded = expected.len().div_ceil(8) * 8;
    if received.len() != padded {
        return Err(format!(
            "length {} instead of {} (padded {padded})",
            received.len(),
            expected.len()
        ));
    }
    let (data, padding) = received.split_at(expected.len());
    if data != expected {
        let at = (0..expected.len()).find(|&i| data[i] != expected[i]);
        return Err(format!("byte {at:?} differs"));
    }
    if padding.iter().any(|&b| b != 0) {
        return Err("non-zero padding".into());
    }
    Ok(())
}

fn config() -> RingChannelConfig {
    RingChannelConfig {
        ring_size: RING_SIZE,
        limits: PacketLimits::new(MAX_PAYLOAD).unwrap(),
    }
}

/// The server half, run in the child process: complete every request, check every byte.
#[test]
fn child_server() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let seed: u64 = std::env::var(SEED_ENV).unwrap().parse().unwrap();
    let count: u64 = std::env::var(COUNT_ENV).unwrap().parse().unwrap();
    let corrupt: Option<u64> = std::env::var(CORRUPT_ENV).ok().map(|v| v.parse().unwrap());
    let socket = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    let mut channel = RingChannel::open_from(socket).unwrap();
    if std::env::var_os(DIE_ENV).is_some() {
        // Say hello, then exit without closing: `exit` runs no destructors, so the channel's
        // end word is never written and only the socket's hang-up tells the parent.
        block_on(channel.send(&Packet::in_band(77, vec![7]))).unwrap();
        std::process::exit(0);
    }
    let mut served = 0u64;
    block_on(async {
        loop {
            let request = match channel.recv().await {
                Ok(packet) => packet,
                Err(ChannelError::Closed) => break,
                Err(err) => panic!("server receive failed: {err}"),
            };
            assert_eq!(request.kind, PacketKind::InBand);
            assert!(request.completion_requested());
            let id = request.transaction_id;
            if let Err(err) = check_payload(key(seed, id, REQUEST), &request.payload) {
                panic!("request {id}: {err}");
            }
            let mut reply = payload(key(seed, id, RESPONSE));
            if corrupt == Some(id) {
                match reply.first_mut() {
                    Some(b) => *b ^= 1,
                    None => reply.push(1),
                }
            }
            channel
                .send(&Packet::completion(id, reply))
                .await
                .expect("server send failed");
            served += 1;
        }
    });
    assert_eq!(served, count, "server saw {served} requests");
}

/// Spawns the child server and returns the parent's channel end and the child.
fn spawn_child(seed: u64, count: u64, corrupt: Option<u64>) -> (RingChannel, std::process::Child) {
    spawn_child_with(seed, count, corrupt, false)
}

fn spawn_child_with(
    seed: u64,
    count: u64,
    corrupt: Option<u64>,
    die: bool,
) -> (RingChannel, std::process::Child) {
    let (mine, theirs) = UnixStream::pair().unwrap();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "child_server", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env(SEED_ENV, seed.to_string())
        .env(COUNT_ENV, count.to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null());
    if let Some(id) = corrupt {
        // The child is expected to fail; keep its panic message out of the test output.
        command
            .env(CORRUPT_ENV, id.to_string())
            .stderr(Stdio::null());
    }
    if die {
        command.env(DIE_ENV, "1");
    }
    let child = command.spawn().unwrap();
    let channel = RingChannel::create_over(OwnedFd::from(mine), config()).unwrap();
    (channel, child)
}

/// Runs the client: `count` requests, `WINDOW` in flight. Returns the first error.
fn run_client(channel: &mut RingChannel, seed: u64, count: u64) -> Result<(), String> {
    let mut transactions = Transactions::new(TransactionConfig {
        max_outstanding: WINDOW,
        first_id: 1,
    });
    block_on(async {
        let (mut sent, mut completed) = (0u64, 0u64);
        while completed < count {
            while sent < count && transactions.len() < WINDOW {
                let id = transactions.begin(()).map_err(|e| e.to_string())?;
                let request = Packet::request(id, payload(key(seed, id, REQUEST)));
                channel.send(&request).await.map_err(|e| e.to_string())?;
                sent += 1;
            }
            let completion = channel.recv().await.map_err(|e| e.to_string())?;
            if completion.kind != PacketKind::Completion {
                return Err(format!("unexpected packet kind {:?}", completion.kind));
            }
            let id = completion.transaction_id;
            transactions.complete(id).map_err(|e| e.to_string())?;
            check_payload(key(seed, id, RESPONSE), &completion.payload)
                .map_err(|e| format!("completion {id}: {e}"))?;
            completed += 1;
        }
        if !transactions.is_empty() {
            return Err(format!("{} requests never completed", transactions.len()));
        }
        Ok(())
    })
}

/// Kills the child if the test has not finished within `limit`: its socket then hangs up and
/// the parent's channel reads as closed, so a lost wake-up fails the test instead of hanging
/// it. Dropping the returned sender disarms the watchdog.
fn watchdog(child: &std::process::Child, limit: Duration) -> std::sync::mpsc::Sender<()> {
    let pid = rustix::process::Pid::from_child(child);
    let (disarm, disarmed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = disarmed.recv_timeout(limit) {
            eprintln!("watchdog: killing the child after {limit:?}");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    });
    disarm
}

/// 100,000 request/completion pairs between two processes, every byte checked.
#[test]
fn cross_process_requests_complete() {
    let seed = 0x1234_5678_9abc_def0;
    let start = Instant::now();
    let (mut channel, mut child) = spawn_child(seed, COUNT, None);
    let guard = watchdog(&child, Duration::from_secs(60));
    let result = run_client(&mut channel, seed, COUNT);
    channel.close();
    let status = child.wait().unwrap();
    drop(guard);
    result.unwrap();
    assert!(status.success(), "child failed: {status}");
    let elapsed = start.elapsed();
    eprintln!("{COUNT} round trips in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(60));
}

/// A single wrong byte in one completion fails the client.
#[test]
fn cross_process_detects_a_wrong_byte() {
    let seed = 42;
    let count = 2_000;
    let (mut channel, mut child) = spawn_child(seed, count, Some(1_234));
    let result = run_client(&mut channel, seed, count);
    channel.close();
    let _ = child.wait();
    let err = result.unwrap_err();
    assert!(err.contains("completion 1234"), "{err}");
}

/// The pattern checker rejects wrong lengths, wrong bytes and non-zero padding.
#[test]
fn pattern_checker_is_strict() {
    let k = key(1, 2, REQUEST);
    let mut good = payload(k);
    let len = good.len();
    good.resize(len.div_ceil(8) * 8, 0);
    assert!(check_payload(k, &good).is_ok());
    if len > 0 {
        let mut bad = good.clone();
        bad[len / 2] ^= 0x80;
        assert!(check_payload(k, &bad).is_err());
    }
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 8]);
    assert!(check_payload(k, &longer).is_err());
    if len % 8 != 0 {
        let mut bad_pad = good.clone();
        *bad_pad.last_mut().unwrap() = 1;
        assert!(check_payload(k, &bad_pad).is_err());
    }
    assert_ne!(payload(key(1, 2, REQUEST)), payload(key(1, 3, REQUEST)));
    assert_ne!(payload(key(1, 2, REQUEST)), payload(key(1, 2, RESPONSE)));
}

/// A peer process that exits without closing the channel is seen as `Closed` (through the
/// socket's hang-up), after the packets it sent.
#[test]
fn peer_process_exit_reads_as_closed() {
    let (mut channel, mut child) = spawn_child_with(0, 0, None, true);
    let hello = block_on(channel.recv()).unwrap();
    assert_eq!(hello.transaction_id, 77);
    assert!(matches!(
        block_on(channel.recv()),
        Err(ChannelError::Closed)
    ));
    assert!(child.wait().unwrap().success());
    assert!(matches!(
        block_on(channel.send(&Packet::in_band(1, vec![]))),
        Err(ChannelError::Closed)
    ));
}
