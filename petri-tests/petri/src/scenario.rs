//! Scenarios: what the host does, to which guest, and what must (not) happen. Written as
//! TOML files; the race catalogue is built in (`scenarios/*.toml`, compiled into the binary).
//!
//! ```toml
//! name = "c2-eject-during-interrupt-setup"
//! title = "EJECT while a driver sets up its interrupt"
//! catalogue = "C2"
//! schedules = 200
//!
//! [[bus]]                       # a host_sim bus: functions, policy, script
//! functions = [{ slot = 1 }]
//! [[bus.script.steps]]
//! when = { received = { message = "CREATE_INTERRUPT_MESSAGE3", slot = 1 } }
//! action = { kind = "eject", slot = 1 }
//!
//! [[expect]]                    # checked by `petri run` and the test suite
//! guest = "linux-6.2"
//! relay = false
//! result = "fail"
//! kinds = ["null_deref"]
//! ```

use crate::vm::{RunLimits, VmSpec};
use guest_linux::{DriverBinding, DriverConfig, GuestConfig, KernelModel};
use host_sim::{BusConfig, Time};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;
use thiserror::Error;
use vpci_relay::RelayConfig;

/// A guest petri can run: one of our executable models, or the real Linux driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GuestKind {
    /// The Linux 6.2 model (before the 2023 series).
    Linux62,
    /// The Linux 6.3 model (after it).
    Linux63,
    /// The real `pci-hyperv.c` of Debian 11 (5.10: no per-bus `state_lock`), in user space.
    Debian510,
    /// The real `pci-hyperv.c` of Debian 12 (6.1: the whole series), in user space.
    Debian61,
    /// The real `pci-hyperv.c` of Debian 13 (6.12: 6.1's fixes and later ones), in user space.
    Debian612,
}

impl GuestKind {
    /// The guest models, in table order.
    pub const ALL: [GuestKind; 2] = [GuestKind::Linux62, GuestKind::Linux63];

    /// The real drivers, in table order.
    pub const REAL: [GuestKind; 3] = [
        GuestKind::Debian510,
        GuestKind::Debian61,
        GuestKind::Debian612,
    ];

    /// The guest's name (`linux-6.2`, `linux-6.3`, `debian-5.10`, `debian-6.1`,
    /// `debian-6.12`).
    pub fn name(self) -> &'static str {
        match self {
            GuestKind::Linux62 => KernelModel::Linux62.name(),
            GuestKind::Linux63 => KernelModel::Linux63.name(),
            GuestKind::Debian510 => "debian-5.10",
            GuestKind::Debian61 => "debian-6.1",
            GuestKind::Debian612 => "debian-6.12",
        }
    }

    /// The model behind a model guest (`None` for a real driver).
    pub fn model(self) -> Option<KernelModel> {
        match self {
            GuestKind::Linux62 => Some(KernelModel::Linux62),
            GuestKind::Linux63 => Some(KernelModel::Linux63),
            GuestKind::Debian510 | GuestKind::Debian61 | GuestKind::Debian612 => None,
        }
    }

    /// The real driver behind a real guest (`None` for a model).
    pub fn driver(self) -> Option<kernel_shim::DriverVersion> {
        match self {
            GuestKind::Debian510 => Some(kernel_shim::DriverVersion::Debian5_10),
            GuestKind::Debian61 => Some(kernel_shim::DriverVersion::Debian6_1),
            GuestKind::Debian612 => Some(kernel_shim::DriverVersion::Debian6_12),
            GuestKind::Linux62 | GuestKind::Linux63 => None,
        }
    }

    /// Parses `linux-6.2`, `6.2`, `linux-6.3`, `6.3`, `debian-5.10`, `5.10`, `debian-6.1`, `6.1`,
    /// `debian-6.12` or `6.12` (in any case).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        let text = text.as_str();
        let version = text
            .strip_prefix("linux-")
            .or_else(|| text.strip_prefix("debian-"))
            .unwrap_or(text);
        match (
            version,
            text.starts_with("linux-"),
            text.starts_with("debian-"),
        ) {
            ("6.2", _, false) => Some(GuestKind::Linux62),
            ("6.3", _, false) => Some(GuestKind::Linux63),
            ("5.10", false, _) => Some(GuestKind::Debian510),
            ("6.1", false, _) => Some(GuestKind::Debian61),
            ("6.12", false, _) => Some(GuestKind::Debian612),
            _ => None,
        }
    }
}

