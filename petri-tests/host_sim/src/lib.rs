//! A scriptable simulated Hyper-V host vPCI endpoint (the VSP), for petri's VM runs.
//!
//! The host side of a vPCI bus, as OpenVMM's emulated bus and Hyper-V behave, with what a
//! test needs on top: several functions per bus, hot-add, replacement, surprise removal,
//! eject with Hyper-V's 60-second wait, rescind, per-message delays, and hostile behaviour.
//!
//! - [`HostBus`]: one bus as a sans-IO state machine (in the manner of quinn-proto): feed it
//!   guest packets ([`HostBus::handle_packet`]), time ([`HostBus::handle_timeout`]) and host
//!   actions ([`HostBus::act`]); drain [`HostBus::poll_transmit`], [`HostBus::poll_timeout`]
//!   and [`HostBus::poll_event`]. It never reads a clock, blocks or spawns, so petri's
//!   deterministic runner, tests and a model checker drive the same object.
//! - [`Device`] and [`SimpleDevice`]: each function's config space and BARs; the runner
//!   routes direct guest accesses through [`HostBus::config_read`], [`HostBus::bar_read`]
//!   and friends, which fail with [`Unmapped`] once the host has torn a mapping down.
//! - [`Script`]: host actions triggered at virtual times or at milestones on the wire, and
//!   response rules (late, never, twice, truncated, wrong status); every script type is
//!   serde-deserializable for scenario files.
//! - [`HostSim`]: several buses; [`run_bus`]: an async adapter that runs a bus over any
//!   [`vmbus_channel::Channel`] with a [`HostClock`].
//!
//! ```
//! use host_sim::{BusConfig, FunctionSpec, HostAction, HostBus};
//! use std::time::Duration;
//!
//! let mut bus = HostBus::new(BusConfig {
//!     functions: vec![FunctionSpec::nic(1)],
//!     ..BusConfig::default()
//! })?;
//! // Before the guest has agreed a version the host cannot send relations...
//! assert!(bus.act(Duration::ZERO, HostAction::SendRelations {}).is_err());
//! // ...but it can eject: EJECT goes out, and the host waits 60 s for the guest.
//! bus.act(Duration::ZERO, HostAction::Eject { slot: 1 })?;
//! assert!(bus.poll_transmit().is_some());
//! assert_eq!(bus.poll_timeout(), Some(Duration::from_secs(60)));
//! bus.handle_timeout(Duration::from_secs(60));
//! assert!(bus.slots().is_empty(), "removed by force");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod action;
mod adapter;
mod bus;
mod chaos;
mod config;
mod device;
mod event;
mod script;
mod serde_util;
mod sim;
mod spec;

pub use action::{ActionError, HostAction, HostilePacket};
pub use adapter::{HostClock, RunExit, SharedBus, Sleep, run_bus};
pub use bus::{
    CONFIG_WINDOW_SIZE, CONFIG_WINDOW_SPACE, Counters, FunctionIdentity, HostBus, Interrupt,
    MmioTarget,
};
pub use chaos::{Chaos, ChaosSpec};
pub use config::{AbsentConfig, BusConfig, ConfigError, HostPolicy, Teardown, UnknownSlot};
pub use device::{
    CONFIG_SPACE_SIZE, Device, MAX_BAR_PAGES, SimpleDevice, Unmapped, UnmappedReason, cfg,
};
pub use event::{GuestError, HostEvent, HostEventKind, RemovalReason};
pub use script::{MessageMatch, Response, ResponseRule, Script, ScriptStep, Trigger};
pub use serde_util::{HexBytes, MessageName, MessagePattern, Time, family_of};
pub use sim::{BusId, HostSim};
pub use spec::{BarLayout, BarReg, BarSpec, FunctionSpec, MsixSpec, SpecError};
