//! The abstract unfixed Linux 6.2 guest (`drivers/pci/controller/pci-hyperv.c` of 6.2, as the
//! README's race catalogue and the guest models in `petri-tests/guest_linux` describe it): its
//! probe path, ordered workqueue, drivers and channel
//! callback, and the races of the catalogue as failures.

use super::Step;
use super::reads::{Read, Reader};
use super::state::Back;
use super::wire::{Ident, Input, Note, Req, ident_of, ident_of_v1, slot_dev};
use super::work::{Running, Work};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use vmbus_channel::{Packet, PacketKind};
use vpci_protocol::{Message, ProtocolVersion, Sender, Status, decode};

/// Why the guest crashed (or would have).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// C1/C5: the channel closed while the probe path was mid-flight.
    C5CloseDuringProbe,
    /// C2: an interrupt's descriptor is NULL at unmask (EJECT during interrupt setup, or a
    /// failed CREATE_INTERRUPT_MESSAGE).
    C2NullDescriptor(u8),
    /// C3: an ejection completed before the root bus existed and the probe path then touched
    /// the function.
    C3TouchedEjected(u8),
    /// C4: a relations message added a function after the survey, before the root bus existed.
    C4AddedDuringProbe(u8),
    /// C4 (drop variant): a relations message dropped a function the guest holds, or listed
    /// its slot with another identity (Linux unlinks the child but leaves its driver bound).
    C4Dropped(u8),
    /// C7: a BAR access to a function whose device is gone and whose BARs are not shielded.
    C7BarFault(u8),
    /// C7: a config access to a gone device that the relay forwarded to it (or to the device
    /// that replaced it in the slot).
    C7ConfigFault(u8),
    /// An EJECT or a relations change reached the guest while one of its vCPUs sat in a
    /// config read of this slot that the relay had forwarded to the device and still counted
    /// in flight: the probe or driver work the read belongs to is mid-way (root-bus scan,
    /// driver probe, driver removal), and 6.2 acts on the change under it.
    ChangeDuringAccess(u8),
}

/// The probe path (hv_pci_probe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    /// Channel not opened yet; QUERY_PROTOCOL_VERSION next.
    Start,
    /// Waiting for the version's completion.
    WaitVersion,
    /// QUERY_BUS_RELATIONS next.
    SendSurvey,
    /// Waiting on the survey completion (`survey_event`).
    WaitSurvey,
    /// BUS_D0ENTRY next.
    SendD0,
    /// Waiting for D0 entry's completion.
    WaitD0,
    /// RESOURCES_ASSIGNED2 for the next child linked at the survey, or root-bus creation.
    AssignNext,
    /// Waiting for a RESOURCES_ASSIGNED2 completion.
    WaitAssigned(u8),
    /// Root-bus creation next (scans config space, starts drivers).
    CreateRootBus,
    /// Root-bus creation waits in a config read of this slot (the device has not answered).
    RootBusRead(u8),
    /// The bus is installed.
    Done,
}

/// A function's device driver (after the root bus or a rescan created its pci_dev).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Driver {
    /// No pci_dev.
    None,
    /// Probing: about to read config/BARs and compose its MSI.
    Probe,
    /// Probing, waiting in its config read (the device has not answered).
    Reading,
    /// CREATE_INTERRUPT_MESSAGE2 outstanding; busy-polling.
    WaitInterrupt,
    /// Bound, interrupt unmasked.
    Bound,
}

/// A linked child (hpdev).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Child {
    /// The identity it was listed with (vendor, device id and serial, as Linux matches them).
    pub ident: Ident,
    /// The probe path assigned its resources.
    pub assigned: bool,
    /// Its driver.
    pub driver: Driver,
    /// Marked ejecting by the channel callback.
    pub ejecting: bool,
    /// BAR0 as its QUERY_RESOURCE_REQUIREMENTS answer probed it (the size mask, or 0 for
    /// none): what its BAR0 must read back after the guest writes all ones to it.
    pub bar0: u32,
}

/// A host change the guest is working on (for G1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// A relations update; `with_probe` when it arrived before the probe path was done.
    Relations { with_probe: bool },
    /// An EJECT, until EJECTION_COMPLETE.
    Eject(u8),
}

