//! A bus's configuration: name, protocol versions, boot functions, host policy, script.

use crate::script::Script;
use crate::serde_util::Time;
use crate::spec::{FunctionSpec, SpecError};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;
use thiserror::Error;
use vpci_protocol::{ProtocolVersion, Status};

/// Everything [`crate::HostBus::new`] needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// The bus's instance name (traces and inspect only).
    pub name: String,
    /// The protocol versions the host accepts (written `"1.4"` in a scenario file). Default:
    /// 1.2 to 1.6, the set OpenVMM's emulated bus accepts.
    #[serde(
        serialize_with = "serialize_versions",
        deserialize_with = "deserialize_versions"
    )]
    pub versions: Vec<ProtocolVersion>,
    /// The functions present when the guest first asks.
    pub functions: Vec<FunctionSpec>,
    /// How the host behaves where hosts differ.
    pub policy: HostPolicy,
    /// Host actions with their triggers, and per-message response rules.
    pub script: Script,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            name: "vpci0".into(),
            versions: vec![
                ProtocolVersion::V1_2,
                ProtocolVersion::V1_3,
                ProtocolVersion::V1_4,
                ProtocolVersion::V1_5,
                ProtocolVersion::V1_6,
            ],
            functions: Vec::new(),
            policy: HostPolicy::default(),
            script: Script::default(),
        }
    }
}

/// When the host unmaps an ejected function's BARs (and, at rescind, the config window).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Teardown {
    /// As soon as it sends EJECT (what OpenVMM did in issue #3077: the guest's remove path
    /// then faults on a BAR read; catalogue entry C7); a rescind unmaps every BAR and the
    /// config window at once.
    AtEject,
    /// Only when the guest sends EJECTION_COMPLETE (or the eject times out); a rescind
    /// leaves the mappings as they are.
    #[default]
    AtEjectionComplete,
}

/// How the host answers a request naming a slot it does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownSlot {
    /// A completion with this failure status (OpenVMM answers BAD_DATA, 0xC000090B).
    Fail(u32),
    /// No answer at all (the guest waits).
    Ignore,
}

impl Default for UnknownSlot {
    fn default() -> Self {
        Self::Fail(Status::BAD_DATA.0)
    }
}

/// What a config-space access to an absent function gives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbsentConfig {
    /// Reads all ones, writes dropped (a PCI master abort).
    #[default]
    AllOnes,
    /// An [`crate::Unmapped`] error, which the caller turns into a guest fault.
    Fault,
}

/// Where hosts differ, and the bounds that keep a hostile guest from growing the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostPolicy {
    /// How long the host waits for EJECTION_COMPLETE before removing the function by force
    /// (Hyper-V: 60 s).
    pub eject_timeout: Time,
    /// When an ejected function's BARs are unmapped.
    pub teardown: Teardown,
    /// Requests for a slot the host does not have.
    pub unknown_slot: UnknownSlot,
    /// Config accesses to an absent function.
    pub absent_config: AbsentConfig,
    /// Whether the host sends BUS_RELATIONS after an ejected function is gone.
    pub relations_after_removal: bool,
    /// How long every answer to a guest message takes to leave (a response rule's delay
    /// replaces it). Default: none.
    pub latency: Time,
    /// Interrupts one function may hold; more are refused with BAD_DATA.
    pub max_interrupts_per_function: usize,
    /// Configuration blocks (WRITE_BLOCK) one function keeps; more are refused.
    pub max_config_blocks: usize,
    /// Delayed responses held at once; more are dropped (and reported).
    pub max_delayed_responses: usize,
    /// Events kept for [`crate::HostBus::poll_event`]; the oldest are dropped beyond this.
    pub max_events: usize,
}

impl Default for HostPolicy {
    fn default() -> Self {
        Self {
            eject_timeout: Time(Duration::from_secs(60)),
            teardown: Teardown::default(),
            unknown_slot: UnknownSlot::default(),
            absent_config: AbsentConfig::default(),
            relations_after_removal: false,
            latency: Time::default(),
            max_interrupts_per_function: 256,
            max_config_blocks: 16,
            max_delayed_responses: 1024,
            max_events: 4096,
        }
    }
}

/// Why a [`BusConfig`] cannot make a bus.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The host must accept at least one version.
    #[error("bus {0:?} accepts no protocol version")]
    NoVersions(String),
    /// Two boot functions share a slot.
    #[error("bus {bus:?}: two functions in slot {slot:#x}")]
    DuplicateSlot {
        /// The bus.
        bus: String,
        /// The slot.
        slot: u32,
    },
    /// A boot function's spec is invalid.
    #[error("bus {bus:?}, function in slot {slot:#x}: {error}")]
    Function {
        /// The bus.
        bus: String,
        /// The slot.
        slot: u32,
        /// What is wrong.
        error: SpecError,
    },
}

fn serialize_versions<S: Serializer>(v: &[ProtocolVersion], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|v| v.to_string()))
}

fn deserialize_versions<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ProtocolVersion>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse().map_err(D::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scenario file writes versions as strings and may leave everything else out.
    #[test]
    fn bus_config_from_json() {
        let c: BusConfig = serde_json::from_str(
            r#"{"name": "b1", "versions": ["1.1", "1.3"],
                "functions": [{"slot": 1}],
                "policy": {"teardown": "at_eject", "unknown_slot": "ignore",
                           "eject_timeout": "5s"}}"#,
        )
        .unwrap();
        assert_eq!(c.versions, [ProtocolVersion::V1_1, ProtocolVersion::V1_3]);
        assert_eq!(c.policy.teardown, Teardown::AtEject);
        assert_eq!(c.policy.unknown_slot, UnknownSlot::Ignore);
        assert_eq!(c.policy.eject_timeout.0, Duration::from_secs(5));
        assert_eq!(c.functions, [FunctionSpec::nic(1).with_serial(0)]);
        assert!(serde_json::from_str::<BusConfig>(r#"{"versions": ["2.0"]}"#).is_err());
        assert!(serde_json::from_str::<BusConfig>(r#"{"polcy": {}}"#).is_err());
        let round: BusConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);
    }
}
