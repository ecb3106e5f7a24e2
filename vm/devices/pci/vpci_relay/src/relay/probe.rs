//! The guest's side of the bus as a whole: how far its probe path has come, and when it last
//! spoke.

use crate::function::{STAGES, Stage, index_of};
use crate::save::{Check, RestoreError, SavedGuestBus, enumeration, opt_ns};
use inspect::Inspect;
use std::time::Duration;

/// How far the guest's probe path (Linux's `hv_pci_probe`) has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Inspect)]
#[inspect(rename_all = "snake_case")]
pub enum ProbePhase {
    /// The guest has not asked for the bus's relations yet.
    Silent,
    /// The guest sent QUERY_BUS_RELATIONS and waits for relations (its survey, or a later
    /// query); the phase it returns to once they are delivered is kept.
    Surveying {
        /// The probe path was already done before this query.
        installed: bool,
        /// BUS_D0ENTRY progress before this query.
        d0: Stage,
    },
    /// The guest has its survey and runs the rest of its probe path: D0 entry, then resources
    /// for every function it linked.
    Probing {
        /// BUS_D0ENTRY progress.
        d0: Stage,
    },
    /// The probe path is done: D0 entered, resources assigned, the bus quiet.
    Installed,
}

/// The guest's bus-wide state.
#[derive(Clone, Debug, Hash, Inspect)]
pub(crate) struct GuestBus {
    pub(crate) phase: ProbePhase,
    /// The last guest traffic on the bus (or relayed answer it acts on).
    #[inspect(rename = "last_activity")]
    activity: Option<Duration>,
}

impl GuestBus {
    pub(crate) fn new() -> Self {
        Self {
            phase: ProbePhase::Silent,
            activity: None,
        }
    }

    /// The guest has surveyed at least once.
    pub(crate) fn surveyed(&self) -> bool {
        self.phase != ProbePhase::Silent
    }

    /// The guest waits for relations.
    pub(crate) fn survey_requested(&self) -> bool {
        matches!(self.phase, ProbePhase::Surveying { .. })
    }

    /// The guest's probe path is done (a later query of relations does not undo that).
    pub(crate) fn installed(&self) -> bool {
        matches!(
            self.phase,
            ProbePhase::Installed
                | ProbePhase::Surveying {
                    installed: true,
                    ..
                }
        )
    }

    fn d0(&self) -> Stage {
        match self.phase {
            ProbePhase::Silent => Stage::NotStarted,
            ProbePhase::Surveying { d0, .. } | ProbePhase::Probing { d0 } => d0,
            ProbePhase::Installed => Stage::Done,
        }
    }

    /// QUERY_BUS_RELATIONS from the guest.
    pub(crate) fn query_relations(&mut self) {
        if !self.survey_requested() {
            self.phase = ProbePhase::Surveying {
                installed: self.installed(),
                d0: self.d0(),
            };
        }
    }

    /// Relations were delivered to a guest that asked for them.
    pub(crate) fn relations_delivered(&mut self) {
        if let ProbePhase::Surveying { installed, d0 } = self.phase {
            self.phase = if installed {
                ProbePhase::Installed
            } else {
                ProbePhase::Probing { d0 }
            };
        }
    }

    /// BUS_D0ENTRY progress (admitted, or answered).
    pub(crate) fn set_d0(&mut self, stage: Stage) {
        match &mut self.phase {
            ProbePhase::Surveying { d0, .. } | ProbePhase::Probing { d0 } => *d0 = stage,
            ProbePhase::Silent | ProbePhase::Installed => {}
        }
    }

    /// A successful BUS_D0EXIT: the guest starts over (Linux's kdump retry).
    pub(crate) fn d0_exit(&mut self) {
        if self.surveyed() {
            self.phase = ProbePhase::Probing {
                d0: Stage::NotStarted,
            };
        }
    }

    /// Whether the probe path may count as done, given that every function it assigns
    /// resources to has them and the host owes nothing: D0 entered and the bus quiet.
    pub(crate) fn may_install(&self, now: Duration, settle: Duration) -> bool {
        self.phase == ProbePhase::Probing { d0: Stage::Done } && self.quiet(now, settle)
    }

    pub(crate) fn install(&mut self) {
        self.phase = ProbePhase::Installed;
    }

    /// Guest traffic (or an answer the guest will act on) at `now`.
    pub(crate) fn touch(&mut self, now: Duration) {
        self.activity = Some(now);
    }

    /// No guest traffic for the settle window.
    pub(crate) fn quiet(&self, now: Duration, settle: Duration) -> bool {
        self.activity
            .is_none_or(|t| now >= t.saturating_add(settle))
    }

    /// When a hold that began at `since` runs out: `max_hold` of the guest's own time, that
    /// is, counted from `since` or from the guest's last traffic (or the last answer it got),
    /// whichever is later. Time the guest spends waiting on a slow host is not its own.
    pub(crate) fn hold_ends(&self, since: Duration, max_hold: Duration) -> Duration {
        self.activity
            .map_or(since, |t| t.max(since))
            .saturating_add(max_hold)
    }

    /// When the bus will have been quiet for the settle window.
    pub(crate) fn quiet_at(&self, settle: Duration) -> Option<Duration> {
        self.activity.map(|t| t.saturating_add(settle))
    }

    /// The deadline of the probe path's own wait, after `now`: the quiet window once D0 is
    /// entered.
    pub(crate) fn deadline(&self, now: Duration, settle: Duration) -> Option<Duration> {
        match self.phase {
            ProbePhase::Probing { d0: Stage::Done } => self.quiet_at(settle).filter(|&t| t > now),
            _ => None,
        }
    }
}

const SILENT: u32 = 1;
const SURVEYING: u32 = 2;
const PROBING: u32 = 3;
const INSTALLED: u32 = 4;

impl GuestBus {
    pub(crate) fn save(&self) -> SavedGuestBus {
        let Self { phase, activity } = self;
        let (phase, installed, d0) = match *phase {
            ProbePhase::Silent => (SILENT, false, Stage::NotStarted),
            ProbePhase::Surveying { installed, d0 } => (SURVEYING, installed, d0),
            ProbePhase::Probing { d0 } => (PROBING, false, d0),
            ProbePhase::Installed => (INSTALLED, false, Stage::NotStarted),
        };
        SavedGuestBus {
            phase,
            installed,
            d0: index_of(&STAGES, &d0),
            activity_ns: opt_ns(*activity),
        }
    }

    /// The guest's bus-wide state from its saved state, checked: a phase the probe path can
    /// be in (a guest surveying again after its probe path was done has entered D0).
    pub(crate) fn restore(saved: &SavedGuestBus, check: &Check<'_>) -> Result<Self, RestoreError> {
        let SavedGuestBus {
            phase,
            installed,
            d0,
            activity_ns,
        } = saved;
        let d0 = enumeration("guest.d0", *d0, &STAGES)?;
        let phase = match *phase {
            SILENT => ProbePhase::Silent,
            SURVEYING if *installed && d0 != Stage::Done => {
                return Err(RestoreError::IllegalState {
                    field: "guest".into(),
                    why: "a guest whose probe path is done has entered D0",
                });
            }
            SURVEYING => ProbePhase::Surveying {
                installed: *installed,
                d0,
            },
            PROBING => ProbePhase::Probing { d0 },
            INSTALLED => ProbePhase::Installed,
            other => {
                return Err(RestoreError::BadValue {
                    field: "guest.phase".into(),
                    value: other.into(),
                });
            }
        };
        Ok(Self {
            phase,
            activity: check.opt_time("guest.activity_ns", *activity_ns)?,
        })
    }
}
