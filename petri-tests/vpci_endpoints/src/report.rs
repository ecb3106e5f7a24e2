//! The `@@` lines the endpoints print and their parsers: each side's state of a bus (printed
//! whenever it changes, so the last one of each is the state a quiet run ended in), a guest's
//! failure, and a storm's summary. A line that does not parse is `None`, never a panic: the
//! lines come from another process.

use vpci_protocol::WinSlot;

/// A function's identity as a guest tells functions apart: vendor, device, serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FunctionId {
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Serial number.
    pub serial: u32,
}

/// The host's state of one bus (`host state BUS ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostState {
    /// The bus id.
    pub bus: String,
    /// The host rescinded the bus.
    pub rescinded: bool,
    /// The host broke the protocol (a hostile mode).
    pub broke_protocol: bool,
    /// Slots with an EJECT the guest has not answered.
    pub ejecting: Vec<WinSlot>,
    /// The functions the host has, with their identities.
    pub functions: Vec<(WinSlot, FunctionId)>,
    /// The host still has something of its own to do (an answer it holds back, a script step
    /// waiting on its time: [`host_sim::HostBus::has_scheduled`]): the run is not over.
    pub busy: bool,
    /// The bus's script steps that have not fired (yet), counting from 1 in script order: a
    /// run that ends with one of them has not played what its scenario is about.
    pub unfired: Vec<usize>,
}

/// The guest's state of one bus (`guest state BUS ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestState {
    /// The bus id.
    pub bus: String,
    /// The probe succeeded.
    pub probed: bool,
    /// The service closed (rescinded) the bus, or its ring ended.
    pub closed: bool,
    /// What the guest holds, with the identity it found.
    pub held: Vec<(WinSlot, FunctionId)>,
}

/// A guest's failure on one bus (`guest failure BUS KIND|CONTEXT|FUNCTION|MESSAGE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFailure {
    /// The bus id.
    pub bus: String,
    /// The failure kind (`null_deref`, `leaked_device`, ...).
    pub kind: String,
    /// The guest context it happened in.
    pub context: String,
    /// The kernel function it happened in.
    pub function: String,
    /// What happened.
    pub message: String,
}

/// A hot-plug storm's summary on one bus (`storm BUS cycles=N added=N answered=N ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StormSummary {
    /// The bus id.
    pub bus: String,
    /// The cycles asked for.
    pub cycles: u32,
    /// The hot-adds the host carried out (one per cycle that started).
    pub added: u32,
    /// The EJECTs the guest answered with EJECTION_COMPLETE.
    pub answered: u32,
    /// The EJECTs that timed out unanswered.
    pub unanswered: u32,
    /// How long the storm took.
    pub ms: u64,
}

fn functions_text(f: &[(WinSlot, FunctionId)]) -> String {
    let items: Vec<String> = f
        .iter()
        .map(|(s, i)| {
            format!(
                "{}:{:04x}:{:04x}:{}",
                s.raw(),
                i.vendor_id,
                i.device_id,
                i.serial
            )
        })
        .collect();
    format!("[{}]", items.join(";"))
}

fn parse_functions(text: &str) -> Option<Vec<(WinSlot, FunctionId)>> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    for item in inner.split(';').filter(|s| !s.is_empty()) {
        let mut parts = item.split(':');
        let slot = parts.next()?.parse().ok()?;
        let vendor_id = u16::from_str_radix(parts.next()?, 16).ok()?;
        let device_id = u16::from_str_radix(parts.next()?, 16).ok()?;
        let serial = parts.next()?.parse().ok()?;
        let id = FunctionId {
            vendor_id,
            device_id,
            serial,
        };
        out.push((WinSlot::from_raw(slot), id));
    }
    Some(out)
}

/// The bus and `key=value` words of a line after its prefix.
fn fields<'a>(line: &'a str, prefix: &str) -> Option<(&'a str, Vec<(&'a str, &'a str)>)> {
    let rest = line.strip_prefix(prefix)?;
    let mut words = rest.split_whitespace();
    let bus = words.next()?;
    Some((bus, words.filter_map(|w| w.split_once('=')).collect()))
}

fn get<'a>(f: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

impl HostState {
    /// The `@@` line (without the `@@ `).
    pub fn line(&self) -> String {
        let ejecting: Vec<String> = self.ejecting.iter().map(|s| s.raw().to_string()).collect();
        let unfired: Vec<String> = self.unfired.iter().map(usize::to_string).collect();
        format!(
            "host state {} rescinded={} broke={} ejecting=[{}] functions={} busy={} unfired=[{}]",
            self.bus,
            u8::from(self.rescinded),
            u8::from(self.broke_protocol),
            ejecting.join(";"),
            functions_text(&self.functions),
            u8::from(self.busy),
            unfired.join(";")
        )
    }

