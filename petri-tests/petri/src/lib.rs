//! petri: the vPCI relay's test harness and its user-facing command line.
//!
//! The harness (simulated host, guest models, scenarios) grows here issue by issue; today the
//! library holds what the `petri` binary's subcommands share, starting with `petri decode`
//! and `petri ring dump`.

#![forbid(unsafe_code)]

pub mod decode;
pub mod ring_dump;
