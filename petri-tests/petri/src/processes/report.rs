//! What the endpoints of a multi-process run report on their `@@` lines (the host's state
//! and the guest's holdings per bus, each printed whenever it changes), and the end-of-run
//! verdict: the same checks as a simulated run (`eject_unanswered`, `lost_bus`,
//! `ghost_device`, `lost_device` through [`compare_functions`]), applied to the last state
//! each side reported once the run went quiet.

use crate::outcome::{Identity, Outcome, compare_functions};
use vpci_protocol::WinSlot;

/// The host's state of one bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostState {
    pub(crate) bus: String,
    pub(crate) rescinded: bool,
    pub(crate) broke_protocol: bool,
    /// Slots with an EJECT the guest has not answered.
    pub(crate) ejecting: Vec<WinSlot>,
    /// The functions the host has, with their identities.
    pub(crate) functions: Vec<(WinSlot, Identity)>,
}

/// The guest's state of one bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GuestState {
    pub(crate) bus: String,
    /// The probe succeeded.
    pub(crate) probed: bool,
    /// The service closed (rescinded) the bus, or its ring ended.
    pub(crate) closed: bool,
    /// What the guest holds, with the identity it found.
    pub(crate) held: Vec<(WinSlot, Identity)>,
}

fn functions_text(f: &[(WinSlot, Identity)]) -> String {
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

fn parse_functions(text: &str) -> Option<Vec<(WinSlot, Identity)>> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    for item in inner.split(';').filter(|s| !s.is_empty()) {
        let mut parts = item.split(':');
        let slot = parts.next()?.parse().ok()?;
        let vendor_id = u16::from_str_radix(parts.next()?, 16).ok()?;
        let device_id = u16::from_str_radix(parts.next()?, 16).ok()?;
        let serial = parts.next()?.parse().ok()?;
        out.push((
            WinSlot::from_raw(slot),
            Identity {
                vendor_id,
                device_id,
                serial,
            },
        ));
    }
    Some(out)
}

/// The `key=value` words of a line after its prefix and bus.
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
    pub(crate) fn line(&self) -> String {
        let ejecting: Vec<String> = self.ejecting.iter().map(|s| s.raw().to_string()).collect();
        format!(
            "host state {} rescinded={} broke={} ejecting=[{}] functions={}",
            self.bus,
            u8::from(self.rescinded),
            u8::from(self.broke_protocol),
            ejecting.join(";"),
            functions_text(&self.functions)
        )
    }

    /// Parses [`HostState::line`].
    pub(crate) fn parse(line: &str) -> Option<Self> {
        let (bus, f) = fields(line, "host state ")?;
        let ejecting = get(&f, "ejecting")?
            .strip_prefix('[')?
            .strip_suffix(']')?
            .split(';')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().ok().map(WinSlot::from_raw))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            bus: bus.to_owned(),
            rescinded: get(&f, "rescinded")? == "1",
            broke_protocol: get(&f, "broke")? == "1",
            ejecting,
            functions: parse_functions(get(&f, "functions")?)?,
        })
    }
}

impl GuestState {
    /// The `@@` line (without the `@@ `).
    pub(crate) fn line(&self) -> String {
        format!(
            "guest state {} probed={} closed={} held={}",
            self.bus,
            u8::from(self.probed),
            u8::from(self.closed),
            functions_text(&self.held)
        )
    }

    /// Parses [`GuestState::line`].
    pub(crate) fn parse(line: &str) -> Option<Self> {
        let (bus, f) = fields(line, "guest state ")?;
        Some(Self {
            bus: bus.to_owned(),
            probed: get(&f, "probed")? == "1",
            closed: get(&f, "closed")? == "1",
            held: parse_functions(get(&f, "held")?)?,
        })
    }
}

/// A guest failure's `@@` line: `guest failure BUS KIND|CONTEXT|FUNCTION|MESSAGE`.
pub(crate) fn failure_line(bus: &str, o: &Outcome) -> String {
    match o {
        Outcome::Guest {
            failure,
            context,
            function,
            message,
            ..
        } => format!("guest failure {bus} {failure}|{context}|{function}|{message}"),
        other => format!("guest failure {bus} {}|||{other}", other.kind()),
    }
}

/// Parses [`failure_line`] for bus index `index`.
pub(crate) fn parse_failure(line: &str, index: usize) -> Option<Outcome> {
    let rest = line.strip_prefix("guest failure ")?;
    let (_, text) = rest.split_once(' ')?;
    let mut parts = text.splitn(4, '|');
    Some(Outcome::Guest {
        bus: index,
        failure: parts.next()?.to_owned(),
        context: parts.next().unwrap_or_default().to_owned(),
        function: parts.next().unwrap_or_default().to_owned(),
        message: parts.next().unwrap_or_default().to_owned(),
    })
}

/// The end-of-run verdict of bus `index` from the last states both sides reported.
pub(crate) fn verdict(
    index: usize,
    host: Option<&HostState>,
    guest: Option<&GuestState>,
) -> Outcome {
    let Some(host) = host else {
        return Outcome::LostBus { bus: index };
    };
    if let Some(slot) = host.ejecting.first() {
        return Outcome::EjectUnanswered {
            bus: index,
            slot: slot.to_string(),
        };
    }
    let Some(guest) = guest else {
        return Outcome::LostBus { bus: index };
    };
    if guest.closed {
        if !host.rescinded && !host.broke_protocol {
            return Outcome::LostBus { bus: index };
        }
        return Outcome::Ok;
    }
    if host.rescinded {
        return Outcome::Ok;
    }
    compare_functions(index, &host.functions, &guest.held, guest.probed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(serial: u32) -> Identity {
        Identity {
            vendor_id: 0x15b3,
            device_id: 0x101a,
            serial,
        }
    }

    /// Both lines round-trip, and the verdict looks both ways.
    #[test]
    fn lines_round_trip_and_verdicts() {
        let host = HostState {
            bus: "bus0".into(),
            rescinded: false,
            broke_protocol: false,
            ejecting: vec![],
            functions: vec![(WinSlot::from_raw(1), id(1))],
        };
        assert_eq!(HostState::parse(&host.line()), Some(host.clone()));
        let mut guest = GuestState {
            bus: "bus0".into(),
            probed: true,
            closed: false,
            held: vec![(WinSlot::from_raw(1), id(1))],
        };
        assert_eq!(GuestState::parse(&guest.line()), Some(guest.clone()));
        assert_eq!(verdict(0, Some(&host), Some(&guest)), Outcome::Ok);
        guest.held = vec![(WinSlot::from_raw(1), id(2))];
        assert_eq!(verdict(0, Some(&host), Some(&guest)).kind(), "ghost_device");
        guest.held.clear();
        assert_eq!(verdict(0, Some(&host), Some(&guest)).kind(), "lost_device");
        guest.closed = true;
        assert_eq!(verdict(0, Some(&host), Some(&guest)).kind(), "lost_bus");
        let mut ejecting = host.clone();
        ejecting.ejecting = vec![WinSlot::from_raw(1)];
        assert_eq!(
            verdict(0, Some(&ejecting), Some(&guest)).kind(),
            "eject_unanswered"
        );
        let f = Outcome::Guest {
            bus: 0,
            failure: "null_deref".into(),
            context: "ctx".into(),
            function: "f".into(),
            message: "m|n".into(),
        };
        assert_eq!(parse_failure(&failure_line("bus0", &f), 0), Some(f));
    }
}
