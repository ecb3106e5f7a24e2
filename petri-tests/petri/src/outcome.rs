//! How a run ended, in terms a report can count.

use crate::sched::Choice;
use crate::trace::Trace;
use guest_linux::GuestFailure;
use serde::Serialize;
use std::time::Duration;

/// How one run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Everything the host offered reached the guest; nothing failed.
    Ok,
    /// The guest failed (a panic, a hang, a leaked or duplicate device...).
    Guest {
        /// The bus.
        bus: usize,
        /// The failure kind (`null_deref`, `hang`, ...).
        failure: String,
        /// The guest context.
        context: String,
        /// The kernel function.
        function: String,
        /// What happened.
        message: String,
    },
    /// The host gave up waiting for an EJECTION_COMPLETE (Hyper-V's 60 s) and removed the
    /// function by force.
    EjectUnanswered {
        /// The bus.
        bus: usize,
        /// The slot.
        slot: String,
    },
    /// The host has a function that the guest, probed and quiet, never got.
    LostDevice {
        /// The bus.
        bus: usize,
        /// The slot.
        slot: String,
    },
    /// The run took more guest steps than its bound (a livelock).
    StepLimit,
    /// The run went on past its virtual-time bound.
    TimeLimit,
}

impl Outcome {
    /// A guest failure as an outcome.
    pub fn from_failure(bus: usize, f: &GuestFailure) -> Self {
        Self::Guest {
            bus,
            failure: f.kind.name().to_owned(),
            context: f.context.to_string(),
            function: f.function.to_owned(),
            message: f.message.clone(),
        }
    }

    /// The outcome's kind, as reports count it: `ok`, a guest failure kind such as
    /// `null_deref` or `hang`, `eject_unanswered`, `lost_device`, `step_limit`, `time_limit`.
    pub fn kind(&self) -> &str {
        match self {
            Self::Ok => "ok",
            Self::Guest { failure, .. } => failure,
            Self::EjectUnanswered { .. } => "eject_unanswered",
            Self::LostDevice { .. } => "lost_device",
            Self::StepLimit => "step_limit",
            Self::TimeLimit => "time_limit",
        }
    }

    /// Whether the run failed.
    pub fn failed(&self) -> bool {
        *self != Self::Ok
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Guest {
                bus,
                failure,
                context,
                function,
                message,
            } => write!(
                f,
                "bus {bus}: guest {failure} in {context} ({function}): {message}"
            ),
            Self::EjectUnanswered { bus, slot } => {
                write!(
                    f,
                    "bus {bus}: EJECT of {slot} never answered; the host gave up"
                )
            }
            Self::LostDevice { bus, slot } => {
                write!(f, "bus {bus}: the host has {slot}, the guest never got it")
            }
            Self::StepLimit => f.write_str("step limit reached (livelock)"),
            Self::TimeLimit => f.write_str("virtual time limit reached"),
        }
    }
}

/// Everything one run produced.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// How it ended.
    pub outcome: Outcome,
    /// The choices the scheduler made.
    pub choices: Vec<Choice>,
    /// Guest steps taken.
    pub steps: u64,
    /// Virtual time at the end.
    pub end: Duration,
    /// The message trace, if recorded.
    pub trace: Option<Trace>,
    /// What each guest context did.
    pub guest_trace: Vec<String>,
}
