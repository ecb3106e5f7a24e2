//! The real drivers against the project's simulated host (host_sim): the same probe, MSI-X,
//! eject and remove that the scripted host drives, but answered by host_sim's vPCI endpoint,
//! config window and BARs, with its default protocol versions (1.2-1.6).

use std::collections::VecDeque;
use std::time::Duration;

use host_sim::{BusConfig, FunctionSpec, HostAction, HostBus, HostPolicy, Teardown};
use kernel_shim::guest::{Action, Controller, Ending, Sched, Session};
use kernel_shim::host::RetargetRequest;
use kernel_shim::protocol::{Command, EventKind, GuestPacket};
use kernel_shim::{DriverVersion, Instrumentation};
use vpci_protocol::WinSlot;

const BUS_D0ENTRY: u32 = 0x4249_0007;
const RESOURCES_ASSIGNED2: u32 = 0x4249_0016;
const CREATE_INTERRUPT_MESSAGE2: u32 = 0x4249_0017;
const CREATE_INTERRUPT_MESSAGE3: u32 = 0x4249_001b;

const INSTANCE: [u8; 16] = [
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00,
];

enum Step {
    Command(Command),
    Host(HostAction),
    /// Carry out the action as soon as the guest sends this vPCI message type (the step
    /// itself completes at once).
    HostWhen(u32, HostAction),
    /// Wait until no guest context can run and the host has nothing to send.
    Idle,
}

/// host_sim behind a seeded scheduler and a script of guest commands and host actions.
struct SimHost {
    bus: HostBus,
    script: VecDeque<Step>,
    waiting_for: Option<u32>,
    ejecting: Option<WinSlot>,
    waiting_idle: bool,
    rescinded: bool,
    rng: u64,
    results: Vec<(u32, i32)>,
    faults: Vec<String>,
    retargets: Vec<RetargetRequest>,
    log: Vec<String>,
    trouble: Vec<String>,
    sent: Vec<u32>,
    now: Duration,
    points: u64,
    armed: Vec<(u32, HostAction)>,
    /// Slots the guest sent RESOURCES_ASSIGNED(2) for.
    assigned: Vec<u32>,
    /// Functions the guest found but could not use: a driver bound without RESOURCES_ASSIGNED
    /// for the slot, or one that could not enable the device (its BAR left unassigned).
    unusable: Vec<String>,
}

impl SimHost {
    fn new(config: BusConfig, seed: u64, script: Vec<Step>) -> Self {
        Self {
            bus: HostBus::new(config).unwrap(),
            script: script.into(),
            waiting_for: None,
            ejecting: None,
            waiting_idle: false,
            rescinded: false,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            results: Vec::new(),
            faults: Vec::new(),
            retargets: Vec::new(),
            log: Vec::new(),
            trouble: Vec::new(),
            sent: Vec::new(),
            now: Duration::ZERO,
            points: 0,
            armed: Vec::new(),
            assigned: Vec::new(),
            unusable: Vec::new(),
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32
    }
}

fn now(sched: &Sched) -> Duration {
    Duration::from_nanos(sched.now_ns)
}

impl Controller for SimHost {
    fn schedule(&mut self, sched: &Sched) -> Action {
        let now = now(sched);
        self.now = now;
        self.points += 1;
        if self.points > 2_000_000 {
            return Action::Stop("livelock: too many scheduling points".to_string());
        }
        if self.bus.poll_timeout().is_some_and(|t| t <= now) {
            self.bus.handle_timeout(now);
        }
        if let Some(packet) = self.bus.poll_transmit() {
            return Action::deliver(0, &packet);
        }
        if self.bus.rescinded() && !self.rescinded {
            self.rescinded = true;
            return Action::Rescind(0);
        }
        let step_done = match (self.waiting_for, self.ejecting) {
            (Some(cmd), _) => self.results.iter().any(|&(c, _)| c == cmd),
            (None, Some(slot)) => !self.bus.eject_outstanding(slot),
            (None, None) => !self.waiting_idle || sched.runnable.is_empty(),
        };
        if step_done {
            self.waiting_for = None;
            self.ejecting = None;
            self.waiting_idle = false;
            if let Some(step) = self.script.pop_front() {
                match step {
                    Step::Command(cmd) => {
                        self.waiting_for = Some(cmd.number());
                        return Action::Command(cmd);
                    }
                    Step::Host(action) => {
                        if let HostAction::Eject { slot } = action {
                            self.ejecting = Some(WinSlot::from_raw(slot));
                        }
                        self.bus.act(now, action).unwrap();
                        return self.schedule(sched);
                    }
                    Step::HostWhen(message, action) => {
                        self.armed.push((message, action));
                        return self.schedule(sched);
                    }
                    Step::Idle => {
                        self.waiting_idle = true;
                        return self.schedule(sched);
                    }
                }
            }
        }
        if !sched.runnable.is_empty() {
            let pick = self.random() as usize % sched.runnable.len();
            return Action::Run(sched.runnable[pick]);
        }
        let next = [
            Some(sched.next_deadline_ns).filter(|&d| d > 0),
            self.bus
                .poll_timeout()
                .and_then(|t| u64::try_from(t.as_nanos()).ok()),
        ]
        .into_iter()
        .flatten()
        .min();
        match next {
            Some(t) if t > sched.now_ns => Action::Advance(t),
            _ => Action::Stop("hang: nothing can run".to_string()),
        }
    }

