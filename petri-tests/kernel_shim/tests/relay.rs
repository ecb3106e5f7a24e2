//! The real drivers behind the relay: host_sim <-> vpci_relay's BusDriver <-> the real
//! guest, all on virtual time and polled by hand, as petri's VM does. The same races that
//! the real Debian 5.10 driver loses when it talks to host_sim directly (catalogue C3, C4)
//! never reach it through the relay.

use std::collections::VecDeque;
use std::time::Duration;

use host_sim::{BusConfig, FunctionSpec, HostAction, HostBus};
use kernel_shim::DriverVersion;
use kernel_shim::guest::{Action, Controller, Ending, Sched, Session};
use kernel_shim::host::{ConfigWindow, WindowAccess};
use kernel_shim::protocol::{Command, EventKind, GuestPacket};
use vmbus_channel::Packet;
use vpci_protocol::WinSlot;
use vpci_relay::sim::RelayRig;
use vpci_relay::{Backing, BusRelay, ConfigAccess, ConfigAction, RelayConfig, VirtualClock};

const BUS_D0ENTRY: u32 = 0x4249_0007;
const EJECTION_COMPLETE: u32 = 0x4249_000f;
const RESOURCES_ASSIGNED2: u32 = 0x4249_0016;
const INSTANCE: [u8; 16] = [
    0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0,
];

/// One relay (the shared rig of `vpci_relay::sim`) and the clock its timers run on.
struct Relay {
    rig: RelayRig,
    clock: VirtualClock,
}

impl Relay {
    fn new() -> Self {
        let clock = VirtualClock::new();
        let rig = RelayRig::new(BusRelay::new(RelayConfig::default()), clock.clone(), false);
        Self { rig, clock }
    }
}

enum Step {
    Command(Command),
    /// Arm a host action for the guest's first access to this config offset of slot 0.
    HostOnConfigRead(u16, HostAction),
    /// Arm a host action for the guest's first message of this type.
    HostOnMessage(u32, HostAction),
    /// Wait until no guest context can run and the relay has no timer pending.
    Idle,
}

/// host_sim, optionally behind the relay, and the real guest, under a seeded scheduler.
struct Rig {
    host: HostBus,
    relay: Option<Relay>,
    window: ConfigWindow,
    /// Host packets waiting for room towards the relay.
    host_out: VecDeque<Packet>,
    /// Guest packets waiting for room towards the relay.
    guest_out: VecDeque<Packet>,
    /// Packets on their way to the guest.
    to_guest: VecDeque<Packet>,
    now: Duration,
    script: VecDeque<Step>,
    waiting: Option<u32>,
    waiting_idle: bool,
    on_read: Option<(u16, HostAction)>,
    on_message: Option<(u32, HostAction)>,
    results: Vec<(u32, i32)>,
    rng: u64,
    points: u64,
    /// The guest sent EJECTION_COMPLETE for slot 0 (it let the function go).
    guest_ejected: bool,
    assigned: Vec<u32>,
    /// Guest accesses that reached nothing (a fault on real hardware).
    faults: Vec<String>,
    /// A driver bound to a function the guest had already ejected, or without its resources
    /// assigned (catalogue C3, C4).
    broken: Vec<String>,
    /// A driver that could not enable its device (a BAR left unassigned).
    unusable: Vec<String>,
    trouble: Vec<String>,
    log: Vec<String>,
}

impl Rig {
    fn new(relayed: bool, seed: u64, script: Vec<Step>) -> Self {
        let config = BusConfig {
            functions: vec![FunctionSpec::nic(0)],
            ..BusConfig::default()
        };
        Self {
            host: HostBus::new(config).unwrap(),
            relay: relayed.then(Relay::new),
            window: ConfigWindow::new(),
            host_out: VecDeque::new(),
            guest_out: VecDeque::new(),
            to_guest: VecDeque::new(),
            now: Duration::ZERO,
            script: script.into(),
            waiting: None,
            waiting_idle: false,
            on_read: None,
            on_message: None,
            results: Vec::new(),
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            points: 0,
            guest_ejected: false,
            assigned: Vec::new(),
            faults: Vec::new(),
            broken: Vec::new(),
            unusable: Vec::new(),
            trouble: Vec::new(),
            log: Vec::new(),
        }
    }