/// Who waits for a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Waiter {
    /// The probe path.
    Probe,
    /// The relations work.
    Work,
    /// A function's driver.
    Driver(u8),
}

/// One internal step of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestStep {
    /// The probe path's next step.
    Probe,
    /// The workqueue's next step.
    Work,
    /// A driver's probe: read config and BARs, compose the MSI.
    Driver(u8),
}

/// The abstract Linux 6.2 guest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Guest {
    /// The probe path.
    pub probe: Probe,
    /// hbus->survey_event is set (the probe path waits on it).
    pub survey_waiting: bool,
    /// The survey completed.
    pub surveyed: bool,
    /// The children the probe path will assign resources to and scan (linked at survey).
    pub probe_children: Vec<u8>,
    /// The linked children, by slot.
    pub children: BTreeMap<u8, Child>,
    /// Children whose ejection completed before the root bus existed (C3).
    pub ejected_early: BTreeSet<u8>,
    /// The newest relations record not yet consumed by relations work.
    pub record: Option<Vec<(u8, Ident)>>,
    /// Whether that record changes what the guest has (a repeat is no change).
    pub record_changes: bool,
    /// The ordered workqueue.
    pub queue: VecDeque<Work>,
    /// The work item running.
    pub running: Option<Running>,
    /// Requests awaiting completion: guest txid -> (request, who waits).
    pub waiting: BTreeMap<u64, (Req, Waiter)>,
    /// The host change it is working on (for G1).
    pub change: Option<Change>,
    /// The channel was closed (CloseGuest).
    pub closed: bool,
    /// How it died, if it did.
    pub failure: Option<Failure>,
    /// A request was refused with BAD_DATA while the relay's limit really was reached: with
    /// the model's small limit this is an artefact of the bound, not a relay bug, so the path
    /// ends here.
    pub beyond: bool,
    /// Times its eject work stalled while time passed (bounded by `Bounds::guest_stalls`).
    pub stalls: u8,
    /// Its eject work is stalled: the guest is stuck in its own work on its current change
    /// (until that eject work ends).
    pub stuck: bool,
    /// The config access a vCPU sits in (at most one: the config lock).
    pub read: Option<Read>,
    /// Config accesses made beyond each context's first read (bounded by
    /// `Bounds::accesses`).
    pub extra_accesses: u8,
}

impl Guest {
    /// A guest whose probe path is about to open the channel.
    pub fn new() -> Self {
        Self {
            probe: Probe::Start,
            survey_waiting: false,
            surveyed: false,
            probe_children: Vec::new(),
            children: BTreeMap::new(),
            ejected_early: BTreeSet::new(),
            record: None,
            record_changes: false,
            queue: VecDeque::new(),
            running: None,
            waiting: BTreeMap::new(),
            change: None,
            closed: false,
            failure: None,
            beyond: false,
            stalls: 0,
            stuck: false,
            read: None,
            extra_accesses: 0,
        }
    }

    pub(super) fn fail(&mut self, f: Failure) {
        self.failure.get_or_insert(f);
    }

    /// The (slot, identity) pairs of the linked children.
    pub fn held(&self) -> Vec<(u8, Ident)> {
        self.children.iter().map(|(&s, c)| (s, c.ident)).collect()
    }

    /// What the guest believes it has or is about to have (for telling a real change from a
    /// repeat).
    fn expected_view(&self) -> Vec<(u8, Ident)> {
        if let Some(r) = &self.record {
            return r.clone();
        }
        let mut v: BTreeSet<(u8, Ident)> = self.held().into_iter().collect();
        if let Some(Running::Relations { todo, waiting, .. }) = &self.running {
            v.extend(todo.iter().copied());
            v.extend(waiting.iter().copied());
        }
        v.into_iter().collect()
    }