    fn packet(&mut self, packet: GuestPacket) {
        let word = |at: usize| {
            packet
                .payload
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let kind = word(0).unwrap_or_default();
        self.sent.push(kind);
        if kind == RESOURCES_ASSIGNED2 {
            self.assigned.extend(word(4));
        }
        // Virtual time moves only at scheduling points: the bus sees the latest one.
        self.bus.handle_packet(self.now, packet.to_packet());
        let (fire, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.armed)
            .into_iter()
            .partition(|(m, _)| *m == kind);
        self.armed = keep;
        for (_, action) in fire {
            self.bus.act(self.now, action).unwrap();
        }
    }

    fn mmio_read(&mut self, addr: u64, size: u32) -> u64 {
        let mut data = [0u8; 8];
        let len = (size as usize).min(8);
        match self.bus.mmio_read(addr, &mut data[..len]) {
            Ok(()) => u64::from_le_bytes(data),
            Err(e) => {
                self.faults.push(format!("read {addr:#x}: {e:?}"));
                u64::MAX
            }
        }
    }

    fn mmio_write(&mut self, addr: u64, size: u32, value: u64) {
        let len = (size as usize).min(8);
        if let Err(e) = self.bus.mmio_write(addr, &value.to_le_bytes()[..len]) {
            self.faults.push(format!("write {addr:#x}: {e:?}"));
        }
    }

    fn hypercall(&mut self, control: u64, input: &[u8]) -> u64 {
        match RetargetRequest::decode(control, input) {
            Ok(r) => {
                self.retargets.push(r);
                0
            }
            Err(_) => 5,
        }
    }

    fn result(&mut self, command: u32, result: i32) {
        self.results.push((command, result));
    }

    fn log(&mut self, _level: u32, ctx: u32, text: &str) {
        self.log.push(format!("[{ctx}] {}", text.trim_end()));
    }

    fn event(&mut self, kind: EventKind, ctx: u32, text: &str) {
        self.log.push(format!("[{ctx}] {kind:?}: {text}"));
        // "endpoint probe SS.F": the function in wslot SS (function 0) got a driver.
        if let Some(slot) = text
            .strip_prefix("endpoint probe ")
            .and_then(|s| s.split('.').next())
            .and_then(|s| u32::from_str_radix(s, 16).ok())
        {
            if !self.assigned.contains(&slot) {
                self.unusable.push(text.to_string());
            }
        }
        if text.contains("can't enable device") {
            self.unusable.push(text.to_string());
        }
        if matches!(kind, EventKind::Warn | EventKind::Bug | EventKind::Leak) {
            self.trouble.push(text.to_string());
        }
    }
}

fn config(teardown: Teardown) -> BusConfig {
    BusConfig {
        functions: vec![FunctionSpec::nic(0)],
        policy: HostPolicy {
            teardown,
            ..HostPolicy::default()
        },
        ..BusConfig::default()
    }
}

fn script() -> Vec<Step> {
    vec![
        Step::Command(Command::Init),
        Step::Command(Command::Probe {
            bus: 0,
            instance: INSTANCE,
        }),
        Step::Host(HostAction::Eject { slot: 0 }),
        Step::Command(Command::Remove { bus: 0 }),
        Step::Command(Command::Exit),
    ]
}

/// Both drivers probe host_sim's NIC, bind two MSI-X vectors (6.1 through protocol 1.4's
/// CREATE_INTERRUPT_MESSAGE3), complete host_sim's eject and are removed: no leak, no fault,
/// no WARN or BUG.
#[test]
fn real_drivers_run_against_host_sim() {
    for version in DriverVersion::ALL {
        for seed in 0..3 {
            let mut host = SimHost::new(config(Teardown::AtEjectionComplete), seed, script());
            let outcome = Session::spawn_with(version, Instrumentation::Plain)
                .unwrap()
                .run(&mut host)
                .unwrap();
            assert_eq!(
                outcome.ending,
                Ending::Done { leaks: 0 },
                "{version:?} seed {seed}: {:#?}\n{}",
                host.log,
                outcome.stderr
            );
            assert!(
                host.results.iter().all(|&(_, r)| r == 0),
                "{:?}",
                host.results
            );
            assert!(host.faults.is_empty(), "{:?}", host.faults);
            assert!(host.trouble.is_empty(), "{:?}", host.trouble);
            assert_eq!(host.retargets.len(), 2);
            let expected = match version {
                DriverVersion::Debian5_10 => "Using version 0x10003",
                DriverVersion::Debian6_1 | DriverVersion::Debian6_12 => "Using version 0x10004",
            };
            assert!(
                host.log.iter().any(|l| l.contains(expected)),
                "{:#?}",
                host.log
            );
            let create = match version {
                DriverVersion::Debian5_10 => CREATE_INTERRUPT_MESSAGE2,
                DriverVersion::Debian6_1 | DriverVersion::Debian6_12 => CREATE_INTERRUPT_MESSAGE3,
            };
            assert!(host.sent.contains(&create), "{:x?}", host.sent);
        }
    }
}

/// With host_sim tearing the BARs down at EJECT (OpenVMM issue #3077), both drivers' eject
/// path reads a torn-down BAR: host_sim reports the access as a fault (catalogue C7).
#[test]
fn host_sim_teardown_at_eject_faults_both_drivers() {
    for version in DriverVersion::ALL {
        let mut host = SimHost::new(config(Teardown::AtEject), 1, script());
        let outcome = Session::spawn(version).unwrap().run(&mut host).unwrap();
        assert_eq!(outcome.ending, Ending::Done { leaks: 0 }, "{:#?}", host.log);
        assert!(
            host.faults.iter().any(|f| f.contains("TornDown")),
            "{version:?}: {:?}",
            host.faults
        );
    }
}

/// A second function is hot-added while the probe path runs (at its D0 entry, after the
/// survey): catalogue C4. 5.10 has no per-bus state_lock, so its relations work races the
/// probe path: the new function is linked after the windows were sized and resources
/// assigned, then scanned and offered to a driver that cannot enable it (its BAR fits no
/// window), or it is lost (never scanned). 6.1's relations work waits for the probe path,
/// then rescans: the function is found, and no driver meets it unusable.
#[test]
fn hot_add_during_probe_races_on_5_10_only() {
    let script = || {
        vec![
            Step::HostWhen(BUS_D0ENTRY, HostAction::HotAdd(FunctionSpec::nic(1))),
            Step::Command(Command::Init),
            Step::Command(Command::Probe {
                bus: 0,
                instance: INSTANCE,
            }),
            Step::Idle,
            Step::Command(Command::Remove { bus: 0 }),
            Step::Command(Command::Exit),
        ]
    };
    let found = |host: &SimHost| {
        host.log
            .iter()
            .any(|l| l.contains(":00:01.0 [15b3:101a] found"))
    };
    let mut failing = Vec::new();
    for seed in 0..20 {
        let mut host = SimHost::new(config(Teardown::AtEjectionComplete), seed, script());
        let outcome = Session::spawn(DriverVersion::Debian5_10)
            .unwrap()
            .run(&mut host)
            .unwrap();
        assert!(
            matches!(outcome.ending, Ending::Done { .. }),
            "{:#?}",
            host.log
        );
        if !host.unusable.is_empty() || !found(&host) {
            failing.push(seed);
        }
    }
    assert!(!failing.is_empty(), "5.10 never reached C4");

    for (version, seed) in [DriverVersion::Debian6_1, DriverVersion::Debian6_12]
        .into_iter()
        .flat_map(|v| (0..20).map(move |s| (v, s)))
    {
        let mut host = SimHost::new(config(Teardown::AtEjectionComplete), seed, script());
        let outcome = Session::spawn(version).unwrap().run(&mut host).unwrap();
        assert_eq!(outcome.ending, Ending::Done { leaks: 0 }, "{:#?}", host.log);
        assert!(
            host.unusable.is_empty(),
            "{version:?} seed {seed}: {:?}",
            host.unusable
        );
        assert!(
            found(&host),
            "seed {seed}: {:#?} {:x?}",
            host.log,
            host.sent
        );
    }
}
