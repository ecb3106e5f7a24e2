//! Choosing who runs next: the only source of nondeterminism in a VM run.
//!
//! A run asks its [`Chooser`] whenever more than one guest context can take a step. A seeded
//! chooser makes those choices from a ChaCha8 stream (stable across platforms and crate
//! versions), so a seed names one interleaving and replays it exactly. A systematic chooser
//! walks the tree of choices depth first, one schedule per run, so that small scenarios can be
//! explored exhaustively within a bound.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// One choice made during a run: option `index` of `of`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The option taken.
    pub index: usize,
    /// How many options there were.
    pub of: usize,
}

/// How a run's choices are made.
#[derive(Clone, Debug)]
pub enum Chooser {
    /// From a seeded random stream. With probability one half the context that ran last runs
    /// again when it still can (long uninterrupted runs and sudden preemptions both occur);
    /// otherwise the pick is uniform among the runnable contexts.
    Seeded {
        /// The stream.
        rng: Box<ChaCha8Rng>,
        /// The option index taken last, if any.
        last: Option<usize>,
    },
    /// A fixed prefix of choices, then the default: the context that ran last runs on if it
    /// can, else the first option (the systematic explorer's way of naming one schedule).
    Prefix {
        /// The choices to make first.
        prefix: Vec<usize>,
        /// How many have been used.
        used: usize,
    },
}

impl Chooser {
    /// A seeded chooser.
    pub fn seeded(seed: u64) -> Self {
        Self::Seeded {
            rng: Box::new(ChaCha8Rng::seed_from_u64(seed)),
            last: None,
        }
    }

    /// A chooser that makes `prefix` first, then the default choice each time.
    pub fn prefix(prefix: Vec<usize>) -> Self {
        Self::Prefix { prefix, used: 0 }
    }

    /// Picks one of `of` options (`of` >= 2). `sticky` is the option that would let the
    /// context that ran last run again, if it can.
    pub fn choose(&mut self, of: usize, sticky: Option<usize>) -> usize {
        match self {
            Self::Seeded { rng, last } => {
                let stay = sticky.filter(|_| rng.next_u32() & 1 == 0);
                let index = stay.unwrap_or_else(|| bounded(rng, of));
                *last = Some(index);
                index
            }
            Self::Prefix { prefix, used } => {
                let default = sticky.unwrap_or(0);
                let index = prefix.get(*used).copied().unwrap_or(default).min(of - 1);
                *used += 1;
                index
            }
        }
    }
}

/// A uniform index below `of` (rejection sampling, so no option is favoured).
fn bounded(rng: &mut ChaCha8Rng, of: usize) -> usize {
    let of = of.max(1) as u64;
    let zone = u64::MAX - u64::MAX % of;
    loop {
        let x = rng.next_u64();
        if x < zone {
            return (x % of) as usize;
        }
    }
}

/// Systematic enumeration of schedules by how far they deviate from the default one (the
/// context that ran last runs on): first the default schedule, then every schedule with one
/// deviation (at any choice point, any other option), then two, and so on (iterative
/// deviation bounding: most concurrency bugs need only a few preemptions, so they are found
/// early). Each call to [`Systematic::next_prefix`] gives the prefix of the next schedule;
/// [`Systematic::record`] gives back the choices that run made.
#[derive(Clone, Debug, Default)]
pub struct Systematic {
    started: bool,
    /// Prefixes to run, with their number of deviations, breadth first.
    queue: std::collections::VecDeque<(Vec<usize>, usize)>,
    /// The prefix of the run in progress.
    current: Option<(Vec<usize>, usize)>,
    /// The most prefixes kept waiting.
    max_queued: usize,
    /// Whether a schedule was left out because the queue was full.
    dropped: bool,
}

impl Systematic {
    /// A fresh explorer that keeps at most `max_queued` schedules waiting.
    pub fn new(max_queued: usize) -> Self {
        Self {
            max_queued,
            ..Self::default()
        }
    }

    /// The prefix for the next run, or `None` once every schedule has been run.
    pub fn next_prefix(&mut self) -> Option<Vec<usize>> {
        if !self.started {
            self.started = true;
            self.current = Some((Vec::new(), 0));
            return Some(Vec::new());
        }
        let next = self.queue.pop_front()?;
        self.current = Some(next.clone());
        Some(next.0)
    }

    /// Whether every schedule of the choice tree has been run: nothing waits and nothing was
    /// left out.
    pub fn exhausted(&self) -> bool {
        self.started && self.current.is_none() && self.queue.is_empty() && !self.dropped
    }

    /// Records the choices the run for the last prefix made: every choice point after its
    /// prefix, with every option it did not take, becomes a schedule with one deviation more.
    pub fn record(&mut self, choices: &[Choice]) {
        let Some((prefix, deviations)) = self.current.take() else {
            return;
        };
        for (j, c) in choices.iter().enumerate().skip(prefix.len()) {
            for alternative in (0..c.of).filter(|&a| a != c.index) {
                if self.queue.len() >= self.max_queued {
                    self.dropped = true;
                    return;
                }
                let mut next: Vec<usize> = choices.iter().take(j).map(|c| c.index).collect();
                next.push(alternative);
                self.queue.push_back((next, deviations + 1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same seed makes the same choices.
    #[test]
    fn seeds_replay() {
        let picks = |seed| {
            let mut c = Chooser::seeded(seed);
            (0..64)
                .map(|i| c.choose(3, Some(i % 3)))
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(7), picks(7));
        assert_ne!(picks(7), picks(8));
    }

    /// The systematic explorer visits every leaf of a choice tree exactly once.
    #[test]
    fn systematic_visits_every_schedule() {
        // A tree with two choice points of 2 and 3 options: 6 schedules.
        let mut s = Systematic::new(100);
        let mut seen = Vec::new();
        while let Some(prefix) = s.next_prefix() {
            let mut chooser = Chooser::prefix(prefix);
            let a = chooser.choose(2, None);
            let b = chooser.choose(3, None);
            seen.push((a, b));
            s.record(&[Choice { index: a, of: 2 }, Choice { index: b, of: 3 }]);
        }
        assert_eq!(seen.len(), 6, "{seen:?}");
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 6, "each once");
        // The default schedule first, then those with one deviation.
        let mut s = Systematic::new(100);
        assert_eq!(s.next_prefix(), Some(vec![]));
    }
}
