//! A scripted vPCI host with one function and a seeded scheduler, shared by the kernel_shim
//! integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;

use kernel_shim::DriverVersion;
use kernel_shim::guest::{Action, Controller, Ending, Outcome, Sched, Session};
use kernel_shim::host::{ConfigWindow, HypercallError, RetargetRequest, WindowAccess};
use kernel_shim::protocol::{Command, EventKind, GuestPacket};

/// A run that needs more scheduling points than this is stuck (a guest spinning forever).
pub const MAX_POINTS: u64 = 2_000_000;

pub const BASE: u32 = 0x4249_0000;
pub const BUS_RELATIONS2: u32 = BASE + 0x19;
pub const QUERY_BUS_RELATIONS: u32 = BASE + 1;
pub const QUERY_RESOURCE_REQUIREMENTS: u32 = BASE + 5;
pub const BUS_D0ENTRY: u32 = BASE + 7;
pub const BUS_D0EXIT: u32 = BASE + 8;
pub const EJECT: u32 = BASE + 0xb;
pub const EJECTION_COMPLETE: u32 = BASE + 0xf;
pub const RESOURCES_ASSIGNED: u32 = BASE + 0x10;
pub const RESOURCES_RELEASED: u32 = BASE + 0x11;
pub const QUERY_PROTOCOL_VERSION: u32 = BASE + 0x13;
pub const CREATE_INTERRUPT_MESSAGE: u32 = BASE + 0x14;
pub const DELETE_INTERRUPT_MESSAGE: u32 = BASE + 0x15;
pub const RESOURCES_ASSIGNED2: u32 = BASE + 0x16;
pub const CREATE_INTERRUPT_MESSAGE2: u32 = BASE + 0x17;
pub const CREATE_INTERRUPT_MESSAGE3: u32 = BASE + 0x1b;
pub const STATUS_REVISION_MISMATCH: u32 = 0xC000_0059;
pub const VM_PKT_DATA_INBAND: u16 = 6;
pub const VM_PKT_COMP: u16 = 11;
pub const VERSION_1_3: u32 = 0x0001_0003;
pub const VERSION_1_4: u32 = 0x0001_0004;

/// The function's VMBus slot (device 0, function 0), serial number and ids.
pub const WSLOT: u32 = 0;
pub const SERIAL: u32 = 4660;
pub const VENDOR: u16 = 0x15b3;
pub const DEVICE: u16 = 0x101a;
pub const BAR0_SIZE: u64 = 1 << 20;
/// The bus instance GUID as the driver sees it (bytes 4 and 5 give the PCI domain).
pub const INSTANCE: [u8; 16] = [
    0x01, 0x02, 0x03, 0x04, 0x34, 0x12, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
];

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// The function's config space: identity, a command register, a 1 MiB 64-bit BAR0 that
/// answers all-ones with its size mask, and an MSI-X capability.
pub struct ConfigSpace {
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
pub enum Step {
    /// A command for the guest's process context; the next step waits for its result.
    Command(Command),
    /// EJECT for the function; the next step waits for EJECTION_COMPLETE.
    Eject,
    /// BUS_RELATIONS2 listing the function (present, with a new serial number) or not; the next
    /// step waits until the guest is idle.
    Relations { present: bool },
    /// Rescind the channel; the next step waits until the guest is idle.
    Rescind,
    /// EJECT for the function and, at the same scheduling point, the rescind: both are in
    /// the guest before any of its contexts runs again. The next step waits until idle.
    EjectThenRescind,
    /// BUS_RELATIONS2 listing the function (present) or not and, at the same scheduling point,
    /// the rescind. The next step waits until idle.
    RelationsThenRescind { present: bool },
}

/// What the current step waits for before the next one starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Wait {
    Nothing,
    Result(u32),
    EjectionComplete,
    Idle,
}

