//! Scripts: host actions with triggers (a virtual time or a milestone on the wire), and rules
//! for how the host answers given messages (late, never, twice, malformed).
//!
//! Every type here deserializes (serde), so a scenario file can embed a script:
//!
//! ```
//! let script: host_sim::Script = serde_json::from_str(r#"{
//!   "steps": [
//!     {"when": {"received": {"message": "QUERY_RESOURCE_REQUIREMENTS", "slot": 1}},
//!      "action": {"kind": "eject", "slot": 1}},
//!     {"when": {"at": "2s"}, "action": {"kind": "send_relations"}},
//!     {"when": {"eject_sent": {"slot": 1}}, "after": "1ms",
//!      "action": {"kind": "reserial", "slot": 1, "serial": 99}}
//!   ],
//!   "responses": [
//!     {"message": "CREATE_INTERRUPT_MESSAGE2", "response": {"delay": "5ms"}},
//!     {"message": "BUS_D0ENTRY", "response": "never"}
//!   ]
//! }"#).unwrap();
//! assert_eq!(script.steps.len(), 3);
//! ```

use crate::action::HostAction;
use crate::serde_util::{MessagePattern, Time, family_of};
use serde::de::{self, MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use vpci_protocol::{MessageType, WinSlot};

/// Host actions with triggers, and response rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Script {
    /// Each step fires at most once, when its trigger is met (plus its `after`).
    pub steps: Vec<ScriptStep>,
    /// How the host answers matching guest messages; the first matching rule applies.
    pub responses: Vec<ResponseRule>,
}

/// One host action and what sets it off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptStep {
    /// What sets the step off.
    pub when: Trigger,
    /// Virtual time between the trigger and the action (default: none, the action runs
    /// before the host looks at anything else).
    #[serde(default)]
    pub after: Time,
    /// What the host does.
    pub action: HostAction,
    /// Whether the step may legitimately never fire (its trigger need not happen on every
    /// guest). A step that is not optional and never fires in any schedule of a run set makes
    /// petri report the run set as a failure of the scenario.
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What sets a script step off.
///
/// In a scenario file a table with exactly one key (`{ at = "1s" }`, `{ received = { message =
/// "CREATE_INTERRUPT_MESSAGE*", slot = 1 } }`, `{ eject_sent = { slot = 1 } }`), or the string
/// `"negotiated"`; any other key is refused by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A virtual time.
    At(Time),
    /// The guest has sent a message (after the host has handled it and queued its answer).
    Received(MessageMatch),
    /// The host's answer to a message (its completion, or for QUERY_BUS_RELATIONS its
    /// relations) has left, after any delay.
    Answered(MessageMatch),
    /// An EJECT for the slot has been sent (the eject is outstanding).
    EjectSent {
        /// The slot (raw wslot).
        slot: u32,
    },
    /// The guest has completed the eject of the slot.
    EjectionCompleted {
        /// The slot (raw wslot).
        slot: u32,
    },
    /// A protocol version has been agreed.
    Negotiated,
}

/// The keys a trigger table may have.
const TRIGGER_KEYS: &[&str] = &[
    "at",
    "received",
    "answered",
    "eject_sent",
    "ejection_completed",
    "negotiated",
];

