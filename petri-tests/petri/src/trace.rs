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
    /// A choice point of the scheduler: what ran, and what else could have (replays print
    /// it; charts leave it out).
    Choice,
    /// A bus's relay was serviced here (replays print it in verbose mode; charts leave it
    /// out).
    Serviced,
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
    /// The scheduler step it happened in (0: before the first step).
    pub step: u64,
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
            Mark::Choice | Mark::Serviced => "",
        };
        if self.mark == Mark::Choice {
            return write!(f, "{:>5}  >> {}", format!("#{}", self.step), self.label);
        }
        let step = format!("#{}", self.step);
        let at = self.at.as_secs_f64() * 1000.0;
        if self.from == self.to {
            write!(
                f,
                "{step:>5} {at:>10.3} ms  {}   {}{mark}",
                lane(self.from),
                self.label
            )
        } else {
            write!(
                f,
                "{step:>5} {at:>10.3} ms  {} -> {}  {}{mark}",
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
    /// The packets that crossed each guest channel, in order, the newest ring's worth per
    /// bus and direction (the ring images `petri replay --dump-rings` writes are built from
    /// them).
    #[serde(skip)]
    pub wire: crate::wire::WireLog,
    /// The scheduler step lines are stamped with.
    #[serde(skip)]
    step: u64,
    /// Choice points so far.
    #[serde(skip)]
    choices: u64,
}

impl Trace {
    /// Records a message or note, stamped with the current step.
    pub fn push(&mut self, at: Duration, from: Lane, to: Lane, label: String, mark: Mark) {
        self.lines.push(Line {
            at,
            from,
            to,
            label,
            mark,
            step: self.step,
        });
    }

    /// Starts scheduler step `step`: later lines are stamped with it.
    pub fn begin_step(&mut self, step: u64) {
        self.step = step;
    }

    /// Records the choice point of the current step: `ran` (the option taken, `index` of
    /// `options`) and every option that could have run instead.
    pub fn choice(&mut self, at: Duration, index: usize, options: &[String]) {
        self.choices += 1;
        let ran = options.get(index).map_or("?", String::as_str);
        let others: Vec<&str> = options
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, o)| o.as_str())
            .collect();
        let label = format!(
            "choice {}: ran {ran}; could have run: {}",
            self.choices,
            others.join(", ")
        );
        self.push(at, Lane::Guest, Lane::Guest, label, Mark::Choice);
    }
}