/// A scripted vPCI host with one function, plus a seeded scheduler.
pub struct Host {
    script: VecDeque<Step>,
    wait: Wait,
    rng: u64,
    pending: VecDeque<Action>,
    /// How the host misbehaves, if at all.
    pub faults: Faults,
    rescinded: bool,
    completions: u32,
    /// vPCI message types the guest sent, in order.
    pub sent: Vec<u32>,
    /// Every command result, in order.
    pub all_results: Vec<(u32, i32)>,
    results: Vec<(u32, i32)>,
    window: ConfigWindow,
    config: ConfigSpace,
    /// Reads of the endpoint's BAR0.
    pub bar_reads: u32,
    /// Accesses to addresses nothing backs.
    pub unbacked: Vec<u64>,
    /// Writes to BAR0: offset in the BAR and value.
    pub bar_writes: Vec<(u64, u64)>,
    /// Retarget hypercalls, decoded.
    pub retargets: Vec<RetargetRequest>,
    /// Runtime events.
    pub events: Vec<(EventKind, String)>,
    /// Kernel log lines and events, with the context that produced them.
    pub log: Vec<String>,
    /// Everything the guest did, including transaction ids and scheduling choices.
    pub trace: Vec<String>,
    /// The virtual time of the last scheduling point.
    pub now_ns: u64,
    /// Guest accesses to the function after its EJECTION_COMPLETE (the host has let it go),
    /// or to BARs the host has unmapped.
    pub violations: Vec<String>,
    eject_sent: bool,
    held_d0exit: Option<(u32, u64)>,
    /// The function has been ejected (EJECTION_COMPLETE received) and not re-added.
    gone: bool,
    /// The function is listed in bus relations.
    present: bool,
    points: u64,
    /// How many times the function was (re-)added: its serial number changes each time.
    generation: u32,
}

/// Ways the scripted host misbehaves.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Echo a wrong transaction id in the first completion.
    pub corrupt_first_completion_id: bool,
    /// Never answer this vPCI message type.
    pub swallow: Option<u32>,
    /// Rescind bus 0 once virtual time reaches this.
    pub rescind_at_ns: Option<u64>,
    /// Send EJECT for the function as soon as the guest sends this vPCI message type.
    pub eject_on: Option<u32>,
    /// Send EJECT for the function when the guest first reads this config-space offset of it.
    pub eject_on_config_read: Option<u64>,
    /// Unmap the function's BARs as soon as EJECT is sent, instead of at EJECTION_COMPLETE
    /// (OpenVMM issue #3077): a BAR access after that would fault on real hardware.
    pub unmap_bars_on_eject: bool,
    /// Leave the first BUS_D0EXIT unanswered until the guest's command that sent it has
    /// returned, then complete it with the id the guest gave.
    pub late_first_d0exit: bool,
    /// End the run as a hang once virtual time passes this.
    pub time_limit_ns: Option<u64>,
    /// Send EJECT for the function at the very first scheduling point, before the guest
    /// even loaded the driver (a chaotic host).
    pub eject_at_start: bool,
    /// Hold a rescind until nothing in the guest can run (the serialised delivery the shim
    /// once had): the rescind then never meets unread packets or pending work.
    pub rescind_when_idle: bool,
}

