//! The guest's ordered workqueue (`hbus->wq` of 6.2's `pci-hyperv`): relations work
//! (`pci_devices_present_work`) and eject work (`hv_eject_device_work`), one item at a time.

use super::Step;
use super::guest::{Change, Driver, Failure, Probe, Waiter};
use super::reads::Reader;
use super::wire::{Ident, Input, Note, Req};

/// A work item on the bus's ordered workqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// `pci_devices_present_work`.
    Relations,
    /// `hv_eject_device_work`.
    Eject(u8),
}

/// The work item running.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Running {
    /// Relations work: functions still to query, the one being queried, those linked.
    Relations {
        todo: Vec<(u8, Ident)>,
        waiting: Option<(u8, Ident)>,
        added: Vec<u8>,
    },
    /// Eject work, removing the driver: waiting in its config read (the device has not
    /// answered).
    EjectReading(u8),
    /// Eject work, the driver removed; EJECTION_COMPLETE next.
    EjectRemoved(u8),
}

impl Step {
    pub(super) fn work_step(&mut self) {
        let running = self.s.guest.running.take();
        match running {
            None => {
                let Some(w) = self.s.guest.queue.pop_front() else {
                    return;
                };
                match w {
                    Work::Relations => {
                        self.s.guest.record_changes = false;
                        let Some(list) = self.s.guest.record.take() else {
                            return; // collapsed into an earlier run
                        };
                        let g = &mut self.s.guest;
                        // Linux matches a listed function to a child by slot, vendor, device
                        // id and serial: a child not matched is unlinked with its driver
                        // still bound.
                        let dropped: Vec<u8> = g
                            .held()
                            .into_iter()
                            .filter(|f| !list.contains(f))
                            .map(|(s, _)| s)
                            .collect();
                        if let Some(&d) = dropped.first() {
                            g.fail(Failure::C4Dropped(d));
                            return;
                        }
                        let held = g.held();
                        let todo: Vec<(u8, Ident)> =
                            list.iter().copied().filter(|f| !held.contains(f)).collect();
                        self.relations_continue(todo, Vec::new());
                    }
                    Work::Eject(s) => self.eject_start(s),
                }
            }
            Some(Running::Relations { todo, added, .. }) => self.relations_continue(todo, added),
            Some(Running::EjectRemoved(s)) => {
                self.eject_finish(s);
            }
            // Not runnable: it waits in its config read.
            Some(r @ Running::EjectReading(_)) => self.s.guest.running = Some(r),
        }
    }

    fn relations_continue(&mut self, mut todo: Vec<(u8, Ident)>, added: Vec<u8>) {
        if !todo.is_empty() {
            let (s, ident) = todo.remove(0);
            self.s.guest.running = Some(Running::Relations {
                todo,
                waiting: Some((s, ident)),
                added,
            });
            self.request(Req::Requirements(s), Some(ident), Waiter::Work);
            return;
        }
        let g = &mut self.s.guest;
        if g.probe == Probe::Done {
            // Installed: rescan; drivers probe the new functions.
            for s in &added {
                if let Some(c) = g.children.get_mut(s) {
                    c.driver = Driver::Probe;
                }
            }
        } else if g.survey_waiting {
            // survey_child_resources: wake the probe path.
            g.survey_waiting = false;
            g.surveyed = true;
            g.probe_children = g.children.keys().copied().collect();
            if g.probe == Probe::WaitSurvey {
                g.probe = Probe::SendD0;
            }
        } else if let Some(&s) = added.first() {
            if g.surveyed {
                g.fail(Failure::C4AddedDuringProbe(s));
            }
        }
    }

    fn eject_start(&mut self, s: u8) {
        let g = &mut self.s.guest;
        let Some(c) = g.children.get(&s).copied() else {
            return;
        };
        if c.driver == Driver::None {
            // No pci_dev (no root bus yet): complete at once.
            if g.probe != Probe::Done {
                g.ejected_early.insert(s);
            }
            self.eject_finish(s);
            return;
        }
        // The driver's remove path: free the interrupt, read device registers.
        self.s.seen.driver_removed = true;
        if c.driver == Driver::Bound {
            self.input(Input::GuestNote(Note::DeleteInterrupt(s)));
        }
        self.bar_read(s);
        self.s.guest.running = Some(if self.config_read(s, Reader::Eject, 0) {
            Running::EjectReading(s)
        } else {
            Running::EjectRemoved(s)
        });
    }

    fn eject_finish(&mut self, s: u8) {
        let g = &mut self.s.guest;
        g.stuck = false;
        g.children.remove(&s);
        g.running = None;
        if g.change == Some(Change::Eject(s)) {
            g.change = None;
        }
        self.input(Input::GuestNote(Note::EjectionComplete(s)));
    }
}
