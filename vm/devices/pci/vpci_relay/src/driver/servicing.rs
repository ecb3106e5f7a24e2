//! Servicing a running bus: the driver stopped at a packet boundary
//! ([`BusDriver::stop`]), host packets queued while it is stopped
//! ([`StoppedBus::poll_queue_host`]), everything saved ([`StoppedBus::save`]), and a new
//! driver restored from it ([`BusDriver::restore`]).
//!
//! **Mappings are not replayed.** The VMM's BAR and config-space mappings belong to the VMM
//! and survive a restart of the paravisor (as in OpenHCL); what the relay decided and the
//! old driver carried out stays carried out. Backing changes the relay decided that the old
//! driver had not yet carried out are in the saved relay's outputs, and the restored driver
//! carries them out first.

use super::{BarControl, BusDriver, BusPort, DriverCounters, MAX_QUEUED};
use crate::relay::{restore_packet, save_packet};
use crate::save::{MAX_SAVED_OUTPUTS, MAX_SAVED_PAYLOAD, RestoreError, SavedBus, SavedPacket};
use crate::{BusRelay, Clock, RelayConfig};
use std::collections::VecDeque;
use std::task::{Context, Poll};
use vmbus_channel::{Channel, ChannelError, Packet, PacketFlags, PacketKind};
use vpci_protocol::Sender;

/// The most host packets a stopped bus queues; past it, the rest wait in the host's channel
/// (backpressure), where the host's own ring bounds them.
pub const MAX_HOST_QUEUE: usize = MAX_QUEUED;

const HOST_END_NONE: u32 = 0;
const HOST_END_CLOSED: u32 = 1;
const HOST_END_BROKEN: u32 = 2;

/// A bus whose driver was stopped at a packet boundary: the relay does nothing, the guest's
/// channel is not read, and host packets that arrive are queued (bounded) to be saved and
/// delivered first to the restored relay.
pub struct StoppedBus<H, G, C, B> {
    driver: BusDriver<H, G, C, B>,
    host_queue: VecDeque<Packet>,
    host_end: u32,
}

