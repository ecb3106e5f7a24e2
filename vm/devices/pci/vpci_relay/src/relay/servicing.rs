//! Servicing: the relay saved ([`BusRelay::save`]) and restored ([`BusRelay::restore`]) by a
//! new version of the paravisor while the VM runs. Each sub-state saves and restores itself
//! in its own module; this puts them together and checks what only the whole can tell (the
//! host link against the functions and requests, the changes against the functions).

use super::accesses::AccessTable;
use super::changes::ChangeQueue;
use super::functions::FunctionTable;
use super::output::Outputs;
use super::probe::GuestBus;
use super::requests::RequestTable;
use super::{BusRelay, HostLink};
use crate::config::{RelayConfig, Safeguards};
use crate::function::HostState;
use crate::save::{
    Check, FORMAT, FORMAT_MINOR, MAX_SAVED_TIME, RestoreError, SavedHostLost, SavedRelay, ns,
};
use std::time::Duration;
use vpci_protocol::ProtocolVersion;

/// When and from which format a relay was restored (in its inspect tree as `restored`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, inspect::Inspect)]
pub struct Restored {
    /// The saved state's format.
    pub from_format: u32,
    /// The relay's time when it resumed.
    pub at: Duration,
}

impl BusRelay {
    /// The relay's state, to carry across servicing. Take the outputs first (the driver does
    /// after every input): queued packets and backing changes are saved, events are not
    /// (their counters are).
    pub fn save(&self) -> SavedRelay {
        let Self {
            // The configuration is the new version's, given to `restore`.
            config: _,
            // Always all on outside tests.
            safeguards: _,
            now,
            version,
            host,
            guest_closed,
            guest,
            functions,
            changes,
            requests,
            accesses,
            out,
            // A fact about this run of the relay, not its state.
            restored: _,
        } = self;
        SavedRelay {
            format: FORMAT,
            format_minor: FORMAT_MINOR,
            now_ns: ns(*now),
            version: version.0,
            host_lost: match host {
                HostLink::Up => None,
                HostLink::Lost { since, rescinded } => Some(SavedHostLost {
                    since_ns: ns(*since),
                    rescinded: *rescinded,
                }),
            },
            guest_closed: *guest_closed,
            guest: Some(guest.save()),
            functions: Some(functions.save()),
            changes: Some(changes.save()),
            requests: Some(requests.save()),
            outputs: Some(out.save()),
            accesses: Some(accesses.save()),
        }
    }

    /// [`save`](Self::save), encoded.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.save().to_bytes()
    }

    /// A relay restored from encoded saved state (see [`restore`](Self::restore)).
    pub fn restore_bytes(
        config: RelayConfig,
        saved: &[u8],
        now: Duration,
    ) -> Result<Self, RestoreError> {
        Self::restore(config, &SavedRelay::from_bytes(saved)?, now)
    }

    /// A relay restored from saved state, under `config` (the new version's; every table of
    /// the state must fit its limits), resuming at `now`.
    ///
    /// **Time**: `now` is on the saved relay's own time base, which a restored relay
    /// continues: the caller's clock must go on from the old one (in OpenHCL, a time base
    /// that survives servicing; for the driver, see
    /// [`SystemClock::starting_at`](crate::SystemClock::starting_at)). So the time the bus
    /// spent stopped counts toward every deadline, the host's EJECT budget and `max_hold`
    /// included: a host EJECT held before the save is answered by `max_hold` after its
    /// arrival however long the stop. A `now` before the saved time counts as the saved
    /// time (time never runs backwards for the relay). The relay then does at once what fell
    /// due while it was stopped, so look at its outputs after restoring.
    ///
    /// Everything read is checked; a state that is corrupt, hostile or beyond the
    /// configuration's limits is refused with a [`RestoreError`] naming what was wrong, and
    /// nothing of it is kept. The caller then closes the bus cleanly (revokes the guest
    /// channel), as [`BusDriver::restore`](crate::BusDriver::restore) does.
    pub fn restore(
        mut config: RelayConfig,
        saved: &SavedRelay,
        now: Duration,
    ) -> Result<Self, RestoreError> {
        let SavedRelay {
            format,
            format_minor: _,
            now_ns,
            version,
            host_lost,
            guest_closed,
            guest,
            functions,
            changes,
            requests,
            outputs,
            accesses,
        } = saved;
        if *format != FORMAT {
            return Err(RestoreError::UnknownFormat {
                found: *format,
                known: FORMAT,
            });
        }
        config.max_hold = config.max_hold.min(crate::MAX_HOLD_LIMIT);
        let saved_now = Duration::from_nanos(*now_ns);
        if saved_now > MAX_SAVED_TIME {
            return Err(RestoreError::TimeAhead {
                field: "now_ns".into(),
                at_ns: *now_ns,
                now_ns: ns(MAX_SAVED_TIME),
            });
        }
        let check = Check {
            config: &config,
            now: saved_now,
        };
        let version = ProtocolVersion::ALL
            .into_iter()
            .find(|v| v.0 == *version)
            .ok_or(RestoreError::UnknownVersion(*version))?;
        let host = match host_lost {
            None => HostLink::Up,
            Some(SavedHostLost {
                since_ns,
                rescinded,
            }) => HostLink::Lost {
                since: check.time("host_lost.since_ns", *since_ns)?,
                rescinded: *rescinded,
            },
        };
        let guest = GuestBus::restore(&guest.clone().unwrap_or_default(), &check)?;
        let requests = RequestTable::restore(&requests.clone().unwrap_or_default(), &check)?;
        let accesses = AccessTable::restore(&accesses.clone().unwrap_or_default(), &check)?;
        let functions = FunctionTable::restore(&functions.clone().unwrap_or_default(), &check)?;
        let changes =
            ChangeQueue::restore(&changes.clone().unwrap_or_default(), &check, &functions)?;
        let out = Outputs::restore(
            &outputs.clone().unwrap_or_default(),
            config.name.clone(),
            version,
            *guest_closed,
        )?;
        let illegal = |field: &str, why| RestoreError::IllegalState {
            field: field.to_owned(),
            why,
        };
        if *guest_closed && host == HostLink::Up {
            return Err(illegal(
                "guest_closed",
                "the guest channel closes only after the host is lost",
            ));
        }
        if host != HostLink::Up {
            // Losing the host answers everything it owed and forgets what it said.
            if functions.values().any(|f| f.host != HostState::Gone) {
                return Err(illegal(
                    "functions",
                    "with the host lost, every function is gone",
                ));
            }
            if !requests.idle() {
                return Err(illegal(
                    "requests.live",
                    "with the host lost, it owes nothing",
                ));
            }
            if !accesses.all_departed() {
                return Err(illegal(
                    "accesses.in_flight",
                    "with the host lost, every access's function has departed",
                ));
            }
            if changes.host_relations.is_some() {
                return Err(illegal(
                    "changes.host_relations",
                    "with the host lost, its relations are dropped",
                ));
            }
        }
        let mut relay = Self {
            out,
            config,
            safeguards: Safeguards::ALL_ON,
            now: saved_now,
            version,
            host,
            guest_closed: *guest_closed,
            guest,
            functions,
            changes,
            requests,
            accesses,
            restored: None,
        };
        relay.tick(now);
        relay.restored = Some(Restored {
            from_format: *format,
            at: relay.now,
        });
        // What fell due while the bus was stopped.
        relay.progress();
        Ok(relay)
    }

    /// When and from which format this relay was restored, if it was.
    pub fn restored(&self) -> Option<Restored> {
        self.restored
    }
}