/// A trigger as a table: every key optional, unknown keys refused by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerTable {
    at: Option<Time>,
    received: Option<MessageMatch>,
    answered: Option<MessageMatch>,
    eject_sent: Option<SlotOnly>,
    ejection_completed: Option<SlotOnly>,
    negotiated: Option<Empty>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotOnly {
    slot: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// Exactly one of `options` must be given; `Err` names what was (or that none was).
fn exactly_one<T, E: de::Error>(
    what: &str,
    keys: &[&str],
    options: Vec<Option<T>>,
) -> Result<T, E> {
    let given: Vec<&str> = keys
        .iter()
        .zip(&options)
        .filter(|(_, o)| o.is_some())
        .map(|(k, _)| *k)
        .collect();
    if given.len() > 1 {
        return Err(E::custom(format!(
            "{what} takes exactly one of {}; this one has {}",
            keys.join(", "),
            given.join(" and ")
        )));
    }
    options
        .into_iter()
        .flatten()
        .next()
        .ok_or_else(|| E::custom(format!("{what} needs one of {}", keys.join(", "))))
}

impl<'de> Deserialize<'de> for Trigger {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Trigger;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a trigger: a table with one of at, received, answered, eject_sent, ejection_completed, negotiated")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Trigger, E> {
                match v {
                    "negotiated" => Ok(Trigger::Negotiated),
                    _ => Err(E::custom(format!(
                        "unknown trigger {v:?}: a trigger is \"negotiated\" or a table with one \
                         of {}",
                        TRIGGER_KEYS.join(", ")
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Trigger, A::Error> {
                let t = TriggerTable::deserialize(MapAccessDeserializer::new(map))?;
                exactly_one(
                    "a trigger",
                    TRIGGER_KEYS,
                    vec![
                        t.at.map(Trigger::At),
                        t.received.map(Trigger::Received),
                        t.answered.map(Trigger::Answered),
                        t.eject_sent.map(|s| Trigger::EjectSent { slot: s.slot }),
                        t.ejection_completed
                            .map(|s| Trigger::EjectionCompleted { slot: s.slot }),
                        t.negotiated.map(|_| Trigger::Negotiated),
                    ],
                )
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for Trigger {
    /// In scenario words: `received CREATE_INTERRUPT_MESSAGE* for slot 1`, `at 1000ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::At(t) => write!(f, "at {t}"),
            Trigger::Received(m) => write!(f, "received {m}"),
            Trigger::Answered(m) => write!(f, "answered {m}"),
            Trigger::EjectSent { slot } => write!(f, "eject_sent for slot {slot}"),
            Trigger::EjectionCompleted { slot } => {
                write!(f, "ejection_completed for slot {slot}")
            }
            Trigger::Negotiated => f.write_str("negotiated"),
        }
    }
}

/// Which message of a type (or of a family of types) a trigger or a rule means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageMatch {
    /// The message type, or a family (`"CREATE_INTERRUPT_MESSAGE*"`).
    pub message: MessagePattern,
    /// Only messages for this slot (raw wslot), if given.
    #[serde(default)]
    pub slot: Option<u32>,
    /// The n-th such message (counting from 1; per slot when `slot` is given; a family's
    /// members count together). Default 1.
    #[serde(default = "one")]
    pub nth: u32,
}

fn one() -> u32 {
    1
}

impl MessageMatch {
    /// The first message of `message` (for `slot`, if given).
    pub fn first(message: MessageType, slot: Option<u32>) -> Self {
        Self {
            message: MessagePattern::One(message),
            slot,
            nth: 1,
        }
    }
}

impl fmt::Display for MessageMatch {
    /// `CREATE_INTERRUPT_MESSAGE* for slot 1`, `QUERY_BUS_RELATIONS (#2)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(slot) = self.slot {
            write!(f, " for slot {slot}")?;
        }
        if self.nth != 1 {
            write!(f, " (#{})", self.nth)?;
        }
        Ok(())
    }
}

/// How the host answers the guest messages a rule matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRule {
    /// The message type, or a family (`"CREATE_INTERRUPT_MESSAGE*"`).
    pub message: MessagePattern,
    /// Only messages for this slot (raw wslot), if given.
    #[serde(default)]
    pub slot: Option<u32>,
    /// Only the n-th such message (per slot when `slot` is given; a family's members count
    /// together); every one if not given.
    #[serde(default)]
    pub nth: Option<u32>,
    /// What the host does instead of answering at once.
    pub response: Response,
}

/// A way of answering other than at once and correctly.
///
/// In a scenario file `"never"`, `"duplicate"`, `"unknown_transaction_id"`, or a table with
/// exactly one key: `{ delay = "5ms" }`, `{ truncate = 2 }`, `{ extend = 8 }`, `{ status =
/// 0xC0000001 }`; any other key is refused by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Everything the message makes the host send leaves this much later.
    Delay(Time),
    /// The host never answers (its state changes all the same).
    Never,
    /// The completion is sent twice (a message without one: its answer is sent twice).
    Duplicate,
    /// The completion is cut to this many bytes.
    Truncate(usize),
    /// The completion gets this many extra zero bytes.
    Extend(usize),
    /// The completion carries only this status.
    Status(u32),
    /// The completion carries a transaction id the guest never used.
    UnknownTransactionId,
}

