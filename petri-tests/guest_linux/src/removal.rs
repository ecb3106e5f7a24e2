//! `hv_pci_remove`: what VMBus runs for the bus after the host rescinded the channel.

use crate::guest::{BusState, LinuxGuest};
use crate::objects::{LockId, Wait};
use crate::probe::{BusExit, BxStep};
use crate::{ContextId, GuestEnv};
use vpci_protocol::WinSlot;

const C: ContextId = ContextId::Removal;

/// Where the removal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum RemPc {
    #[default]
    Start,
    Drained,
    Lock,
    StopDevices,
    BusExit,
    Free,
    Done,
}

/// The removal context.
#[derive(Debug, Clone, Default)]
pub(crate) struct RemovalState {
    pub(crate) pc: RemPc,
    pub(crate) wait: Option<Wait>,
    pub(crate) bus_exit: Option<BusExit>,
}

impl RemovalState {
    pub(crate) fn is_done(&self) -> bool {
        self.pc == RemPc::Done
    }
}

impl LinuxGuest {
    /// Models `hv_pci_remove`, one scheduling point per call: if the bus was installed, mark it
    /// removing, destroy the workqueue, stop and remove the root bus (drivers' remove runs);
    /// then `hv_pci_bus_exit`, close the channel and free the bus.
    pub(crate) fn step_removal(&mut self, env: &mut dyn GuestEnv) {
        const F: &str = "hv_pci_remove";
        let Some(mut r) = self.removal.take() else {
            return;
        };
        r.wait = None;
        loop {
            if self.failed() {
                break;
            }
            match r.pc {
                RemPc::Start => {
                    if self.bus.state == BusState::Installed {
                        self.bus.state = BusState::Removing;
                        self.log(C, F, "state = removing; destroy_workqueue");
                        r.wait = Some(Wait::Drain);
                        r.pc = RemPc::Drained;
                        break;
                    }
                    r.pc = RemPc::BusExit;
                }
                RemPc::Drained => {
                    self.wq.destroyed = true;
                    r.pc = RemPc::Lock;
                }
                RemPc::Lock => {
                    if !self.try_lock(C, LockId::RescanRemove) {
                        r.wait = Some(Wait::Lock(LockId::RescanRemove));
                        break;
                    }
                    r.pc = RemPc::StopDevices;
                }
                RemPc::StopDevices => {
                    let bound = self.pci_devs.values().find(|d| d.bound).map(|d| d.slot);
                    if let Some(slot) = bound
                        && self.stop_device(C, slot)
                    {
                        r.wait = Some(Wait::Driver(slot.raw()));
                        break;
                    }
                    for id in self.bus.children.clone() {
                        if let Ok(h) = self.objs.hpdev_mut(id) {
                            h.has_slot = false;
                        }
                    }
                    let slots: Vec<u32> = self.pci_devs.keys().copied().collect();
                    for raw in slots {
                        self.remove_device(C, "pci_remove_root_bus", WinSlot::from_raw(raw));
                    }
                    self.unlock(C, LockId::RescanRemove);
                    r.pc = RemPc::BusExit;
                }
                RemPc::BusExit => {
                    let mut bx = r.bus_exit.take().unwrap_or(BusExit::new(false));
                    match self.bus_exit_step(env, C, &mut bx) {
                        BxStep::Continue => {
                            r.bus_exit = Some(bx);
                            break;
                        }
                        BxStep::Wait(w) => {
                            r.bus_exit = Some(bx);
                            r.wait = Some(w);
                            break;
                        }
                        BxStep::Done(_) => r.pc = RemPc::Free,
                    }
                }
                RemPc::Free => {
                    self.chan.closed = true;
                    self.chan.inbound.clear();
                    self.bus.freed = true;
                    self.log(C, F, "vmbus_close; hbus freed");
                    r.pc = RemPc::Done;
                    break;
                }
                RemPc::Done => break,
            }
        }
        self.removal = Some(r);
    }
}