impl Host {
    pub fn new(seed: u64, script: Vec<Step>) -> Self {
        Self {
            script: script.into(),
            wait: Wait::Nothing,
            rng: seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
            pending: VecDeque::new(),
            faults: Faults::default(),
            rescinded: false,
            completions: 0,
            sent: Vec::new(),
            all_results: Vec::new(),
            results: Vec::new(),
            window: ConfigWindow::new(),
            config: ConfigSpace::new(),
            bar_reads: 0,
            unbacked: Vec::new(),
            bar_writes: Vec::new(),
            retargets: Vec::new(),
            events: Vec::new(),
            log: Vec::new(),
            trace: Vec::new(),
            now_ns: 0,
            violations: Vec::new(),
            eject_sent: false,
            held_d0exit: None,
            gone: false,
            present: true,
            points: 0,
            generation: 0,
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.rng >> 33
    }

    pub fn count(&self, msg: u32) -> usize {
        self.sent.iter().filter(|&&m| m == msg).count()
    }

    fn complete(&mut self, bus: u32, trans_id: u64, payload: Vec<u8>) {
        self.completions += 1;
        let trans_id = if self.faults.corrupt_first_completion_id && self.completions == 1 {
            0xdead_0000
        } else {
            trans_id
        };
        self.pending.push_back(Action::Packet {
            bus,
            packet_type: VM_PKT_COMP,
            flags: 0,
            trans_id,
            payload,
        });
    }

    fn eject_packet(&mut self) -> Action {
        self.eject_sent = true;
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

    fn ejected(&self) -> bool {
        self.gone
    }

    fn bars_unmapped(&self) -> bool {
        self.faults.unmap_bars_on_eject && self.eject_sent
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
        p.extend_from_slice(&u32::from(self.present).to_le_bytes());
        if !self.present {
            self.inband(bus, p);
            return;
        }
        p.extend_from_slice(&VENDOR.to_le_bytes());
        p.extend_from_slice(&DEVICE.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0, 2]); // rev, prog_intf, subclass, base_class
        p.extend_from_slice(&0u32.to_le_bytes()); // subsystem id
        p.extend_from_slice(&WSLOT.to_le_bytes());
        p.extend_from_slice(&(SERIAL + self.generation).to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes()); // flags
        p.extend_from_slice(&0u16.to_le_bytes()); // numa node
        p.extend_from_slice(&0u16.to_le_bytes());
        self.inband(bus, p);
    }
}

impl Controller for Host {
    fn schedule(&mut self, sched: &Sched) -> Action {
        let action = self.decide(sched);
        self.trace.push(format!(
            "sched {:?} cur={} t={} runnable={:?} -> {action:?}",
            sched.point, sched.current, sched.now_ns, sched.runnable
        ));
        action
    }

    fn packet(&mut self, packet: GuestPacket) {
        self.trace.push(format!("send {packet:x?}"));
        self.on_packet(packet);
    }

    fn mmio_read(&mut self, addr: u64, size: u32) -> u64 {
        let value = self.on_mmio_read(addr, size);
        self.trace
            .push(format!("read {addr:#x}/{size} = {value:#x}"));
        value
    }

    fn mmio_write(&mut self, addr: u64, size: u32, value: u64) {
        self.trace
            .push(format!("write {addr:#x}/{size} <- {value:#x}"));
        self.on_mmio_write(addr, size, value);
    }

    fn hypercall(&mut self, control: u64, input: &[u8]) -> u64 {
        self.trace
            .push(format!("hypercall {control:#x} {input:x?}"));
        match RetargetRequest::decode(control, input) {
            Ok(request) => {
                self.retargets.push(request);
                0
            }
            // HV_STATUS_INVALID_HYPERCALL_CODE / INVALID_PARAMETER.
            Err(HypercallError::NotRetarget(_)) => 2,
            Err(HypercallError::TooShort(_)) => 5,
        }
    }

    fn result(&mut self, command: u32, result: i32) {
        self.trace.push(format!("result {command} = {result}"));
        if let Some((bus, id)) = self.held_d0exit.take() {
            self.complete(bus, id, 0u32.to_le_bytes().to_vec());
        }
        self.results.push((command, result));
        self.all_results.push((command, result));
    }

    fn log(&mut self, _level: u32, ctx: u32, text: &str) {
        self.trace.push(format!("log [{ctx}] {}", text.trim_end()));
        self.log.push(format!("[{ctx}] {}", text.trim_end()));
    }

