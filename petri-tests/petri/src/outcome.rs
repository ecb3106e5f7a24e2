//! How a run ended, in terms a report can count.

use crate::sched::Choice;
use crate::trace::Trace;
use guest_linux::GuestFailure;
use serde::Serialize;
use std::time::Duration;
use vpci_protocol::WinSlot;

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
    /// The converse of [`Outcome::LostDevice`]: at the end of a quiescent run the guest holds
    /// a function (a child or a `pci_dev`) the host no longer has: the host ejected it and got
    /// its EJECTION_COMPLETE, dropped it from its relations, or listed a new identity in its
    /// slot. Identities are compared whole (vendor id, device id, serial number), not only the
    /// slot: a guest holding the old identity of a slot the host re-listed is a ghost of the
    /// old function (the new one is then lost too; the run names the ghost, which is checked
    /// first). The same for the models and the real drivers.
    GhostDevice {
        /// The bus.
        bus: usize,
        /// The slot.
        slot: String,
        /// The identity the guest holds.
        held: Identity,
        /// The identity the host lists in that slot now, if any.
        listed: Option<Identity>,
    },
    /// The relay closed the guest's bus (or lost its host link) although the host neither
    /// rescinded it nor broke the protocol: a conformant host's bus is gone from the guest.
    LostBus {
        /// The bus.
        bus: usize,
    },
    /// The run took more guest steps than its bound (a livelock).
    StepLimit,
    /// The run went on past its virtual-time bound.
    TimeLimit,
    /// A scenario's `[[check]]` of the relay's inspect tree did not hold at the end of a run
    /// through the relay.
    CheckFailed {
        /// The bus.
        bus: usize,
        /// The inspect path.
        path: String,
        /// What the scenario expected there (JSON).
        expected: String,
        /// What the relay's tree held (JSON), or why nothing could be read.
        got: String,
    },
    /// The harness failed, not the guest: the real guest's runtime, the controller or the
    /// protocol between them broke (an exit status of the runtime's own, a crash whose
    /// faulting instruction is in the runtime). Never a guest's outcome: it fails a run set
    /// whatever the scenario expects.
    HarnessError {
        /// What broke.
        reason: String,
    },
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
    /// `null_deref` or `hang`, `eject_unanswered`, `lost_bus`, `ghost_device`,
    /// `lost_device`, `step_limit`, `time_limit`.
    pub fn kind(&self) -> &str {
        match self {
            Self::Ok => "ok",
            Self::Guest { failure, .. } => failure,
            Self::EjectUnanswered { .. } => "eject_unanswered",
            Self::LostDevice { .. } => "lost_device",
            Self::GhostDevice { .. } => "ghost_device",
            Self::LostBus { .. } => "lost_bus",
            Self::StepLimit => "step_limit",
            Self::TimeLimit => "time_limit",
            Self::HarnessError { .. } => "harness_error",
            Self::CheckFailed { .. } => "check_failed",
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
            Self::GhostDevice {
                bus,
                slot,
                held,
                listed,
            } => {
                write!(
                    f,
                    "bus {bus}: the guest holds {slot} {held}, which the host no longer has"
                )?;
                match listed {
                    Some(l) => write!(f, " (it lists {l} there)"),
                    None => Ok(()),
                }
            }
            Self::LostBus { bus } => write!(
                f,
                "bus {bus}: the relay closed the guest's bus, though the host neither \
                 rescinded it nor broke the protocol"
            ),
            Self::StepLimit => f.write_str("step limit reached (livelock)"),
            Self::TimeLimit => f.write_str("virtual time limit reached"),
            Self::HarnessError { reason } => write!(f, "HARNESS ERROR (not the guest's): {reason}"),
            Self::CheckFailed {
                bus,
                path,
                expected,
                got,
            } => write!(
                f,
                "bus {bus}: the relay's inspect path {path} holds {got}, the scenario expects \
                 {expected}"
            ),
        }
    }
}

/// One bus once the run settled (before a real driver's teardown): the functions the guest
/// holds and the ones the host has, each with its identity, by slot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BusView {
    /// The bus, by index.
    pub bus: usize,
    /// What the guest holds (a child on its list or a bound device), in slot order.
    pub guest: Vec<(vpci_protocol::WinSlot, Identity)>,
    /// What the host lists, in slot order.
    pub host: Vec<(vpci_protocol::WinSlot, Identity)>,
}

/// A function's identity as a guest tells functions apart (Linux's relations work compares
/// these three).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Identity {
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Serial number.
    pub serial: u32,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{:04x}:{:04x}] serial {}",
            self.vendor_id, self.device_id, self.serial
        )
    }
}