    /// The steps the guest can take now.
    pub fn runnable(&self) -> Vec<GuestStep> {
        let mut v = Vec::new();
        if self.closed || self.failure.is_some() || self.beyond {
            return v;
        }
        // A step that reads config space waits while another context's read is in flight.
        let reading = self.read.is_some();
        let probe = match self.probe {
            Probe::Start | Probe::SendSurvey | Probe::SendD0 | Probe::AssignNext => true,
            Probe::CreateRootBus => !reading,
            _ => false,
        };
        if probe {
            v.push(GuestStep::Probe);
        }
        let work = match &self.running {
            None => match self.queue.front() {
                None => false,
                // Removing a driver reads its config space.
                Some(Work::Eject(s)) => {
                    !reading
                        || self
                            .children
                            .get(s)
                            .is_none_or(|c| c.driver == Driver::None)
                }
                Some(Work::Relations) => true,
            },
            Some(Running::Relations { waiting, .. }) => waiting.is_none(),
            Some(Running::EjectReading(_)) => false,
            Some(Running::EjectRemoved(_)) => true,
        };
        if work {
            v.push(GuestStep::Work);
        }
        if !reading {
            for (&s, c) in &self.children {
                if c.driver == Driver::Probe {
                    v.push(GuestStep::Driver(s));
                }
            }
        }
        v
    }

    /// Whether the guest's only step is its eject work's end (EJECTION_COMPLETE after the
    /// driver was removed), which may be slow while time passes.
    pub fn may_stall(&self) -> bool {
        matches!(self.running, Some(Running::EjectRemoved(_)))
            && self.runnable() == [GuestStep::Work]
    }

    /// Whether the change the guest works on is finished.
    pub fn update_change(&mut self) {
        let done = match self.change {
            Some(Change::Relations { with_probe }) => {
                // As the relay can see it: every listed function queried (the rescan that
                // follows sends nothing).
                !self.record_changes
                    && !matches!(&self.running, Some(Running::Relations { todo, waiting, .. })
                        if !todo.is_empty() || waiting.is_some())
                    && (!with_probe || self.probe == Probe::Done)
            }
            _ => false,
        };
        if done {
            self.change = None;
        }
    }
}