    fn event(&mut self, kind: EventKind, ctx: u32, text: &str) {
        if self.ejected() && text.starts_with("endpoint probe") {
            self.violations
                .push("a driver bound to the function after EJECTION_COMPLETE".to_string());
        }
        self.trace.push(format!("event [{ctx}] {kind:?}: {text}"));
        self.log.push(format!("[{ctx}] {kind:?}: {text}"));
        self.events.push((kind, text.to_string()));
    }
}

impl Host {
    fn decide(&mut self, sched: &Sched) -> Action {
        self.now_ns = sched.now_ns;
        self.points += 1;
        if self.points > MAX_POINTS {
            return Action::Stop(format!("livelock: {MAX_POINTS} scheduling points"));
        }
        if self.faults.time_limit_ns.is_some_and(|t| sched.now_ns > t) {
            return Action::Stop(format!("hang: still running at {} ns", sched.now_ns));
        }
        if let Some(at) = self.faults.rescind_at_ns {
            if !self.rescinded && sched.now_ns >= at {
                self.rescinded = true;
                return Action::Rescind(0);
            }
        }
        if self.faults.eject_at_start && self.points == 1 {
            return self.eject_packet();
        }
        let hold_rescind = self.faults.rescind_when_idle && !sched.runnable.is_empty();
        match self.pending.front() {
            Some(Action::Rescind(_)) if hold_rescind => {}
            Some(_) => {
                if let Some(action) = self.pending.pop_front() {
                    return action;
                }
            }
            None => {}
        }
        let step_done = match self.wait {
            Wait::Nothing => true,
            Wait::Result(cmd) => self.results.iter().any(|&(c, _)| c == cmd),
            Wait::EjectionComplete => self.ejected(),
            Wait::Idle => sched.runnable.is_empty(),
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
                        self.eject_packet()
                    }
                    Step::Rescind => {
                        self.wait = Wait::Idle;
                        self.rescinded = true;
                        Action::Rescind(0)
                    }
                    Step::EjectThenRescind => {
                        self.wait = Wait::Idle;
                        self.rescinded = true;
                        let eject = self.eject_packet();
                        self.pending.push_back(Action::Rescind(0));
                        eject
                    }
                    Step::RelationsThenRescind { present } => {
                        self.wait = Wait::Idle;
                        self.rescinded = true;
                        self.present = present;
                        if present {
                            self.generation += 1;
                        }
                        self.relations(0);
                        let relations = self.pending.pop_back();
                        self.pending.push_back(Action::Rescind(0));
                        match relations {
                            Some(action) => action,
                            None => Action::Stop("no relations packet".to_string()),
                        }
                    }
                    Step::Relations { present } => {
                        self.wait = Wait::Idle;
                        if present {
                            self.generation += 1;
                            self.gone = false;
                            self.eject_sent = false;
                            self.config = ConfigSpace::new();
                        }
                        self.present = present;
                        self.relations(0);
                        match self.pending.pop_back() {
                            Some(action) => action,
                            None => Action::Stop("no relations packet".to_string()),
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

    fn on_packet(&mut self, packet: GuestPacket) {
        let p = &packet.payload;
        let msg = u32_at(p, 0);
        self.window.observe_guest_message(p);
        let names_slot = matches!(
            msg,
            QUERY_RESOURCE_REQUIREMENTS
                | RESOURCES_ASSIGNED
                | RESOURCES_ASSIGNED2
                | RESOURCES_RELEASED
                | CREATE_INTERRUPT_MESSAGE
                | CREATE_INTERRUPT_MESSAGE2
                | CREATE_INTERRUPT_MESSAGE3
                | DELETE_INTERRUPT_MESSAGE
                | EJECTION_COMPLETE
        );
        if names_slot && self.ejected() && p.len() >= 8 && u32_at(p, 4) == WSLOT {
            self.violations
                .push(format!("message {:#x} after EJECTION_COMPLETE", msg - BASE));
        }
        self.sent.push(msg);
        if msg == EJECTION_COMPLETE && p.len() >= 8 && u32_at(p, 4) == WSLOT {
            self.gone = true;
        }
        if self.faults.eject_on == Some(msg) {
            let eject = self.eject_packet();
            self.pending.push_back(eject);
        }
        if self.faults.swallow == Some(msg) {
            return;
        }
        if msg == BUS_D0EXIT && self.faults.late_first_d0exit {
            self.faults.late_first_d0exit = false;
            self.held_d0exit = Some((packet.bus, packet.trans_id));
            return;
        }
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
                self.complete(bus, id, 0u32.to_le_bytes().to_vec());
            }
            RESOURCES_ASSIGNED | RESOURCES_ASSIGNED2 | BUS_D0EXIT => {
                self.complete(bus, id, 0u32.to_le_bytes().to_vec());
            }
            CREATE_INTERRUPT_MESSAGE | CREATE_INTERRUPT_MESSAGE2 | CREATE_INTERRUPT_MESSAGE3 => {
                let (vector, count) = if msg == CREATE_INTERRUPT_MESSAGE3 {
                    (u32_at(p, 8), u16::from_le_bytes([p[14], p[15]]))
                } else {
                    (u32::from(p[8]), u16::from_le_bytes([p[10], p[11]]))
                };
                let mut r = 0u32.to_le_bytes().to_vec(); // status
                r.extend_from_slice(&0u32.to_le_bytes()); // reserved
                r.extend_from_slice(&0u16.to_le_bytes());
                r.extend_from_slice(&count.to_le_bytes()); // vector count
                r.extend_from_slice(&vector.to_le_bytes()); // data
                r.extend_from_slice(&0xfee0_0000u64.to_le_bytes()); // address
                self.complete(bus, id, r);
            }
            _ => {}
        }
    }

    fn on_mmio_read(&mut self, addr: u64, size: u32) -> u64 {
        match self.window.decode(addr, size) {
            WindowAccess::Config { slot, offset } => {
                if slot != Some(WSLOT) {
                    return u64::MAX;
                }
                if self.ejected() {
                    self.violations
                        .push(format!("config read {offset:#x} after EJECTION_COMPLETE"));
                    return u64::MAX;
                }
                if self.faults.eject_on_config_read == Some(u64::from(offset)) {
                    self.faults.eject_on_config_read = None;
                    let eject = self.eject_packet();
                    self.pending.push_back(eject);
                }
                return self.config.read(usize::from(offset), size as usize);
            }
            WindowAccess::SlotSelect | WindowAccess::WindowOther => return 0,
            WindowAccess::Outside => {}
        }
        let bar0 = self.config.bar0();
        if bar0 != 0 && (bar0..bar0 + BAR0_SIZE).contains(&addr) {
            self.bar_reads += 1;
            if self.bars_unmapped() {
                self.violations
                    .push(format!("BAR read {addr:#x} after the host unmapped it"));
                return u64::MAX;
            }
            if self.ejected() {
                self.violations
                    .push(format!("BAR read {addr:#x} after EJECTION_COMPLETE"));
                return u64::MAX;
            }
            return 0;
        }
        self.unbacked.push(addr);
        u64::MAX
    }

    fn on_mmio_write(&mut self, addr: u64, size: u32, value: u64) {
        match self.window.write(addr, size, value) {
            WindowAccess::Config { slot, offset } => {
                if slot == Some(WSLOT) && self.ejected() {
                    self.violations
                        .push(format!("config write {offset:#x} after EJECTION_COMPLETE"));
                } else if slot == Some(WSLOT) {
                    self.config.write(usize::from(offset), size as usize, value);
                }
                return;
            }
            WindowAccess::SlotSelect | WindowAccess::WindowOther => return,
            WindowAccess::Outside => {}
        }
        let bar0 = self.config.bar0();
        if bar0 != 0 && (bar0..bar0 + BAR0_SIZE).contains(&addr) {
            self.bar_writes.push((addr - bar0, value));
        } else {
            self.unbacked.push(addr);
        }
    }
}

/// Probe, eject, remove, exit.
pub fn smoke_script() -> Vec<Step> {
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

/// Runs `script` under `faults` and returns the host and how the run ended.
pub fn run(
    version: DriverVersion,
    seed: u64,
    script: Vec<Step>,
    faults: Faults,
) -> (Host, Outcome) {
    let mut host = Host::new(seed, script);
    host.faults = faults;
    let outcome = Session::spawn(version).unwrap().run(&mut host).unwrap();
    (host, outcome)
}

/// Runs the smoke script and checks it ended clean.
pub fn run_smoke(version: DriverVersion, seed: u64) -> Host {
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
    assert!(
        host.all_results.iter().all(|&(_, r)| r == 0),
        "{version:?} seed {seed}: {:?}",
        host.all_results
    );
    assert!(
        host.violations.is_empty(),
        "{version:?} seed {seed}: {:?}",
        host.violations
    );
    let trouble: Vec<_> = host
        .events
        .iter()
        .filter(|(k, _)| matches!(k, EventKind::Warn | EventKind::Bug | EventKind::Leak))
        .collect();
    assert!(trouble.is_empty(), "{version:?} seed {seed}: {trouble:#?}");
    host
}