    fn random(&mut self) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 33) as usize
    }

    /// Moves packets host <-> relay <-> guest until nothing moves. (The guest gets what
    /// arrives at its next scheduling point: this rig does not make arrival a choice.)
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(p) = self.host.poll_transmit() {
                self.host_out.push_back(p);
                moved = true;
            }
            let Some(relay) = self.relay.as_mut() else {
                // Direct: the host's packets go straight to the guest and back.
                self.to_guest.extend(self.host_out.drain(..));
                for p in self.guest_out.drain(..) {
                    self.host.handle_packet(self.now, p);
                    moved = true;
                }
                if !moved {
                    return;
                }
                continue;
            };
            relay.clock.advance_to(self.now);
            let out = relay.rig.exchange(&mut self.host_out, &mut self.guest_out);
            moved |= out.moved;
            for p in out.to_host {
                self.host.handle_packet(self.now, p);
            }
            self.to_guest.extend(out.to_guest);
            if !moved {
                return;
            }
        }
    }

    fn next_deadline(&self, sched: &Sched) -> Option<u64> {
        let relay = self.relay.as_ref().and_then(|r| r.clock.next_deadline());
        [
            Some(sched.next_deadline_ns).filter(|&d| d > 0),
            self.host.poll_timeout().map(|t| t.as_nanos() as u64),
            relay.map(|t| t.as_nanos() as u64),
        ]
        .into_iter()
        .flatten()
        .filter(|&t| t > sched.now_ns)
        .min()
    }

    fn config_read(&mut self, slot: WinSlot, offset: u16, len: u8) -> u32 {
        if slot.raw() == 0 {
            if let Some((at, action)) = self.on_read.take_if(|(at, _)| *at == offset) {
                let _ = at;
                self.host.act(self.now, action).unwrap();
            }
        }
        let ones = if len >= 4 {
            u32::MAX
        } else {
            (1 << (8 * u32::from(len))) - 1
        };
        let Some(relay) = self.relay.as_mut() else {
            return self.host.config_read(slot, offset, len).unwrap_or(ones);
        };
        match relay.rig.access(ConfigAccess::Read { slot, offset, len }) {
            Some(ConfigAction::Forward(id)) => {
                let value = self.host.config_read(slot, offset, len).ok();
                relay.rig.access_done(id, value);
                value.unwrap_or(ones)
            }
            Some(ConfigAction::Answer(value)) => value,
            _ => ones,
        }
    }

    fn config_write(&mut self, slot: WinSlot, offset: u16, len: u8, value: u32) {
        let Some(relay) = self.relay.as_mut() else {
            let _ = self.host.config_write(slot, offset, len, value);
            return;
        };
        let access = ConfigAccess::Write {
            slot,
            offset,
            len,
            value,
        };
        if let Some(ConfigAction::Forward(id)) = relay.rig.access(access) {
            let _ = self.host.config_write(slot, offset, len, value);
            relay.rig.access_done(id, None);
        }
    }

    /// A BAR access: through the relay's backing, or straight to the device.
    fn bar(&mut self, addr: u64, data: &mut [u8], write: bool) -> bool {
        let Some((slot, bar, offset)) = self.host.resolve_mmio(addr) else {
            return false;
        };
        let backing = match &self.relay {
            Some(relay) => relay.rig.bars.get(slot),
            None => Backing::Device,
        };
        match backing {
            Backing::Device if write => self.host.bar_write(slot, bar, offset, data).is_ok(),
            Backing::Device => self.host.bar_read(slot, bar, offset, data).is_ok(),
            Backing::Shield => {
                if !write {
                    data.fill(0xff);
                }
                true
            }
            Backing::Released => false,
        }
    }
}