impl Step {
    /// A packet from the relay reaches the guest; its channel callback runs at once.
    pub(super) fn guest_receives(&mut self, p: Packet) {
        if self.s.guest.closed {
            return;
        }
        match p.kind {
            PacketKind::Completion => self.guest_completion(p),
            PacketKind::InBand => {
                let Ok(m) = decode(&p.payload, Sender::Host, ProtocolVersion::V1_4) else {
                    return;
                };
                match m {
                    Message::BusRelations2(r) => {
                        let list = r
                            .functions
                            .iter()
                            .map(|f| (slot_dev(f.wslot), ident_of(f).unwrap_or(0)))
                            .collect();
                        self.guest_relations(list);
                    }
                    Message::BusRelations(r) => {
                        let list = r
                            .functions
                            .iter()
                            .map(|f| (slot_dev(f.wslot), ident_of_v1(f).unwrap_or(0)))
                            .collect();
                        self.guest_relations(list);
                    }
                    Message::Eject(e) => self.guest_eject(slot_dev(e.body.wslot)),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn guest_relations(&mut self, list: Vec<(u8, Ident)>) {
        self.note(format!("guest<-RELATIONS{list:?}"));
        let g = &self.s.guest;
        let expected = g.expected_view();
        let held = g.held();
        let real_change = list != expected;
        // G3: a function new to the guest must still be the host's, with that identity.
        for &(s, i) in &list {
            if !expected.contains(&(s, i)) && !held.contains(&(s, i)) && !self.s.host.mapped(s, i) {
                self.s.seen.g3.get_or_insert(s);
            }
        }
        if real_change {
            self.change_during_read();
            if let Some(c) = self.s.guest.change {
                let what = format!("relations {list:?} while on {c:?}");
                self.second_change(what);
            }
        }
        let g = &mut self.s.guest;
        if real_change {
            g.change = Some(Change::Relations {
                with_probe: g.probe != Probe::Done,
            });
        }
        g.record = Some(list);
        g.record_changes |= real_change;
        // Each message queues a work item; the first to run takes the newest record and the
        // others find none, so one queued item stands for them all.
        if !g.queue.contains(&Work::Relations) {
            g.queue.push_back(Work::Relations);
        }
    }

    /// A change reached the guest while it was on another: G1 broken, unless the guest is
    /// stuck in its own work on that change beyond `max_hold` (the relay's documented
    /// fallback: it moves on from a guest that does not finish a change in `max_hold`).
    fn second_change(&mut self, what: String) {
        if self.s.guest.stuck {
            self.s.seen.moved_on_from_stuck = true;
        } else {
            self.s.seen.g1.get_or_insert(what);
        }
    }

    fn guest_eject(&mut self, s: u8) {
        self.note(format!("guest<-EJECT({s})"));
        self.change_during_read();
        if let Some(c) = self.s.guest.change {
            self.second_change(format!("EJECT({s}) while on {c:?}"));
        }
        let g = &mut self.s.guest;
        g.change = Some(Change::Eject(s));
        // Never during the probe path (whatever it waits for, however long).
        if g.probe != Probe::Done {
            self.s.seen.eject_during_probe.get_or_insert(s);
        }
        // Settled at the guest: the function is linked (its requirements were queried) and
        // its driver is not setting up its interrupt (the probe path being done, so resources
        // were assigned where it assigns them, is the property above).
        let settled = g.children.get(&s).is_some_and(|c| {
            !matches!(
                c.driver,
                Driver::Probe | Driver::Reading | Driver::WaitInterrupt
            )
        });
        if !settled && g.probe == Probe::Done {
            self.s.seen.g2.get_or_insert(s);
        }
        let Some(c) = g.children.get_mut(&s) else {
            // 6.2: an EJECT for a slot with no child is ignored.
            return;
        };
        c.ejecting = true;
        if matches!(c.driver, Driver::Probe | Driver::WaitInterrupt) {
            // 6.2's compose loop gives up on the ejecting mark: NULL descriptor at unmask.
            g.fail(Failure::C2NullDescriptor(s));
        }
        g.queue.push_back(Work::Eject(s));
    }

    fn guest_completion(&mut self, p: Packet) {
        let g = &mut self.s.guest;
        let Some((req, waiter)) = g.waiting.remove(&p.transaction_id) else {
            self.s.seen.stray_completion.get_or_insert(p.transaction_id);
            return;
        };
        let status = p
            .payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes);
        let ok = status == Some(Status::SUCCESS.0);
        // A requirements answer's first probed BAR follows its status.
        let bar0 = p
            .payload
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes);
        self.note(format!("guest<-done {req:?} ok={ok}"));
        if status == Some(Status::BAD_DATA.0) {
            // The relay refused it for its request limit: fair only if that many really are
            // outstanding (guest requests not yet answered by anyone).
            if self.s.guest.waiting.len() < self.limit {
                self.s.seen.unjust_refusal.get_or_insert(req);
            } else {
                self.s.guest.beyond = true;
                return;
            }
        }
        let g = &mut self.s.guest;
        match waiter {
            Waiter::Probe => {
                g.probe = match (g.probe, req) {
                    (Probe::WaitVersion, _) => Probe::SendSurvey,
                    (Probe::WaitD0, _) => Probe::AssignNext,
                    (Probe::WaitAssigned(s), _) => {
                        if let Some(c) = g.children.get_mut(&s) {
                            c.assigned = true;
                        }
                        Probe::AssignNext
                    }
                    (p, _) => p,
                };
            }
            Waiter::Work => {
                if let Some(Running::Relations { waiting, added, .. }) = &mut g.running {
                    if let Some((s, ident)) = waiting.take() {
                        added.push(s);
                        g.children.insert(
                            s,
                            Child {
                                ident,
                                assigned: false,
                                driver: Driver::None,
                                ejecting: false,
                                bar0,
                            },
                        );
                    }
                }
            }
            Waiter::Driver(s) => {
                if let Some(c) = g.children.get_mut(&s) {
                    c.driver = Driver::Bound;
                    if !ok {
                        g.fail(Failure::C2NullDescriptor(s));
                    }
                }
            }
        }
    }

    pub(super) fn guest_closes(&mut self) {
        self.note("guest<-CLOSE".to_owned());
        if self.s.host.rescinded {
            self.s.seen.guest_closed_after_rescind = true;
        }
        if self.s.guest.probe == Probe::Start {
            // The probe path has not opened the channel yet: it fails to, and returns cleanly.
        } else if self.s.guest.probe != Probe::Done {
            self.s.guest.fail(Failure::C5CloseDuringProbe);
        } else {
            // hv_pci_remove: the root bus goes; each bound driver's remove reads its BARs.
            let bound: Vec<u8> = self
                .s
                .guest
                .children
                .iter()
                .filter(|(_, c)| c.driver != Driver::None)
                .map(|(&s, _)| s)
                .collect();
            for s in bound {
                self.bar_read(s);
            }
        }
        self.s.guest.closed = true;
    }

    pub(super) fn request(&mut self, req: Req, ident: Option<Ident>, waiter: Waiter) {
        let g = &mut self.s.guest;
        // The lowest id not in use: ids only need to be distinct among outstanding requests,
        // and reusing them lets states that differ only in history merge.
        let txid = (1001..)
            .find(|t| !g.waiting.contains_key(t))
            .unwrap_or(1001);
        g.waiting.insert(txid, (req, waiter));
        self.origin = ident;
        self.input(Input::GuestRequest { txid, req });
        self.origin = None;
    }

    pub(super) fn child_ident(&self, s: u8) -> Option<Ident> {
        self.s.guest.children.get(&s).map(|c| c.ident)
    }

    pub(super) fn bar_read(&mut self, s: u8) {
        let Some(ident) = self.child_ident(s) else {
            return;
        };
        if !self.s.host.mapped(s, ident) && self.s.backing[usize::from(s - 1)] != Some(Back::Shield)
        {
            self.s.guest.fail(Failure::C7BarFault(s));
        }
    }

    pub(super) fn guest_step(&mut self, step: GuestStep) {
        match step {
            GuestStep::Probe => self.probe_step(),
            GuestStep::Work => self.work_step(),
            GuestStep::Driver(s) => {
                if self.config_read(s, Reader::Driver, 0) {
                    if let Some(c) = self.s.guest.children.get_mut(&s) {
                        c.driver = Driver::Reading;
                    }
                } else {
                    self.driver_after_read(s);
                }
            }
        }
    }

    /// A driver's probe after its config read: read the BARs, ask for an interrupt.
    pub(super) fn driver_after_read(&mut self, s: u8) {
        self.bar_read(s);
        if let Some(c) = self.s.guest.children.get_mut(&s) {
            c.driver = Driver::WaitInterrupt;
        }
        let ident = self.child_ident(s);
        self.request(Req::Interrupt(s), ident, Waiter::Driver(s));
    }

    fn probe_step(&mut self) {
        match self.s.guest.probe {
            Probe::Start => {
                self.s.guest.probe = Probe::WaitVersion;
                self.request(Req::Version, None, Waiter::Probe);
            }
            Probe::SendSurvey => {
                self.s.guest.probe = Probe::WaitSurvey;
                self.s.guest.survey_waiting = true;
                self.input(Input::GuestNote(Note::QueryRelations));
            }
            Probe::SendD0 => {
                self.s.guest.probe = Probe::WaitD0;
                self.request(Req::D0Entry, None, Waiter::Probe);
            }
            Probe::AssignNext => {
                let g = &self.s.guest;
                let next = g
                    .probe_children
                    .iter()
                    .copied()
                    .find(|s| g.children.get(s).is_none_or(|c| !c.assigned));
                match next {
                    Some(s) if g.ejected_early.contains(&s) || !g.children.contains_key(&s) => {
                        self.s.guest.fail(Failure::C3TouchedEjected(s));
                    }
                    Some(s) => {
                        self.s.guest.probe = Probe::WaitAssigned(s);
                        let ident = self.child_ident(s);
                        self.request(Req::Assigned(s), ident, Waiter::Probe);
                    }
                    None => self.s.guest.probe = Probe::CreateRootBus,
                }
            }
            Probe::CreateRootBus => self.scan_root_bus(None),
            _ => {}
        }
    }
}
