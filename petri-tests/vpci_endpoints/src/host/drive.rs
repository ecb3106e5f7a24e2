//! What the host does to a bus once it negotiated, if the spec asks: a hot-plug storm, a
//! loop of rescinds and re-offers, or a chaotic host. Each prints its summary as an `@@` line. A storm stops
//! early when its bus's ring ends (a fault), counting the EJECT it waited for as answered
//! only if the answer came before the end; each EJECT unanswered is printed with its cycle.

use super::Host;
use crate::report::StormSummary;
use host_sim::{Chaos, ChaosSpec, FunctionSpec, HostAction, HostClock, HostEventKind, SharedBus};
use openhcl_vpci::control::Message;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vpci_protocol::WinSlot;

/// How long the host waits for a bus to negotiate, a release or a reopening.
const LIMIT: Duration = Duration::from_secs(30);

/// How long the host waits for an EJECT's answer: past host_sim's own 60-second timeout, so
/// every EJECT ends answered or timed out.
const EJECT_LIMIT: Duration = Duration::from_secs(70);

/// Waits (polling the bus's events) until `done` says so, or `limit` passes, or `gone` says
/// the bus's ring ended (after the events from before the end).
fn wait_event(
    shared: &SharedBus,
    limit: Duration,
    gone: impl Fn() -> bool,
    mut done: impl FnMut(&HostEventKind) -> bool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        let ended = gone();
        while let Some(e) = shared.with(|b| b.poll_event()) {
            if done(&e.kind) {
                return true;
            }
        }
        if ended {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

fn negotiated(shared: &SharedBus) -> bool {
    wait_event(
        shared,
        LIMIT,
        || false,
        |k| matches!(k, HostEventKind::Negotiated { .. }),
    )
}

/// `cycles` times: hot-add a function in the first slot past the bus's own, eject it (before
/// the guest hears of it, while it probes, or once it has had it a while), wait for the
/// answer. Prints a [`StormSummary`].
pub(super) fn storm(host: &Host, bus: &str) {
    let cycles = host.spec.storm;
    let Some(shared) = host.current(bus) else {
        return;
    };
    if !negotiated(&shared) {
        println!("@@ host {bus} never negotiated");
        return;
    }
    let slot = shared.with(|b| b.slots().iter().map(|s| s.raw() + 1).max().unwrap_or(0));
    let wslot = WinSlot::from_raw(slot);
    let (mut added, mut answered, mut unanswered) = (0u32, 0u32, 0u32);
    let started = Instant::now();
    let gone = || host.ring_ended(bus);
    for c in 0..cycles {
        if gone() {
            println!("@@ host {bus} storm stopped at cycle {c}: the ring ended");
            break;
        }
        let f = FunctionSpec::nic(slot).with_serial(10_000 + c);
        if shared.act(host.clock.now(), HostAction::HotAdd(f)).is_err() {
            println!("@@ host {bus} hot-add refused at cycle {c}");
            break;
        }
        added += 1;
        match c % 4 {
            0 => {}
            1 => std::thread::sleep(Duration::from_millis(1)),
            2 => std::thread::sleep(Duration::from_millis(120)),
            _ => std::thread::sleep(Duration::from_millis(15)),
        }
        let eject = HostAction::Eject { slot: wslot.raw() };
        if shared.act(host.clock.now(), eject).is_err() {
            println!("@@ host {bus} eject refused at cycle {c}");
            break;
        }
        let mut out = None;
        wait_event(&shared, EJECT_LIMIT, gone, |k| match k {
            HostEventKind::EjectCompleted { slot, .. } if *slot == wslot => {
                out = Some(true);
                true
            }
            HostEventKind::EjectTimedOut { slot } if *slot == wslot => {
                out = Some(false);
                true
            }
            _ => false,
        });
        match out {
            Some(true) => answered += 1,
            _ => {
                println!("@@ host {bus} eject unanswered cycle={c}");
                unanswered += 1;
            }
        }
    }
    let summary = StormSummary {
        bus: bus.to_owned(),
        cycles,
        added,
        answered,
        unanswered,
        ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    println!("@@ {}", summary.line());
}

/// `times` times: rescind the bus (the adapter then rescinds it to the service), wait for the
/// guest's release, offer it again, wait for the service to reopen it and for the new bus to
/// negotiate. Prints `reoffer BUS done=N`, or where it stopped.
pub(super) fn reoffer(host: &Host, bus: &str, wake: &mpsc::Receiver<()>) {
    let Some(mut shared) = host.current(bus) else {
        return;
    };
    if !negotiated(&shared) {
        println!("@@ host {bus} never negotiated");
        return;
    }
    for r in 0..host.spec.reoffer {
        let _ = shared.act(host.clock.now(), HostAction::Rescind {});
        if wake.recv_timeout(LIMIT).is_err() {
            println!("@@ reoffer {bus} no release at round {r}");
            return;
        }
        host.writer.send(&Message::Offer {
            bus: bus.to_owned(),
        });
        if wake.recv_timeout(LIMIT).is_err() {
            println!("@@ reoffer {bus} not reopened at round {r}");
            return;
        }
        let Some(next) = host.current(bus) else {
            return;
        };
        shared = next;
        if !negotiated(&shared) {
            println!("@@ reoffer {bus} never negotiated at round {r}");
            return;
        }
    }
    println!("@@ reoffer {bus} done={}", host.spec.reoffer);
}

/// A chaotic host on `bus` (bus `i` of `n` takes every `n`-th of the spec's actions, its
/// choices seeded by the spec's seed and `i`): waits 0 to `2 * every` ms, then takes the next
/// action the host's current state allows, until its share is done or it rescinded the bus.
/// Prints `chaos BUS actions=N rescinded=0|1`.
pub(super) fn chaos(host: &Host, bus: &str, spec: ChaosSpec) {
    let Some(shared) = host.current(bus) else {
        return;
    };
    if !negotiated(&shared) {
        println!("@@ host {bus} never negotiated");
        return;
    }
    let buses = host.spec.buses.len().max(1);
    let index = (0..buses).find(|&i| crate::bus_name(i) == bus).unwrap_or(0);
    let share = (0..spec.actions as usize)
        .filter(|a| a % buses == index)
        .count();
    let mut chaos = Chaos::new(ChaosSpec {
        actions: u32::try_from(share).unwrap_or(u32::MAX),
        seed: spec.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ..spec
    });
    let (mut taken, mut rescinded) = (0u32, false);
    while chaos.left() > 0 && !host.ring_ended(bus) {
        let wait = chaos.below(2 * spec.every.max(1) + 1);
        std::thread::sleep(Duration::from_millis(u64::from(wait)));
        // Nothing else reads this bus's events.
        shared.with(|b| while b.poll_event().is_some() {});
        let action = shared.with(|b| chaos.action(b));
        let rescind = matches!(action, HostAction::Rescind {});
        println!("@@ host chaos {bus} {action:?}");
        let _ = shared.act(host.clock.now(), action);
        taken += 1;
        if rescind {
            rescinded = true;
            break;
        }
    }
    println!(
        "@@ chaos {bus} actions={taken} rescinded={}",
        u8::from(rescinded)
    );
}
