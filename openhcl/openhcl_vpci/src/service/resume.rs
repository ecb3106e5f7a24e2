//! The successor's side of an update (and the old image's, after a failed exec): the saved
//! service checked as a whole before any of it is used, then the connections, listeners and
//! buses resumed.

use super::fds::{take_listener, take_ring, take_stream};
use super::handover;
use super::saved::{SavedBusEntry, SavedError, SavedRing, SavedService, Validated, validate};
use super::threads;
use super::update::{RestoreInfo, restore_driver};
use super::{Pending, Service};
use crate::bars::RecordingBars;
use crate::executor::LoopClock;
use crate::revocable::Revocable;
use crate::table::BusTable;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};
use vmbus_channel::RingChannel;
use vmbus_channel::ring::RingHandoff;
use vpci_protocol::WinSlot;
use vpci_relay::{AccessId, Backing};

/// Everything a saved service names, taken out of the handover and checked, before any of it
/// is put to use.
struct Checked {
    saved: SavedService,
    table: BusTable,
    pending: Vec<(u64, Pending)>,
    host: Option<UnixStream>,
    guest: Option<(u64, UnixStream)>,
    guest_listener: UnixListener,
    control_listener: UnixListener,
    requester: Option<UnixStream>,
    buses: Vec<(SavedBusEntry, RingHandoff, RingHandoff)>,
}

fn check(state: &[u8], fds: Vec<OwnedFd>) -> Result<Checked, SavedError> {
    let Validated { saved, table, ops } = validate(state, fds.len())?;
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let pending = saved
        .pending
        .iter()
        .zip(ops)
        .map(|(p, op)| {
            (
                p.host_id,
                Pending {
                    guest_id: p.guest_id,
                    bus: p.bus.clone(),
                    generation: p.generation,
                    op,
                    access: p.relay_access.map(AccessId::from_raw),
                },
            )
        })
        .collect();
    let host = saved
        .host_fd
        .map(|i| take_stream(i, &mut fds))
        .transpose()?;
    let guest = match &saved.guest {
        Some(g) => Some((g.id, take_stream(g.fd, &mut fds)?)),
        None => None,
    };
    let guest_listener = take_listener(saved.guest_listener_fd, &mut fds)?;
    let control_listener = take_listener(saved.control_listener_fd, &mut fds)?;
    let requester = saved
        .requester_fd
        .map(|i| take_stream(i, &mut fds))
        .transpose()?;
    // `validate` checked every bus and every descriptor index; what is left can only fail
    // on the descriptors themselves.
    let mut buses = Vec::new();
    for entry in &saved.buses {
        let ring = |r: &Option<SavedRing>, which: &str| {
            r.clone()
                .ok_or_else(|| SavedError::Invalid(format!("bus {}: no {which} ring", entry.bus)))
        };
        let host_ring = take_ring(&ring(&entry.host_ring, "host")?, &mut fds)?;
        let guest_ring = take_ring(&ring(&entry.guest_ring, "guest")?, &mut fds)?;
        buses.push((entry.clone(), host_ring, guest_ring));
    }
    Ok(Checked {
        saved,
        table,
        pending,
        host,
        guest,
        guest_listener,
        control_listener,
        requester,
        buses,
    })
}