impl fmt::Display for GuestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl<'de> Deserialize<'de> for GuestKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        GuestKind::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown guest {text:?} (expected \"linux-6.2\", \"linux-6.3\", \"debian-5.10\", \
                 \"debian-6.1\" or \"debian-6.12\")"
            ))
        })
    }
}

/// What a guest's device driver does (the NVMe-like driver of the models).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuestOptions {
    /// MSI-X vectors the driver sets up in probe.
    pub vectors: u8,
    /// Whether the driver's remove path reads its BAR (NVMe's does: that is how C7 bites).
    pub remove_reads_bar: bool,
    /// Whether the driver's probe reads its BAR.
    pub probe_reads_bar: bool,
    /// The guest on one bus stops: from then on none of its contexts runs and nothing
    /// reaches it, as if its kernel were wedged on that bus, while the other buses go on. A
    /// stalled bus is exempt from the checks of what the guest holds; what the host sees (an
    /// EJECT unanswered, a lost bus) still counts. A real driver's bus stalls until the run
    /// settles (or for its duration) and then goes on, so the teardown can remove it.
    pub stall: Option<Stall>,
}

/// Where and when a guest stalls.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Stall {
    /// The bus (its index among the scenario's buses).
    pub bus: usize,
    /// From when on.
    pub at: Time,
    /// For how long (virtual time); without it, the rest of the run (a model) or until the
    /// run has settled (a real driver).
    #[serde(default, rename = "for")]
    pub duration: Option<Time>,
}

impl Stall {
    /// The stall as a run takes it.
    pub fn spec(&self) -> crate::vm::GuestStall {
        crate::vm::GuestStall {
            bus: self.bus,
            from: self.at.0,
            until: self.duration.map(|d| self.at.0.saturating_add(d.0)),
        }
    }
}

/// A check of the relay's inspect tree at the end of every run through the relay.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InspectCheck {
    /// The bus (its index among the scenario's buses).
    pub bus: usize,
    /// The path in the bus's relay tree, e.g. `changes/outstanding/change`.
    pub path: String,
    /// What the path must hold, as its JSON value (a string, a number, a boolean, a table).
    pub equals: serde_json::Value,
}

impl Default for GuestOptions {
    fn default() -> Self {
        let d = DriverConfig::default();
        Self {
            vectors: d.vectors,
            remove_reads_bar: d.remove_reads_bar,
            probe_reads_bar: d.probe_reads_bar,
            stall: None,
        }
    }
}

/// The relay's tunables for a scenario (the rest as in production).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayOptions {
    /// Quiet time before a function counts as settled.
    pub settle: Time,
    /// The longest a change is held for a guest that does not finish it.
    pub max_hold: Time,
    /// Whether (and when) each bus's relay is serviced during a run: saved, dropped and
    /// restored.
    pub servicing: Servicing,
    /// Test-only: what a lossy servicing does to each saved state (see
    /// [`vpci_relay::sim::RelayRig::set_tamper`]); never read from a file.
    #[cfg(feature = "safeguard-switches")]
    #[serde(skip)]
    pub tamper: Option<vpci_relay::sim::Tamper>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        let c = RelayConfig::default();
        Self {
            settle: Time(c.settle),
            max_hold: Time(c.max_hold),
            servicing: Servicing::Off,
            #[cfg(feature = "safeguard-switches")]
            tamper: None,
        }
    }
}

