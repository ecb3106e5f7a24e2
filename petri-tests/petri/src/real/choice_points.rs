//! A real guest's scheduling points in a replay's words: where each kernel context stands
//! when it gives up the baton (the shim call it is in, what that call does to the schedule,
//! and the driver function that made it, from the callers the guest reports with each
//! point), so that a choice point can say what ran and what else could have run.

use kernel_shim::forensics::{Location, Origin, Symbolizer, frame_text};
use kernel_shim::guest::Sched;
use kernel_shim::protocol::SchedPoint;
use std::collections::BTreeMap;
use std::path::Path;

/// Where a context last offered the baton.
#[derive(Clone, Debug)]
struct Site {
    point: SchedPoint,
    callers: Vec<u64>,
    last_call: String,
}

/// Where each guest context stands, and the symbolizer that names it.
#[derive(Debug, Default)]
pub(crate) struct ChoicePoints {
    /// Names code addresses (only while recording a trace: symbolising costs a process).
    symbolizer: Option<Symbolizer>,
    /// Each context's last scheduling point.
    at: BTreeMap<u32, Site>,
}

/// What a scheduling point does to the schedule.
fn point_text(point: SchedPoint) -> &'static str {
    match point {
        SchedPoint::Start => "starts",
        SchedPoint::Idle => "waits for work",
        SchedPoint::SpinLock => "lock (spin_lock)",
        SchedPoint::SpinUnlock => "unlock (spin_unlock)",
        SchedPoint::MutexLock => "lock (mutex_lock)",
        SchedPoint::MutexUnlock => "unlock (mutex_unlock)",
        SchedPoint::Complete => "wake (complete)",
        SchedPoint::Wait => "wait (wait_for_completion)",
        SchedPoint::TaskletDisable => "tasklet_disable",
        SchedPoint::TaskletEnable => "tasklet_enable",
        SchedPoint::QueueWork => "queue_work",
        SchedPoint::Flush => "flush_workqueue",
        SchedPoint::Send => "vmbus send",
        SchedPoint::Recv => "vmbus receive",
        SchedPoint::Udelay => "busy-poll (udelay)",
        SchedPoint::Mmio => "MMIO/config access",
        SchedPoint::Hypercall => "hypercall",
        SchedPoint::Alloc => "kmalloc",
        SchedPoint::Other(_) => "scheduling point",
    }
}

impl ChoicePoints {
    /// Choice points named from `exe`'s symbols (a recorded run), or by scheduling point and
    /// shim call only (None).
    pub(crate) fn new(exe: Option<&Path>) -> Self {
        Self {
            symbolizer: exe.map(Symbolizer::new),
            at: BTreeMap::new(),
        }
    }

    /// The guest's context `sched.current` offers the baton here.
    pub(crate) fn offered(&mut self, sched: &Sched) {
        if self.symbolizer.is_none() {
            return;
        }
        self.at.insert(
            sched.current,
            Site {
                point: sched.point,
                callers: sched.callers.clone(),
                last_call: sched.last_call.clone(),
            },
        );
    }

    /// Where context `ctx` stands: `wait (wait_for_completion) in hv_pci_query_relations
    /// pci-hyperv.c:2970`; empty when unknown.
    pub(crate) fn doing(&mut self, ctx: u32) -> String {
        let Self { symbolizer, at } = self;
        let Some(site) = at.get(&ctx) else {
            // Recording, and the context never offered the baton: it has yet to start.
            return if symbolizer.is_some() {
                "starts".to_owned()
            } else {
                String::new()
            };
        };
        let what = point_text(site.point);
        let Some(symbolizer) = symbolizer.as_mut() else {
            return what.to_owned();
        };
        // Return addresses: the call is the instruction before.
        let addrs: Vec<u64> = site.callers.iter().map(|a| a.saturating_sub(1)).collect();
        symbolizer.resolve(addrs.iter().copied());
        let mut frames: Vec<Location> = addrs
            .iter()
            .flat_map(|&a| symbolizer.frames(a).to_vec())
            .collect();
        // The scheduler's own frame (reported by a sanitizer build, whose backtrace
        // interceptor adds a frame of its own) is not where the context stands.
        if let Some(at) = frames.iter().rposition(|f| f.function == "kshim_sched") {
            frames.drain(..=at);
        }
        let driver = frames.iter().position(|f| f.origin() == Origin::Driver);
        // The shim call the driver made: the outermost of ours before the driver's frame.
        let call = driver
            .and_then(|d| frames.get(..d))
            .and_then(|inner| inner.iter().rev().find(|f| f.origin() != Origin::Other))
            .map(|f| f.function.clone())
            .unwrap_or_else(|| site.last_call.clone());
        let call = if call.is_empty() || what.contains(call.as_str()) {
            String::new()
        } else {
            format!(" in {call}")
        };
        match driver.and_then(|d| frames.get(d)) {
            Some(f) => format!("{what}{call}, called from {}", frame_text(f)),
            None => {
                // The runtime's own loop (a worker or tasklet waiting for work).
                let ours = frames
                    .iter()
                    .find(|f| f.origin() != Origin::Other && f.function != "kshim_block");
                match ours {
                    Some(f) => format!("{what} in {}", frame_text(f)),
                    None => format!("{what}{call}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(current: u32, point: SchedPoint, last_call: &str) -> Sched {
        Sched {
            point,
            current,
            now_ns: 0,
            next_deadline_ns: 0,
            runnable: vec![current],
            callers: Vec::new(),
            last_call: last_call.to_owned(),
        }
    }

    /// Without symbols a context's site is its scheduling point and its last shim call;
    /// a context never seen offering the baton is yet to start; not recording keeps
    /// nothing.
    #[test]
    fn sites_without_symbols() {
        let mut c = ChoicePoints::new(Some(Path::new("/nonexistent")));
        c.offered(&sched(2, SchedPoint::Wait, "wait_for_completion"));
        c.offered(&sched(1, SchedPoint::QueueWork, "spin_unlock_irqrestore"));
        assert_eq!(c.doing(2), "wait (wait_for_completion)");
        assert_eq!(c.doing(1), "queue_work in spin_unlock_irqrestore");
        assert_eq!(c.doing(7), "starts");
        let mut off = ChoicePoints::new(None);
        off.offered(&sched(2, SchedPoint::Wait, "wait_for_completion"));
        assert_eq!(off.doing(2), "");
    }
}
