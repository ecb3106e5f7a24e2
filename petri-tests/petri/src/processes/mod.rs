//! Multi-process runs (`petri run SCENARIO --processes`): host_sim in one process, the
//! `openhcl-vpci` service in another, the guest (a Linux model, or the real driver in its
//! kernel_shim child) in a third, over the service's control plane and real rings (memfds and
//! eventfds). Concurrency and time are real, so a run is not replayable: it is one sample of
//! the interleavings the machine happened to produce. The verdict uses the same end-of-run
//! checks as a simulated run ([`crate::outcome::compare_functions`] and friends), applied to
//! the last state each side reported once the run went quiet (`report.rs`).
//!
//! The endpoints are petri itself (`petri endpoint host|guest|service`, hidden), so one
//! binary carries them: the host and the model guest are `vpci_endpoints`' (the same the
//! service's own process tests run), with petri's scenarios for their settings; the real
//! driver's guest is petri's ([`real`]). Runs go through the service only (there is no direct
//! mode across processes), so a failure expected of a guest is never met here ([`judge`]).

mod expect;
pub mod real;
mod report;
mod updates;

pub use expect::{Judgement, judge};

use crate::outcome::Outcome;
use crate::scenario::{self, GuestKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vpci_endpoints::bus_name;
use vpci_endpoints::host::HostSpec;
use vpci_endpoints::model::ModelSpec;
use vpci_endpoints::report::{GuestState, HostState};
use vpci_endpoints::rig::{Launch, Rig, RigSpec, ServiceExe, service_binary};

/// Runs one endpoint role in this process (`petri endpoint ROLE --socket S --spec SPEC`).
///
/// Roles: `host` (spec as [`HostSpec::parse`], or `scenario=NAME` for the scenario's buses,
/// with `storm=N`), `guest` (`guest=6.2|6.3|5.10|6.1|6.12`,
/// optionally `scenario=NAME` for the model's driver options and the real driver's vectors),
/// `service` (`socket` is unused: the service's own arguments follow as for `openhcl-vpci
/// serve`, see [`service`]).
pub fn endpoint(role: &str, socket: &Path, spec: &str) -> Result<(), String> {
    match role {
        "host" => vpci_endpoints::host::run(socket, host_spec(spec)?).map_err(|e| e.to_string()),
        "guest" => {
            let (guest, scenario) = guest_spec(spec)?;
            let options = scenario
                .as_ref()
                .map(|s| s.guest.clone())
                .unwrap_or_default();
            match guest.driver() {
                Some(version) => {
                    real::run(socket, version, options.vectors).map_err(|e| e.to_string())
                }
                None => {
                    let s = match scenario {
                        Some(s) => s,
                        None => scenario::load("c1").map_err(|e| e.to_string())?,
                    };
                    let spec = ModelSpec {
                        config: s.vm_spec(guest, true, false).guest,
                        release_delay: Duration::ZERO,
                    };
                    vpci_endpoints::model::run(socket, spec).map_err(|e| e.to_string())
                }
            }
        }
        other => Err(format!(
            "unknown endpoint role {other:?}: host, guest or service"
        )),
    }
}

/// The host's spec: `scenario=NAME|PATH` takes the scenario's buses; the rest is
/// [`HostSpec::parse`]'s.
fn host_spec(spec: &str) -> Result<HostSpec, String> {
    let mut scenario = None;
    let mut rest = Vec::new();
    for kv in spec.split(',') {
        match kv.strip_prefix("scenario=") {
            Some(s) => scenario = Some(scenario::load(s).map_err(|e| e.to_string())?),
            None => rest.push(kv),
        }
    }
    let seed = rest
        .iter()
        .find_map(|kv| kv.strip_prefix("seed="))
        .map(|v| v.parse::<u64>().map_err(|_| format!("bad seed {v:?}")))
        .transpose()?;
    rest.retain(|kv| !kv.starts_with("seed="));
    let mut host = HostSpec::parse(&rest.join(",")).map_err(|e| e.to_string())?;
    if let Some(s) = scenario {
        host.buses = s.buses;
        host.chaos = s.chaos.map(|c| host_sim::ChaosSpec {
            seed: seed.unwrap_or(0),
            ..c
        });
        host.validate().map_err(|e| e.to_string())?;
    }
    Ok(host)
}

fn guest_spec(spec: &str) -> Result<(GuestKind, Option<scenario::Scenario>), String> {
    let (mut guest, mut scenario) = (GuestKind::Linux62, None);
    for kv in spec.split(',').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("guest", g)) => guest = GuestKind::parse(g).ok_or(format!("bad guest {g:?}"))?,
            Some(("scenario", s)) => scenario = Some(scenario::load(s).map_err(|e| e.to_string())?),
            _ => return Err(format!("bad {kv:?}")),
        }
    }
    Ok((guest, scenario))
}

