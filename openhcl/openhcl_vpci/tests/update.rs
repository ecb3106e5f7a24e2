//! `openhcl-vpci update`: the service replaces its own image while a guest probes and is
//! hot-plugged, its buses stopped between two packets, saved, handed over across `exec` with
//! every socket and ring, and resumed. The guest and the host notice nothing: the storm
//! finishes with every cycle done and every EJECT answered, and the guest ends holding what
//! the host has. A failed update leaves the service running as it was. Every wait is bounded.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
mod common;

use common::{BIN, inspect, no_guest_failure, no_timer_thread};
use vpci_endpoints::rig::Rig;

/// The re-executed host or guest endpoint (does nothing in a normal test run).
#[test]
fn child_role() {
    vpci_endpoints::rig::child_role();
}

const LIMIT: Duration = Duration::from_secs(60);

fn start(test: &str, host: &str) -> Rig {
    start_with_env(test, host, &[])
}

fn start_with_env(test: &str, host: &str, service_env: &[(&str, &str)]) -> Rig {
    common::start(
        &format!("update-{test}"),
        host,
        &[],
        "model=6.2",
        service_env,
    )
}

/// `openhcl-vpci update` against the rig's service: its exit status and what it printed.
fn update(rig: &Rig, binary: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("update")
        .arg("--control")
        .arg(rig.dir.join("control.sock"));
    if let Some(b) = binary {
        cmd.arg("--binary").arg(b);
    }
    let out = cmd.output().expect("run openhcl-vpci update");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The storm's checks; the guest need only have heard of a tenth of the hot-adds: an EJECT
/// that reaches a bus while it is stopped for an update meets its add there, and the relay
/// coalesces the two, as it does for any add ejected before the guest heard.
fn storm_kept_every_promise(rig: &Rig, buses: usize, cycles: u32, limit: Duration) {
    common::storm_kept_every_promise(rig, buses, cycles, limit, 10);
}

/// Updates in a row while a hot-plug storm runs on two buses: each one answers from the new
/// image with both buses carried across, the service keeps its process id (it execs itself),
/// inspect counts the updates, and the storm keeps every promise.
#[test]
fn a_hundred_updates_during_a_storm_go_unnoticed() {
    let updates: u32 = std::env::var("OPENHCL_VPCI_UPDATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let cycles = 150;
    let rig = start("storm", &format!("buses=2,functions=1,storm={cycles}"));
    rig.guest
        .expect_line(LIMIT, |l| l.starts_with("guest probed bus1"));
    let pid = rig.service.child.id();
    let mut carried = 0;
    for i in 0..updates {
        let (ok, text) = update(&rig, None);
        assert!(ok, "update {i}: {text}");
        assert!(text.starts_with("updated: "), "update {i}: {text}");
        if text.starts_with("updated: 2 buses") {
            carried += 1;
        }
        assert_eq!(rig.service.child.id(), pid);
    }
    assert!(
        carried >= updates / 2,
        "only {carried} of {updates} updates carried both buses"
    );
    let restored = inspect(&rig, "restored");
    assert!(
        restored.contains(&format!("\"updates\": \"{updates}\"")),
        "{restored}"
    );
    storm_kept_every_promise(&rig, 2, cycles, LIMIT * 2);
    // The relays themselves say they were restored.
    let relay = inspect(&rig, "buses/bus0/relay/restored");
    assert!(relay.contains("from_format"), "{relay}");
}

/// An update to a binary that does not exist, or to a file that is not an openhcl-vpci
/// (which `execvp` would even run with `/bin/sh`, taking the buses with it), is refused
/// before anything stops; the storm goes on.
#[test]
fn a_wrong_binary_is_refused_before_anything_stops() {
    let cycles = 60;
    let rig = start("refused", &format!("buses=2,functions=1,storm={cycles}"));
    rig.guest
        .expect_line(LIMIT, |l| l.starts_with("guest probed bus1"));
    let (ok, text) = update(&rig, Some(Path::new("/nonexistent/openhcl-vpci")));
    assert!(!ok, "{text}");
    assert!(text.contains("cannot use"), "{text}");
    for (name, contents) in [
        ("zeros", &[0u8; 64][..]),
        ("script", &b"#!/bin/sh\necho hello\n"[..]),
    ] {
        let bogus = rig.dir.join(name);
        std::fs::write(&bogus, contents).expect("write the bogus binary");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bogus, std::fs::Permissions::from_mode(0o755))
                .expect("chmod the bogus binary");
        }
        let (ok, text) = update(&rig, Some(&bogus));
        assert!(!ok, "{name}: {text}");
        assert!(
            text.contains("is not an openhcl-vpci binary") || text.contains("cannot run"),
            "{name}: {text}"
        );
    }
    assert!(rig.service.child.id() > 0);
    assert_eq!(inspect(&rig, "restored").trim(), "\"never\"");
    storm_kept_every_promise(&rig, 2, cycles, LIMIT * 2);
}