    /// Parses [`HostState::line`].
    pub fn parse(line: &str) -> Option<Self> {
        let (bus, f) = fields(line, "host state ")?;
        let numbers = |key: &str| {
            get(&f, key)?
                .strip_prefix('[')?
                .strip_suffix(']')?
                .split(';')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().ok())
                .collect::<Option<Vec<_>>>()
        };
        Some(Self {
            bus: bus.to_owned(),
            rescinded: get(&f, "rescinded")? == "1",
            broke_protocol: get(&f, "broke")? == "1",
            ejecting: numbers("ejecting")?
                .into_iter()
                .map(WinSlot::from_raw)
                .collect(),
            functions: parse_functions(get(&f, "functions")?)?,
            busy: get(&f, "busy")? == "1",
            unfired: numbers("unfired")?
                .into_iter()
                .map(usize::try_from)
                .collect::<Result<_, _>>()
                .ok()?,
        })
    }

    /// The last state of `bus` among `lines`.
    pub fn last(lines: &[String], bus: &str) -> Option<Self> {
        lines
            .iter()
            .rev()
            .filter_map(|l| Self::parse(l))
            .find(|s| s.bus == bus)
    }
}

impl GuestState {
    /// The `@@` line (without the `@@ `).
    pub fn line(&self) -> String {
        format!(
            "guest state {} probed={} closed={} held={}",
            self.bus,
            u8::from(self.probed),
            u8::from(self.closed),
            functions_text(&self.held)
        )
    }

    /// Parses [`GuestState::line`].
    pub fn parse(line: &str) -> Option<Self> {
        let (bus, f) = fields(line, "guest state ")?;
        Some(Self {
            bus: bus.to_owned(),
            probed: get(&f, "probed")? == "1",
            closed: get(&f, "closed")? == "1",
            held: parse_functions(get(&f, "held")?)?,
        })
    }

    /// The last state of `bus` among `lines`.
    pub fn last(lines: &[String], bus: &str) -> Option<Self> {
        lines
            .iter()
            .rev()
            .filter_map(|l| Self::parse(l))
            .find(|s| s.bus == bus)
    }

    /// How many times, over `lines`, `bus`'s guest came to hold a function in `slot` it did
    /// not hold in its previous state: the hot-adds that reached the guest.
    pub fn arrivals(lines: &[String], bus: &str, slot: WinSlot) -> usize {
        let mut held = false;
        let mut n = 0;
        for s in lines.iter().filter_map(|l| Self::parse(l)) {
            if s.bus != bus {
                continue;
            }
            let now = s.held.iter().any(|(w, _)| *w == slot);
            n += usize::from(now && !held);
            held = now;
        }
        n
    }
}

impl GuestFailure {
    /// The `@@` line (without the `@@ `).
    pub fn line(&self) -> String {
        format!(
            "guest failure {} {}|{}|{}|{}",
            self.bus, self.kind, self.context, self.function, self.message
        )
    }

    /// Parses [`GuestFailure::line`].
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("guest failure ")?;
        let (bus, text) = rest.split_once(' ')?;
        let mut parts = text.splitn(4, '|');
        Some(Self {
            bus: bus.to_owned(),
            kind: parts.next()?.to_owned(),
            context: parts.next().unwrap_or_default().to_owned(),
            function: parts.next().unwrap_or_default().to_owned(),
            message: parts.next().unwrap_or_default().to_owned(),
        })
    }
}

impl StormSummary {
    /// The `@@` line (without the `@@ `).
    pub fn line(&self) -> String {
        format!(
            "storm {} cycles={} added={} answered={} unanswered={} ms={}",
            self.bus, self.cycles, self.added, self.answered, self.unanswered, self.ms
        )
    }

    /// Parses [`StormSummary::line`].
    pub fn parse(line: &str) -> Option<Self> {
        let (bus, f) = fields(line, "storm ")?;
        let n = |k| get(&f, k)?.parse::<u32>().ok();
        Some(Self {
            bus: bus.to_owned(),
            cycles: n("cycles")?,
            added: n("added")?,
            answered: n("answered")?,
            unanswered: n("unanswered")?,
            ms: get(&f, "ms")?.parse().ok()?,
        })
    }