/// Runs the service (petri's copy of `openhcl-vpci serve`) with these sockets and settings.
pub fn service(
    host: PathBuf,
    guest: PathBuf,
    control: PathBuf,
    settle: Option<Duration>,
    max_hold: Option<Duration>,
) -> Result<(), String> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let config = openhcl_vpci::config::ServiceConfig {
        settle,
        max_hold,
        ..Default::default()
    };
    config.validate().map_err(|e| e.to_string())?;
    let endpoints = openhcl_vpci::service::Endpoints {
        host,
        guest,
        control,
        connect_timeout: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(5),
    };
    openhcl_vpci::service::Service::start(config, endpoints)
        .and_then(|s| s.run())
        .map_err(|e| format!("{e:#}"))
}

/// What a multi-process run does.
#[derive(Clone, Debug)]
pub struct ProcessOptions {
    /// The executable with the `endpoint` subcommand (petri).
    pub exe: PathBuf,
    /// Hot-add/eject cycles per bus after the scenario (0: none).
    pub storm: u32,
    /// How many of the scenario's last buses the host offers late (after the message that
    /// every boot-time offer was delivered; 0: none).
    pub late_buses: usize,
    /// `openhcl-vpci update`s in a row while the run goes on (0: none): the service replaces
    /// its own image each time, its buses carried across; every update must succeed. Needs
    /// the service binary (not petri's copy of the service).
    pub updates: u32,
    /// How long nothing must happen for the run to count as settled.
    pub quiet: Duration,
    /// The bound on the whole run (a run still busy then is a `time_limit`).
    pub limit: Duration,
    /// Forward every line the processes write to stderr.
    pub verbose: bool,
}

/// How a multi-process run ended.
#[derive(Clone, Debug)]
pub struct ProcessRun {
    /// The verdict.
    pub outcome: Outcome,
    /// Wall-clock time of the run, teardown included.
    pub elapsed: Duration,
    /// The storm's or the chaotic host's summary lines (`storm bus0 cycles=... ms=...`,
    /// `chaos bus0 actions=... rescinded=...`), if there was one.
    pub storm: Vec<String>,
    /// How many `openhcl-vpci update`s succeeded (each answered by the new image).
    pub updates: u32,
    /// How the service ran.
    pub service: String,
    /// Every `@@` line the guest printed.
    pub guest_lines: Vec<String>,
    /// Every `@@` line the host printed.
    pub host_lines: Vec<String>,
    /// The script steps that never fired in this run, as `(bus, step)` counting from 0, in
    /// order: from the host's last state of each bus (every step of a bus it never reported).
    pub unfired: Vec<(usize, usize)>,
}