impl Service {
    /// Resumes from a handover: the successor at start, or the old image after a failed exec.
    /// Everything is checked before anything is used; a bus whose driver or rings cannot be
    /// restored is closed (the guest sees it rescinded), the others run on.
    pub(super) fn resume_from_saved(
        &mut self,
        state: &[u8],
        fds: Vec<OwnedFd>,
        successor: bool,
    ) -> Result<RestoreInfo, SavedError> {
        let Checked {
            saved,
            table,
            pending,
            host,
            guest,
            guest_listener,
            control_listener,
            requester,
            buses,
        } = check(state, fds)?;
        let stopped_for = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(Duration::from_nanos(saved.saved_at_unix_ns));
        self.table = table;
        self.pending = pending.into_iter().collect();
        self.next_mmio = saved.next_mmio;
        self.next_guest_id
            .store(saved.next_guest_id, std::sync::atomic::Ordering::Relaxed);
        self.pause = threads::Pause::new().map_err(|e| SavedError::Invalid(e.to_string()))?;
        self.readers.clear();
        self.host = None;
        self.guest = None;
        if let Some(host) = host {
            if let Err(e) = self.serve_host(host) {
                tracing::error!(error = %e, "cannot serve the host");
                self.lose_host();
            }
        }
        if let Some((id, stream)) = guest {
            self.adopt_guest(id, stream);
        }
        if let Err(e) = self.listen(guest_listener, control_listener) {
            tracing::error!(error = %e, "cannot listen");
        }
        let mut restored = 0;
        for (entry, host_ring, guest_ring) in buses {
            let (bus, generation) = (entry.bus.clone(), entry.generation);
            match self.unpark(entry, host_ring, guest_ring, stopped_for) {
                Ok(()) => restored += 1,
                Err(e) => {
                    tracing::error!(bus = %bus, error = %e, "cannot restore the bus; closing it");
                    let actions = self.table.bus_stopped(&bus, generation);
                    self.apply(actions);
                }
            }
        }
        let info = RestoreInfo {
            from_version: saved.writer_version.clone(),
            format: saved.format,
            at: SystemTime::now(),
            downtime: stopped_for,
            updates: saved.updates + 1,
            buses: restored,
        };
        // The old image answers its client itself when it resumes after a failed exec.
        if let Some(requester) = requester.filter(|_| successor) {
            let reply = crate::control::Message::UpdateReply {
                result: Ok(format!(
                    "updated: {} buses carried from version {} (format {}), stopped for {:?}",
                    restored, info.from_version, info.format, stopped_for
                )),
            };
            let _ = crate::control::send(&requester, &reply, None);
            crate::inspect_server::serve_client(requester, self.sender.clone());
        }
        Ok(info)
    }

    /// The successor's start: reads the handover from `stdin` (the socket its predecessor
    /// wrote before it exec'd this image) and resumes everything in it.
    pub fn resume(
        config: crate::config::ServiceConfig,
        endpoints: super::Endpoints,
        stdin: UnixStream,
    ) -> anyhow::Result<Self> {
        let received = handover::recv(&stdin)?;
        drop(stdin);
        let (sender, events) = mpsc::channel();
        let mut service = Self::assemble(config, endpoints, sender, events, None)?;
        let info = service.resume_from_saved(&received.state, received.fds, true)?;
        tracing::info!(
            from_version = %info.from_version,
            buses = info.buses,
            downtime = ?info.downtime,
            updates = info.updates,
            "resumed from an update"
        );
        service.restored = Some(info);
        Ok(service)
    }

    /// Restarts one bus from its saved entry and ring ends.
    fn unpark(
        &mut self,
        entry: SavedBusEntry,
        host_ring: RingHandoff,
        guest_ring: RingHandoff,
        stopped_for: Duration,
    ) -> Result<(), String> {
        let mut host =
            RingChannel::from_handoff(host_ring).map_err(|e| format!("host ring: {e}"))?;
        let mut guest =
            RingChannel::from_handoff(guest_ring).map_err(|e| format!("guest ring: {e}"))?;
        let sources = vec![
            host.wait_source().map_err(|e| e.to_string())?,
            guest.wait_source().map_err(|e| e.to_string())?,
        ];
        let (host, revoke) = Revocable::new(host);
        if entry.host_revoked {
            revoke.revoke();
        }
        let bars = RecordingBars::restored(
            &entry.bus,
            entry.bars.iter().map(|b| {
                let backing = if b.backing == 1 {
                    Backing::Device
                } else {
                    Backing::Shield
                };
                (WinSlot::from_raw(b.slot), backing)
            }),
        );
        let clock = LoopClock::starting_at(Duration::from_nanos(entry.relay_now_ns) + stopped_for);
        let (driver, port) = restore_driver(
            self.config.relay_config(&entry.bus),
            &entry.driver,
            host,
            guest,
            clock,
            bars.clone(),
        )?;
        self.run_bus(
            &entry.bus,
            entry.generation,
            driver,
            port,
            sources,
            bars,
            revoke,
        )
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::saved::tests::{ring, valid};
    use crate::service::saved::{FORMAT, SavedMmio};
    use prost::Message as _;

    fn null() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"))
    }