const RESPONSE_KEYS: &[&str] = &["delay", "truncate", "extend", "status"];
const RESPONSE_NAMES: &[&str] = &["never", "duplicate", "unknown_transaction_id"];

/// A response as a table: every key optional, unknown keys refused by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseTable {
    delay: Option<Time>,
    truncate: Option<usize>,
    extend: Option<usize>,
    status: Option<u32>,
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Response;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a response: \"never\", \"duplicate\", \"unknown_transaction_id\" or a table with one of delay, truncate, extend, status")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Response, E> {
                match v {
                    "never" => Ok(Response::Never),
                    "duplicate" => Ok(Response::Duplicate),
                    "unknown_transaction_id" => Ok(Response::UnknownTransactionId),
                    _ => Err(E::custom(format!(
                        "unknown response {v:?}: expected {} or a table with one of {}",
                        RESPONSE_NAMES.join(", "),
                        RESPONSE_KEYS.join(", ")
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Response, A::Error> {
                let t = ResponseTable::deserialize(MapAccessDeserializer::new(map))?;
                exactly_one(
                    "a response",
                    RESPONSE_KEYS,
                    vec![
                        t.delay.map(Response::Delay),
                        t.truncate.map(Response::Truncate),
                        t.extend.map(Response::Extend),
                        t.status.map(Response::Status),
                    ],
                )
            }
        }
        d.deserialize_any(V)
    }
}

/// Something the bus saw happen, which script steps may wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Observation {
    Received {
        message: MessageType,
        slot: Option<WinSlot>,
        nth: Nth,
    },
    Answered {
        message: MessageType,
        slot: Option<WinSlot>,
        nth: Nth,
    },
    EjectSent(WinSlot),
    EjectionCompleted(WinSlot),
    Negotiated,
}

/// Which one of its kind a message is: of its type and of its family, overall and for its slot
/// (counting from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Nth {
    of_type: u32,
    of_type_for_slot: u32,
    of_family: u32,
    of_family_for_slot: u32,
}

impl Nth {
    /// (overall, for its slot) as a pattern counts.
    fn for_pattern(self, pattern: MessagePattern) -> (u32, u32) {
        match pattern {
            MessagePattern::One(_) => (self.of_type, self.of_type_for_slot),
            MessagePattern::Family(_) => (self.of_family, self.of_family_for_slot),
        }
    }
}

fn matches(m: &MessageMatch, message: MessageType, slot: Option<WinSlot>, nth: Nth) -> bool {
    let n = nth.for_pattern(m.message);
    m.message.matches(message)
        && match m.slot {
            None => n.0 == m.nth,
            Some(s) => slot.map(WinSlot::raw) == Some(s) && n.1 == m.nth,
        }
}

impl Trigger {
    fn matches(&self, obs: &Observation) -> bool {
        match (self, obs) {
            (Trigger::Received(m), Observation::Received { message, slot, nth })
            | (Trigger::Answered(m), Observation::Answered { message, slot, nth }) => {
                matches(m, *message, *slot, *nth)
            }
            (Trigger::EjectSent { slot }, Observation::EjectSent(s))
            | (Trigger::EjectionCompleted { slot }, Observation::EjectionCompleted(s)) => {
                s.raw() == *slot
            }
            (Trigger::Negotiated, Observation::Negotiated) => true,
            _ => false,
        }
    }
}

/// Counts messages per type and per (type, slot), and the same per family, for `nth`
/// matching.
#[derive(Debug, Default)]
struct Counter {
    /// Keyed by (is a family count, type or family, slot).
    counts: BTreeMap<(bool, u32, Option<u32>), u32>,
}

impl Counter {
    /// Counts one more and returns which one it is of its type and of its family.
    fn count(&mut self, message: MessageType, slot: Option<WinSlot>) -> Nth {
        let mut bump = |family: bool| {
            let key = if family { family_of(message) } else { message };
            let mut one = |slot| {
                let n = self.counts.entry((family, key.0, slot)).or_insert(0);
                *n = n.saturating_add(1);
                *n
            };
            let overall = one(None);
            let for_slot = match slot {
                Some(s) => one(Some(WinSlot::raw(s))),
                None => overall,
            };
            (overall, for_slot)
        };
        let (of_type, of_type_for_slot) = bump(false);
        let (of_family, of_family_for_slot) = bump(true);
        Nth {
            of_type,
            of_type_for_slot,
            of_family,
            of_family_for_slot,
        }
    }
}

