//! The three processes of a multi-process run: the host endpoint, the service and the guest
//! endpoint. The endpoints are started from an executable that carries them ([`Launch`]):
//! a subcommand (`petri endpoint ROLE --socket S --spec SPEC`) or a test binary re-executed
//! in a role ([`child_role`]). Each process's `@@` lines are collected so the driver can
//! wait for one, or for quiet, always with a time limit.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

const ROLE_ENV: &str = "VPCI_ENDPOINT_ROLE";
const SPEC_ENV: &str = "VPCI_ENDPOINT_SPEC";
const SOCKET_ENV: &str = "VPCI_ENDPOINT_SOCKET";

/// How long the host endpoint may take to listen.
const LISTEN_LIMIT: Duration = Duration::from_secs(30);

/// Why a rig could not be started or a wait gave up.
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    /// A process or the scratch directory could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A process did not print the line waited for in time.
    #[error("{name}: no such line within {limit:?}; last lines {tail:?}")]
    NoLine {
        /// The process.
        name: &'static str,
        /// How long it was waited for.
        limit: Duration,
        /// Its last lines.
        tail: Vec<String>,
    },
    /// `openhcl-vpci inspect` failed, or there is no service binary to run it with.
    #[error("inspect: {0}")]
    Inspect(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RigError {
    let what = what.into();
    move |source| RigError::Io { what, source }
}

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

    /// Waits until a line `pred` accepts has been printed (at any time, in any order);
    /// [`RigError::NoLine`] with the last lines seen after `limit`.
    pub fn wait_for(
        &self,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, RigError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.seen().into_iter().find(|l| pred(l)) {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                let seen = self.seen();
                let tail = seen
                    .get(seen.len().saturating_sub(20)..)
                    .unwrap_or_default();
                return Err(RigError::NoLine {
                    name: self.name,
                    limit,
                    tail: tail.to_vec(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`Proc::wait_for`] for tests: panics with the last lines seen after `limit`.
    pub fn expect_line(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        match self.wait_for(limit, pred) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
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
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
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

/// How the endpoints are started.
#[derive(Clone, Debug)]
pub enum Launch {
    /// `EXE endpoint ROLE --socket S --spec SPEC` (petri).
    Subcommand(PathBuf),
    /// A test binary re-executed to run only its `child_role` test, which calls
    /// [`child_role`]; the role, socket and spec go in the environment.
    TestBinary(PathBuf),
}

impl Launch {
    /// This test binary, re-executed in a role.
    pub fn this_test() -> std::io::Result<Self> {
        Ok(Self::TestBinary(std::env::current_exe()?))
    }

    fn command(&self, role: &str, socket: &Path, spec: &str) -> Command {
        match self {
            Self::Subcommand(exe) => {
                let mut cmd = Command::new(exe);
                cmd.arg("endpoint")
                    .arg(role)
                    .arg("--socket")
                    .arg(socket)
                    .arg("--spec")
                    .arg(spec);
                cmd
            }
            Self::TestBinary(exe) => {
                let mut cmd = Command::new(exe);
                cmd.args(["child_role", "--exact", "--nocapture", "--test-threads=1"])
                    .env(ROLE_ENV, role)
                    .env(SPEC_ENV, spec)
                    .env(SOCKET_ENV, socket);
                cmd
            }
        }
    }
}

/// Runs this process's role if it was started as one by [`Launch::TestBinary`] (`host`:
/// [`crate::host::HostSpec::parse`], `guest`: [`crate::model::ModelSpec::parse`]), then
/// exits; returns at once otherwise. A test binary's `child_role` test calls it.
///
/// # Panics
///
/// On a spec or socket the rig itself got wrong (a broken rig, not peer input).
pub fn child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let spec = std::env::var(SPEC_ENV).unwrap_or_default();
    let Some(socket) = std::env::var_os(SOCKET_ENV).map(PathBuf::from) else {
        panic!("{ROLE_ENV} without {SOCKET_ENV}");
    };
    let result = match role.as_str() {
        "host" => crate::host::HostSpec::parse(&spec)
            .map_err(|e| e.to_string())
            .and_then(|s| crate::host::run(&socket, s).map_err(|e| e.to_string())),
        "guest" => crate::model::ModelSpec::parse(&spec)
            .map_err(|e| e.to_string())
            .and_then(|s| crate::model::run(&socket, s).map_err(|e| e.to_string())),
        other => Err(format!("unknown role {other:?}")),
    };
    if let Err(e) = result {
        panic!("{role} endpoint: {e}");
    }
    std::process::exit(0);
}

/// How the service is started.
#[derive(Clone, Debug)]
pub enum ServiceExe {
    /// `BIN serve --host .. --guest .. --control ..` (`openhcl-vpci`).
    Binary(PathBuf),
    /// The endpoint executable's own copy: `EXE endpoint service --socket DIR --host ..`
    /// (petri, when no `openhcl-vpci` binary is found).
    Endpoint,
}

/// How to start the three processes.
#[derive(Clone, Debug)]
pub struct RigSpec {
    /// How the endpoints are started.
    pub launch: Launch,
    /// How the service is started.
    pub service: ServiceExe,
    /// The host endpoint's spec.
    pub host: String,
    /// The guest endpoint's spec.
    pub guest: String,
    /// Extra `serve` arguments (`--settle 100ms`).
    pub service_args: Vec<String>,
    /// The service's `RUST_LOG` unless the environment sets one.
    pub service_log: &'static str,
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

/// A fresh scratch directory for one rig's sockets, named after `name` and this process.
pub fn scratch(name: &str) -> Result<PathBuf, RigError> {
    let dir = std::env::temp_dir().join(format!("vpci-rig-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io(dir.display().to_string()))?;
    Ok(dir)
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
    /// How the service was started (its binary, or the endpoint executable's copy).
    pub service_kind: String,
    service_exe: ServiceExe,
}

impl Rig {
    /// Starts the host, waits for it to listen, then the service and the guest.
    pub fn start(name: &str, spec: &RigSpec) -> Result<Self, RigError> {
        Self::start_with_env(name, spec, &[])
    }

    /// [`start`](Self::start), with `service_env` added to the service's environment (a
    /// test's failpoints, say).
    pub fn start_with_env(
        name: &str,
        spec: &RigSpec,
        service_env: &[(&str, &str)],
    ) -> Result<Self, RigError> {
        let dir = scratch(name)?;
        let host_cmd = spec
            .launch
            .command("host", &dir.join("host.sock"), &spec.host);
        let host = Proc::start("host", host_cmd, spec.verbose).map_err(io("start the host"))?;
        host.wait_for(LISTEN_LIMIT, |l| l == "host listening")?;
        let (mut cmd, service_kind) = match (&spec.service, &spec.launch) {
            (ServiceExe::Binary(bin), _) => {
                let mut cmd = Command::new(bin);
                cmd.arg("serve");
                (cmd, bin.display().to_string())
            }
            (ServiceExe::Endpoint, Launch::Subcommand(exe) | Launch::TestBinary(exe)) => {
                let mut cmd = Command::new(exe);
                cmd.args(["endpoint", "service", "--socket"]).arg(&dir);
                let kind = format!("{}'s copy of the service", exe.display());
                (cmd, kind)
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
                std::env::var("RUST_LOG").unwrap_or_else(|_| spec.service_log.to_owned()),
            )
            .envs(service_env.iter().copied());
        let service = Proc::start("service", cmd, spec.verbose).map_err(io("start the service"))?;
        let guest_cmd = spec
            .launch
            .command("guest", &dir.join("guest.sock"), &spec.guest);
        let guest = Proc::start("guest", guest_cmd, spec.verbose).map_err(io("start the guest"))?;
        Ok(Self {
            dir,
            host,
            service,
            guest,
            service_kind,
            service_exe: spec.service.clone(),
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

    /// `openhcl-vpci inspect PATH --json` against this rig's service (a service binary only).
    pub fn inspect(&self, path: &str) -> Result<String, RigError> {
        let ServiceExe::Binary(bin) = &self.service_exe else {
            return Err(RigError::Inspect("no service binary".to_owned()));
        };
        let out = Command::new(bin)
            .arg("inspect")
            .arg(path)
            .arg("--json")
            .arg("--control")
            .arg(self.dir.join("control.sock"))
            .output()
            .map_err(io("run inspect"))?;
        if !out.status.success() {
            return Err(RigError::Inspect(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
