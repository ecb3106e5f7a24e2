//! Writer and reader in two processes: the test re-runs its own binary as a child, which
//! inherits the ring's memfd, maps it and writes; the parent reads and checks every packet.

mod common;

use common::*;
use shared_mem::MemfdMem;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use vmbus_ring::*;

const ENV_FD: &str = "VMBUS_RING_TEST_FD";
const COUNT: u64 = 50_000;

fn len_of(i: u64) -> usize {
    (i.wrapping_mul(40503) % 900) as usize
}

/// The child's half: does nothing unless started by `writer_in_another_process`.
#[test]
fn child_writer() {
    let Ok(fd) = std::env::var(ENV_FD) else {
        return;
    };
    // Reopening through procfs yields our own fd to the same (sealed) memfd, in safe code.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{fd}"))
        .unwrap();
    let mem = Arc::new(MemfdMem::from_fd(file.into()).unwrap());
    let mut writer = RingWriter::new(mem).unwrap();
    for i in 0..COUNT {
        let body = payload(i, len_of(i));
        while let Err(e) = writer.write_packet(&inband(i), &body) {
            assert!(matches!(e, WriteError::Full { .. }), "{e}");
            std::thread::yield_now();
        }
    }
}

/// A ring shared by two processes through a memfd carries every packet intact and in order.
#[test]
#[cfg_attr(miri, ignore)]
fn writer_in_another_process() {
    if std::env::var(ENV_FD).is_ok() {
        return;
    }
    let mem = Arc::new(MemfdMem::create("vmbus_ring-process", CONTROL_PAGE_SIZE + 16384).unwrap());
    Ring::new(mem.clone()).unwrap().initialize().unwrap();
    let mut reader = RingReader::new(mem.clone()).unwrap();
    // A duplicate without close-on-exec is inherited by the child.
    let inherited = rustix::io::dup(mem.fd()).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(ENV_FD, inherited.as_raw_fd().to_string())
        // Keep the child's libtest summary out of the parent's; failures show in its status.
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(inherited);
    let mut buf = vec![0; reader.max_packet_len()];
    let mut i = 0;
    while i < COUNT {
        match reader.read_packet(&mut buf).unwrap() {
            Some(packet) => {
                assert_eq!(packet.info.header.meta, inband(i));
                let len = len_of(i);
                assert_eq!(&packet.info.payload(&buf)[..len], &payload(i, len)[..]);
                i += 1;
            }
            None => {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "child failed: {status}");
                    // The child may have finished writing; drain what is left.
                    if !reader.has_data().unwrap() {
                        panic!("child exited after {i} packets");
                    }
                }
                std::thread::yield_now();
            }
        }
    }
    assert!(child.wait().unwrap().success());
}
