//! Three-process rigs: a host endpoint and a guest endpoint (this test binary re-executed in
//! a role, see [`child_role`]) and the real `openhcl-vpci` binary between them. Each process's
//! `@@` lines are collected so a test can wait for one, always with a time limit.

#![allow(dead_code, unreachable_pub)]

pub mod guest;
pub mod host;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

const ROLE_ENV: &str = "OPENHCL_VPCI_ROLE";
const SPEC_ENV: &str = "OPENHCL_VPCI_SPEC";
const SOCKET_ENV: &str = "OPENHCL_VPCI_SOCKET";

/// Runs this process's role, if it was started as one: the tests' `child_role` calls it.
pub fn child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let spec = std::env::var(SPEC_ENV).unwrap_or_default();
    let socket = PathBuf::from(std::env::var(SOCKET_ENV).expect("socket"));
    match role.as_str() {
        "host" => host::run(&socket, host::HostSpec::parse(&spec).expect("host spec")),
        "guest" => guest::run(&socket, guest::GuestSpec::parse(&spec).expect("guest spec")),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// A child process and the `@@` lines it printed.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn start(name: &'static str, mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let (tx, lines) = mpsc::channel();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let out = child.stdout.take().expect("stdout");
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // libtest may print "test child_role ... " before the first line.
                if let Some(l) = line.split_once("@@ ").map(|(_, l)| l) {
                    sink.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(l.to_owned());
                    let _ = tx.send(l.to_owned());
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        let verbose = std::env::var_os("OPENHCL_VPCI_TEST_LOG").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if verbose || line.contains("ERROR") || line.contains("panicked") {
                    eprintln!("[{name}] {line}");
                }
            }
        });
        Self {
            name,
            child,
            lines,
            seen,
        }
    }

    /// Waits until a line `pred` accepts has been printed (at any time, in any order);
    /// panics after `limit` with what was seen.
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.seen().into_iter().find(|l| pred(l)) {
                return l;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "{}: no such line within {limit:?}; saw {:?}",
                    self.name,
                    self.seen()
                );
            }
            let _ = self.lines.recv_timeout(left.min(Duration::from_millis(50)));
        }
    }

    /// Every `@@` line so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for the process to exit within `limit`; kills it and panics otherwise.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {limit:?}; saw {:?}",
                    self.name,
                    self.seen()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal (by the child's own pid).
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, signal);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn role(name: &'static str, role: &str, socket: &Path, spec: &str) -> Proc {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    cmd.args(["child_role", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(SPEC_ENV, spec)
        .env(SOCKET_ENV, socket);
    Proc::start(name, cmd)
}

/// A scratch directory for one rig's sockets.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("openhcl-vpci-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The three processes of one rig.
pub struct Rig {
    pub dir: PathBuf,
    pub host: Proc,
    pub service: Proc,
    pub guest: Proc,
}

impl Rig {
    /// Starts host (`host_spec`), service (`service_args` added) and guest (`guest_spec`).
    pub fn start(test: &str, host_spec: &str, service_args: &[&str], guest_spec: &str) -> Self {
        let dir = scratch(test);
        let host = role("host", "host", &dir.join("host.sock"), host_spec);
        host.wait_for(Duration::from_secs(20), |l| l == "host listening");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_openhcl-vpci"));
        cmd.arg("serve")
            .arg("--host")
            .arg(dir.join("host.sock"))
            .arg("--guest")
            .arg(dir.join("guest.sock"))
            .arg("--control")
            .arg(dir.join("control.sock"))
            .args(service_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            );
        let service = Proc::start("service", cmd);
        let guest = role("guest", "guest", &dir.join("guest.sock"), guest_spec);
        Self {
            dir,
            host,
            service,
            guest,
        }
    }

    /// `openhcl-vpci inspect [path] --json` against this rig's service.
    pub fn inspect(&self, path: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_openhcl-vpci"))
            .arg("inspect")
            .arg(path)
            .arg("--json")
            .arg("--control")
            .arg(self.dir.join("control.sock"))
            .output()
            .expect("inspect");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
