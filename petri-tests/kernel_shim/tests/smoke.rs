//! Smoke runs of the real driver: probe -> two MSI-X vectors -> host eject -> remove, against a
//! scripted host, for both Debian versions, under several seeded schedules.

use std::collections::VecDeque;

use kernel_shim::DriverVersion;
use kernel_shim::guest::{Action, Controller, Ending, Sched, Session};
use kernel_shim::protocol::{Command, EventKind, GuestPacket};

const BASE: u32 = 0x4249_0000;
const BUS_RELATIONS2: u32 = BASE + 0x19;
const QUERY_BUS_RELATIONS: u32 = BASE + 1;
const QUERY_RESOURCE_REQUIREMENTS: u32 = BASE + 5;
const BUS_D0ENTRY: u32 = BASE + 7;
const BUS_D0EXIT: u32 = BASE + 8;
const EJECT: u32 = BASE + 0xb;
const EJECTION_COMPLETE: u32 = BASE + 0xf;
const RESOURCES_ASSIGNED: u32 = BASE + 0x10;
const RESOURCES_RELEASED: u32 = BASE + 0x11;
const QUERY_PROTOCOL_VERSION: u32 = BASE + 0x13;
const CREATE_INTERRUPT_MESSAGE: u32 = BASE + 0x14;
const DELETE_INTERRUPT_MESSAGE: u32 = BASE + 0x15;
const RESOURCES_ASSIGNED2: u32 = BASE + 0x16;
const CREATE_INTERRUPT_MESSAGE2: u32 = BASE + 0x17;
const CREATE_INTERRUPT_MESSAGE3: u32 = BASE + 0x1b;
const STATUS_REVISION_MISMATCH: u32 = 0xC000_0059;
const VM_PKT_DATA_INBAND: u16 = 6;
const VM_PKT_COMP: u16 = 11;
const VERSION_1_3: u32 = 0x0001_0003;
const VERSION_1_4: u32 = 0x0001_0004;

/// The function's VMBus slot (device 0, function 0), serial number and ids.
const WSLOT: u32 = 0;
const SERIAL: u32 = 4660;
const VENDOR: u16 = 0x15b3;
const DEVICE: u16 = 0x101a;
const BAR0_SIZE: u64 = 1 << 20;
/// The bus instance GUID as the driver sees it (bytes 4 and 5 give the PCI domain).
const INSTANCE: [u8; 16] = [
    0x01, 0x02, 0x03, 0x04, 0x34, 0x12, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
];

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// The function's config space: identity, a command register, a 1 MiB 64-bit BAR0 that
/// answers all-ones with its size mask, and an MSI-X capability.
struct ConfigSpace {
    bytes: [u8; 4096],
}

impl ConfigSpace {
    fn new() -> Self {
        let mut bytes = [0u8; 4096];
        bytes[0..2].copy_from_slice(&VENDOR.to_le_bytes());
        bytes[2..4].copy_from_slice(&DEVICE.to_le_bytes());
        bytes[6..8].copy_from_slice(&0x0010u16.to_le_bytes()); // capability list
        bytes[0x0b] = 0x02; // network controller
        bytes[0x10..0x14].copy_from_slice(&0x0000_000cu32.to_le_bytes()); // 64-bit, prefetchable
        bytes[0x34] = 0x40;
        bytes[0x40] = 0x11; // MSI-X
        bytes[0x42..0x44].copy_from_slice(&7u16.to_le_bytes()); // 8 entries
        bytes[0x44..0x48].copy_from_slice(&0x2000u32.to_le_bytes()); // table in BAR0
        bytes[0x48..0x4c].copy_from_slice(&0x3000u32.to_le_bytes()); // PBA in BAR0
        Self { bytes }
    }

    fn read(&self, off: usize, size: usize) -> u64 {
        let mut v = 0u64;
        for i in 0..size {
            v |= u64::from(*self.bytes.get(off + i).unwrap_or(&0xff)) << (8 * i);
        }
        v
    }

