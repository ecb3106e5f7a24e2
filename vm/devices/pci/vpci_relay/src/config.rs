//! The relay's configuration: which functions the guest may see, timing, and limits.

use std::time::Duration;
use vpci_protocol::wire::FunctionDescription2;

/// One allow-list rule; `None` fields match anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowRule {
    /// Vendor id.
    pub vendor_id: Option<u16>,
    /// Device id.
    pub device_id: Option<u16>,
    /// Base class code.
    pub base_class: Option<u8>,
    /// Subclass code.
    pub subclass: Option<u8>,
}

impl AllowRule {
    /// A rule that matches every function.
    pub const ANY: Self = Self {
        vendor_id: None,
        device_id: None,
        base_class: None,
        subclass: None,
    };

    /// Whether a function matches this rule.
    pub fn matches(&self, d: &FunctionDescription2) -> bool {
        let Self {
            vendor_id,
            device_id,
            base_class,
            subclass,
        } = *self;
        vendor_id.is_none_or(|v| v == d.v_id.get())
            && device_id.is_none_or(|v| v == d.d_id.get())
            && base_class.is_none_or(|v| v == d.base_class)
            && subclass.is_none_or(|v| v == d.subclass)
    }
}

/// Bounds that keep a hostile peer from growing the relay's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most functions of one host relations message the relay takes on (the wire names
    /// 256 slots, the default). Beyond it the relay keeps the functions it already knows and
    /// then the first new ones, and leaves the rest out (counted): a message the protocol
    /// allows never costs the bus. The relay keeps one entry per slot (a function re-added
    /// while its predecessor leaves waits inside that entry), so it never holds more than the
    /// 256 slots the wire can name, whatever the host sends.
    pub max_functions: usize,
    /// The most guest requests outstanding at the host at once (requests the relay has
    /// answered itself never count), and the most host requests outstanding at the guest.
    pub max_outstanding_requests: usize,
    /// The most requests answered locally that the relay remembers, so that the host's late
    /// completion of one is recognised as late (older ones are forgotten first; a completion
    /// for a forgotten one is counted and dropped, never forwarded).
    pub max_remembered_answers: usize,
    /// The most config-space dwords remembered per function for the removal shield.
    pub max_config_cache: usize,
    /// The most config accesses forwarded to the device at once on one bus that the guest
    /// still waits on (Linux makes one at a time per bus, under its config lock). Beyond it an
    /// access is answered as a master abort (counted).
    pub max_accesses_in_flight: usize,
    /// The most steps the relay takes after one input (each delivers, finishes or answers
    /// something). A correct relay stays far below; reaching it is counted
    /// ([`Counters::progress_stalls`](crate::Counters)) and the relay resumes at the next
    /// input, so a logic error can never become a hang.
    pub max_progress_steps: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_functions: 256,
            max_outstanding_requests: 256,
            max_remembered_answers: 256,
            max_config_cache: 1024,
            max_accesses_in_flight: 64,
            max_progress_steps: 1024,
        }
    }
}

/// Configuration of one bus relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// The bus's name in logs (its VMBus instance id, for one).
    pub name: String,
    /// Functions the guest may see. Empty means all; otherwise a function must match one rule.
    /// Hidden functions never reach the guest, and the relay completes their ejects itself.
    pub allow: Vec<AllowRule>,
    /// How long a function must be quiet (no guest traffic for it) before it counts as
    /// settled, and how long the bus must be quiet before its probe path counts as done.
    pub settle: Duration,
    /// The longest the relay keeps a host EJECT unanswered: after it, the relay answers the
    /// host itself (the function stays shielded and the guest still gets its EJECT only at a
    /// safe point). Also the longest it waits for the guest to finish one change, or for an
    /// unsettled function whose guest waits on nothing from the host, before it moves on.
    /// Hyper-V waits [`HOST_EJECT_TIMEOUT`] for an EJECTION_COMPLETE, then rescinds the
    /// channel and removes the device by force, so this must leave it a margin: at most
    /// [`MAX_HOLD_LIMIT`] (checked by [`RelayConfig::validate`]; [`BusRelay::new`](crate::BusRelay::new)
    /// clamps a larger value).
    pub max_hold: Duration,
    /// How long a request forwarded for a function the host is removing may stay unanswered
    /// before the relay answers it itself; and how long after a function departs a config
    /// access forwarded to it may stay unanswered before it stops holding the bus.
    pub departed_request_timeout: Duration,
    /// Memory and count bounds.
    pub limits: Limits,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            name: "vpci".to_owned(),
            allow: Vec::new(),
            settle: Duration::from_millis(100),
            max_hold: Duration::from_secs(30),
            departed_request_timeout: Duration::from_secs(1),
            limits: Limits::default(),
        }
    }
}

