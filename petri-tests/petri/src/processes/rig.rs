//! The three processes of a multi-process run: the host endpoint and the guest endpoint
//! (`petri endpoint host|guest`, or any executable that takes the same arguments) and the
//! service between them. Each process's `@@` lines are collected so that the driver can wait
//! for one, or for quiet, always with a time limit.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A child process and the `@@` lines it printed.
pub struct Proc {
    /// Its name in messages.
    pub name: &'static str,
    /// The process.
    pub child: Child,
    stdin: Option<ChildStdin>,
    seen: Arc<Mutex<Vec<String>>>,
    /// When it last printed an `@@` line.
    last: Arc<Mutex<Instant>>,
}

impl Proc {
    /// Starts `cmd`, collecting its `@@` lines; its stderr is forwarded when `verbose` (else
    /// only lines that look like errors).
    pub fn start(name: &'static str, mut cmd: Command, verbose: bool) -> std::io::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let last = Arc::new(Mutex::new(Instant::now()));
        if let Some(out) = child.stdout.take() {
            let (sink, at) = (seen.clone(), last.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    // A test harness may print before the first line.
                    if let Some((_, l)) = line.split_once("@@ ") {
                        sink.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(l.to_owned());
                        *at.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if verbose
                        || line.contains("ERROR")
                        || line.contains("panicked")
                        || line.contains("AddressSanitizer")
                    {
                        eprintln!("[{name}] {line}");
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Self {
            name,
            child,
            stdin,
            seen,
            last,
        })
    }

    /// Every `@@` line so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How long since the last `@@` line.
    pub fn quiet_for(&self) -> Duration {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }

    /// Waits until a line `pred` accepts has been printed; `Err` with what was seen after
    /// `limit`.
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.seen().into_iter().find(|l| pred(l)) {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                let seen = self.seen();
                let tail = &seen[seen.len().saturating_sub(20)..];
                return Err(format!(
                    "{}: no such line within {limit:?}; last lines {tail:?}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes one line to its stdin.
    pub fn tell(&mut self, line: &str) {
        if let Some(stdin) = &mut self.stdin {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// Waits for the process to exit within `limit`; kills it otherwise (`None`).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    return None;
                }
            }
        }
    }

    /// Sends a signal by the child's own pid.
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

/// How to start the three processes.
#[derive(Clone, Debug)]
pub struct RigSpec {
    /// The executable with the `endpoint` subcommand (petri).
    pub endpoint_exe: PathBuf,
    /// The host endpoint's spec.
    pub host: String,
    /// The guest endpoint's spec.
    pub guest: String,
    /// Extra `openhcl-vpci serve` arguments (`--settle 100ms`).
    pub service_args: Vec<String>,
    /// Forward every line the processes write to stderr.
    pub verbose: bool,
}

/// The service binary: `OPENHCL_VPCI_BIN`, else `openhcl-vpci` beside `exe` (or beside its
/// directory, for a test binary in `deps/`), if it is there.
pub fn service_binary(exe: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OPENHCL_VPCI_BIN") {
        return Some(PathBuf::from(p));
    }
    let dir = exe.parent()?;
    [dir.join("openhcl-vpci"), dir.parent()?.join("openhcl-vpci")]
        .into_iter()
        .find(|p| p.is_file())
}

/// The three processes of one run.
pub struct Rig {
    /// The scratch directory with the sockets.
    pub dir: PathBuf,
    /// The host endpoint.
    pub host: Proc,
    /// The service.
    pub service: Proc,
    /// The guest endpoint.
    pub guest: Proc,
    /// How the service was started (`openhcl-vpci` or petri's copy of it).
    pub service_kind: String,
}

fn endpoint(spec: &RigSpec, role: &str, socket: &Path, role_spec: &str) -> Command {
    let mut cmd = Command::new(&spec.endpoint_exe);
    cmd.arg("endpoint")
        .arg(role)
        .arg("--socket")
        .arg(socket)
        .arg("--spec")
        .arg(role_spec);
    cmd
}

impl Rig {
    /// Starts the host, waits for it to listen, then the service and the guest.
    pub fn start(name: &str, spec: &RigSpec) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("petri-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let io = |e: std::io::Error| e.to_string();
        let host_cmd = endpoint(spec, "host", &dir.join("host.sock"), &spec.host);
        let host = Proc::start("host", host_cmd, spec.verbose).map_err(io)?;
        host.wait_for(Duration::from_secs(30), |l| l == "host listening")?;
        let (mut cmd, service_kind) = match service_binary(&spec.endpoint_exe) {
            Some(bin) => {
                let mut cmd = Command::new(&bin);
                cmd.arg("serve");
                (cmd, bin.display().to_string())
            }
            None => {
                let mut cmd = Command::new(&spec.endpoint_exe);
                cmd.args(["endpoint", "service", "--socket"]).arg(&dir);
                (
                    cmd,
                    "petri's copy of the service (no openhcl-vpci binary found)".to_owned(),
                )
            }
        };
        cmd.arg("--host")
            .arg(dir.join("host.sock"))
            .arg("--guest")
            .arg(dir.join("guest.sock"))
            .arg("--control")
            .arg(dir.join("control.sock"))
            .args(&spec.service_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            );
        let service = Proc::start("service", cmd, spec.verbose).map_err(io)?;
        let guest_cmd = endpoint(spec, "guest", &dir.join("guest.sock"), &spec.guest);
        let guest = Proc::start("guest", guest_cmd, spec.verbose).map_err(io)?;
        Ok(Self {
            dir,
            host,
            service,
            guest,
            service_kind,
        })
    }

    /// Waits until no process printed an `@@` line for `quiet`, at most until `deadline`;
    /// false if the deadline came first.
    pub fn wait_quiet(&self, quiet: Duration, deadline: Instant) -> bool {
        loop {
            let q = [&self.host, &self.service, &self.guest]
                .iter()
                .map(|p| p.quiet_for())
                .min()
                .unwrap_or_default();
            if q >= quiet {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
