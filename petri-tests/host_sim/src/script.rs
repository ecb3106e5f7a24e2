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
use crate::serde_util::{MessageName, Time};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
}

/// What sets a script step off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// Which message of a type a trigger or a rule means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageMatch {
    /// The message type.
    pub message: MessageName,
    /// Only messages for this slot (raw wslot), if given.
    #[serde(default)]
    pub slot: Option<u32>,
    /// The n-th such message (counting from 1; per slot when `slot` is given). Default 1.
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
            message: MessageName(message),
            slot,
            nth: 1,
        }
    }
}

/// How the host answers the guest messages a rule matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRule {
    /// The message type.
    pub message: MessageName,
    /// Only messages for this slot (raw wslot), if given.
    #[serde(default)]
    pub slot: Option<u32>,
    /// Only the n-th such message (per slot when `slot` is given); every one if not given.
    #[serde(default)]
    pub nth: Option<u32>,
    /// What the host does instead of answering at once.
    pub response: Response,
}

/// A way of answering other than at once and correctly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// Something the bus saw happen, which script steps may wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Observation {
    Received {
        message: MessageType,
        slot: Option<WinSlot>,
        nth_of_type: u32,
        nth_for_slot: u32,
    },
    Answered {
        message: MessageType,
        slot: Option<WinSlot>,
        nth_of_type: u32,
        nth_for_slot: u32,
    },
    EjectSent(WinSlot),
    EjectionCompleted(WinSlot),
    Negotiated,
}

fn matches(m: &MessageMatch, message: MessageType, slot: Option<WinSlot>, n: (u32, u32)) -> bool {
    m.message.0 == message
        && match m.slot {
            None => n.0 == m.nth,
            Some(s) => slot.map(WinSlot::raw) == Some(s) && n.1 == m.nth,
        }
}

impl Trigger {
    fn matches(&self, obs: &Observation) -> bool {
        match (self, obs) {
            (
                Trigger::Received(m),
                Observation::Received {
                    message,
                    slot,
                    nth_of_type,
                    nth_for_slot,
                },
            )
            | (
                Trigger::Answered(m),
                Observation::Answered {
                    message,
                    slot,
                    nth_of_type,
                    nth_for_slot,
                },
            ) => matches(m, *message, *slot, (*nth_of_type, *nth_for_slot)),
            (Trigger::EjectSent { slot }, Observation::EjectSent(s))
            | (Trigger::EjectionCompleted { slot }, Observation::EjectionCompleted(s)) => {
                s.raw() == *slot
            }
            (Trigger::Negotiated, Observation::Negotiated) => true,
            _ => false,
        }
    }
}

/// Counts messages per type and per (type, slot), for `nth` matching.
#[derive(Debug, Default)]
struct Counter {
    counts: BTreeMap<(u32, Option<u32>), u32>,
}

impl Counter {
    /// Counts one more and returns (n-th of its type, n-th of its type for its slot).
    fn count(&mut self, message: MessageType, slot: Option<WinSlot>) -> (u32, u32) {
        let mut bump = |key| {
            let n = self.counts.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let of_type = bump((message.0, None));
        let for_slot = match slot {
            Some(s) => bump((message.0, Some(s.raw()))),
            None => of_type,
        };
        (of_type, for_slot)
    }
}

/// A script being run: which steps have fired, which are scheduled, what has been counted.
#[derive(Debug, Default)]
pub(crate) struct ScriptRunner {
    steps: Vec<ScriptStep>,
    fired: Vec<bool>,
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
        let (nth_of_type, nth_for_slot) = self.received.count(message, slot);
        Observation::Received {
            message,
            slot,
            nth_of_type,
            nth_for_slot,
        }
    }

    /// Counts an answer that left and returns its observation.
    pub(crate) fn answered(&mut self, message: MessageType, slot: Option<WinSlot>) -> Observation {
        let (nth_of_type, nth_for_slot) = self.answered.count(message, slot);
        Observation::Answered {
            message,
            slot,
            nth_of_type,
            nth_for_slot,
        }
    }

    /// The response rule for a received message, if one matches.
    pub(crate) fn rule_for(&self, obs: &Observation) -> Option<Response> {
        let Observation::Received {
            message,
            slot,
            nth_of_type,
            nth_for_slot,
        } = *obs
        else {
            return None;
        };
        self.rules
            .iter()
            .find(|r| {
                r.message.0 == message
                    && match (r.slot, r.nth) {
                        (None, None) => true,
                        (None, Some(n)) => nth_of_type == n,
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

    /// The action of step `i`.
    pub(crate) fn action(&self, i: usize) -> Option<HostAction> {
        self.steps.get(i).map(|s| s.action.clone())
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
            action: HostAction::SendRelations,
        }
    }

    /// A milestone trigger fires once, on the n-th matching message for its slot.
    #[test]
    fn milestone_fires_once_on_nth() {
        let mut r = ScriptRunner::new(Script {
            steps: vec![step(
                Trigger::Received(MessageMatch {
                    message: MessageName(MessageType::QUERY_RESOURCE_REQUIREMENTS),
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
                    message: MessageName(MessageType::CREATE_INTERRUPT_MESSAGE2),
                    slot: Some(1),
                    nth: Some(2),
                    response: Response::Never,
                },
                ResponseRule {
                    message: MessageName(MessageType::CREATE_INTERRUPT_MESSAGE2),
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
