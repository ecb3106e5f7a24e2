//! The service's configuration: a TOML file and command-line overrides, turned into the
//! [`RelayConfig`] each bus runs with and checked by [`RelayConfig::validate`].
//!
//! ```toml
//! log = "info,openhcl_vpci=debug"   # a tracing env filter (RUST_LOG and --log win)
//! settle = "100ms"                   # humantime durations
//! max_hold = "30s"
//! departed_request_timeout = "1s"
//! allow = [{ vendor_id = 0x1414 }, { base_class = 2, subclass = 0 }]
//!
//! [limits]
//! max_functions = 256
//! ```
//!
//! Every key is optional (the relay's defaults apply); an unknown key, a bad duration or a
//! value `validate` refuses is one error naming the key.

use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use vpci_relay::{AllowRule, ConfigError as RelayConfigError, Limits, RelayConfig};

/// An allow-list rule as written in the file; absent fields match anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    /// Vendor id.
    pub vendor_id: Option<u16>,
    /// Device id.
    pub device_id: Option<u16>,
    /// Base class code.
    pub base_class: Option<u8>,
    /// Subclass code.
    pub subclass: Option<u8>,
}

/// Limits as written in the file; absent ones keep the relay's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// See [`Limits::max_functions`].
    pub max_functions: Option<usize>,
    /// See [`Limits::max_outstanding_requests`].
    pub max_outstanding_requests: Option<usize>,
    /// See [`Limits::max_remembered_answers`].
    pub max_remembered_answers: Option<usize>,
    /// See [`Limits::max_config_cache`].
    pub max_config_cache: Option<usize>,
    /// See [`Limits::max_accesses_in_flight`].
    pub max_accesses_in_flight: Option<usize>,
    /// See [`Limits::max_progress_steps`].
    pub max_progress_steps: Option<usize>,
}

/// The configuration file (and, merged in, the command line's overrides).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The tracing filter (`RUST_LOG` syntax).
    pub log: Option<String>,
    /// Functions the guest may see; empty or absent: all.
    #[serde(default)]
    pub allow: Vec<AllowEntry>,
    /// See [`RelayConfig::settle`].
    #[serde(default, with = "humantime_serde")]
    pub settle: Option<Duration>,
    /// See [`RelayConfig::max_hold`].
    #[serde(default, with = "humantime_serde")]
    pub max_hold: Option<Duration>,
    /// See [`RelayConfig::departed_request_timeout`].
    #[serde(default, with = "humantime_serde")]
    pub departed_request_timeout: Option<Duration>,
    /// Memory and count bounds.
    #[serde(default)]
    pub limits: LimitsFile,
}

/// A configuration the service cannot run with.
#[derive(Debug, Error)]
pub enum ServiceConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, naming the key and line.
        message: String,
    },
    /// A value the relay refuses.
    #[error("invalid `{key}`: {error}")]
    Invalid {
        /// The key, as written in the file.
        key: String,
        /// Why.
        error: RelayConfigError,
    },
}

impl ServiceConfig {
    /// Reads and parses a TOML file, then checks it.
    pub fn from_file(path: &Path) -> Result<Self, ServiceConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ServiceConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        let config = Self::from_toml(&text).map_err(|e| match e {
            ServiceConfigError::Parse { message, .. } => ServiceConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses TOML text, then checks it.
    pub fn from_toml(text: &str) -> Result<Self, ServiceConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ServiceConfigError::Parse {
            path: "<config>".into(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the relay settings with [`RelayConfig::validate`], naming the offending key.
    pub fn validate(&self) -> Result<(), ServiceConfigError> {
        self.relay_config("check").validate().map_err(|error| {
            let key = match &error {
                RelayConfigError::MaxHoldBeyondHostBudget(_) | RelayConfigError::MaxHoldZero => {
                    "max_hold".to_owned()
                }
                RelayConfigError::SettleNotBelowMaxHold { .. } => "settle".to_owned(),
                RelayConfigError::ZeroLimit(name) => format!("limits.{name}"),
            };
            ServiceConfigError::Invalid { key, error }
        })
    }

    /// The relay configuration of the bus named `name`.
    pub fn relay_config(&self, name: &str) -> RelayConfig {
        let base = RelayConfig::default();
        let d = Limits::default();
        let l = &self.limits;
        RelayConfig {
            name: name.to_owned(),
            allow: self
                .allow
                .iter()
                .map(|a| AllowRule {
                    vendor_id: a.vendor_id,
                    device_id: a.device_id,
                    base_class: a.base_class,
                    subclass: a.subclass,
                })
                .collect(),
            settle: self.settle.unwrap_or(base.settle),
            max_hold: self.max_hold.unwrap_or(base.max_hold),
            departed_request_timeout: self
                .departed_request_timeout
                .unwrap_or(base.departed_request_timeout),
            limits: Limits {
                max_functions: l.max_functions.unwrap_or(d.max_functions),
                max_outstanding_requests: l
                    .max_outstanding_requests
                    .unwrap_or(d.max_outstanding_requests),
                max_remembered_answers: l
                    .max_remembered_answers
                    .unwrap_or(d.max_remembered_answers),
                max_config_cache: l.max_config_cache.unwrap_or(d.max_config_cache),
                max_accesses_in_flight: l
                    .max_accesses_in_flight
                    .unwrap_or(d.max_accesses_in_flight),
                max_progress_steps: l.max_progress_steps.unwrap_or(d.max_progress_steps),
            },
        }
    }
}

/// Parses a humantime duration (`"100ms"`, `"30s"`) for the command line.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let c = ServiceConfig::from_toml(
            r#"
            log = "debug"
            settle = "50ms"
            max_hold = "20s"
            allow = [{ vendor_id = 0x1414 }]
            [limits]
            max_functions = 8
            "#,
        )
        .unwrap();
        let r = c.relay_config("b");
        assert_eq!(r.settle, Duration::from_millis(50));
        assert_eq!(r.max_hold, Duration::from_secs(20));
        assert_eq!(r.limits.max_functions, 8);
        assert_eq!(r.allow.len(), 1);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("setle = \"1s\"", "setle"),
            ("settle = \"soon\"", "settle"),
            ("max_hold = \"90s\"", "max_hold"),
            ("settle = \"40s\"\nmax_hold = \"30s\"", "settle"),
            ("[limits]\nmax_functions = 0", "limits.max_functions"),
            ("[limits]\nmax_function = 1", "max_function"),
        ] {
            let err = ServiceConfig::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