impl<H, G, C, B> BusDriver<H, G, C, B>
where
    H: Channel,
    G: Channel,
    C: Clock,
    B: BarControl,
{
    /// Stops the driver between two packets (the driver handles each packet whole, so any
    /// moment it is not being polled is a packet boundary). What the relay has put out is
    /// taken first: packets to the queues, backing changes to the VMM, events to the
    /// callback.
    pub fn stop(mut self) -> StoppedBus<H, G, C, B> {
        self.drain_relay();
        StoppedBus {
            driver: self,
            host_queue: VecDeque::new(),
            host_end: HOST_END_NONE,
        }
    }

    /// A driver for a restored bus under `config` (the new version's), between the given
    /// channels, carrying out backing changes on `bars` with the time from `clock`, which
    /// must continue the saved relay's time base (see [`BusRelay::restore`]).
    ///
    /// The restored relay gets the host packets queued while the bus was stopped first, in
    /// order (then the host channel's end, if it ended meanwhile); the packets the old driver
    /// had not sent go out first on each channel. Mappings are not replayed (see the module
    /// documentation).
    ///
    /// On a [`RestoreError`] nothing is restored: the guest channel is revoked (the guest
    /// sees its bus go, as after a rescind) and the host channel is closed, and the error
    /// says what was wrong with the state.
    pub fn restore(
        config: RelayConfig,
        saved: &SavedBus,
        mut host: H,
        mut guest: G,
        clock: C,
        bars: B,
    ) -> Result<(Self, BusPort), RestoreError> {
        match Self::restore_parts(config, saved, clock.now()) {
            Ok(parts) => {
                let (relay, to_host, to_guest, host_queue, counters) = parts;
                let SavedBus {
                    host_ended,
                    close_guest,
                    host_end_while_stopped,
                    ..
                } = saved;
                let (mut driver, port) = Self::new(relay, host, guest, clock, bars);
                driver.to_host = to_host;
                driver.to_guest = to_guest;
                driver.host_open = !host_ended;
                driver.close_guest = *close_guest;
                driver.counters = counters;
                for p in host_queue {
                    driver.relay.handle_host(driver.clock.now(), p);
                }
                match *host_end_while_stopped {
                    HOST_END_CLOSED => driver.relay.handle_host_closed(driver.clock.now()),
                    HOST_END_BROKEN => {
                        driver.relay.handle_host_transport_error(driver.clock.now());
                    }
                    _ => {}
                }
                if *host_end_while_stopped != HOST_END_NONE {
                    driver.host_open = false;
                }
                Ok((driver, port))
            }
            Err(e) => {
                tracing::error!(error = %e, "saved bus state refused; closing the bus");
                guest.revoke();
                host.close();
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn restore_parts(
        config: RelayConfig,
        saved: &SavedBus,
        now: std::time::Duration,
    ) -> Result<
        (
            BusRelay,
            VecDeque<Packet>,
            VecDeque<Packet>,
            Vec<Packet>,
            DriverCounters,
        ),
        RestoreError,
    > {
        let SavedBus {
            relay,
            to_host,
            to_guest,
            host_ended: _,
            close_guest: _,
            host_queue,
            host_end_while_stopped,
            driver_counters,
        } = saved;
        let relay = BusRelay::restore(config, &relay.clone().unwrap_or_default(), now)?;
        let version = relay.version();
        let queue = |field: &str, packets: &[SavedPacket], from| {
            if packets.len() > MAX_SAVED_OUTPUTS {
                return Err(RestoreError::OverLimit {
                    field: field.to_owned(),
                    count: packets.len(),
                    limit: MAX_SAVED_OUTPUTS,
                });
            }
            packets
                .iter()
                .enumerate()
                .map(|(i, p)| restore_packet(Some(p), &format!("{field}[{i}]"), from, version))
                .collect::<Result<VecDeque<_>, _>>()
        };
        let to_host = queue("to_host", to_host, Sender::Guest)?;
        let to_guest = queue("to_guest", to_guest, Sender::Host)?;
        if host_queue.len() > MAX_HOST_QUEUE {
            return Err(RestoreError::OverLimit {
                field: "host_queue".into(),
                count: host_queue.len(),
                limit: MAX_HOST_QUEUE,
            });
        }
        // The host's packets, as the host sent them: the relay judges them as it would
        // have live (a malformed one costs the host its bus).
        let host_queue = host_queue
            .iter()
            .enumerate()
            .map(|(i, p)| host_packet(p, &format!("host_queue[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if *host_end_while_stopped > HOST_END_BROKEN {
            return Err(RestoreError::BadValue {
                field: "host_end_while_stopped".into(),
                value: (*host_end_while_stopped).into(),
            });
        }
        let counters = match driver_counters.as_slice() {
            [] => DriverCounters::default(),
            &[
                host_send_rejected,
                guest_send_rejected,
                guest_recv_rejected,
                ..,
            ] => DriverCounters {
                host_send_rejected,
                guest_send_rejected,
                guest_recv_rejected,
            },
            other => {
                return Err(RestoreError::OverLimit {
                    field: "driver_counters".into(),
                    count: other.len(),
                    limit: 3,
                });
            }
        };
        Ok((relay, to_host, to_guest, host_queue, counters))
    }
}

/// A host packet queued while stopped: any kind and flags (the relay judges them), a payload
/// within bounds.
fn host_packet(p: &SavedPacket, field: &str) -> Result<Packet, RestoreError> {
    let SavedPacket {
        kind,
        flags,
        transaction_id,
        payload,
    } = p;
    let bad = |value: u32| RestoreError::BadValue {
        field: field.to_owned(),
        value: value.into(),
    };
    if payload.len() > MAX_SAVED_PAYLOAD {
        return Err(RestoreError::PayloadTooLarge {
            field: field.to_owned(),
            len: payload.len(),
        });
    }
    Ok(Packet {
        kind: PacketKind::from_raw(u16::try_from(*kind).map_err(|_| bad(*kind))?),
        flags: PacketFlags(u16::try_from(*flags).map_err(|_| bad(*flags))?),
        transaction_id: *transaction_id,
        payload: payload.clone(),
    })
}

impl<H, G, C, B> StoppedBus<H, G, C, B>
where
    H: Channel,
    G: Channel,
    C: Clock,
    B: BarControl,
{
    /// Reads host packets into the queue while the bus is stopped. Ready once nothing more
    /// will be queued: the queue is full ([`MAX_HOST_QUEUE`]; the rest wait in the host's
    /// channel) or the host channel ended. Pending while the channel is empty (the waker is
    /// registered with it).
    pub fn poll_queue_host(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.driver.host_open && self.host_end == HOST_END_NONE {
            if self.host_queue.len() >= MAX_HOST_QUEUE {
                return Poll::Ready(());
            }
            match self.driver.host.poll_recv(cx) {
                Poll::Ready(Ok(p)) => self.host_queue.push_back(p),
                Poll::Ready(Err(ChannelError::Closed | ChannelError::Revoked)) => {
                    self.host_end = HOST_END_CLOSED;
                }
                Poll::Ready(Err(_)) => self.host_end = HOST_END_BROKEN,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(())
    }

    /// Host packets queued so far.
    pub fn host_queued(&self) -> usize {
        self.host_queue.len()
    }

    /// The relay, for inspection.
    pub fn relay(&self) -> &BusRelay {
        &self.driver.relay
    }

    /// Everything the bus carries across: the relay, the driver's queues, the host packets
    /// queued while stopped.
    pub fn save(&self) -> SavedBus {
        let Self {
            driver,
            host_queue,
            host_end,
        } = self;
        let BusDriver {
            relay,
            // The channels, clock and mappings are the new version's.
            host: _,
            guest: _,
            clock: _,
            bars: _,
            // A new port is made on restore; requests in flight on the old one see the
            // driver gone (`None`), as for any stopped driver.
            config_rx: _,
            to_host,
            to_guest,
            host_open,
            close_guest,
            // Re-armed from the restored relay's deadline.
            timer: _,
            on_event: _,
            counters,
        } = driver;
        let DriverCounters {
            host_send_rejected,
            guest_send_rejected,
            guest_recv_rejected,
        } = *counters;
        SavedBus {
            relay: Some(relay.save()),
            to_host: to_host.iter().map(save_packet).collect(),
            to_guest: to_guest.iter().map(save_packet).collect(),
            host_ended: !host_open,
            close_guest: *close_guest,
            host_queue: host_queue.iter().map(save_packet).collect(),
            host_end_while_stopped: *host_end,
            driver_counters: vec![host_send_rejected, guest_send_rejected, guest_recv_rejected],
        }
    }

    /// Gives the channels, the clock and the mappings back (for a restore in the same
    /// process, as tests do).
    pub fn into_parts(self) -> (H, G, C, B) {
        let BusDriver {
            host,
            guest,
            clock,
            bars,
            ..
        } = self.driver;
        (host, guest, clock, bars)
    }
}