/// When a run services each bus's relay (as a paravisor update would: the driver stopped at
/// a packet boundary, its state saved, encoded and decoded, the old relay dropped and a new
/// one restored over the same channels, clock and BAR backing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Servicing {
    /// Never (the relay runs as one version throughout).
    #[default]
    Off,
    /// At every scheduling point of the run: each time the scheduler decides what runs
    /// next, every bus's relay is serviced first; and whenever host packets reach a
    /// relay's channel with nothing waiting from the guest, before the relay reads them
    /// (so the stopped bus queues them and the restored relay takes them first).
    EveryStep,
}

impl Servicing {
    /// The name a scenario file and `--servicing` use.
    pub fn name(self) -> &'static str {
        match self {
            Servicing::Off => "off",
            Servicing::EveryStep => "every-step",
        }
    }
}

/// The result a run set must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// No schedule fails.
    Pass,
    /// At least one schedule fails (the harness has teeth).
    Fail,
}

/// One expectation: for this guest, with or without the relay.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// The guest.
    pub guest: GuestKind,
    /// Through the relay (`true`) or direct.
    pub relay: bool,
    /// What the runs must show.
    pub result: Expected,
    /// For `fail`: the failure kinds that count (`null_deref`, `hang`, ...); any if empty.
    /// A kind petri does not know is refused when the file is read.
    #[serde(default, deserialize_with = "known_kinds")]
    pub kinds: Vec<String>,
}

/// Failure kinds, each one of [`crate::outcome::FAILURE_KINDS`].
fn known_kinds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let kinds = Vec::<String>::deserialize(d)?;
    for k in &kinds {
        if !crate::outcome::FAILURE_KINDS.contains(&k.as_str()) {
            return Err(serde::de::Error::custom(format!(
                "unknown failure kind {k:?} (known kinds: {})",
                crate::outcome::FAILURE_KINDS.join(", ")
            )));
        }
    }
    Ok(kinds)
}

/// Run bounds, as a scenario file writes them.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The most guest steps and deliveries per run.
    pub max_steps: u64,
    /// The latest virtual time.
    pub max_time: Time,
}

impl Default for Limits {
    fn default() -> Self {
        let d = RunLimits::default();
        Self {
            max_steps: d.max_steps,
            max_time: Time(d.max_time),
        }
    }
}

fn default_schedules() -> u64 {
    100
}

/// A scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name (what `petri run NAME` takes).
    pub name: String,
    /// A one-line title.
    #[serde(default)]
    pub title: String,
    /// The catalogue entry it reproduces (`C1`...), if any.
    #[serde(default)]
    pub catalogue: Option<String>,
    /// What happens, in prose.
    #[serde(default)]
    pub description: String,
    /// How many schedules a run explores by default.
    #[serde(default = "default_schedules")]
    pub schedules: u64,
    /// The guest's device driver.
    #[serde(default)]
    pub guest: GuestOptions,
    /// The relay's tunables.
    #[serde(default)]
    pub relay: RelayOptions,
    /// Run bounds.
    #[serde(default)]
    pub limits: Limits,
    /// The host's buses (at least one).
    #[serde(rename = "bus")]
    pub buses: Vec<BusConfig>,
    /// What must (not) happen.
    #[serde(default)]
    pub expect: Vec<Expectation>,
    /// What the relay's inspect tree must hold at the end of every run through the relay.
    #[serde(default, rename = "check")]
    pub checks: Vec<InspectCheck>,
    /// A host that also acts at random moments (hot-add, eject, drop, re-list, resend,
    /// eject what it dropped...), seeded by each run's seed.
    #[serde(default)]
    pub chaos: Option<crate::vm::ChaosSpec>,
}

/// Why a scenario file cannot be used.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or does not describe a scenario (the message names the line).
    #[error("{origin}: {message}")]
    Parse {
        /// The file (or built-in scenario).
        origin: String,
        /// The parser's message, with the line and column.
        message: String,
    },
    /// The scenario is well-formed but cannot run.
    #[error("{origin}: {message}")]
    Invalid {
        /// The file (or built-in scenario).
        origin: String,
        /// What is wrong.
        message: String,
    },
}

