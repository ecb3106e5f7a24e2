//! The endpoints of a multi-process run of the `openhcl-vpci` service, in one place for the
//! service's own process tests and bench and for petri's `run --processes`:
//!
//! - [`host`]: host_sim buses offered and served over the service's control plane (the
//!   offerer's side), with a hot-plug storm or a rescind/re-offer loop per bus if asked;
//! - [`model`]: a guest that opens every bus offered and runs a Linux 6.2 or 6.3 model of
//!   pci-hyperv on it in real time;
//! - [`ctl`]: a guest's control connection (offers, rescinds, config-space and BAR accesses),
//!   which petri's real-driver guest uses too;
//! - [`report`]: the `@@` lines the endpoints print (each side's state per bus, a guest's
//!   failure, a storm's summary) and their parsers;
//! - [`rig`]: the three processes (host, service, guest) of one run, each one's `@@` lines
//!   collected, every wait bounded;
//! - [`tap`]: a second handle on a ring end's shared memory, for an endpoint that plays a
//!   hostile ring peer in the service's fault tests.
//!
//! Everything an endpoint reads from its peer (control messages, ring packets) is validated
//! by the crates that decode it; nothing here panics on it. Progress goes to stdout as
//! `@@ ...` lines for the process that started the endpoint.

#![forbid(unsafe_code)]

pub mod ctl;
pub mod host;
pub mod model;
pub mod report;
pub mod rig;
pub mod tap;

/// The bus id the host endpoint offers bus `i` by.
pub fn bus_name(i: usize) -> String {
    format!("bus{i}")
}

/// A spec string (`key=value,...`) an endpoint could not use.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// An item was not `key=value`, or its value did not parse.
    #[error("bad spec item {0:?}")]
    BadItem(String),
    /// A key the endpoint does not know.
    #[error("unknown spec key {0:?}")]
    UnknownKey(String),
    /// Two settings that cannot go together.
    #[error("{0}")]
    Conflict(&'static str),
}
