//! What a run is made of ([`VmSpec`]) and the bounds that end it ([`RunLimits`]).

use super::{ChaosSpec, GuestStall};
use guest_linux::GuestConfig;
use host_sim::BusConfig;
use std::time::Duration;
use vpci_relay::RelayConfig;

/// Bounds that end a run that would not end by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunLimits {
    /// The most guest steps.
    pub max_steps: u64,
    /// The latest virtual time.
    pub max_time: Duration,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            max_steps: 20_000,
            max_time: Duration::from_secs(600),
        }
    }
}

/// What one run is made of.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// The host's buses.
    pub buses: Vec<BusConfig>,
    /// The guest's configuration (one guest model per bus).
    pub guest: GuestConfig,
    /// The relay's configuration, or `None` for a direct run.
    pub relay: Option<RelayConfig>,
    /// Run bounds.
    pub limits: RunLimits,
    /// Whether to record the message trace (charts and replays need it; exploration not).
    pub record: bool,
    /// A host that acts at random moments (besides its script), if any.
    pub chaos: Option<ChaosSpec>,
    /// The guest of one bus stalls for a while, or from some time on.
    pub stall: Option<GuestStall>,
    /// What each bus's relay inspect tree must hold at the end of a run through the relay:
    /// (bus, path, JSON value).
    pub checks: Vec<(usize, String, serde_json::Value)>,
    /// The relay's safeguards (test builds only: every one is on otherwise).
    #[cfg(feature = "safeguard-switches")]
    pub safeguards: vpci_relay::Safeguards,
}

impl VmSpec {
    /// A hot-plug run of `model` through the relay (default configuration): one bus with one
    /// NIC in slot 1, no time or step bound (a long haul or soak bounds itself by its cycles),
    /// nothing recorded, no chaos or stall, every safeguard on.
    pub fn hot_plug(model: guest_linux::KernelModel) -> Self {
        let mut guest = GuestConfig::new(model);
        guest.trace = false;
        Self {
            buses: vec![BusConfig {
                functions: vec![host_sim::FunctionSpec::nic(1)],
                ..BusConfig::default()
            }],
            guest,
            relay: Some(RelayConfig::default()),
            limits: RunLimits {
                max_steps: u64::MAX,
                max_time: Duration::from_secs(1_000_000),
            },
            record: false,
            chaos: None,
            stall: None,
            checks: Vec::new(),
            #[cfg(feature = "safeguard-switches")]
            safeguards: vpci_relay::Safeguards::ALL_ON,
        }
    }
}