/// A script being run: which steps have fired, which are scheduled, what has been counted.
#[derive(Debug, Default)]
pub(crate) struct ScriptRunner {
    steps: Vec<ScriptStep>,
    /// Steps whose trigger was met (or that can no longer fire: the bus has ended).
    fired: Vec<bool>,
    /// Steps whose action ran (successfully or not).
    ran: Vec<bool>,
    /// Steps whose trigger was met, waiting for their `after`: (due, step).
    scheduled: Vec<(Duration, usize)>,
    rules: Vec<ResponseRule>,
    received: Counter,
    answered: Counter,
}

impl ScriptRunner {
    pub(crate) fn new(script: Script) -> Self {
        let fired = vec![false; script.steps.len()];
        Self {
            ran: fired.clone(),
            steps: script.steps,
            fired,
            scheduled: Vec::new(),
            rules: script.responses,
            received: Counter::default(),
            answered: Counter::default(),
        }
    }

    /// Counts a received message and returns its observation.
    pub(crate) fn received(&mut self, message: MessageType, slot: Option<WinSlot>) -> Observation {
        let nth = self.received.count(message, slot);
        Observation::Received { message, slot, nth }
    }

    /// Counts an answer that left and returns its observation.
    pub(crate) fn answered(&mut self, message: MessageType, slot: Option<WinSlot>) -> Observation {
        let nth = self.answered.count(message, slot);
        Observation::Answered { message, slot, nth }
    }

    /// The response rule for a received message, if one matches.
    pub(crate) fn rule_for(&self, obs: &Observation) -> Option<Response> {
        let Observation::Received { message, slot, nth } = *obs else {
            return None;
        };
        self.rules
            .iter()
            .find(|r| {
                let (nth_overall, nth_for_slot) = nth.for_pattern(r.message);
                r.message.matches(message)
                    && match (r.slot, r.nth) {
                        (None, None) => true,
                        (None, Some(n)) => nth_overall == n,
                        (Some(s), n) => {
                            slot.map(WinSlot::raw) == Some(s) && n.is_none_or(|n| nth_for_slot == n)
                        }
                    }
            })
            .map(|r| r.response)
    }