impl Scenario {
    /// Parses a scenario from TOML text; `origin` names it in errors.
    pub fn from_toml(origin: &str, text: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            origin: origin.to_owned(),
            message: located(text, &e),
        })?;
        scenario.validate(origin, text)?;
        Ok(scenario)
    }

    /// Reads and parses a scenario file.
    pub fn from_file(path: &str) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(path, &text)
    }

    fn validate(&self, origin: &str, text: &str) -> Result<(), ScenarioError> {
        let invalid = |message: String| ScenarioError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let at = |line: Option<usize>, message: String| {
            invalid(match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            })
        };
        if self.buses.is_empty() {
            return Err(invalid("a scenario needs at least one [[bus]]".to_owned()));
        }
        if self.schedules == 0 {
            return Err(at(
                line_of(text, None, "schedules"),
                "schedules must be at least 1".to_owned(),
            ));
        }
        for (i, bus) in self.buses.iter().enumerate() {
            host_sim::HostBus::new(bus.clone())
                .map_err(|e| invalid(format!("bus {} ({}): {e}", i + 1, bus.name)))?;
        }
        // The driver sets up `vectors` MSI-X vectors on every function it binds to: each
        // function the host may offer must have that many table entries.
        for (i, bus) in self.buses.iter().enumerate() {
            let offered = bus
                .functions
                .iter()
                .chain(bus.script.steps.iter().filter_map(|s| match &s.action {
                    host_sim::HostAction::HotAdd(f) | host_sim::HostAction::Replace(f) => Some(f),
                    _ => None,
                }));
            for f in offered {
                if let Some(msix) = &f.msix {
                    if u16::from(self.guest.vectors) > msix.table_size {
                        return Err(at(
                            line_of(text, Some("guest"), "vectors"),
                            format!(
                                "[guest] vectors = {} is more than the {} entries of the MSI-X \
                                 table of bus {} slot {}",
                                self.guest.vectors,
                                msix.table_size,
                                i + 1,
                                f.slot
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(stall) = self.guest.stall.filter(|s| s.bus >= self.buses.len()) {
            return Err(at(
                line_of(text, Some("guest"), "stall"),
                format!(
                    "[guest] stall names bus {}, the scenario has {} (buses count from 0)",
                    stall.bus,
                    self.buses.len()
                ),
            ));
        }
        if let Some(c) = self.checks.iter().find(|c| c.bus >= self.buses.len()) {
            return Err(invalid(format!(
                "[[check]] of {} names bus {}, the scenario has {} (buses count from 0)",
                c.path,
                c.bus,
                self.buses.len()
            )));
        }
        for e in &self.expect {
            if e.result == Expected::Pass && !e.kinds.is_empty() {
                return Err(invalid(format!(
                    "expectation for {} ({}): kinds are only for result = \"fail\"",
                    e.guest,
                    if e.relay { "relay" } else { "direct" }
                )));
            }
        }
        Ok(())
    }

    /// The expectation for a guest and mode, if the scenario states one.
    pub fn expectation(&self, guest: GuestKind, relay: bool) -> Option<&Expectation> {
        self.expect
            .iter()
            .find(|e| e.guest == guest && e.relay == relay)
    }

    /// The VM a run of this scenario builds.
    pub fn vm_spec(&self, guest: GuestKind, relay: bool, record: bool) -> VmSpec {
        // A real guest does not use the model's configuration; the 6.3 model stands in.
        let mut config = GuestConfig::new(guest.model().unwrap_or(KernelModel::Linux63));
        config.trace = record;
        config.drivers = vec![DriverBinding {
            vendor_id: None,
            device_id: None,
            driver: DriverConfig {
                vectors: self.guest.vectors,
                remove_reads_bar: self.guest.remove_reads_bar,
                probe_reads_bar: self.guest.probe_reads_bar,
                ..DriverConfig::default()
            },
        }];
        VmSpec {
            buses: self.buses.clone(),
            guest: config,
            relay: relay.then(|| RelayConfig {
                settle: self.relay.settle.0,
                max_hold: self.relay.max_hold.0,
                ..RelayConfig::default()
            }),
            limits: RunLimits {
                max_steps: self.limits.max_steps,
                max_time: self.limits.max_time.0,
            },
            record,
            chaos: self.chaos,
            stall: self.guest.stall.map(|s| s.spec()),
            checks: self
                .checks
                .iter()
                .map(|c| (c.bus, c.path.clone(), c.equals.clone()))
                .collect(),
            #[cfg(feature = "safeguard-switches")]
            safeguards: vpci_relay::Safeguards::ALL_ON,
        }
    }
}

/// The line (from 1) of `key = ...` in table `[table]` (top level if `None`), if written so.
fn line_of(text: &str, table: Option<&str>, key: &str) -> Option<usize> {
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            current = Some(
                line.trim_matches(|c| c == '[' || c == ']')
                    .trim()
                    .to_owned(),
            );
            continue;
        }
        let Some(rest) = line.strip_prefix(key) else {
            continue;
        };
        if current.as_deref() == table && rest.trim_start().starts_with('=') {
            return Some(n + 1);
        }
    }
    None
}

/// The parser's message with its line: toml's own message names the line and column; when it
/// has only a byte span, the line is worked out here.
fn located(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_owned();
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(1, |before| before.matches('\n').count() + 1);
            format!("line {line}: {message}")
        }
        None => message,
    }
}

/// The built-in scenario files: (name, TOML text).
const FILES: &[(&str, &str)] = &[
    ("c1", include_str!("../scenarios/c1.toml")),
    ("c2", include_str!("../scenarios/c2.toml")),
    ("c2-failed", include_str!("../scenarios/c2-failed.toml")),
    ("c3", include_str!("../scenarios/c3.toml")),
    ("c4", include_str!("../scenarios/c4.toml")),
    ("c5", include_str!("../scenarios/c5.toml")),
    ("c7", include_str!("../scenarios/c7.toml")),
    ("c8", include_str!("../scenarios/c8.toml")),
    ("re-add", include_str!("../scenarios/re-add.toml")),
    (
        "drop-then-eject",
        include_str!("../scenarios/drop-then-eject.toml"),
    ),
    (
        "hostile-host",
        include_str!("../scenarios/hostile-host.toml"),
    ),
    ("chaos", include_str!("../scenarios/chaos.toml")),
];

/// The built-in scenarios: the race catalogue and the host orders the relay must survive.
pub fn catalogue() -> Vec<Scenario> {
    FILES
        .iter()
        .filter_map(|(name, text)| Scenario::from_toml(name, text).ok())
        .collect()
}

/// The built-in scenario a name means: its name in any case (`c2`, `C2`), else the first
/// whose catalogue entry it is (`C5`).
fn builtin_name(name: &str) -> Option<&'static str> {
    let name = name.trim();
    if let Some((n, _)) = FILES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Some(n);
    }
    catalogue()
        .into_iter()
        .find(|s| {
            s.catalogue
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(name))
        })
        .and_then(|s| FILES.iter().find(|(n, _)| *n == s.name).map(|(n, _)| *n))
}

/// A built-in scenario's TOML text, by name or catalogue id (as [`load`] finds it).
pub fn builtin_text(name: &str) -> Option<&'static str> {
    let name = builtin_name(name)?;
    FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// A scenario by built-in name (in any case) or catalogue id (`C2`), or file path.
pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
    if let Some(name) = builtin_name(name_or_path) {
        if let Some(s) = catalogue().into_iter().find(|s| s.name == name) {
            return Ok(s);
        }
    }
    if std::path::Path::new(name_or_path).exists() {
        return Scenario::from_file(name_or_path);
    }
    let names: Vec<String> = catalogue().into_iter().map(|s| s.name).collect();
    Err(ScenarioError::Invalid {
        origin: name_or_path.to_owned(),
        message: format!(
            "no such built-in scenario or file (built in: {})",
            names.join(", ")
        ),
    })
}

/// A duration for reports.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