/// Runs `scenario` (by name or path) once with `guest` through the service, in three
/// processes.
pub fn run(
    scenario_ref: &str,
    guest: GuestKind,
    opts: &ProcessOptions,
) -> Result<ProcessRun, String> {
    let sc = scenario::load(scenario_ref).map_err(|e| e.to_string())?;
    playable(&sc, opts)?;
    if guest.driver().is_some() && sc.buses.len() > real::MAX_BUSES {
        return Err(format!(
            "{}: a real guest runs at most {} buses ({} given)",
            sc.name,
            real::MAX_BUSES,
            sc.buses.len()
        ));
    }
    let service = match service_binary(&opts.exe) {
        Some(bin) => ServiceExe::Binary(bin),
        None if opts.updates > 0 => {
            return Err(
                "updates need the openhcl-vpci binary (build the workspace, or set OPENHCL_VPCI_BIN)"
                    .to_owned(),
            );
        }
        None => ServiceExe::Endpoint,
    };
    let spec = RigSpec {
        launch: Launch::Subcommand(opts.exe.clone()),
        service,
        host: format!(
            "scenario={scenario_ref},storm={},late={},seed={}",
            opts.storm,
            opts.late_buses,
            chaos_seed()
        ),
        guest: format!("guest={},scenario={scenario_ref}", guest.name()),
        service_args: vec![
            "--settle".to_owned(),
            format!("{}ms", sc.relay.settle.0.as_millis()),
            "--max-hold".to_owned(),
            format!("{}ms", sc.relay.max_hold.0.as_millis()),
        ],
        service_log: "warn",
        verbose: opts.verbose,
    };
    let started = Instant::now();
    let deadline = started + opts.limit;
    let name = format!("petri-{}-{}", sc.name, guest.name());
    let mut rig = Rig::start(&name, &spec).map_err(|e| e.to_string())?;
    let buses = sc.buses.len();
    let updater = match (&spec.service, opts.updates) {
        (ServiceExe::Binary(bin), n) if n > 0 => {
            Some(updates::start(bin.clone(), rig.dir.join("control.sock"), n))
        }
        _ => None,
    };
    // A storm's or a chaotic host's summary line on every bus: what it drove is over.
    let summary = match (opts.storm > 0, sc.chaos.is_some()) {
        (true, _) => Some("storm"),
        (false, true) => Some("chaos"),
        (false, false) => None,
    };
    if let Some(kind) = summary {
        for i in 0..buses {
            let prefix = format!("{kind} {} ", bus_name(i));
            let left = deadline.saturating_duration_since(Instant::now());
            rig.host
                .wait_for(left, |l| l.starts_with(&prefix))
                .map_err(|e| e.to_string())?;
        }
    }
    let updated = updater.map(|u| u.finish(deadline));
    let settled = wait_settled(&rig, buses, opts.quiet, deadline);
    let outcome = if settled {
        verdict(&rig, buses)
    } else {
        Outcome::TimeLimit
    };
    let outcome = if outcome.failed() || sc.checks.is_empty() {
        outcome
    } else {
        inspect_checks(&rig, &sc)
    };
    // An update that failed is the service's failure, never the guest's.
    let outcome = match &updated {
        Some(Err(reason)) if !outcome.failed() => Outcome::HarnessError {
            reason: reason.clone(),
        },
        _ => outcome,
    };
    let host_lines = rig.host.seen();
    let unfired = unfired_steps(&sc, &host_lines);
    let outcome = teardown(&mut rig, guest, outcome);
    let storm = rig
        .host
        .seen()
        .into_iter()
        .filter(|l| l.starts_with("storm ") || l.starts_with("chaos "))
        .collect();
    Ok(ProcessRun {
        outcome,
        elapsed: started.elapsed(),
        storm,
        updates: match updated {
            Some(Ok(n)) => n,
            _ => 0,
        },
        service: rig.service_kind.clone(),
        guest_lines: rig.guest.seen(),
        host_lines,
        unfired,
    })
}

/// Refuses what a scenario asks that a run across processes cannot play, rather than pass a
/// run that never played it: a guest stall (the simulated scheduler's), servicing at every
/// scheduling point (there are none across processes: `--updates` services the real
/// service), and a chaotic host together with a storm.
fn playable(sc: &scenario::Scenario, opts: &ProcessOptions) -> Result<(), String> {
    let refuse = |what: &str| {
        Err(format!(
            "{}: {what} is not played across processes; run it without --processes",
            sc.name
        ))
    };
    if sc.guest.stall.is_some() {
        return refuse("[guest] stall");
    }
    if sc.relay.servicing != scenario::Servicing::Off {
        return refuse(
            "[relay] servicing (each scheduling point of a simulated run; across processes \
             `--updates N` replaces the service itself)",
        );
    }
    if sc.chaos.is_some() && opts.storm > 0 {
        return Err(format!(
            "{}: a chaotic host ([chaos]) and --storm exclude each other",
            sc.name
        ));
    }
    Ok(())
}

/// A chaotic host's seed for one run: runs across processes do not replay, so each run's
/// host plays other choices.
fn chaos_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The scenario's `[[check]]`s against the running service's inspect tree (each bus's relay
/// at `buses/BUS/relay`, or its final tree at `buses/BUS/last_relay` once it stopped), taken
/// once the run settled: the first that does not hold is `check_failed`.
fn inspect_checks(rig: &Rig, sc: &scenario::Scenario) -> Outcome {
    let socket = rig.dir.join("control.sock");
    let stream = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            return Outcome::HarnessError {
                reason: format!("the service's control socket for the checks: {e}"),
            };
        }
    };
    for check in &sc.checks {
        let bus = bus_name(check.bus);
        let path = check.path.trim_matches('/');
        let got = ["relay", "last_relay"]
            .iter()
            .find_map(|tree| {
                let text = openhcl_vpci::inspect_server::query(
                    &stream,
                    &format!("buses/{bus}/{tree}/{path}"),
                    true,
                )
                .ok()?;
                serde_json::from_str::<serde_json::Value>(&text).ok()
            })
            .unwrap_or_else(|| serde_json::Value::String("nothing (no such path)".to_owned()));
        if got != check.equals {
            return Outcome::CheckFailed {
                bus: check.bus,
                path: check.path.clone(),
                expected: check.equals.to_string(),
                got: got.to_string(),
            };
        }
    }
    Outcome::Ok
}