impl Controller for Rig {
    fn schedule(&mut self, sched: &Sched) -> Action {
        self.now = Duration::from_nanos(sched.now_ns);
        self.points += 1;
        if self.points > 2_000_000 {
            return Action::Stop("livelock".to_string());
        }
        if self.host.poll_timeout().is_some_and(|t| t <= self.now) {
            self.host.handle_timeout(self.now);
        }
        self.pump();
        if let Some(p) = self.to_guest.pop_front() {
            return Action::deliver(0, &p);
        }
        // Idle: no guest context can run and the relay has no timer pending (a held eject
        // waits for the settle window).
        let relay_quiet = self
            .relay
            .as_ref()
            .is_none_or(|r| r.clock.next_deadline().is_none());
        let done = match self.waiting {
            Some(cmd) => self.results.iter().any(|&(c, _)| c == cmd),
            None => !self.waiting_idle || (sched.runnable.is_empty() && relay_quiet),
        };
        if done {
            self.waiting = None;
            self.waiting_idle = false;
            if let Some(step) = self.script.pop_front() {
                match step {
                    Step::Command(cmd) => {
                        self.waiting = Some(cmd.number());
                        return Action::Command(cmd);
                    }
                    Step::HostOnConfigRead(offset, action) => self.on_read = Some((offset, action)),
                    Step::HostOnMessage(msg, action) => self.on_message = Some((msg, action)),
                    Step::Idle => self.waiting_idle = true,
                }
                return self.schedule(sched);
            }
        }
        if !sched.runnable.is_empty() {
            let pick = self.random() % sched.runnable.len();
            return Action::Run(sched.runnable[pick]);
        }
        match self.next_deadline(sched) {
            Some(t) => Action::Advance(t),
            None => Action::Stop(format!("hang: waiting for {:?}", self.waiting)),
        }
    }