    /// Every cycle asked for ran: each hot-add made and each EJECT answered.
    pub fn complete(&self) -> bool {
        self.added == self.cycles && self.answered == self.cycles && self.unanswered == 0
    }
}

/// The functions a host bus has, with their identities.
pub fn host_functions(host: &mut host_sim::HostBus) -> Vec<(WinSlot, FunctionId)> {
    let mut out = Vec::new();
    for slot in host.slots() {
        let (Some(f), Some((vendor_id, device_id))) = (host.function(slot), host.ids(slot)) else {
            continue;
        };
        let id = FunctionId {
            vendor_id,
            device_id,
            serial: f.serial,
        };
        out.push((slot, id));
    }
    out
}

/// What a guest model holds on a bus: each slot with a child on the bus's list (its identity
/// as the relations described it) or a `pci_dev` (the ids the scan read, the serial of the
/// child it was made for).
pub fn model_functions(devices: &[guest_linux::DeviceView]) -> Vec<(WinSlot, FunctionId)> {
    let mut out = Vec::new();
    for d in devices {
        if d.child_present {
            let id = FunctionId {
                vendor_id: d.vendor_id,
                device_id: d.device_id,
                serial: d.serial,
            };
            out.push((d.slot, id));
        }
        if let Some((vendor_id, device_id, serial)) = d.pci_dev_identity {
            let id = FunctionId {
                vendor_id,
                device_id,
                serial,
            };
            if !out.contains(&(d.slot, id)) {
                out.push((d.slot, id));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(serial: u32) -> FunctionId {
        FunctionId {
            vendor_id: 0x15b3,
            device_id: 0x101a,
            serial,
        }
    }

    /// Every line round-trips; a damaged line is `None`.
    #[test]
    fn lines_round_trip() {
        let host = HostState {
            bus: "bus0".into(),
            rescinded: false,
            broke_protocol: true,
            ejecting: vec![WinSlot::from_raw(2)],
            functions: vec![(WinSlot::from_raw(1), id(1))],
            busy: true,
            unfired: vec![1, 3],
        };
        assert_eq!(HostState::parse(&host.line()), Some(host.clone()));
        let fired = HostState {
            busy: false,
            unfired: vec![],
            ..host.clone()
        };
        assert_eq!(HostState::parse(&fired.line()), Some(fired));
        let guest = GuestState {
            bus: "bus0".into(),
            probed: true,
            closed: false,
            held: vec![(WinSlot::from_raw(1), id(1)), (WinSlot::from_raw(3), id(7))],
        };
        assert_eq!(GuestState::parse(&guest.line()), Some(guest.clone()));
        let f = GuestFailure {
            bus: "bus1".into(),
            kind: "null_deref".into(),
            context: "ctx".into(),
            function: "f".into(),
            message: "m|n".into(),
        };
        assert_eq!(GuestFailure::parse(&f.line()), Some(f));
        let s = StormSummary {
            bus: "bus0".into(),
            cycles: 5,
            added: 5,
            answered: 4,
            unanswered: 1,
            ms: 12,
        };
        assert_eq!(StormSummary::parse(&s.line()), Some(s.clone()));
        assert!(!s.complete());
        let line = host.line().replace("functions=[1:", "functions=[x:");
        assert_eq!(HostState::parse(&line), None);
        assert_eq!(GuestState::parse("guest state bus0 probed=1"), None);
        assert_eq!(StormSummary::parse("storm bus0 cycles=5"), None);
    }

    /// Arrivals count each time the slot appears in the guest's holdings, not each line.
    #[test]
    fn arrivals_count_appearances() {
        let state = |held: &[u32]| {
            GuestState {
                bus: "bus0".into(),
                probed: true,
                closed: false,
                held: held
                    .iter()
                    .map(|&s| (WinSlot::from_raw(s), id(s)))
                    .collect(),
            }
            .line()
        };
        let lines = vec![
            state(&[0]),
            state(&[0, 1]),
            state(&[0, 1]),
            state(&[0]),
            state(&[0, 1]),
            "guest state bus1 probed=1 closed=0 held=[1:15b3:101a:1]".to_owned(),
        ];
        assert_eq!(
            GuestState::arrivals(&lines, "bus0", WinSlot::from_raw(1)),
            2
        );
        assert_eq!(
            GuestState::arrivals(&lines, "bus1", WinSlot::from_raw(1)),
            1
        );
        assert_eq!(
            GuestState::arrivals(&lines, "bus0", WinSlot::from_raw(2)),
            0
        );
    }
}