    fn write(&mut self, off: usize, size: usize, value: u64) {
        for i in 0..size {
            let at = off + i;
            let byte = (value >> (8 * i)) as u8;
            let writable = match at {
                0x04 => 0x06, // memory and bus master enable
                0x10 => 0x00, // BAR0 low byte: type bits are read-only
                0x11 => 0x00, // below 1 MiB
                0x12 => 0xf0,
                0x13 => 0xff,
                0x14..=0x17 => 0xff, // BAR1: the upper half of BAR0
                _ => 0x00,
            };
            if let Some(b) = self.bytes.get_mut(at) {
                *b = (*b & !writable) | (byte & writable);
            }
        }
    }

    fn bar0(&self) -> u64 {
        (self.read(0x10, 4) & !0xf) | self.read(0x14, 4) << 32
    }
}

/// What the scenario does next.
#[derive(Clone, Debug)]
enum Step {
    Command(Command),
    Eject,
}

/// What the current step waits for before the next one starts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Wait {
    Nothing,
    Result(u32),
    EjectionComplete,
}

/// A scripted vPCI host with one function, plus a seeded scheduler.
struct Host {
    script: VecDeque<Step>,
    wait: Wait,
    rng: u64,
    pending: VecDeque<Action>,
    sent: Vec<u32>,
    results: Vec<(u32, i32)>,
    window: Option<u64>,
    selected: u32,
    config: ConfigSpace,
    bar_reads: u32,
    unbacked: Vec<u64>,
    retargets: Vec<(u64, u32, u32, u64)>,
    events: Vec<(EventKind, String)>,
    log: Vec<String>,
}

impl Host {
    fn new(seed: u64, script: Vec<Step>) -> Self {
        Self {
            script: script.into(),
            wait: Wait::Nothing,
            rng: seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
            pending: VecDeque::new(),
            sent: Vec::new(),
            results: Vec::new(),
            window: None,
            selected: u32::MAX,
            config: ConfigSpace::new(),
            bar_reads: 0,
            unbacked: Vec::new(),
            retargets: Vec::new(),
            events: Vec::new(),
            log: Vec::new(),
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.rng >> 33
    }

    fn count(&self, msg: u32) -> usize {
        self.sent.iter().filter(|&&m| m == msg).count()
    }

    fn complete(&mut self, bus: u32, trans_id: u64, payload: Vec<u8>) {
        self.pending.push_back(Action::Packet {
            bus,
            packet_type: VM_PKT_COMP,
            flags: 0,
            trans_id,
            payload,
        });
    }

    fn inband(&mut self, bus: u32, payload: Vec<u8>) {
        self.pending.push_back(Action::Packet {
            bus,
            packet_type: VM_PKT_DATA_INBAND,
            flags: 0,
            trans_id: 0,
            payload,
        });
    }

    fn relations(&mut self, bus: u32) {
        let mut p = Vec::new();
        p.extend_from_slice(&BUS_RELATIONS2.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&VENDOR.to_le_bytes());
        p.extend_from_slice(&DEVICE.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0, 2]); // rev, prog_intf, subclass, base_class
        p.extend_from_slice(&0u32.to_le_bytes()); // subsystem id
        p.extend_from_slice(&WSLOT.to_le_bytes());
        p.extend_from_slice(&SERIAL.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes()); // flags
        p.extend_from_slice(&0u16.to_le_bytes()); // numa node
        p.extend_from_slice(&0u16.to_le_bytes());
        self.inband(bus, p);
    }
}

impl Controller for Host {
    fn schedule(&mut self, sched: &Sched) -> Action {
        if let Some(action) = self.pending.pop_front() {
            return action;
        }
        let step_done = match self.wait {
            Wait::Nothing => true,
            Wait::Result(cmd) => self.results.iter().any(|&(c, _)| c == cmd),
            Wait::EjectionComplete => self.count(EJECTION_COMPLETE) > 0,
        };
        if step_done {
            if let Some(step) = self.script.pop_front() {
                self.results.clear();
                return match step {
                    Step::Command(cmd) => {
                        self.wait = Wait::Result(cmd.number());
                        Action::Command(cmd)
                    }
                    Step::Eject => {
                        self.wait = Wait::EjectionComplete;
                        let mut p = EJECT.to_le_bytes().to_vec();
                        p.extend_from_slice(&WSLOT.to_le_bytes());
                        Action::Packet {
                            bus: 0,
                            packet_type: VM_PKT_DATA_INBAND,
                            flags: 0,
                            trans_id: 0,
                            payload: p,
                        }
                    }
                };
            }
        }
        if !sched.runnable.is_empty() {
            let pick = self.next_random() as usize % sched.runnable.len();
            return Action::Run(sched.runnable[pick]);
        }
        if sched.next_deadline_ns > 0 {
            return Action::Advance(sched.next_deadline_ns);
        }
        Action::Stop(format!(
            "hang: nothing runnable, waiting for {:?}",
            self.wait
        ))
    }