    fn packet(&mut self, packet: GuestPacket) {
        self.window.observe_guest_message(&packet.payload);
        let word = |at: usize| {
            packet
                .payload
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let kind = word(0).unwrap_or_default();
        if kind == EJECTION_COMPLETE && word(4) == Some(0) {
            self.guest_ejected = true;
        }
        if kind == RESOURCES_ASSIGNED2 {
            self.assigned.extend(word(4));
        }
        self.guest_out.push_back(packet.to_packet());
        self.pump();
        if let Some((_, action)) = self.on_message.take_if(|(m, _)| *m == kind) {
            self.host.act(self.now, action).unwrap();
        }
    }

    fn mmio_read(&mut self, addr: u64, size: u32) -> u64 {
        let len = size.clamp(1, 4) as u8;
        match self.window.decode(addr, size) {
            WindowAccess::Config { slot, offset } => {
                let Some(slot) = slot else {
                    return u64::MAX;
                };
                u64::from(self.config_read(WinSlot::from_raw(slot), offset, len))
            }
            WindowAccess::SlotSelect | WindowAccess::WindowOther => 0,
            WindowAccess::Outside => {
                let mut data = [0u8; 8];
                let n = (size as usize).min(8);
                if self.bar(addr, &mut data[..n], false) {
                    u64::from_le_bytes(data)
                } else {
                    self.faults.push(format!("read {addr:#x}"));
                    u64::MAX
                }
            }
        }
    }

    fn mmio_write(&mut self, addr: u64, size: u32, value: u64) {
        let len = size.clamp(1, 4) as u8;
        match self.window.write(addr, size, value) {
            WindowAccess::Config {
                slot: Some(slot),
                offset,
            } => self.config_write(WinSlot::from_raw(slot), offset, len, value as u32),
            WindowAccess::Outside => {
                let mut data = value.to_le_bytes();
                let n = (size as usize).min(8);
                if !self.bar(addr, &mut data[..n], true) {
                    self.faults.push(format!("write {addr:#x}"));
                }
            }
            _ => {}
        }
    }

    fn hypercall(&mut self, _control: u64, _input: &[u8]) -> u64 {
        0
    }

    fn result(&mut self, command: u32, result: i32) {
        self.results.push((command, result));
    }

    fn log(&mut self, _level: u32, ctx: u32, text: &str) {
        self.log.push(format!("[{ctx}] {}", text.trim_end()));
    }

    fn event(&mut self, kind: EventKind, ctx: u32, text: &str) {
        self.log.push(format!("[{ctx}] {kind:?}: {text}"));
        if matches!(kind, EventKind::Warn | EventKind::Bug | EventKind::Leak) {
            self.trouble.push(text.to_string());
        }
        if text.starts_with("endpoint probe 00.") && self.guest_ejected {
            self.broken.push(format!("bound after its eject: {text}"));
        }
        if let Some(slot) = text
            .strip_prefix("endpoint probe ")
            .and_then(|s| s.split('.').next())
            .and_then(|s| u32::from_str_radix(s, 16).ok())
        {
            if !self.assigned.contains(&slot) {
                self.broken.push(format!("bound without resources: {text}"));
            }
        }
        if text.contains("can't enable device") {
            self.unusable.push(text.to_string());
        }
    }
}

fn run(version: DriverVersion, relayed: bool, seed: u64, script: Vec<Step>) -> (Rig, Ending) {
    let mut rig = Rig::new(relayed, seed, script);
    let outcome = Session::spawn(version).unwrap().run(&mut rig).unwrap();
    (rig, outcome.ending)
}

fn probe_idle_remove(first: Step) -> Vec<Step> {
    vec![
        first,
        Step::Command(Command::Init),
        Step::Command(Command::Probe {
            bus: 0,
            instance: INSTANCE,
        }),
        Step::Idle,
        Step::Command(Command::Remove { bus: 0 }),
        Step::Command(Command::Exit),
    ]
}

/// The plain run through the relay: both drivers probe, bind MSI-X and are removed cleanly.
#[test]
fn real_drivers_run_through_the_relay() {
    for version in DriverVersion::ALL {
        let (rig, ending) = run(version, true, 0, probe_idle_remove(Step::Idle));
        assert_eq!(ending, Ending::Done { leaks: 0 }, "{:#?}", rig.log);
        assert!(
            rig.results.iter().all(|&(_, r)| r == 0),
            "{:?}",
            rig.results
        );
        assert!(rig.faults.is_empty() && rig.broken.is_empty() && rig.trouble.is_empty());
        assert!(rig.unusable.is_empty(), "{:?}", rig.unusable);
        assert!(rig.log.iter().any(|l| l.contains("endpoint probe 00.0")));
    }
}

fn eject_during_scan() -> Vec<Step> {
    probe_idle_remove(Step::HostOnConfigRead(0x10, HostAction::Eject { slot: 0 }))
}

/// C3: host_sim ejects slot 0 when the guest's scan first reads its BAR0. Direct, Debian 5.10
/// binds a driver to the function it has already let go; through the relay (which holds the
/// eject until the function is settled) no driver meets a function after its eject, no access
/// faults, and the eject completes.
#[test]
fn eject_during_scan_is_harmless_through_the_relay() {
    let direct_failures = (0..10)
        .filter(|&seed| {
            let (rig, _) = run(DriverVersion::Debian5_10, false, seed, eject_during_scan());
            !rig.broken.is_empty()
        })
        .count();
    assert!(direct_failures > 0, "5.10 direct never reached C3");
    for version in DriverVersion::ALL {
        for seed in 0..10 {
            let (rig, ending) = run(version, true, seed, eject_during_scan());
            assert_eq!(
                ending,
                Ending::Done { leaks: 0 },
                "{version:?} {seed}: {:#?}",
                rig.log
            );
            assert!(
                rig.broken.is_empty(),
                "{version:?} {seed}: {:?}",
                rig.broken
            );
            assert!(
                rig.faults.is_empty(),
                "{version:?} {seed}: {:?}",
                rig.faults
            );
            assert!(
                rig.guest_ejected,
                "{version:?} {seed}: the eject never completed"
            );
        }
    }
}

/// While the relay holds an eject of a device the host has torn down, it answers the
/// function's config space from its copy, and the copy takes writes as the device would: a
/// guest that sizes the BARs then (the scan of a probe path) reads back the size masks
/// QUERY_RESOURCE_REQUIREMENTS reported, and its driver can enable the device. (Before the
/// relay kept writes, both real drivers read back the old BAR values and could not.)
#[test]
fn held_eject_keeps_bar_sizing_working() {
    for version in DriverVersion::ALL {
        let (rig, _) = run(version, true, 0, eject_during_scan());
        assert!(rig.unusable.is_empty(), "{version:?}: {:?}", rig.unusable);
    }
}

/// C4: host_sim hot-adds slot 1 when the guest enters D0. Direct, Debian 5.10 meets the new
/// function unusable; through the relay (which holds the relations change until the probe path
/// is done) it never does.
#[test]
fn hot_add_during_probe_is_harmless_through_the_relay() {
    let script = || {
        probe_idle_remove(Step::HostOnMessage(
            BUS_D0ENTRY,
            HostAction::HotAdd(FunctionSpec::nic(1)),
        ))
    };
    let direct_failures = (0..10)
        .filter(|&seed| {
            let (rig, _) = run(DriverVersion::Debian5_10, false, seed, script());
            !rig.broken.is_empty() || !rig.unusable.is_empty()
        })
        .count();
    assert!(direct_failures > 0, "5.10 direct never reached C4");
    for version in DriverVersion::ALL {
        for seed in 0..10 {
            let (rig, ending) = run(version, true, seed, script());
            assert_eq!(
                ending,
                Ending::Done { leaks: 0 },
                "{version:?} {seed}: {:#?}",
                rig.log
            );
            assert!(
                rig.broken.is_empty(),
                "{version:?} {seed}: {:?}",
                rig.broken
            );
            assert!(
                rig.unusable.is_empty(),
                "{version:?} {seed}: {:?}",
                rig.unusable
            );
            assert!(
                rig.faults.is_empty(),
                "{version:?} {seed}: {:?}",
                rig.faults
            );
        }
    }
}

/// host_sim ejects slot 0 as soon as the guest asks for the bus relations, before the guest
/// has linked the function as a child. Both real drivers drop an EJECT for a slot they do not
/// know yet, so direct the host is left waiting for an EJECTION_COMPLETE that never comes
/// (Hyper-V would remove the device by force after 60 s, under a guest that then finds it).
/// Through the relay the eject never gets lost: the relay answers it (the function was never
/// shown to the guest, or is shown and ejected once settled).
#[test]
fn eject_before_the_child_is_known_is_lost_only_direct() {
    let script = || {
        probe_idle_remove(Step::HostOnMessage(
            0x4249_0001, // QUERY_BUS_RELATIONS
            HostAction::Eject { slot: 0 },
        ))
    };
    for version in DriverVersion::ALL {
        for seed in 0..4 {
            let (rig, ending) = run(version, false, seed, script());
            assert_eq!(ending, Ending::Done { leaks: 0 }, "{:#?}", rig.log);
            assert!(rig.host.eject_outstanding(WinSlot::from_raw(0)));
            assert!(!rig.guest_ejected);

            let (rig, ending) = run(version, true, seed, script());
            assert_eq!(ending, Ending::Done { leaks: 0 }, "{:#?}", rig.log);
            assert!(!rig.host.eject_outstanding(WinSlot::from_raw(0)));
            assert!(rig.broken.is_empty() && rig.faults.is_empty() && rig.trouble.is_empty());
        }
    }
}