/// How long a Hyper-V host waits for the EJECTION_COMPLETE of an EJECT before it rescinds
/// the channel and removes the device by force.
pub const HOST_EJECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest [`RelayConfig::max_hold`]: the host's budget less a margin for the answer's
/// way back and a busy paravisor.
pub const MAX_HOLD_LIMIT: Duration = Duration::from_secs(50);

/// A relay setting that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `max_hold` leaves the host no margin before its own EJECT deadline.
    #[error(
        "max_hold of {0:?} exceeds {MAX_HOLD_LIMIT:?}: a Hyper-V host gives up on an EJECT after {HOST_EJECT_TIMEOUT:?}"
    )]
    MaxHoldBeyondHostBudget(Duration),
    /// `max_hold` is zero: every eject would be answered before the guest could let go.
    #[error("max_hold must be more than zero")]
    MaxHoldZero,
    /// `settle` is not shorter than `max_hold`: no function could ever settle in time.
    #[error("settle ({settle:?}) must be shorter than max_hold ({max_hold:?})")]
    SettleNotBelowMaxHold {
        /// The settle window.
        settle: Duration,
        /// The hold bound.
        max_hold: Duration,
    },
    /// A limit of zero would refuse everything of its kind.
    #[error("limits.{0} must be more than zero")]
    ZeroLimit(&'static str),
}

impl RelayConfig {
    /// Checks that the settings can work: `max_hold` within the host's EJECT budget and above
    /// zero, `settle` below it, and no limit at zero (except `max_remembered_answers`,
    /// where zero means "remember none").
    pub fn validate(&self) -> Result<(), ConfigError> {
        let Self {
            name: _,
            allow: _,
            settle,
            max_hold,
            departed_request_timeout: _,
            limits,
        } = self;
        if *max_hold > MAX_HOLD_LIMIT {
            return Err(ConfigError::MaxHoldBeyondHostBudget(*max_hold));
        }
        if max_hold.is_zero() {
            return Err(ConfigError::MaxHoldZero);
        }
        if settle >= max_hold {
            return Err(ConfigError::SettleNotBelowMaxHold {
                settle: *settle,
                max_hold: *max_hold,
            });
        }
        let Limits {
            max_functions,
            max_outstanding_requests,
            max_remembered_answers: _,
            max_config_cache,
            max_accesses_in_flight,
            max_progress_steps,
        } = limits;
        for (name, value) in [
            ("max_functions", max_functions),
            ("max_outstanding_requests", max_outstanding_requests),
            ("max_config_cache", max_config_cache),
            ("max_accesses_in_flight", max_accesses_in_flight),
            ("max_progress_steps", max_progress_steps),
        ] {
            if *value == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        Ok(())
    }

    /// Whether the guest may see this function.
    pub fn allows(&self, d: &FunctionDescription2) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|r| r.matches(d))
    }
}

/// Switches for the relay's safeguards, so tests can show each one matters. All on by
/// default; only the test-only `safeguard-switches` feature can turn one off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Safeguards {
    /// Guarantee 1: one host change outstanding at the guest at a time.
    pub one_change_at_a_time: bool,
    /// Guarantee 2: hold an eject until the function is settled.
    pub hold_eject_until_settled: bool,
    /// Guarantee 2's wait: a guest in a config access forwarded to the device waits on the
    /// host, so the bus is not quiet until the access is done.
    pub accesses_hold_the_bus: bool,
    /// Guarantee 3: never show the guest a function removed before it was announced.
    pub coalesce: bool,
    /// Guarantee 4: answer requests for departed functions locally.
    pub local_answers: bool,
    /// Guarantee 5: close the guest channel only at a safe point after a rescind.
    pub rescind_at_safe_point: bool,
    /// Guarantee 8: shield BARs and config space of a removed function until the guest lets go.
    pub removal_shield: bool,
}

impl Default for Safeguards {
    fn default() -> Self {
        Self::ALL_ON
    }
}

impl Safeguards {
    /// Every safeguard on (the only production setting).
    pub const ALL_ON: Self = Self {
        one_change_at_a_time: true,
        hold_eject_until_settled: true,
        accesses_hold_the_bus: true,
        coalesce: true,
        local_answers: true,
        rescind_at_safe_point: true,
        removal_shield: true,
    };
}