    fn checked(state: &SavedService, fds: usize) -> Result<Checked, SavedError> {
        check(&state.encode_to_vec(), (0..fds).map(|_| null()).collect())
    }

    #[test]
    fn a_valid_state_passes() {
        let c = checked(&valid(), 8).expect("valid");
        assert_eq!(c.buses.len(), 1);
        assert_eq!(c.table.running("bus0"), Some(1));
    }

    #[test]
    fn hostile_states_are_refused_by_name() {
        assert!(matches!(
            check(b"\xff\xff\xff", Vec::new()),
            Err(SavedError::Decode(_))
        ));
        let mut s = valid();
        s.format = FORMAT + 1;
        assert!(matches!(checked(&s, 8), Err(SavedError::Format(_))));
        // Fewer descriptors than the state names.
        assert!(matches!(
            checked(&valid(), 6),
            Err(SavedError::Descriptor { index: 6, .. })
        ));
        // One descriptor named by two ring ends.
        let mut s = valid();
        s.buses[0].guest_ring = Some(ring(4));
        assert!(matches!(
            checked(&s, 8),
            Err(SavedError::Descriptor { index: 4, .. })
        ));
        // A listener that is also a ring's.
        let mut s = valid();
        s.control_listener_fd = 2;
        assert!(matches!(checked(&s, 8), Err(SavedError::Descriptor { .. })));
        // A ring end of 9 descriptors.
        let mut s = valid();
        s.buses[0].host_ring = Some(SavedRing {
            fd_count: 9,
            ..ring(2)
        });
        assert!(matches!(checked(&s, 16), Err(SavedError::Invalid(_))));
        // A bus the table does not say runs, or at another generation.
        let mut s = valid();
        s.buses[0].generation = 2;
        assert!(matches!(checked(&s, 8), Err(SavedError::Invalid(_))));
        // The same bus twice.
        let mut s = valid();
        let again = s.buses[0].clone();
        s.buses.push(again);
        assert!(matches!(checked(&s, 14), Err(SavedError::Invalid(_))));
        // A table state out of range; a bus id the control plane would refuse.
        let mut s = valid();
        if let Some(t) = s.table.as_mut() {
            t.buses[0].guest = 9;
        }
        assert!(matches!(checked(&s, 8), Err(SavedError::Invalid(_))));
        let mut s = valid();
        if let Some(t) = s.table.as_mut() {
            t.buses[0].bus = "bus 0\n".into();
        }
        assert!(matches!(checked(&s, 8), Err(SavedError::Invalid(_))));
        // An outstanding access with an id not yet issued, or that does not decode.
        let mut s = valid();
        s.pending.push(SavedMmio {
            host_id: 5,
            guest_id: 1,
            bus: "bus0".into(),
            generation: 1,
            op_json: r#"{"op":"config_read","slot":0,"offset":0,"len":4}"#.into(),
            relay_access: None,
        });
        assert!(matches!(checked(&s, 8), Err(SavedError::Invalid(m)) if m.contains("access id 5")));
        s.next_mmio = 6;
        assert!(checked(&s, 8).is_ok(), "the same access, issued");
        let mut s = valid();
        s.next_mmio = 9;
        s.pending.push(SavedMmio {
            host_id: 5,
            guest_id: 1,
            bus: "bus0".into(),
            generation: 1,
            op_json: "not json".into(),
            relay_access: None,
        });
        assert!(
            matches!(checked(&s, 8), Err(SavedError::Invalid(m)) if m.starts_with("access 5:"))
        );
        // A backing code out of range.
        let mut s = valid();
        s.buses[0].bars.push(crate::service::saved::SavedBar {
            slot: 1,
            backing: 7,
        });
        assert!(matches!(checked(&s, 8), Err(SavedError::Invalid(_))));
    }

    /// Random bytes never panic the check.
    #[test]
    fn random_bytes_are_refused_or_checked_without_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = check(&bytes, (0..4).map(|_| null()).collect());
        }
    }
}
