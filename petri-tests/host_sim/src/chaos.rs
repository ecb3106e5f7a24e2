//! A host that uses the protocol's full freedom at random moments: between any two guest
//! steps of petri's simulated VMs (or, across processes, at random moments of real time) it
//! may hot-add, eject, drop, re-list a slot with a new identity, resend relations, eject
//! what it already dropped, or rescind. Seeded, so a failing simulated run replays.
//!
//! It uses every order the protocol allows, the one that used to be ambiguous too: an EJECT
//! names only a slot, and the protocol reads it as naming the function the host listed last
//! in that slot. So once the host has sent an EJECT that is still unanswered and then listed a
//! new function in the slot, a further EJECT of the slot ejects the new function (host_sim
//! tracks the two ejects apart); without a new listing since, it repeats the first. A slot
//! that got an EJECT of a function the host dropped may be re-added at once.

use crate::{FunctionSpec, HostAction, HostBus, HostilePacket};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::Deserialize;
use vpci_protocol::WinSlot;

/// How a chaotic host behaves, as a scenario's `[chaos]` table writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChaosSpec {
    /// How many actions the host takes in a run.
    pub actions: u32,
    /// One in `every` scheduling points (on average) is a host action.
    pub every: u32,
    /// The slots the host plays with (1 to `slots`; at least 1).
    #[serde(deserialize_with = "at_least_one")]
    pub slots: u8,
    /// Whether the host may end the run by rescinding the channel.
    pub rescind: bool,
    /// The seed of the host's choices (a run's seed; not written in a scenario file).
    #[serde(skip)]
    pub seed: u64,
}

/// `slots = 0` would leave the host nothing to play with: refused when the file is read.
fn at_least_one<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let slots = u8::deserialize(d)?;
    if slots == 0 {
        return Err(serde::de::Error::custom(
            "slots must be at least 1 (the host plays with slots 1 to `slots`)",
        ));
    }
    Ok(slots)
}

impl Default for ChaosSpec {
    fn default() -> Self {
        Self {
            actions: 12,
            every: 6,
            slots: 3,
            rescind: false,
            seed: 0,
        }
    }
}

/// The chaotic host's state in one run: petri's simulated VMs ask it at each scheduling
/// point, the host endpoint of a run across processes at random moments of real time.
#[derive(Clone, Debug)]
pub struct Chaos {
    spec: ChaosSpec,
    rng: ChaCha8Rng,
    left: u32,
    next_serial: u32,
}

impl Chaos {
    /// A chaotic host playing `spec` (its choices seeded by `spec.seed`).
    pub fn new(spec: ChaosSpec) -> Self {
        Self {
            spec,
            // Its own stream, so the guest's schedule and the host's actions vary apart.
            rng: ChaCha8Rng::seed_from_u64(spec.seed ^ 0x6368_616f_735f_686f),
            left: spec.actions,
            next_serial: 1000,
        }
    }

    /// How many actions it has left.
    pub fn left(&self) -> u32 {
        self.left
    }

    /// A number below `bound` (at least 1) from the host's own stream: how long a host in
    /// real time waits before its next action.
    pub fn below(&mut self, bound: u32) -> u32 {
        self.rng.next_u32() % bound.max(1)
    }

    /// Whether the host acts now (`quiet`: nothing else would happen otherwise).
    pub fn acts_now(&mut self, quiet: bool) -> bool {
        self.left > 0 && (quiet || self.rng.next_u32() % self.spec.every.max(1) == 0)
    }

    /// Which of `buses` buses acts.
    pub fn bus(&mut self, buses: usize) -> usize {
        usize::try_from(self.rng.next_u32()).unwrap_or(0) % buses.max(1)
    }

    /// The next action, given what the host has now.
    pub fn action(&mut self, host: &HostBus) -> HostAction {
        self.left = self.left.saturating_sub(1);
        let slots = u32::from(self.spec.slots.max(1));
        let slot = 1 + self.rng.next_u32() % slots;
        let wslot = WinSlot::from_raw(slot);
        let present = host.slots().contains(&wslot);
        // The function listed last in the slot is being ejected already.
        let ejecting = host.ejecting(wslot);
        let kinds = if self.spec.rescind { 7 } else { 6 };
        match (self.rng.next_u32() % kinds, present) {
            // A second EJECT of the same function while the first is outstanding (the host's
            // own record stays).
            (0 | 1, true) if ejecting => HostAction::Hostile {
                packet: HostilePacket::EjectUnknownSlot { slot },
            },
            (0 | 1, false) => {
                self.next_serial += 1;
                HostAction::HotAdd(FunctionSpec::nic(slot).with_serial(self.next_serial))
            }
            (0 | 1 | 5, true) => HostAction::Eject { slot },
            (2, true) => HostAction::SurpriseRemove { slot },
            (3, true) => {
                self.next_serial += 1;
                HostAction::Reserial {
                    slot,
                    serial: self.next_serial,
                }
            }
            // An EJECT of a slot the host does not have (any more): a function it dropped, or
            // one never there. (For a slot it has, an EJECT is a real eject, which the host
            // keeps track of.)
            (5 | 2 | 3, false) => HostAction::Hostile {
                packet: HostilePacket::EjectUnknownSlot { slot },
            },
            (6, _) => HostAction::Rescind {},
            _ => HostAction::SendRelations {},
        }
    }
}
