//! The per-bus vPCI relay of an OpenHCL-style paravisor.
//!
//! A Hyper-V host offers each virtual PCI bus to a VM as one VMBus channel speaking the vPCI
//! protocol. The relay owns both ends of such a bus: a vPCI client towards the host and a vPCI
//! endpoint towards the guest. Everything host-originated that can remove or change a device
//! (`BUS_RELATIONS`, `EJECT`, a channel rescind) and everything guest-originated that touches a
//! removed device passes through one per-bus state machine, [`BusRelay`], so that an
//! unmodified guest (such as Linux before 6.3, whose `pci-hyperv` driver races under fast
//! hotplug) never sees a removal overlap its probe.
//!
//! [`BusRelay`] is sans-IO: the caller feeds it packets, config accesses, timer expiries and
//! the host's rescind, with the current time, and drains packets to send, backing changes and
//! events. The same object runs in production, in a deterministic simulator and under a model
//! checker.
//!
//! # Guarantees
//!
//! 1. **One change at a time per bus.** At most one host-originated change (relations update or
//!    eject) is outstanding at the guest; the next is delivered when the guest has finished the
//!    current one (its EJECTION_COMPLETE; for relations, every announced function queried and,
//!    the first time, the guest's whole probe path done).
//! 2. **No eject during probe.** An EJECT is held until the function is settled: requirements
//!    queried, resources assigned and completed (when the probe path assigns them), no
//!    interrupt request outstanding, no guest traffic for it within the settle window, and the
//!    bus's probe path done. A config access forwarded to the device holds the bus until it is
//!    reported done ([`BusRelay::handle_config_done`]): the guest's vCPU waits in it.
//! 3. **Coalescing.** A function added and removed before the guest was told never reaches it;
//!    the relay completes the host's eject itself. Relations updates collapse to the newest, so
//!    memory is bounded by functions, not events.
//! 4. **Local answers for the departed.** Requests for a function the host is removing or has
//!    removed are answered by the relay with well-formed replies (a plausible MSI address/data
//!    pair for CREATE_INTERRUPT_MESSAGE, never a failure) and never reach the host.
//! 5. **Rescind at a safe point.** When the host rescinds the channel, the relay ejects every
//!    guest-visible function through the same serialization, then closes the guest channel.
//! 6. **Buses are independent.** A `BusRelay` shares nothing with any other.
//! 7. **Nothing lost.** Every host event is delivered or superseded (and counted); every guest
//!    request gets exactly one completion; every guest completion reaches the host.
//! 8. **Removal shield.** Once the host removes a function the guest still holds, its BARs are
//!    backed by a shield and config reads are answered from the relay's copy until the guest's
//!    EJECTION_COMPLETE; they are never left unbacked (OpenVMM issue #3077).
//! 9. **Hostile input.** Malformed packets from either side get a typed error, are counted, and
//!    never panic, hang or grow memory. A host that breaks the protocol loses its bus; a
//!    message the protocol allows never costs a bus (a host listing more functions than
//!    [`Limits::max_functions`] keeps the bus, and the relay keeps what fits).
//! 10. **The guest's view is the host's.** A function is its slot and identity (vendor,
//!     device, serial). At quiescence the guest holds exactly the functions the host has,
//!     with the host's identities: nothing missing, nothing extra, nothing mixed. An EJECT
//!     names the function the host listed **last** in its slot (the host's own view); an
//!     EJECT of a slot in which no new identity was listed since the previous EJECT is a
//!     repeat of it, and a relations message that lists an ejected function again (sent
//!     before the host saw its EJECTION_COMPLETE) changes nothing until the host lists the
//!     slot without it. Every host EJECT is answered exactly once, within `max_hold` of its
//!     arrival (validated against the host's 60 s budget, [`HOST_EJECT_TIMEOUT`]), however
//!     slowly the guest or the host moves; the guest still gets its EJECT only at a safe
//!     point, never while its probe waits on the host.
//!
//! Each guarantee has a test that fails when its safeguard is switched off (see
//! [`Safeguards`]; the switches exist only in test builds).

#![forbid(unsafe_code)]

mod clock;
mod config;
pub mod driver;
mod events;
mod function;
mod local;
pub(crate) mod relay;
pub mod save;
#[cfg(feature = "sim")]
pub mod sim;

pub use clock::{Clock, SystemClock, TimeBase, VirtualClock};
pub use config::{
    AllowRule, ConfigError, HOST_EJECT_TIMEOUT, Limits, MAX_HOLD_LIMIT, RelayConfig, Safeguards,
};
pub use driver::{BarControl, BusDriver, BusPort, DriverExit, StoppedBus};
pub use events::{ChangeKind, Counters, PacketFault, RelayEvent, Side};
pub use function::{Backing, Function, GuestState, HostState, Stage, Successor};
pub use local::local_completion;
pub use relay::{
    AccessId, BusRelay, ConfigAccess, ConfigAction, HostLink, ProbePhase, Restored, Transmit,
};
pub use save::{RestoreError, SavedBus, SavedRelay};