    /// Marks the steps `obs` sets off as fired; returns those due now and schedules the rest.
    pub(crate) fn observe(&mut self, obs: &Observation, now: Duration) -> Vec<usize> {
        let mut now_due = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            let fired = self.fired.get(i).copied().unwrap_or(true);
            if fired || !step.when.matches(obs) {
                continue;
            }
            if let Some(f) = self.fired.get_mut(i) {
                *f = true;
            }
            if step.after.0.is_zero() {
                now_due.push(i);
            } else {
                self.scheduled.push((now.saturating_add(step.after.0), i));
            }
        }
        now_due
    }

    /// The earliest time a step is due.
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        let timed = self
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.when {
                Trigger::At(t) if !self.fired.get(i).copied().unwrap_or(true) => {
                    Some(t.0.saturating_add(s.after.0))
                }
                _ => None,
            });
        timed.chain(self.scheduled.iter().map(|(d, _)| *d)).min()
    }

    /// Takes the earliest step due at or before `now`: (due time, step index).
    pub(crate) fn take_due(&mut self, now: Duration) -> Option<(Duration, usize)> {
        let timed = self
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.when {
                Trigger::At(t) if !self.fired.get(i).copied().unwrap_or(true) => {
                    Some((t.0.saturating_add(s.after.0), i, None))
                }
                _ => None,
            });
        let scheduled = self
            .scheduled
            .iter()
            .enumerate()
            .map(|(k, (d, i))| (*d, *i, Some(k)));
        let (due, step, k) = timed.chain(scheduled).filter(|(d, ..)| *d <= now).min()?;
        match k {
            Some(k) => {
                self.scheduled.remove(k);
            }
            None => {
                if let Some(f) = self.fired.get_mut(step) {
                    *f = true;
                }
            }
        }
        Some((due, step))
    }

    /// The action of step `i`, which is about to run (so it counts as fired).
    pub(crate) fn action(&mut self, i: usize) -> Option<HostAction> {
        if let Some(r) = self.ran.get_mut(i) {
            *r = true;
        }
        self.steps.get(i).map(|s| s.action.clone())
    }

    /// Whether each step has fired: its trigger was met and its action ran (successfully
    /// or not), in script order.
    pub(crate) fn steps_fired(&self) -> &[bool] {
        &self.ran
    }

    /// Forgets every pending step (the bus has ended).
    pub(crate) fn stop(&mut self) {
        self.scheduled.clear();
        self.fired.iter_mut().for_each(|f| *f = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(when: Trigger, after_ms: u64) -> ScriptStep {
        ScriptStep {
            when,
            after: Time(Duration::from_millis(after_ms)),
            action: HostAction::SendRelations {},
            optional: false,
        }
    }

    /// A milestone trigger fires once, on the n-th matching message for its slot.
    #[test]
    fn milestone_fires_once_on_nth() {
        let mut r = ScriptRunner::new(Script {
            steps: vec![step(
                Trigger::Received(MessageMatch {
                    message: MessagePattern::One(MessageType::QUERY_RESOURCE_REQUIREMENTS),
                    slot: Some(2),
                    nth: 2,
                }),
                0,
            )],
            responses: vec![],
        });
        let qrr = MessageType::QUERY_RESOURCE_REQUIREMENTS;
        let s1 = Some(WinSlot::new(1, 0));
        let s2 = Some(WinSlot::new(2, 0));
        let obs = r.received(qrr, s2);
        assert!(
            r.observe(&obs, Duration::ZERO).is_empty(),
            "first for slot 2"
        );
        let obs = r.received(qrr, s1);
        assert!(r.observe(&obs, Duration::ZERO).is_empty(), "other slot");
        let obs = r.received(qrr, s2);
        assert_eq!(r.observe(&obs, Duration::ZERO), [0]);
        let obs = r.received(qrr, s2);
        assert!(r.observe(&obs, Duration::ZERO).is_empty(), "fires once");
    }

    /// Timed steps and delayed milestone steps come due in time order.
    #[test]
    fn timed_steps_come_due_in_order() {
        let ms = Duration::from_millis;
        let mut r = ScriptRunner::new(Script {
            steps: vec![
                step(Trigger::At(Time(ms(10))), 5),
                step(Trigger::Negotiated, 3),
            ],
            responses: vec![],
        });
        assert_eq!(r.next_deadline(), Some(ms(15)));
        assert!(r.observe(&Observation::Negotiated, ms(1)).is_empty());
        assert_eq!(r.next_deadline(), Some(ms(4)));
        assert_eq!(r.take_due(ms(3)), None);
        assert_eq!(r.take_due(ms(20)), Some((ms(4), 1)));
        assert_eq!(r.take_due(ms(20)), Some((ms(15), 0)));
        assert_eq!(r.take_due(ms(20)), None);
        assert_eq!(r.next_deadline(), None);
    }

    /// The first matching response rule wins; `nth` and `slot` narrow it.
    #[test]
    fn response_rules_match_first() {
        let mut r = ScriptRunner::new(Script {
            steps: vec![],
            responses: vec![
                ResponseRule {
                    message: MessagePattern::One(MessageType::CREATE_INTERRUPT_MESSAGE2),
                    slot: Some(1),
                    nth: Some(2),
                    response: Response::Never,
                },
                ResponseRule {
                    message: MessagePattern::One(MessageType::CREATE_INTERRUPT_MESSAGE2),
                    slot: None,
                    nth: None,
                    response: Response::Duplicate,
                },
            ],
        });
        let t = MessageType::CREATE_INTERRUPT_MESSAGE2;
        let s1 = Some(WinSlot::new(1, 0));
        let o = r.received(t, s1);
        assert_eq!(r.rule_for(&o), Some(Response::Duplicate));
        let o = r.received(t, s1);
        assert_eq!(r.rule_for(&o), Some(Response::Never));
        let o = r.received(MessageType::BUS_D0ENTRY, None);
        assert_eq!(r.rule_for(&o), None);
    }
}
