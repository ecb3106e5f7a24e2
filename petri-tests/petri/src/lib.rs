//! petri: the vPCI relay's VM-test harness and its user-facing command line.
//!
//! A VM run ([`vm`]) wires the simulated Hyper-V host (`host_sim`), an optional real relay
//! (`vpci_relay`'s `BusDriver`) and an executable Linux guest model (`guest_linux`) together
//! under a deterministic scheduler over virtual time ([`sched`]): a seed names one
//! interleaving and replays it exactly. Scenarios ([`scenario`], with the race catalogue
//! built in) say what the host does and what must or must not happen; [`explore`] runs many
//! schedules of one; the CLI prints tables, JSON and message sequence charts ([`chart`]).
//! `petri decode` and `petri ring dump` ([`decode`], [`ring_dump`]) look at packets and rings.

#![forbid(unsafe_code)]

pub mod chart;
pub mod decode;
pub mod explore;
mod host_side;
pub mod labels;
pub mod outcome;
pub mod processes;
pub mod real;
pub mod report;
pub mod ring_dump;
pub mod scenario;
pub mod sched;
pub mod trace;
pub mod vm;
pub mod wire;
