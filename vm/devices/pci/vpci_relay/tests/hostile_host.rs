//! The hostile-host corpus: every file in `tests/hostile_host_corpus/` is one host input that
//! is malformed, breaks the protocol, or is legal but odd, run against a real `BusRelay`.
//!
//! For each file the test pins guarantee 9 from the outside:
//!
//! - the relay reports the fault the file names (the first host `Malformed` event's kind, or
//!   none at all) and counts it (`malformed_host`, plus any counter the file names);
//! - the bus ends as the file says: `lost` (a host that broke the protocol), `kept` (a message
//!   the protocol allows never costs the bus) or `rescinded`;
//! - everything the relay sends the guest decodes (requests and notifications as host
//!   messages, completions against the guest request they answer), and only requests the
//!   guest made are completed;
//! - once the host is gone and the holds have run out, every guest request was answered
//!   exactly once;
//! - a second bus, fed only benign traffic step by step between the file's steps, ends
//!   exactly as the same benign traffic ends on a bus of its own (guarantee 6).
//!
//! One `#[test]` runs the whole directory and reports every file that misbehaves, so a
//! regression names all the inputs it breaks at once. The format is described in
//! `tests/hostile_host_corpus/README.md`.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmbus_channel::{Packet, PacketFlags, PacketKind};
use vpci_protocol::*;
use vpci_relay::*;

/// How the bus must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BusEnd {
    /// The host link is up.
    Kept,
    /// The host lost its bus for breaking the protocol.
    Lost,
    /// The host rescinded the channel (the file says `host closed`).
    Rescinded,
}

