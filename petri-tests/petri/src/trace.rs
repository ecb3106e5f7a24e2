//! What a run records: every message between the lanes (host, relay, guest), what the relay
//! did with it, each guest step, and how the run ended. Charts and replays read it.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// A lane of the message sequence chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// The simulated host (host_sim).
    Host,
    /// The relay (absent in a direct run).
    Relay,
    /// The guest model.
    Guest,
}

/// Something worth marking on a chart line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    /// Nothing special.
    None,
    /// The relay held a change (an eject or relations).
    Held,
    /// The relay coalesced a function the guest never saw.
    Coalesced,
    /// The relay answered a request itself.
    Local,
    /// The guest failed here.
    Crash,
}

/// One line of the trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Line {
    /// Virtual time.
    #[serde(serialize_with = "as_micros")]
    pub at: Duration,
    /// Where it starts.
    pub from: Lane,
    /// Where it ends (the same lane for a note).
    pub to: Lane,
    /// What it says.
    pub label: String,
    /// What to mark.
    pub mark: Mark,
}

fn as_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lane = |l: Lane| match l {
            Lane::Host => "host ",
            Lane::Relay => "relay",
            Lane::Guest => "guest",
        };
        let mark = match self.mark {
            Mark::None => "",
            Mark::Held => " [held]",
            Mark::Coalesced => " [coalesced]",
            Mark::Local => " [answered locally]",
            Mark::Crash => " [CRASH]",
        };
        let at = self.at.as_secs_f64() * 1000.0;
        if self.from == self.to {
            write!(
                f,
                "{at:>10.3} ms  {}   {}{mark}",
                lane(self.from),
                self.label
            )
        } else {
            write!(
                f,
                "{at:>10.3} ms  {} -> {}  {}{mark}",
                lane(self.from),
                lane(self.to),
                self.label
            )
        }
    }
}

/// The recorded lines of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Trace {
    /// In order.
    pub lines: Vec<Line>,
}

impl Trace {
    /// Records a message or note.
    pub fn push(&mut self, at: Duration, from: Lane, to: Lane, label: String, mark: Mark) {
        self.lines.push(Line {
            at,
            from,
            to,
            label,
            mark,
        });
    }
}
