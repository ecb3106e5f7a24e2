//! The model guest endpoint of a multi-process run: connects to the service's guest socket,
//! opens every bus offered with a ring of its own and runs the Linux 6.2 or 6.3 model of
//! pci-hyperv on it in real time; config-space and BAR accesses go over the control plane.
//! A rescinded bus is removed by the model, then released.
//!
//! It prints each bus's state (`@@ guest state ...`, what the model holds) whenever it
//! changes, and the model's failure (`@@ guest failure ...`).

use super::ctl::Ctl;
use super::report::{GuestState, failure_line};
use crate::outcome::Outcome;
use futures::FutureExt;
use futures::executor::block_on;
use guest_linux::{ContextId, GuestConfig, GuestEnv, LinuxGuest};
use openhcl_vpci::control::{Message, MmioOp};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use vmbus_channel::{Channel, ChannelExt, Packet, RingChannel};
use vpci_protocol::WinSlot;

struct Env<'a> {
    now: Duration,
    bus: &'a str,
    ctl: &'a mut Ctl,
    outbox: &'a mut Vec<Packet>,
}

impl GuestEnv for Env<'_> {
    fn now(&self) -> Duration {
        self.now
    }
    fn send(&mut self, packet: Packet) {
        self.outbox.push(packet);
    }
    fn config_read(&mut self, slot: WinSlot, offset: u16, len: u8) -> Option<u32> {
        let slot = slot.raw();
        self.ctl
            .mmio(self.bus, MmioOp::ConfigRead { slot, offset, len })
    }
    fn config_write(&mut self, slot: WinSlot, offset: u16, len: u8, value: u32) -> bool {
        let slot = slot.raw();
        let op = MmioOp::ConfigWrite {
            slot,
            offset,
            len,
            value,
        };
        self.ctl.mmio(self.bus, op).is_some()
    }
    fn bar_read(&mut self, slot: WinSlot, bar: u8, offset: u64, len: u8) -> Option<u32> {
        let slot = slot.raw();
        let op = MmioOp::BarRead {
            slot,
            bar,
            offset,
            len,
        };
        self.ctl.mmio(self.bus, op)
    }
    fn bar_write(&mut self, slot: WinSlot, bar: u8, offset: u64, len: u8, value: u32) -> bool {
        let slot = slot.raw();
        let op = MmioOp::BarWrite {
            slot,
            bar,
            offset,
            len,
            value,
        };
        self.ctl.mmio(self.bus, op).is_some()
    }
    fn retarget_interrupt(&mut self, _: WinSlot, _: u32) {}
}

struct Bus {
    guest: LinuxGuest,
    ring: RingChannel,
    ring_ended: bool,
    rescinded: bool,
    failed: bool,
    last: Option<GuestState>,
}

/// Connects to `socket` and runs `config`'s model on every bus offered until the service goes
/// away and every bus is removed (or 20 s after that).
pub fn run(socket: &std::path::Path, config: &GuestConfig) -> std::io::Result<()> {
    let start = Instant::now();
    let mut ctl = Ctl::connect(socket)?;
    println!("@@ guest connected");
    let mut buses: BTreeMap<String, Bus> = BTreeMap::new();
    let mut gone_at: Option<Instant> = None;
    loop {
        let mut busy = false;
        while let Some(m) = ctl.next() {
            busy = true;
            match m {
                Message::Offer { bus } if !buses.contains_key(&bus) => {
                    let ring = match ctl.open(&bus) {
                        Ok(r) => r,
                        Err(e) => {
                            println!("@@ guest open {bus} failed: {e}");
                            continue;
                        }
                    };
                    let mut config = config.clone();
                    config.trace = false;
                    println!("@@ guest offer {bus}");
                    let guest = LinuxGuest::new(config);
                    let (ring_ended, rescinded, failed, last) = (false, false, false, None);
                    let b = Bus {
                        guest,
                        ring,
                        ring_ended,
                        rescinded,
                        failed,
                        last,
                    };
                    buses.insert(bus, b);
                }
                Message::Rescind { bus } => {
                    if let Some(b) = buses.get_mut(&bus) {
                        b.rescinded = true;
                        b.guest.rescind();
                    }
                }
                other => println!("@@ guest message {other:?}"),
            }
        }
        if ctl.gone && gone_at.is_none() {
            println!("@@ guest service gone");
            gone_at = Some(Instant::now());
            for b in buses.values_mut() {
                b.rescinded = true;
                b.guest.rescind();
            }
        }
        let now = start.elapsed();
        let mut released = Vec::new();
        for (name, b) in &mut buses {
            busy |= drive(name, b, now, &mut ctl);
            let probe_failed =
                matches!(b.guest.probe_result(), Some(Err(_))) && b.guest.runnable().is_empty();
            if b.rescinded && (b.guest.removed() || b.failed || probe_failed) {
                released.push(name.clone());
            }
        }
        for name in released {
            if let Some(mut b) = buses.remove(&name) {
                b.ring.close();
                ctl.release(&name);
                println!("@@ guest released {name}");
            }
        }
        if gone_at.is_some_and(|at| buses.is_empty() || at.elapsed() > Duration::from_secs(20)) {
            break;
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    println!(
        "@@ guest exit unremoved={:?}",
        buses.keys().collect::<Vec<_>>()
    );
    Ok(())
}

/// Runs one bus's model as far as it can go now; true if anything happened.
fn drive(name: &str, b: &mut Bus, now: Duration, ctl: &mut Ctl) -> bool {
    let mut busy = false;
    while !b.ring_ended {
        match b.ring.recv().now_or_never() {
            Some(Ok(p)) => {
                busy = true;
                b.guest.receive(p);
            }
            Some(Err(e)) if e.end_reason().is_some() => {
                b.ring_ended = true;
                b.rescinded = true;
                b.guest.rescind();
            }
            Some(Err(_)) => {}
            None => break,
        }
    }
    b.guest.advance_time(now);
    let mut outbox = Vec::new();
    for _ in 0..10_000 {
        let spinning = b.guest.spinning();
        let runnable = b.guest.runnable();
        let ctx: Option<ContextId> = runnable
            .iter()
            .copied()
            .find(|c| !spinning.contains(c))
            .or_else(|| runnable.first().copied());
        let Some(ctx) = ctx else { break };
        let mut env = Env {
            now,
            bus: name,
            ctl,
            outbox: &mut outbox,
        };
        b.guest.step(ctx, &mut env);
        if spinning.contains(&ctx) {
            break;
        }
        busy = true;
    }
    for p in outbox {
        busy = true;
        if !b.ring_ended && block_on(b.ring.send(&p)).is_err() {
            b.ring_ended = true;
        }
    }
    if !b.failed {
        if let Some(f) = b.guest.failure() {
            b.failed = true;
            let outcome = Outcome::Guest {
                bus: 0,
                failure: f.kind.name().to_owned(),
                context: format!("{:?}", f.context),
                function: f.function.to_owned(),
                message: f.message.clone(),
            };
            println!("@@ {}", failure_line(name, &outcome));
        }
    }
    let state = GuestState {
        bus: name.to_owned(),
        probed: b.guest.probe_result() == Some(Ok(())),
        closed: b.rescinded,
        held: crate::vm::guest_functions(&b.guest.devices()),
    };
    if b.last.as_ref() != Some(&state) {
        println!("@@ {}", state.line());
        b.last = Some(state);
    }
    busy
}