    fn packet(&mut self, packet: GuestPacket) {
        let p = &packet.payload;
        let msg = u32_at(p, 0);
        self.sent.push(msg);
        let bus = packet.bus;
        let id = packet.trans_id;
        match msg {
            QUERY_PROTOCOL_VERSION => {
                let status = if u32_at(p, 4) > VERSION_1_3 {
                    STATUS_REVISION_MISMATCH
                } else {
                    0
                };
                self.complete(bus, id, status.to_le_bytes().to_vec());
            }
            QUERY_BUS_RELATIONS => self.relations(bus),
            QUERY_RESOURCE_REQUIREMENTS => {
                let mut r = 0u32.to_le_bytes().to_vec();
                for bar in [0xfff0_000cu32, 0xffff_ffff, 0, 0, 0, 0] {
                    r.extend_from_slice(&bar.to_le_bytes());
                }
                self.complete(bus, id, r);
            }
            BUS_D0ENTRY => {
                self.window = Some(u64_at(p, 8));
                self.complete(bus, id, 0u32.to_le_bytes().to_vec());
            }
            RESOURCES_ASSIGNED | RESOURCES_ASSIGNED2 | BUS_D0EXIT => {
                self.complete(bus, id, 0u32.to_le_bytes().to_vec());
            }
            CREATE_INTERRUPT_MESSAGE | CREATE_INTERRUPT_MESSAGE2 | CREATE_INTERRUPT_MESSAGE3 => {
                let vector = if msg == CREATE_INTERRUPT_MESSAGE3 {
                    u32_at(p, 8)
                } else {
                    u32::from(p[8])
                };
                let mut r = 0u32.to_le_bytes().to_vec(); // status
                r.extend_from_slice(&0u32.to_le_bytes()); // reserved
                r.extend_from_slice(&0u16.to_le_bytes());
                r.extend_from_slice(&1u16.to_le_bytes()); // vector count
                r.extend_from_slice(&vector.to_le_bytes()); // data
                r.extend_from_slice(&0xfee0_0000u64.to_le_bytes()); // address
                self.complete(bus, id, r);
            }
            _ => {}
        }
    }

    fn mmio_read(&mut self, addr: u64, size: u32) -> u64 {
        if let Some(base) = self.window {
            if addr == base {
                return u64::from(self.selected);
            }
            if (base + 0x1000..base + 0x2000).contains(&addr) {
                if self.selected != WSLOT {
                    return u64::MAX;
                }
                return self
                    .config
                    .read((addr - base - 0x1000) as usize, size as usize);
            }
        }
        let bar0 = self.config.bar0();
        if bar0 != 0 && (bar0..bar0 + BAR0_SIZE).contains(&addr) {
            self.bar_reads += 1;
            return 0;
        }
        self.unbacked.push(addr);
        u64::MAX
    }

    fn mmio_write(&mut self, addr: u64, size: u32, value: u64) {
        if let Some(base) = self.window {
            if addr == base {
                self.selected = value as u32;
                return;
            }
            if (base + 0x1000..base + 0x2000).contains(&addr) {
                if self.selected == WSLOT {
                    self.config
                        .write((addr - base - 0x1000) as usize, size as usize, value);
                }
                return;
            }
        }
        let bar0 = self.config.bar0();
        if !(bar0 != 0 && (bar0..bar0 + BAR0_SIZE).contains(&addr)) {
            self.unbacked.push(addr);
        }
    }

    fn hypercall(&mut self, control: u64, input: &[u8]) -> u64 {
        // HvCallRetargetDeviceInterrupt: device id, target vector and flags, var-size.
        self.retargets.push((
            u64_at(input, 8),
            u32_at(input, 40),
            u32_at(input, 44),
            (control >> 17) & 0x3ff,
        ));
        0
    }

