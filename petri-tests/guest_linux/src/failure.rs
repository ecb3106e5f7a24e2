//! How a modelled guest fails, and the trace that explains a run.

use crate::ContextId;
use std::fmt;
use std::time::Duration;

/// What went wrong in the guest, named as the kernel would experience it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// A NULL pointer was dereferenced (panic).
    NullDeref,
    /// An object was used after it was freed (memory corruption, panic).
    UseAfterFree,
    /// A completion living on a stack frame that had already returned was written to.
    DeadStackWrite,
    /// Contexts wait for something that will never happen (declared by the scheduler).
    Hang,
    /// Two children for the same slot are on the bus at once.
    DuplicateDevice,
    /// An object is leaked: a child record (`hv_pci_dev`) nothing will ever free, as after a
    /// failed probe (hv_pci_probe's error path never frees `hbus->children`). Memory only: the
    /// guest does not hold the function.
    LeakedDevice,
    /// The guest still holds a function (a `pci_dev`, maybe with its driver bound) whose child
    /// is gone: it would drive a function the host no longer lists as it is.
    GhostDevice,
    /// Device memory was accessed while nothing backed it (the access faults).
    UnbackedAccess,
    /// The guest touched a function after it sent EJECTION_COMPLETE for it.
    EjectedDeviceAccess,
    /// A driver was bound to a function the host was never told the resources of.
    UnresourcedDevice,
    /// A list entry was unlinked twice (list corruption).
    ListCorruption,
    /// Any other kernel bug (BUG_ON, refcount underflow, impossible state).
    Bug,
}

impl FailureKind {
    /// A snake_case name for reports (`null_deref`, `use_after_free`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::NullDeref => "null_deref",
            FailureKind::UseAfterFree => "use_after_free",
            FailureKind::DeadStackWrite => "dead_stack_write",
            FailureKind::Hang => "hang",
            FailureKind::DuplicateDevice => "duplicate_device",
            FailureKind::LeakedDevice => "leaked_device",
            FailureKind::GhostDevice => "ghost_device",
            FailureKind::UnbackedAccess => "unbacked_access",
            FailureKind::EjectedDeviceAccess => "ejected_device_access",
            FailureKind::UnresourcedDevice => "unresourced_device",
            FailureKind::ListCorruption => "list_corruption",
            FailureKind::Bug => "bug",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The guest's first failure: what, where, in which kernel function, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFailure {
    /// What went wrong.
    pub kind: FailureKind,
    /// The context that hit it.
    pub context: ContextId,
    /// The kernel function the model was in.
    pub function: &'static str,
    /// A human-readable explanation.
    pub message: String,
    /// When (virtual time).
    pub at: Duration,
}

impl fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in {} ({}) at {:?}: {}",
            self.kind, self.context, self.function, self.at, self.message
        )
    }
}

/// One thing a context did, for the report of an interleaving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// When (virtual time).
    pub at: Duration,
    /// Who.
    pub context: ContextId,
    /// The kernel function it was in.
    pub function: &'static str,
    /// What it did.
    pub event: String,
}

impl fmt::Display for TraceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>10?} {:<14} {:<32} {}",
            self.at,
            self.context.to_string(),
            self.function,
            self.event
        )
    }
}
