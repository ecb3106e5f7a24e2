//! One vocabulary for what replays, charts and `petri decode` print: messages by their spec
//! names (`PCI_EJECT`), functions as the kernel names them (`01.0`), completions with the
//! request they answer and their status's name, script steps and host actions in scenario
//! words, and the relay's held changes with why they were let go.
//!
//! The VM's pump writes short labels (`EJECT(1)`, `completion 0x00000000`, `script step 0`);
//! [`polish`] rewrites a finished trace into this vocabulary, matching each completion to its
//! request in the order VMBus delivers them on that link.

use crate::scenario::Scenario;
use crate::trace::{Lane, Line, Mark, Trace};
use host_sim::HostAction;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::{MessageType, Status, WinSlot};

/// A status as a kernel developer reads it: its name (`SUCCESS`), else its value in hex.
pub fn status(raw: u32) -> String {
    let status = Status(raw);
    match status.name() {
        Some(name) => name.to_owned(),
        None => format!("{raw:#010x}"),
    }
}

/// A message type by its spec name (`PCI_EJECT`).
fn type_name(ty: MessageType) -> String {
    ty.name()
        .map_or_else(|| format!("message {:#010x}", ty.0), str::to_owned)
}

/// A vPCI packet in the trace's words: `PCI_EJECT 01.0`, `PCI_BUS_D0ENTRY`, `completion:
/// SUCCESS` (which request a completion answers is known only from its link: see
/// [`polish`]).
pub fn packet(p: &Packet) -> String {
    let word = |at: usize| {
        p.payload
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
    };
    match p.kind {
        PacketKind::Completion => match word(0) {
            Some(s) => format!("completion: {}", status(s)),
            None => "completion (short)".to_owned(),
        },
        PacketKind::InBand => match word(0) {
            Some(ty) => message(MessageType(ty), word(4)),
            None => "empty packet".to_owned(),
        },
        other => format!("packet kind {}", other.to_raw()),
    }
}

/// Whether messages of this type carry a slot in their second word.
fn has_slot(ty: MessageType) -> bool {
    !matches!(
        ty,
        MessageType::BUS_RELATIONS
            | MessageType::BUS_RELATIONS2
            | MessageType::QUERY_BUS_RELATIONS
            | MessageType::QUERY_PROTOCOL_VERSION
            | MessageType::BUS_D0ENTRY
            | MessageType::BUS_D0EXIT
    )
}

fn message(ty: MessageType, slot: Option<u32>) -> String {
    match slot {
        Some(slot) if has_slot(ty) => format!("{} {}", type_name(ty), WinSlot::from_raw(slot)),
        _ => type_name(ty),
    }
}

/// A host action in scenario words: the inline table a scenario writes
/// (`{ kind = "eject", slot = 1 }`).
pub fn action(a: &HostAction) -> String {
    match toml::Value::try_from(a) {
        Ok(v) => v.to_string(),
        Err(_) => format!("{a:?}"),
    }
}

/// A short wire label (`EJECT(1)`, `BUS_D0ENTRY`) read back as its type and slot.
fn parse_wire(label: &str) -> Option<(MessageType, Option<u32>)> {
    let (name, slot) = match label.strip_suffix(')').and_then(|l| l.split_once('(')) {
        Some((name, slot)) => (name, Some(slot.parse().ok()?)),
        None => (label, None),
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    Some((MessageType::from_name(name)?, slot))
}

/// Rewrites `NAME(01.0)` inside a note as `PCI_NAME 01.0`.
fn polish_note(label: &str) -> String {
    let mut out = String::with_capacity(label.len() + 8);
    for word in label.split(' ') {
        if !out.is_empty() {
            out.push(' ');
        }
        let rewritten = word
            .strip_suffix(')')
            .and_then(|w| w.split_once('('))
            .and_then(|(name, slot)| {
                let ty = MessageType::from_name(name)?;
                Some(format!("{} {slot}", type_name(ty)))
            });
        out.push_str(rewritten.as_deref().unwrap_or(word));
    }
    out.replace(" backed by Device", ": BARs backed by the device")
        .replace(" backed by Shield", ": BARs backed by the relay's shield")
        .replace(" backed by Released", ": BARs released")
}

/// What the relay's tunables were, to explain its holds.
#[derive(Clone, Copy, Debug)]
pub struct RelayTimes {
    /// Quiet time before a function counts as settled.
    pub settle: Duration,
    /// The longest the relay holds a change.
    pub max_hold: Duration,
}

fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms.fract() == 0.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.3} ms")
    }
}