    fn result(&mut self, command: u32, result: i32) {
        self.results.push((command, result));
        assert_eq!(result, 0, "command {command} failed: {:#?}", self.log);
    }

    fn log(&mut self, _level: u32, ctx: u32, text: &str) {
        self.log.push(format!("[{ctx}] {}", text.trim_end()));
    }

    fn event(&mut self, kind: EventKind, ctx: u32, text: &str) {
        self.log.push(format!("[{ctx}] {kind:?}: {text}"));
        self.events.push((kind, text.to_string()));
    }
}

fn smoke_script() -> Vec<Step> {
    vec![
        Step::Command(Command::Init),
        Step::Command(Command::Probe {
            bus: 0,
            instance: INSTANCE,
        }),
        Step::Eject,
        Step::Command(Command::Remove { bus: 0 }),
        Step::Command(Command::Exit),
    ]
}

fn run_smoke(version: DriverVersion, seed: u64) -> Host {
    let mut host = Host::new(seed, smoke_script());
    let outcome = Session::spawn(version).unwrap().run(&mut host).unwrap();
    assert_eq!(
        outcome.ending,
        Ending::Done { leaks: 0 },
        "{version:?} seed {seed}: {:#?}\nstderr: {}",
        host.log,
        outcome.stderr
    );
    assert_eq!(outcome.package_version, version.package_version());
    let trouble: Vec<_> = host
        .events
        .iter()
        .filter(|(k, _)| matches!(k, EventKind::Warn | EventKind::Bug | EventKind::Leak))
        .collect();
    assert!(trouble.is_empty(), "{version:?} seed {seed}: {trouble:#?}");
    host
}

/// Both drivers probe a bus with one function, bind the endpoint with two MSI-X vectors
/// (each retargeted by hypercall), complete a host eject and are removed, leak-free, with no
/// WARN or BUG, under every seeded schedule tried.
#[test]
fn probe_msix_eject_remove_is_clean() {
    for version in DriverVersion::ALL {
        for seed in 0..4 {
            let host = run_smoke(version, seed);
            let (creates, deletes) = (
                host.count(CREATE_INTERRUPT_MESSAGE2),
                host.count(DELETE_INTERRUPT_MESSAGE),
            );
            match version {
                // 5.10 reuses the interrupt from the reservation when the irq is requested.
                DriverVersion::Debian5_10 => assert_eq!((creates, deletes), (2, 2)),
                // 6.1 frees it and creates a new one at reactivation.
                DriverVersion::Debian6_1 => assert_eq!((creates, deletes), (4, 4)),
            }
            assert_eq!(host.count(QUERY_RESOURCE_REQUIREMENTS), 1);
            assert_eq!(host.count(RESOURCES_ASSIGNED2), 1);
            assert_eq!(host.count(EJECTION_COMPLETE), 1);
            assert_eq!(host.count(BUS_D0EXIT), 1);
            // The children were dropped before the release loop: none is sent on remove.
            assert_eq!(host.count(RESOURCES_RELEASED), 0);
            // The endpoint's remove read its BAR while the device was still backed.
            assert_eq!(host.bar_reads, 1);
            assert!(host.unbacked.is_empty(), "{:x?}", host.unbacked);
            // Two retargets, device id from GUID bytes 5, 4, 7, 6 (masked) and the function,
            // through a processor set of one bank.
            assert_eq!(host.retargets.len(), 2);
            for &(device_id, vector, flags, var_size) in &host.retargets {
                assert_eq!(device_id, 0x1234_0600);
                assert!((0x21..0xef).contains(&vector), "vector {vector:#x}");
                assert_eq!((flags, var_size), (2, 2));
            }
        }
    }
}

/// 6.1 offers protocol 1.4 first and falls back to 1.3 on a revision mismatch; 5.10 starts at
/// 1.3.
#[test]
fn version_negotiation_falls_back() {
    assert_eq!(
        run_smoke(DriverVersion::Debian5_10, 7).count(QUERY_PROTOCOL_VERSION),
        1
    );
    let host = run_smoke(DriverVersion::Debian6_1, 7);
    assert_eq!(host.count(QUERY_PROTOCOL_VERSION), 2);
    assert!(
        host.log.iter().any(|l| l.contains("Using version 0x10003")),
        "{:#?}",
        host.log
    );
    let _ = VERSION_1_4;
}
