//! What the host can see of a real-guest run so far (the end-of-run checks, looking both
//! ways), and the hot-plug cycles a long haul runs once the scenario settled.

use super::*;

impl RealController {
    /// What the host can see went wrong once the scenario settled, looking both ways: an
    /// EJECT it gave up on; its bus closed by the relay though it was conformant
    /// (`lost_bus`); a device the guest holds that the host no longer has, or holds with an
    /// old identity (`ghost_device`: it would drive memory nothing backs, as at its
    /// removal); a function the host has that the probed guest never got (`lost_device`).
    /// Every bus is looked at for each kind in turn, as in the model VM.
    pub(super) fn host_visible_now(&mut self) -> Outcome {
        for (i, side) in self.sides.iter().enumerate() {
            if let Some(outcome) = side.eject_unanswered(i) {
                return outcome;
            }
        }
        for (i, side) in self.sides.iter().enumerate() {
            if let Some(outcome) = side.lost_bus(i) {
                return outcome;
            }
        }
        // A stalled driver holds what it held when it stopped: what the host sees above
        // still counts for it, its holdings do not.
        let stalled = self.stall.stalled_bus(self.now);
        for (i, side) in self.sides.iter_mut().enumerate() {
            if side.channel_ended() || stalled == Some(i) {
                continue;
            }
            let probed = u32::try_from(i).is_ok_and(|b| self.probed.contains(&b));
            let host = crate::vm::host_functions(&mut side.host);
            let outcome =
                crate::outcome::compare_functions(i, &host, &self.observer.held(i), probed);
            if outcome != Outcome::Ok {
                return outcome;
            }
        }
        Outcome::Ok
    }

    /// What the driver holds and the host has on every bus now.
    pub(super) fn views_now(&mut self) -> Vec<crate::outcome::BusView> {
        self.sides
            .iter_mut()
            .enumerate()
            .map(|(bus, side)| {
                let mut guest = self.observer.held(bus);
                guest.sort_by_key(|(slot, id)| (slot.raw(), *id));
                crate::outcome::BusView {
                    bus,
                    guest,
                    host: crate::vm::host_functions(&mut side.host),
                }
            })
            .collect()
    }

    /// Takes the next hot-plug action, after checking the last one reached the guest; false
    /// when there is none left.
    pub(super) fn hot_plug_step(&mut self) -> bool {
        let Some(mut hp) = self.hot_plug else {
            return false;
        };
        let Some(side) = self.sides.first() else {
            return false;
        };
        if hp.done >= hp.cycles.saturating_mul(2) || side.channel_ended() {
            return false;
        }
        let slot = WinSlot::from_raw(hp.slot);
        let context = self.context_name(self.process);
        let adding = hp.done % 2 == 0;
        // After an add the guest must hold the function; after an eject it must not, and the
        // host must have had its EJECTION_COMPLETE.
        if hp.done > 0 {
            let held = self.observer.holds(0, slot);
            if adding && (held || side.eject_timed_out()) {
                // The guest holds the function: a ghost (`leaked_device` is memory only).
                self.observer.fail(
                    0,
                    "ghost_device",
                    context,
                    "hv_eject_device_work".to_owned(),
                    format!("cycle {}: {slot} still held after its eject", hp.done / 2),
                );
                return true;
            }
            if !adding && !held {
                self.observer.fail(
                    0,
                    "lost_device",
                    context,
                    "pci_devices_present_work".to_owned(),
                    format!("cycle {}: {slot} never reached the guest", hp.done / 2),
                );
                return true;
            }
        }
        let action = if adding {
            host_sim::HostAction::HotAdd(
                host_sim::FunctionSpec::nic(hp.slot).with_serial(hp.done / 2 + 1),
            )
        } else {
            host_sim::HostAction::Eject { slot: hp.slot }
        };
        if let Some(side) = self.sides.first_mut() {
            side.act(self.now, action);
        }
        hp.done += 1;
        self.hot_plug = Some(hp);
        self.world_changed();
        self.reasked = false;
        self.pump();
        true
    }
}