/// The exec itself fails (a failpoint; in life the binary replaced or removed since it was
/// checked, or no memory) after the buses stopped and everything was written into the
/// handover: the old image resumes from that very handover, answers with the error, and the
/// storm goes on to keep every promise, update after update.
#[test]
fn a_failed_exec_leaves_the_service_running() {
    let cycles = 80;
    let rig = start_with_env(
        "failed",
        &format!("buses=2,functions=1,storm={cycles}"),
        &[("FAILPOINTS", "update-exec=return")],
    );
    rig.guest
        .expect_line(LIMIT, |l| l.starts_with("guest probed bus1"));
    let pid = rig.service.child.id();
    for i in 0..10 {
        let (ok, text) = update(&rig, None);
        assert!(!ok, "update {i}: {text}");
        assert!(text.contains("cannot exec"), "update {i}: {text}");
        assert!(text.contains("failpoint update-exec"), "update {i}: {text}");
    }
    assert_eq!(rig.service.child.id(), pid);
    assert_eq!(inspect(&rig, "restored").trim(), "\"never\"");
    // The buses went through the handover and back: the relays say they were restored.
    let relay = inspect(&rig, "buses/bus0/relay/restored");
    assert!(relay.contains("from_format"), "{relay}");
    storm_kept_every_promise(&rig, 2, cycles, LIMIT * 2);
}

/// An update while the guest's probe waits on a slow host (every answer 30 ms late): the
/// probe finishes in the new image as if nothing happened. The restored bus's relay timers
/// (its deadlines for the slow answers) are its thread's loop timeout there too.
#[test]
fn an_update_mid_probe_is_a_pause() {
    let rig = start("probe", "buses=1,functions=2,latency_ms=30");
    // Somewhere in the probe: the bus is open but not yet probed.
    rig.guest.expect_line(LIMIT, |l| l.contains("bus0"));
    let (ok, text) = update(&rig, None);
    assert!(ok, "{text}");
    rig.guest.expect_line(LIMIT, |l| l == "guest probed bus0");
    rig.guest
        .expect_line(LIMIT, |l| l == "guest devices bus0 2");
    no_guest_failure(&rig);
    no_timer_thread(&rig);
}

/// Once the rig's guest has probed its bus, starts `inspect restored --watch` (every 20 ms)
/// on the rig's control socket, with `stderr` as given, and reads its first answer (waiting
/// at most `LIMIT`), which must say the service was never restored; returns the watcher and
/// the rest of its output.
fn watch_restored(
    rig: &Rig,
    stderr: std::process::Stdio,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    use std::io::BufRead;
    rig.guest.expect_line(LIMIT, |l| l == "guest probed bus0");
    let mut watch = Command::new(BIN)
        .args([
            "inspect",
            "restored",
            "--watch",
            "--interval",
            "20ms",
            "--control",
        ])
        .arg(rig.dir.join("control.sock"))
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("run inspect --watch");
    let mut stdout = std::io::BufReader::new(watch.stdout.take().expect("stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let read = stdout.read_line(&mut first).map(|_| first);
        let _ = tx.send((read, stdout));
    });
    let (first, stdout) = rx.recv_timeout(LIMIT).expect("an answer in time");
    assert_eq!(first.expect("the first answer").trim(), "never");
    (watch, stdout)
}