/// The guest-side setup before the file's steps.
#[derive(Clone, Debug)]
enum Setup {
    /// A fresh relay: no version negotiated.
    None,
    /// The guest negotiated this version and nothing else.
    Version(ProtocolVersion),
    /// 1.4 negotiated, relations listed these devices, each queried; probe path not done.
    Surveyed(Vec<u8>),
    /// The whole probe path done with these devices.
    Installed(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Step {
    /// A host packet: kind, flags, transaction id, payload.
    Host(Packet),
    /// A host completion of the last request of this type the relay forwarded.
    HostCompleteLast(MessageType, Vec<u8>),
    /// The host rescinds its channel.
    HostClosed,
    /// A guest request (completion requested).
    GuestRequest(Vec<u8>),
    /// A guest in-band message (no completion requested).
    GuestSend(Vec<u8>),
    /// Time passes, with the relay's timers.
    Advance(Duration),
}

#[derive(Debug)]
struct Case {
    /// The first line: what the input breaks.
    breaks: String,
    fault: Option<String>,
    bus: BusEnd,
    counters: Vec<(String, u64)>,
    ejection_completes: Option<usize>,
    setup: Setup,
    steps: Vec<Step>,
}

fn hex(words: &[&str]) -> Result<Vec<u8>, String> {
    let s: String = words.concat();
    if s.len() % 2 != 0 {
        return Err(format!("odd number of hex digits in {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("hex {s:?}: {e}")))
        .collect()
}

fn num<T: std::str::FromStr>(w: Option<&&str>) -> Result<T, String> {
    let w = w.ok_or("missing number")?;
    let (digits, radix) = match w.strip_prefix("0x") {
        Some(h) => (h, 16),
        None => (*w, 10),
    };
    u64::from_str_radix(digits, radix)
        .map_err(|e| format!("{w}: {e}"))?
        .to_string()
        .parse()
        .map_err(|_| format!("{w}: out of range"))
}

fn version(w: Option<&&str>) -> Result<ProtocolVersion, String> {
    let w = w.ok_or("missing version")?;
    ProtocolVersion::ALL
        .into_iter()
        .find(|v| v.to_string() == *w)
        .ok_or_else(|| format!("unknown version {w}"))
}

fn devs(words: &[&str]) -> Result<Vec<u8>, String> {
    words.iter().map(|w| num(Some(w))).collect()
}

/// A guest request or message by name (the corpus is about the host's bytes; the guest's
/// are the ordinary ones).
fn guest_payload(words: &[&str]) -> Result<Vec<u8>, String> {
    let dev = || -> Result<WinSlot, String> { Ok(slot(num(words.get(1))?)) };
    Ok(match *words.first().ok_or("missing guest message")? {
        "hex" => hex(&words[1..])?,
        "query-version" => build::query_version(version(words.get(1))?),
        "query-relations" => build::query_relations(),
        "d0-entry" => d0_entry(),
        "d0-exit" => build::d0_exit(),
        "qrr" => build::query_requirements(dev()?),
        "ra" => build::resources_assigned(dev()?, &[]),
        "ra2" => build::resources_assigned2(dev()?, &[]),
        "ci" => build::create_interrupt(dev()?, 0x30, 1),
        "ci2" => build::create_interrupt2(dev()?, 0x30, 0),
        "ci3" => build::create_interrupt3(dev()?, 0x30, 0),
        "delete-interrupt" => build::delete_interrupt(dev()?, 0xfee0_0000, 0x30),
        "released" => build::resources_released(dev()?),
        "ejection-complete" => build::ejection_complete(dev()?),
        other => return Err(format!("unknown guest message {other}")),
    })
}

fn parse_step(words: &[&str]) -> Result<Step, String> {
    Ok(match words {
        ["host", "in", rest @ ..] => Step::Host(Packet::in_band(0, hex(rest)?)),
        ["host", "req", txid, rest @ ..] => {
            Step::Host(Packet::request(num(Some(txid))?, hex(rest)?))
        }
        ["host", "comp", txid, rest @ ..] => {
            Step::Host(Packet::completion(num(Some(txid))?, hex(rest)?))
        }
        ["host", "kind", kind, flags, txid, rest @ ..] => Step::Host(Packet {
            kind: PacketKind::from_raw(num(Some(kind))?),
            flags: PacketFlags(num(Some(flags))?),
            transaction_id: num(Some(txid))?,
            payload: hex(rest)?,
        }),
        ["host", "comp-last", ty, rest @ ..] => Step::HostCompleteLast(
            MessageType::from_name(ty).ok_or_else(|| format!("unknown message type {ty}"))?,
            hex(rest)?,
        ),
        ["host", "closed"] => Step::HostClosed,
        ["guest", "req", rest @ ..] => Step::GuestRequest(guest_payload(rest)?),
        ["guest", "in", rest @ ..] => Step::GuestSend(guest_payload(rest)?),
        ["advance", ms] => Step::Advance(Duration::from_millis(num(Some(ms))?)),
        _ => return Err(format!("unknown step {words:?}")),
    })
}

fn parse(text: &str) -> Result<Case, String> {
    let mut lines = text.lines();
    let breaks = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .ok_or("the first line must be `# <what this input breaks>`")?
        .to_string();
    let mut case = Case {
        breaks,
        fault: None,
        bus: BusEnd::Kept,
        counters: Vec::new(),
        ejection_completes: None,
        setup: Setup::None,
        steps: Vec::new(),
    };
    let (mut saw_fault, mut saw_bus) = (false, false);
    for (n, line) in lines.enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        let err = |e: String| format!("line {}: {e}", n + 2);
        match words.as_slice() {
            [] => {}
            ["expect", "fault", "none"] => saw_fault = true,
            ["expect", "fault", kind] => {
                saw_fault = true;
                case.fault = Some((*kind).to_string());
            }
            ["expect", "bus", end] => {
                saw_bus = true;
                case.bus = match *end {
                    "kept" => BusEnd::Kept,
                    "lost" => BusEnd::Lost,
                    "rescinded" => BusEnd::Rescinded,
                    other => return Err(err(format!("unknown bus end {other}"))),
                };
            }
            ["expect", "counter", name, n] => case
                .counters
                .push(((*name).to_string(), num(Some(n)).map_err(err)?)),
            ["expect", "ejection-completes", n] => {
                case.ejection_completes = Some(num(Some(n)).map_err(err)?)
            }
            ["setup", "none"] => case.setup = Setup::None,
            ["setup", "version", v] => case.setup = Setup::Version(version(Some(v)).map_err(err)?),
            ["setup", "surveyed", d @ ..] => case.setup = Setup::Surveyed(devs(d).map_err(err)?),
            ["setup", "installed", d @ ..] => case.setup = Setup::Installed(devs(d).map_err(err)?),
            ["repeat", n, step @ ..] => {
                let step = parse_step(step).map_err(err)?;
                for _ in 0..num::<usize>(Some(n)).map_err(err)? {
                    case.steps.push(step.clone());
                }
            }
            _ => case.steps.push(parse_step(&words).map_err(err)?),
        }
    }
    if !saw_fault || !saw_bus {
        return Err("a case needs `expect fault ...` and `expect bus ...`".into());
    }
    Ok(case)
}

/// A fault's name as the corpus writes it: the `PacketFault` variant, and for a decode error
/// the `DecodeError` variant after a colon (`Decode:Truncated`).
fn fault_name(f: &PacketFault) -> String {
    let debug = format!("{f:?}");
    let head = |s: &str| {
        s.split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("")
            .to_string()
    };
    match f {
        PacketFault::Decode(e) => format!("Decode:{}", head(&format!("{e:?}"))),
        _ => head(&debug),
    }
}

fn counter(c: &Counters, name: &str) -> Option<u64> {
    Some(match name {
        "relayed_to_host" => c.relayed_to_host,
        "relayed_to_guest" => c.relayed_to_guest,
        "held" => c.held,
        "released" => c.released,
        "coalesced" => c.coalesced,
        "superseded" => c.superseded,
        "answered_locally" => c.answered_locally,
        "late_completions" => c.late_completions,
        "malformed_host" => c.malformed_host,
        "malformed_guest" => c.malformed_guest,
        "timed_out" => c.timed_out,
        "ejects_answered_locally" => c.ejects_answered_locally,
        "ejects_answered_at_deadline" => c.ejects_answered_at_deadline,
        "stale_listings" => c.stale_listings,
        "over_limit_relations" => c.over_limit_relations,
        "progress_stalls" => c.progress_stalls,
        _ => return None,
    })
}

/// A bus with a record of the guest's requests, so each completion the relay sends the guest
/// is decoded against the request it answers.
struct Tracked {
    bus: Bus,
    /// Guest transaction id -> request type, for requests that get a completion.
    asked: BTreeMap<u64, MessageType>,
    /// How many packets of `to_guest` have been checked.
    checked: usize,
    problems: Vec<String>,
}

impl Tracked {
    fn new(setup: &Setup) -> Self {
        let mut t = Self {
            bus: Bus::new(),
            asked: BTreeMap::new(),
            checked: 0,
            problems: Vec::new(),
        };
        match setup {
            Setup::None => {}
            Setup::Version(v) => {
                t.guest_request(query_version(*v));
                t.bus
                    .host_completes(MessageType::QUERY_PROTOCOL_VERSION, status(Status::SUCCESS));
            }
            Setup::Surveyed(d) => t.bus.survey(d),
            Setup::Installed(d) => {
                t.bus.survey(d);
                t.bus.finish_probe(d);
            }
        }
        // The setup's own requests are the common helpers'; track them as answered.
        t.checked = t.bus.to_guest.len();
        t
    }

    fn guest_request(&mut self, payload: Vec<u8>) {
        let ty = message_type(&Packet::in_band(0, payload.clone()));
        let open = !self.bus.closed;
        let id = self.bus.guest_requests(payload);
        if let Some(ty) = ty.filter(|t| open && gets_completion(*t)) {
            self.asked.insert(id, ty);
        }
        self.check();
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::Host(p) => {
                let now = self.bus.now;
                self.bus.relay.handle_host(now, p.clone());
                self.bus.drain();
            }
            Step::HostCompleteLast(ty, payload) => {
                let p = self
                    .bus
                    .to_host
                    .iter()
                    .rev()
                    .find(|p| p.completion_requested() && message_type(p) == Some(*ty))
                    .ok_or_else(|| format!("no {ty} was forwarded to the host"))?;
                let c = Packet::completion(p.transaction_id, payload.clone());
                let now = self.bus.now;
                self.bus.relay.handle_host(now, c);
                self.bus.drain();
            }
            Step::HostClosed => {
                let now = self.bus.now;
                self.bus.relay.handle_host_closed(now);
                self.bus.drain();
            }
            Step::GuestRequest(p) => self.guest_request(p.clone()),
            Step::GuestSend(p) => self.bus.guest_sends(p.clone()),
            Step::Advance(d) => self.bus.advance(*d),
        }
        self.check();
        Ok(())
    }

    /// Everything the relay sent the guest since the last check decodes.
    fn check(&mut self) {
        let version = self.bus.relay.version();
        for p in &self.bus.to_guest[self.checked..] {
            match p.kind {
                PacketKind::InBand => {
                    if let Err(e) = decode(&p.payload, Sender::Host, version) {
                        self.problems
                            .push(format!("the guest got a malformed message: {e}"));
                    }
                }
                PacketKind::Completion => match self.asked.get(&p.transaction_id) {
                    None => self.problems.push(format!(
                        "the guest got a completion for {:#x}, which it never asked for",
                        p.transaction_id
                    )),
                    Some(ty) => {
                        if let Err(e) = decode_completion(&p.payload, *ty, version) {
                            self.problems
                                .push(format!("the guest got a malformed {ty} completion: {e}"));
                        }
                    }
                },
                other => self
                    .problems
                    .push(format!("the guest got a packet of kind {other:?}")),
            }
        }
        self.checked = self.bus.to_guest.len();
    }
}

/// The benign traffic of the other bus: a probe of two functions, a hot-add, an eject.
fn benign_steps() -> Vec<Step> {
    use MessageType as T;
    let done = || status(Status::SUCCESS);
    vec![
        Step::GuestRequest(query_version(ProtocolVersion::V1_4)),
        Step::HostCompleteLast(T::QUERY_PROTOCOL_VERSION, done()),
        Step::GuestSend(query_relations()),
        Step::Host(Packet::in_band(0, padded(relations2(&[1, 2])))),
        Step::GuestRequest(qrr(1)),
        Step::HostCompleteLast(T::QUERY_RESOURCE_REQUIREMENTS, requirements_reply()),
        Step::GuestRequest(qrr(2)),
        Step::HostCompleteLast(T::QUERY_RESOURCE_REQUIREMENTS, requirements_reply()),
        Step::GuestRequest(d0_entry()),
        Step::HostCompleteLast(T::BUS_D0ENTRY, done()),
        Step::GuestRequest(resources_assigned2(1)),
        Step::HostCompleteLast(T::RESOURCES_ASSIGNED2, done()),
        Step::GuestRequest(resources_assigned2(2)),
        Step::HostCompleteLast(T::RESOURCES_ASSIGNED2, done()),
        Step::Advance(Duration::from_secs(1)),
        Step::Host(Packet::in_band(0, padded(relations2(&[1, 2, 3])))),
        Step::GuestRequest(qrr(3)),
        Step::HostCompleteLast(T::QUERY_RESOURCE_REQUIREMENTS, requirements_reply()),
        Step::Advance(Duration::from_secs(1)),
        Step::Host(Packet::in_band(0, padded(eject(2)))),
        Step::Advance(Duration::from_secs(1)),
        Step::GuestSend(ejection_complete(2)),
        Step::Advance(Duration::from_secs(1)),
    ]
}

/// What a bus's run left behind, to compare two runs of the same traffic.
fn outcome(t: &Tracked) -> String {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    t.bus.relay.fingerprint(&mut h);
    format!(
        "fingerprint {:x}\nto guest {:?}\nto host {:?}\ncounters {:?}\nevents {:?}\nproblems {:?}",
        h.finish(),
        t.bus.to_guest,
        t.bus.to_host,
        t.bus.relay.counters(),
        t.bus.events,
        t.problems,
    )
}

/// Runs one case; returns what went wrong, in words (empty: it behaved).
fn run_case(case: &Case, benign_alone: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut bus = Tracked::new(&case.setup);
    let mut other = Tracked::new(&Setup::None);
    let mut benign = benign_steps().into_iter();
    let events_before = bus.bus.events.len();
    let host_packets_before = bus.bus.to_host.len();
    let counters_before = *bus.bus.relay.counters();
    for (i, step) in case.steps.iter().enumerate() {
        if let Some(b) = benign.next() {
            other.step(&b).expect("benign steps are well-formed");
        }
        if let Err(e) = bus.step(step) {
            problems.push(format!("step {}: {e}", i + 1));
            return problems;
        }
    }
    for b in benign {
        other.step(&b).expect("benign steps are well-formed");
    }

    // The fault and its counter.
    let faults: Vec<String> = bus.bus.events[events_before..]
        .iter()
        .filter_map(|e| match e {
            RelayEvent::Malformed {
                side: Side::Host,
                fault,
            } => Some(fault_name(fault)),
            _ => None,
        })
        .collect();
    let counters = *bus.bus.relay.counters();
    let malformed = counters.malformed_host - counters_before.malformed_host;
    match &case.fault {
        None if !faults.is_empty() => {
            problems.push(format!("expected no fault, the relay reported {faults:?}"))
        }
        Some(want) if faults.first() != Some(want) => problems.push(format!(
            "expected fault {want}, the relay reported {faults:?}"
        )),
        Some(_) if malformed == 0 => problems.push("the fault was not counted".into()),
        _ => {}
    }
    if malformed != faults.len() as u64 {
        problems.push(format!(
            "malformed_host counted {malformed}, {} faults reported",
            faults.len()
        ));
    }
    for (name, want) in &case.counters {
        // Counted from the end of the setup.
        let got = counter(&counters, name).zip(counter(&counters_before, name));
        match got.map(|(after, before)| after - before) {
            None => problems.push(format!("no counter {name}")),
            Some(got) if got != *want => {
                problems.push(format!("counter {name}: expected {want}, got {got}"))
            }
            Some(_) => {}
        }
    }
    // How the bus ended.
    let end = match bus.bus.relay.host_link() {
        HostLink::Up => BusEnd::Kept,
        HostLink::Lost {
            rescinded: false, ..
        } => BusEnd::Lost,
        HostLink::Lost {
            rescinded: true, ..
        } => BusEnd::Rescinded,
    };
    if end != case.bus {
        problems.push(format!("expected the bus {:?}, it is {end:?}", case.bus));
    }
    if let Some(want) = case.ejection_completes {
        let got = bus.bus.to_host[host_packets_before..]
            .iter()
            .filter(|p| {
                p.kind == PacketKind::InBand
                    && message_type(p) == Some(MessageType::EJECTION_COMPLETE)
            })
            .count();
        if got != want {
            problems.push(format!(
                "expected {want} EJECTION_COMPLETEs at the host, got {got}"
            ));
        }
    }

    // The host goes away; once the holds have run out, every guest request was answered
    // exactly once, and still nothing malformed reached the guest.
    let now = bus.bus.now;
    bus.bus.relay.handle_host_closed(now);
    bus.bus.drain();
    bus.bus.advance(Duration::from_secs(120));
    bus.check();
    for (id, ty) in &bus.asked {
        let n = bus
            .bus
            .to_guest
            .iter()
            .filter(|p| p.kind == PacketKind::Completion && p.transaction_id == *id)
            .count();
        if n != 1 {
            problems.push(format!("guest request {id:#x} ({ty}) answered {n} times"));
        }
    }
    problems.append(&mut bus.problems);

    // The other bus saw none of it.
    if outcome(&other) != benign_alone {
        problems.push("the benign bus beside it ended differently than on its own".into());
    }
    problems
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile_host_corpus")
}

/// Every corpus file yields its fault, its counters and its bus end; the guest never sees a
/// malformed packet; every guest request is answered once; the benign bus beside it is
/// unaffected.
#[test]
fn hostile_host_corpus() {
    let mut benign = Tracked::new(&Setup::None);
    for b in benign_steps() {
        benign.step(&b).unwrap();
    }
    assert!(benign.problems.is_empty(), "{:?}", benign.problems);
    assert_eq!(benign.bus.relay.host_link(), HostLink::Up);
    let benign_alone = outcome(&benign);

    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("the corpus directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut report = String::new();
    let (mut kept, mut lost) = (0, 0);
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy();
        let text = std::fs::read_to_string(path).unwrap();
        let case = match parse(&text) {
            Ok(c) => c,
            Err(e) => {
                let _ = writeln!(report, "{name}: does not parse: {e}");
                continue;
            }
        };
        match case.bus {
            BusEnd::Kept => kept += 1,
            BusEnd::Lost => lost += 1,
            BusEnd::Rescinded => {}
        }
        let problems = run_case(&case, &benign_alone);
        if !problems.is_empty() {
            let _ = writeln!(report, "{name} ({}):", case.breaks);
            for p in problems {
                let _ = writeln!(report, "    {p}");
            }
        }
    }
    assert!(report.is_empty(), "corpus files that misbehave:\n{report}");
    // The corpus covers both promises: hostile input costs the bus, legal input never does.
    assert!(files.len() >= 50, "only {} corpus files", files.len());
    assert!(kept >= 10 && lost >= 10, "kept {kept}, lost {lost}");
}

/// The runner has teeth: a file whose expectations are wrong is reported, on each count.
#[test]
fn the_corpus_runner_reports_wrong_expectations() {
    let benign_alone = {
        let mut b = Tracked::new(&Setup::None);
        for s in benign_steps() {
            b.step(&s).unwrap();
        }
        outcome(&b)
    };
    let eject_unknown = format!(
        "# EJECT of a slot never listed\nsetup installed 1\nhost in {}\n",
        eject(9)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    for (expect, complaint) in [
        ("expect fault none\nexpect bus kept\n", "expected no fault"),
        (
            "expect fault DuplicateSlot\nexpect bus kept\n",
            "expected fault DuplicateSlot",
        ),
        (
            "expect fault UnknownSlot\nexpect bus lost\n",
            "expected the bus Lost",
        ),
        (
            "expect fault UnknownSlot\nexpect bus kept\nexpect counter malformed_host 2\n",
            "counter malformed_host",
        ),
    ] {
        let case = parse(&format!("{eject_unknown}{expect}")).unwrap();
        let problems = run_case(&case, &benign_alone);
        assert!(
            problems.iter().any(|p| p.contains(complaint)),
            "{expect}: {problems:?}"
        );
    }
    let right = parse(&format!(
        "{eject_unknown}expect fault UnknownSlot\nexpect bus kept\n"
    ))
    .unwrap();
    assert_eq!(run_case(&right, &benign_alone), Vec::<String>::new());
}