/// What the host lists and what the guest holds on bus `bus` at the end of a quiescent run,
/// compared both ways, identities whole: the first function the guest holds that the host
/// does not list as it is ([`Outcome::GhostDevice`]), else, when `probed` (the guest probed
/// the bus, so it should have everything), the first the host lists that the guest does not
/// hold ([`Outcome::LostDevice`]), else [`Outcome::Ok`].
pub fn compare_functions(
    bus: usize,
    host: &[(WinSlot, Identity)],
    guest: &[(WinSlot, Identity)],
    probed: bool,
) -> Outcome {
    for &(slot, held) in guest {
        if !host.contains(&(slot, held)) {
            return Outcome::GhostDevice {
                bus,
                slot: slot.to_string(),
                held,
                listed: host.iter().find(|(s, _)| *s == slot).map(|&(_, i)| i),
            };
        }
    }
    if probed {
        for &(slot, listed) in host {
            if !guest.contains(&(slot, listed)) {
                return Outcome::LostDevice {
                    bus,
                    slot: slot.to_string(),
                };
            }
        }
    }
    Outcome::Ok
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
    /// The host script steps that never fired in this run, as (bus, step index from 0).
    pub unfired_steps: Vec<(usize, usize)>,
    /// What the guest did with devices, in order (functions found with their identity,
    /// resources assigned and released, functions let go): recorded for the real drivers
    /// and the models alike (a model's run keeps its first 4,096 entries).
    pub device_history: Vec<String>,
    /// How many times a bus's relay was serviced (saved, dropped and restored) during the
    /// run, over all buses: 0 unless the run services its relays.
    pub servicings: u64,
    /// Each bus once the run settled: what the guest holds and the host has (empty if the
    /// run never settled: a crash, a bound).
    pub views: Vec<BusView>,
}

/// The script steps of host bus `bus` that have not fired, as (bus, step index from 0).
pub fn unfired_steps(bus: usize, host: &host_sim::HostBus) -> Vec<(usize, usize)> {
    host.script_steps_fired()
        .iter()
        .enumerate()
        .filter(|(_, fired)| !**fired)
        .map(|(step, _)| (bus, step))
        .collect()
}

/// Every outcome kind a run can end with besides `ok`, as reports count them and as a
/// scenario's `[[expect]] kinds` names them: the guest's failure kinds, a real driver's
/// `segfault`, and what the host sees.
pub const FAILURE_KINDS: &[&str] = &[
    "null_deref",
    "use_after_free",
    "dead_stack_write",
    "hang",
    "duplicate_device",
    "leaked_device",
    "unbacked_access",
    "ejected_device_access",
    "unresourced_device",
    "list_corruption",
    "bug",
    "segfault",
    "eject_unanswered",
    "lost_bus",
    "ghost_device",
    "lost_device",
    "step_limit",
    "time_limit",
    "check_failed",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn id(serial: u32) -> Identity {
        Identity {
            vendor_id: 0x1414,
            device_id: 0x00a9,
            serial,
        }
    }

    fn slot(n: u32) -> WinSlot {
        WinSlot::from_raw(n)
    }

    /// The end-of-run check looks both ways: a function the guest holds and the host no
    /// longer has is a ghost; one the host has and the probed guest does not, lost.
    #[test]
    fn both_ways() {
        let both = [(slot(1), id(1)), (slot(2), id(2))];
        assert_eq!(compare_functions(0, &both, &both, true), Outcome::Ok);
        let ghost = compare_functions(3, &both[..1], &both, true);
        assert_eq!(ghost.kind(), "ghost_device");
        assert_eq!(
            ghost,
            Outcome::GhostDevice {
                bus: 3,
                slot: slot(2).to_string(),
                held: id(2),
                listed: None
            }
        );
        assert_eq!(
            compare_functions(0, &both, &both[..1], true).kind(),
            "lost_device"
        );
        // A guest that never probed the bus need not hold anything, but holds no ghost.
        assert_eq!(compare_functions(0, &both, &[], false), Outcome::Ok);
        assert_eq!(
            compare_functions(0, &[], &both, false).kind(),
            "ghost_device"
        );
    }

    /// Every kind a run can end with is one a scenario's `kinds` may name.
    #[test]
    fn every_kind_is_known() {
        use guest_linux::FailureKind as K;
        for k in [
            K::NullDeref,
            K::UseAfterFree,
            K::DeadStackWrite,
            K::Hang,
            K::DuplicateDevice,
            K::LeakedDevice,
            K::GhostDevice,
            K::UnbackedAccess,
            K::EjectedDeviceAccess,
            K::UnresourcedDevice,
            K::ListCorruption,
            K::Bug,
        ] {
            assert!(FAILURE_KINDS.contains(&k.name()), "{}", k.name());
        }
        let host = [
            Outcome::EjectUnanswered {
                bus: 0,
                slot: String::new(),
            },
            Outcome::LostDevice {
                bus: 0,
                slot: String::new(),
            },
            Outcome::LostBus { bus: 0 },
            Outcome::StepLimit,
            Outcome::TimeLimit,
        ];
        for o in host {
            assert!(FAILURE_KINDS.contains(&o.kind()), "{}", o.kind());
        }
    }

    /// Identities are compared whole: the old serial, vendor or device id in a slot the host
    /// re-listed is a ghost of the old function (named before the new one's loss).
    #[test]
    fn identity_not_only_the_slot() {
        let host = [(slot(1), id(2))];
        let stale = [(slot(1), id(1))];
        let o = compare_functions(0, &host, &stale, true);
        assert_eq!(
            o,
            Outcome::GhostDevice {
                bus: 0,
                slot: slot(1).to_string(),
                held: id(1),
                listed: Some(id(2))
            }
        );
        assert!(o.to_string().contains("serial 1"), "{o}");
        let other_device = [(
            slot(1),
            Identity {
                device_id: 0x1234,
                ..id(2)
            },
        )];
        assert_eq!(
            compare_functions(0, &host, &other_device, true).kind(),
            "ghost_device"
        );
        let other_vendor = [(
            slot(1),
            Identity {
                vendor_id: 0x15b3,
                ..id(2)
            },
        )];
        assert_eq!(
            compare_functions(0, &host, &other_vendor, true).kind(),
            "ghost_device"
        );
    }
}