/// The script steps of `sc` that had not fired by the host's last state of their bus among
/// `host_lines` (all of a bus's steps if the host never reported it).
fn unfired_steps(sc: &scenario::Scenario, host_lines: &[String]) -> Vec<(usize, usize)> {
    let mut unfired = Vec::new();
    for (i, bus) in sc.buses.iter().enumerate() {
        let steps = bus.script.steps.len();
        match HostState::last(host_lines, &bus_name(i)) {
            Some(state) => unfired.extend(
                state
                    .unfired
                    .iter()
                    .filter_map(|n| n.checked_sub(1))
                    .filter(|&step| step < steps)
                    .map(|step| (i, step)),
            ),
            None => unfired.extend((0..steps).map(|step| (i, step))),
        }
    }
    unfired
}

/// Waits until the run has settled: no process printed a line for `quiet`, and no host bus
/// still has something of its own to play (an answer held back by a slow host, a script step
/// waiting on its time). Quiet output alone is not enough: a guest waiting on a slow host's
/// answers prints nothing, and a verdict taken then would judge a probe half done (it did:
/// a host answering 300 ms late was judged settled before its first script step fired).
/// False at the deadline.
fn wait_settled(rig: &Rig, buses: usize, quiet: Duration, deadline: Instant) -> bool {
    loop {
        if !rig.wait_quiet(quiet, deadline) {
            return false;
        }
        let host = rig.host.seen();
        let busy = (0..buses)
            .any(|i| HostState::last(&host, &bus_name(i)).is_some_and(|s| s.busy && !s.rescinded));
        if !busy {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first failure: the guest's own, else each bus's end-of-run check.
fn verdict(rig: &Rig, buses: usize) -> Outcome {
    let guest = rig.guest.seen();
    let host = rig.host.seen();
    for i in 0..buses {
        let bus = bus_name(i);
        if let Some(f) = guest
            .iter()
            .find(|l| l.starts_with(&format!("guest failure {bus} ")))
        {
            if let Some(o) = report::parse_failure(f, i) {
                return o;
            }
        }
    }
    for i in 0..buses {
        let bus = bus_name(i);
        let last_host = HostState::last(&host, &bus);
        let last_guest = GuestState::last(&guest, &bus);
        let o = report::verdict(i, last_host.as_ref(), last_guest.as_ref());
        if o.failed() {
            return o;
        }
    }
    Outcome::Ok
}

/// Ends the run: a real driver is removed and its module unloaded (a crash or leak on the way
/// is a finding, as in a simulated run); then the service stops on SIGTERM.
fn teardown(rig: &mut Rig, guest: GuestKind, outcome: Outcome) -> Outcome {
    let mut outcome = outcome;
    if guest.driver().is_some() {
        rig.guest.tell("teardown");
        let done = rig
            .guest
            .wait_for(Duration::from_secs(30), |l| l.starts_with("guest done "));
        if !outcome.failed() {
            if let Some(f) = rig
                .guest
                .seen()
                .iter()
                .find(|l| l.starts_with("guest failure "))
            {
                outcome = report::parse_failure(f, 0).unwrap_or(outcome);
            }
        }
        match done {
            Ok(line) if !outcome.failed() => {
                let leaks = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("leaks="))
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(0);
                if leaks > 0 {
                    outcome = Outcome::Guest {
                        bus: 0,
                        failure: "leaked_device".to_owned(),
                        context: "module exit".to_owned(),
                        function: "cleanup_module".to_owned(),
                        message: format!("{leaks} allocation(s) left"),
                    };
                }
            }
            Err(e) if !outcome.failed() => {
                outcome = Outcome::HarnessError {
                    reason: format!("the real guest did not finish its teardown: {e}"),
                }
            }
            _ => {}
        }
    }
    rig.service.signal(rustix::process::Signal::TERM);
    let _ = rig.service.wait_exit(Duration::from_secs(20));
    let _ = rig.guest.wait_exit(Duration::from_secs(20));
    let _ = rig.host.wait_exit(Duration::from_secs(5));
    outcome
}