/// `inspect --watch` follows the service across an update: the update closes its control
/// connection with the old image, it reconnects to the new one and prints the change.
#[test]
fn inspect_watch_follows_an_update() {
    use std::io::BufRead;
    let rig = start("watch", "buses=1,functions=1");
    let (mut watch, stdout) = watch_restored(&rig, std::process::Stdio::inherit());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (ok, text) = update(&rig, None);
    assert!(ok, "{text}");
    let deadline = std::time::Instant::now() + LIMIT;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("updates: 1")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("--watch never showed the update: {seen:?}"),
        }
    }
    assert!(seen.iter().any(|l| l == "---"), "{seen:?}");
    let _ = watch.kill();
    let _ = watch.wait();
}

/// Starts a one-bus rig whose service holds an update at `failpoint` for a second, starts
/// an update, sends the service SIGTERM while it is held there, and returns the updater's
/// exit status and output once it has answered.
fn sigterm_during_update(test: &str, failpoint: &str) -> (Rig, bool, String) {
    let rig = start_with_env(
        test,
        "buses=1,functions=1",
        &[("FAILPOINTS", &format!("{failpoint}=sleep(1000)"))],
    );
    rig.guest.expect_line(LIMIT, |l| l == "guest probed bus0");
    let control = rig.dir.join("control.sock");
    let updater = std::thread::spawn(move || {
        let out = Command::new(BIN)
            .args(["update", "--control"])
            .arg(control)
            .output()
            .expect("run openhcl-vpci update");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    });
    std::thread::sleep(Duration::from_millis(400));
    rig.service.signal(rustix::process::Signal::TERM);
    let (ok, text) = updater.join().expect("the updater");
    (rig, ok, text)
}

/// The service exits 0 and the guest saw its bus released in order.
fn shut_down_in_order(rig: &mut Rig) {
    let status = rig.service.wait_exit(LIMIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "the service shuts down in order: {status:?}"
    );
    rig.guest
        .expect_line(LIMIT, |l| l.starts_with("guest released bus0 failed=false"));
    no_guest_failure(rig);
}

/// SIGTERM while an update has every bus stopped (a failpoint holds that moment for a
/// second): the update gives up with "shutting down", and the service then shuts down in
/// order (the guest releases its bus) instead of losing the signal with the old image.
#[test]
fn a_shutdown_during_an_update_is_not_lost() {
    let (mut rig, _, text) = sigterm_during_update("shutdown", "update-stopped");
    assert!(text.contains("shutting down"), "{text}");
    shut_down_in_order(&mut rig);
}

/// SIGTERM at the very last moment of an update, with the state handed over and the exec
/// next (a failpoint holds that moment for a second): the signal must neither be taken by
/// the old image and lost with it nor kill the new one before it has a handler. It stays
/// pending across the exec, the update completes, and the successor shuts down in order.
#[test]
fn a_shutdown_at_the_exec_reaches_the_successor() {
    let (mut rig, ok, text) = sigterm_during_update("shutdown-exec", "update-handover");
    assert!(ok, "the update completes: {text}");
    shut_down_in_order(&mut rig);
}

/// `inspect --watch | head -1`: once its reader is gone, the next change ends the watch
/// quietly (exit 0), not with a panic about a broken pipe.
#[test]
fn inspect_watch_ends_quietly_when_its_reader_goes() {
    let rig = start("watch-pipe", "buses=1,functions=1");
    let (mut watch, stdout) = watch_restored(&rig, std::process::Stdio::piped());
    drop(stdout);
    // The reader is gone; a change makes the watch write again.
    let (ok, text) = update(&rig, None);
    assert!(ok, "{text}");
    let deadline = std::time::Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = watch.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watch never ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = watch.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