/// Rewrites `trace` in one vocabulary (see the module's description). `relay` gives the
/// relay's tunables for a run through it.
pub fn polish(trace: &mut Trace, scenario: &Scenario, relay: Option<RelayTimes>) {
    // Requests awaiting a completion, per link (requester, responder), in order.
    let mut pending: BTreeMap<(u8, u8), VecDeque<String>> = BTreeMap::new();
    // EJECTs the relay holds, by slot, with when they were held.
    let mut held: BTreeMap<String, Duration> = BTreeMap::new();
    let lane = |l: Lane| l as u8;
    let mut out: Vec<Line> = Vec::with_capacity(trace.lines.len());
    for mut line in std::mem::take(&mut trace.lines) {
        if line.from != line.to {
            if let Some(status_text) = line.label.strip_prefix("completion ") {
                let status_text = u32::from_str_radix(status_text.trim_start_matches("0x"), 16)
                    .map_or_else(|_| status_text.to_owned(), status);
                let request = pending
                    .get_mut(&(lane(line.to), lane(line.from)))
                    .and_then(VecDeque::pop_front);
                line.label = match request {
                    Some(r) => format!("completion of {r}: {status_text}"),
                    None => format!("completion: {status_text}"),
                };
            } else if let Some((ty, slot)) = parse_wire(&line.label) {
                let text = message(ty, slot);
                if vpci_protocol::gets_completion(ty) {
                    pending
                        .entry((lane(line.from), lane(line.to)))
                        .or_default()
                        .push_back(text.clone());
                }
                if ty == MessageType::EJECT && line.from == Lane::Relay {
                    let slot = slot.map(|s| WinSlot::from_raw(s).to_string());
                    if let (Some(since), Some(slot), Some(times)) =
                        (slot.as_ref().and_then(|s| held.remove(s)), slot, relay)
                    {
                        let waited = line.at.saturating_sub(since);
                        let why = if waited >= times.max_hold {
                            format!(
                                "held the longest the relay may ({})",
                                millis(times.max_hold)
                            )
                        } else {
                            format!("{slot} settled after {} quiet", millis(times.settle))
                        };
                        out.push(Line {
                            at: line.at,
                            from: Lane::Relay,
                            to: Lane::Relay,
                            label: format!(
                                "PCI_EJECT {slot} released after {} held: {why}",
                                millis(waited)
                            ),
                            mark: Mark::Held,
                            step: line.step,
                        });
                    }
                }
                line.label = text;
            }
        } else if line.from != Lane::Guest || line.mark == Mark::Crash {
            if let Some(n) = line
                .label
                .strip_prefix("script step ")
                .and_then(|n| n.parse::<usize>().ok())
            {
                line.label = script_step(scenario, n);
            } else {
                line.label = polish_note(&line.label);
            }
            if line.mark == Mark::Held
                && let Some(slot) = line
                    .label
                    .strip_prefix("PCI_EJECT ")
                    .and_then(|l| l.split(' ').next())
            {
                held.entry(slot.to_owned()).or_insert(line.at);
            }
        }
        out.push(line);
    }
    trace.lines = out;
}

/// Script step `index` (from 0) in scenario words: `script step 1 (at 1s, after 10 ms): {
/// kind = "eject", slot = 1 }`. With several buses the step number alone says nothing of its
/// bus, so only a one-bus scenario names the action.
fn script_step(scenario: &Scenario, index: usize) -> String {
    let step = match scenario.buses.as_slice() {
        [bus] => bus.script.steps.get(index),
        _ => None,
    };
    match step {
        Some(s) => {
            let after = if s.after.0.is_zero() {
                String::new()
            } else {
                format!(", after {}", millis(s.after.0))
            };
            format!(
                "script step {} fires ({}{after}): {}",
                index + 1,
                s.when,
                action(&s.action)
            )
        }
        None => format!("script step {} fires", index + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(from: Lane, to: Lane, label: &str, mark: Mark) -> Line {
        Line {
            at: Duration::ZERO,
            from,
            to,
            label: label.to_owned(),
            mark,
            step: 0,
        }
    }

    /// Wire labels get spec names and kernel slot names; completions name their request and
    /// status, per link; a held EJECT's release is explained.
    #[test]
    fn one_vocabulary() {
        let scenario = crate::scenario::load("c2").expect("built in");
        let mut trace = Trace::default();
        trace.lines = vec![
            line(
                Lane::Guest,
                Lane::Relay,
                "QUERY_RESOURCE_REQUIREMENTS(1)",
                Mark::None,
            ),
            line(
                Lane::Relay,
                Lane::Host,
                "QUERY_RESOURCE_REQUIREMENTS(1)",
                Mark::None,
            ),
            line(Lane::Host, Lane::Relay, "completion 0x00000000", Mark::None),
            line(Lane::Host, Lane::Relay, "EJECT(1)", Mark::None),
            line(Lane::Host, Lane::Host, "script step 0", Mark::None),
            line(
                Lane::Relay,
                Lane::Relay,
                "EJECT(01.0) held: not settled",
                Mark::Held,
            ),
            line(
                Lane::Relay,
                Lane::Relay,
                "01.0 backed by Shield",
                Mark::None,
            ),
            line(
                Lane::Relay,
                Lane::Guest,
                "completion 0xc0000001",
                Mark::None,
            ),
            line(Lane::Relay, Lane::Guest, "EJECT(1)", Mark::None),
        ];
        let times = RelayTimes {
            settle: Duration::from_millis(100),
            max_hold: Duration::from_secs(30),
        };
        polish(&mut trace, &scenario, Some(times));
        let labels: Vec<&str> = trace.lines.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(labels[0], "PCI_QUERY_RESOURCE_REQUIREMENTS 01.0");
        assert_eq!(
            labels[2],
            "completion of PCI_QUERY_RESOURCE_REQUIREMENTS 01.0: SUCCESS"
        );
        assert_eq!(labels[3], "PCI_EJECT 01.0");
        assert!(
            labels[4]
                .starts_with("script step 1 fires (received CREATE_INTERRUPT_MESSAGE* for slot 1)"),
            "{}",
            labels[4]
        );
        assert!(
            labels[4].ends_with(r#"{ kind = "eject", slot = 1 }"#),
            "{}",
            labels[4]
        );
        assert_eq!(labels[5], "PCI_EJECT 01.0 held: not settled");
        assert_eq!(labels[6], "01.0: BARs backed by the relay's shield");
        assert_eq!(
            labels[7],
            "completion of PCI_QUERY_RESOURCE_REQUIREMENTS 01.0: UNSUCCESSFUL"
        );
        assert_eq!(
            labels[8],
            "PCI_EJECT 01.0 released after 0 ms held: 01.0 settled after 100 ms quiet"
        );
        assert_eq!(labels[9], "PCI_EJECT 01.0");
    }
}
