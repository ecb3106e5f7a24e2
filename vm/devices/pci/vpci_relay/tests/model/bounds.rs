//! How far the model's host (and guest) may go: the check is exhaustive within a [`Bounds`].

use super::props::*;

/// How far the host may go; the check is exhaustive within these.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// BUS_RELATIONS2 messages the host sends (answers, repeats, announcements of new or
    /// dropped functions).
    pub relations: u8,
    /// EJECTs the host sends (for any slot it has listed: a function it has, one it dropped,
    /// one it already ejected).
    pub ejects: u8,
    /// New functions the host puts in a slot after boot (hot-add, re-add, or a new identity
    /// while the old one is ejecting, dropped but still held by the guest, or listed).
    pub adds: u8,
    /// Relations messages that leave out a function the host had listed (surprise removals).
    pub drops: u8,
    /// Requests for a removed function the host leaves unanswered when asked.
    pub ignores: u8,
    /// Of those, how many it may answer late (after the relay answered them itself).
    pub late_answers: u8,
    /// Channel rescinds.
    pub rescinds: u8,
    /// The relay's `max_outstanding_requests` in the model: small, so that a table that fills
    /// with what is not live shows within the bound.
    pub request_limit: usize,
    /// The relay's `max_remembered_answers` in the model (requests it answered itself and
    /// remembers, to recognise the host's late answer).
    pub remembered_answers: usize,
    /// Whether the host may put a new function in a slot whose old one it still lists or is
    /// ejecting (otherwise only in an empty slot, or one whose function it removed).
    pub relist: bool,
    /// Whether the host may EJECT a slot whose function it dropped or is already ejecting, or
    /// whose ejection completed (otherwise only a function it lists).
    pub free_ejects: bool,
    /// Forwarded requests the host answers slowly (any request, of a function it has or not,
    /// including BUS_D0ENTRY and QUERY_RESOURCE_REQUIREMENTS on the guest's probe path): it
    /// lets time pass, beyond the relay's `max_hold` if the relay's timers go that far, and
    /// then answers.
    pub slows: u8,
    /// Stale relations messages: one the host built before it processed the latest
    /// EJECTION_COMPLETE (so still listing the function it ejected), arriving after the
    /// relay sent that EJECTION_COMPLETE.
    pub stales: u8,
    /// Times the guest's eject work stalls (its driver's remove path is slow) while time
    /// passes, before it sends EJECTION_COMPLETE.
    pub guest_stalls: u8,
    /// Config accesses (reads, and with `accesses` writes too) the guest's devices take their
    /// time over (time passes while the guest sits in one; the device answers when it likes,
    /// or never within the bound). Every other access is answered before time moves, but host
    /// actions may come first.
    pub slow_reads: u8,
    /// Config accesses the guest makes beyond each context's first read at offset 0 (BAR
    /// sizing writes and read-backs in the root-bus scan, command register writes in a
    /// driver's probe and remove; see `Reader::plan`), over the whole run.
    pub accesses: u8,
    /// Whether slot 2 is present at boot too (otherwise only slot 1 is).
    pub two_at_boot: bool,
}

impl Bounds {
    /// What every named bound starts from (each states only what it changes): 3 relations
    /// messages, 2 ejects, 1 new function, re-listing and ejects of any slot the host has
    /// listed, a request limit of 4 with 4 remembered answers; no surprise removal, ignored
    /// or slow answer, stale message, rescind, guest stall or slow read; slot 1 at boot.
    pub const BASE: Self = Self {
        relations: 3,
        ejects: 2,
        adds: 1,
        drops: 0,
        ignores: 0,
        late_answers: 0,
        rescinds: 0,
        request_limit: 4,
        remembered_answers: 4,
        relist: true,
        free_ejects: true,
        slows: 0,
        stales: 0,
        guest_stalls: 0,
        slow_reads: 0,
        accesses: 0,
        two_at_boot: false,
    };

    /// The teeth's bound: the old model's host (a hot-add, ejects only of listed functions,
    /// no new identity in a slot still in use, every request answered) and a rescind.
    pub const SMALL: Self = Self {
        rescinds: 1,
        relist: false,
        free_ejects: false,
        ..Self::BASE
    };

    /// Slow config accesses: the teeth's host and a rescind, one config access the device
    /// takes its time over (the rescind once let a held EJECT reach a guest still in the slow
    /// read: `host_loss_during_slow_read_lets_a_held_eject_in`), and 2 accesses beyond the
    /// first reads (the boot scan's BAR sizing: so a slow one may be a write).
    pub const SLOW_READ: Self = Self {
        slow_reads: 1,
        accesses: 2,
        ..Self::SMALL
    };

    /// The default check: a new function, a surprise removal, two ejects of any slot the host
    /// has listed (so an EJECT after a re-listing), a stale relations message, a rescind, and
    /// 4 config accesses beyond the first reads (the boot scan's BAR sizing, and then
    /// command register writes).
    /// (Ignored requests are in `REQUEST_TABLE`, slow answers and a stuck guest in `SLOW`;
    /// `LARGE` has them all.)
    pub const DEFAULT: Self = Self {
        drops: 1,
        rescinds: 1,
        stales: 1,
        accesses: 4,
        ..Self::BASE
    };

    /// Slowness: the host answers one probe-path request (BUS_D0ENTRY or
    /// QUERY_RESOURCE_REQUIREMENTS) as slowly as it likes, beyond `max_hold`, and the guest's
    /// eject work may stall beyond `max_hold`; a new function and two ejects.
    pub const SLOW: Self = Self {
        slows: 1,
        guest_stalls: 1,
        ..Self::BASE
    };

    /// Identities: two new functions (so a slot can be re-listed twice, while its old function
    /// is listed, ejecting or held), every request answered, a stale relations message, and
    /// the guest's config writes (a BAR sizing and its read-back may straddle a re-listing).
    pub const RELIST: Self = Self {
        adds: 2,
        stales: 1,
        accesses: 4,
        ..Self::BASE
    };

    /// Both functions present at boot, a stale relations message.
    pub const TWO_AT_BOOT: Self = Self {
        stales: 1,
        two_at_boot: true,
        ..Self::BASE
    };

    /// The request table: a limit of one request, so a single entry the relay keeps for a
    /// request it already answered refuses the next one; an ignored request answered late.
    pub const REQUEST_TABLE: Self = Self {
        ignores: 1,
        late_answers: 1,
        request_limit: 1,
        ..Self::BASE
    };

    /// A larger bound (run with `--ignored`, best with `--release`): the old default (4
    /// relations, a surprise removal, an ignored request, a rescind) with every new freedom
    /// (a slow answer, a stale relations message, a stuck guest).
    pub const LARGE: Self = Self {
        relations: 4,
        drops: 1,
        ignores: 1,
        rescinds: 1,
        slows: 1,
        stales: 1,
        guest_stalls: 1,
        ..Self::BASE
    };

    /// Both functions at boot, a larger bound (run with `--ignored`).
    pub const LARGE_TWO_AT_BOOT: Self = Self {
        guest_stalls: 0,
        two_at_boot: true,
        ..Self::LARGE
    };
}

impl Bounds {
    /// Whether the bound lets the host do what the `sometimes` property `name` looks for.
    pub fn can_reach(&self, name: &str) -> bool {
        match name {
            RELISTED => self.adds > 0 && (self.relist || self.drops > 0),
            LATE => self.ignores > 0 && self.late_answers > 0,
            RESCIND_CLOSED => self.rescinds > 0,
            SLOW_PAST_HOLD => self.slows > 0,
            STALE_AFTER_COMPLETE => self.stales > 0 && self.ejects > 0,
            EJECT_AFTER_RELIST => self.ejects > 1 && self.adds > 0 && self.relist,
            GUEST_STALLED => self.guest_stalls > 0,
            MAX_HOLD_REACHED | MOVED_ON => self.guest_stalls > 0,
            SLOW_READ => self.slow_reads > 0,
            READ_OUTLIVED_DEVICE => self.ejects > 0,
            WRITE_FORWARDED | WRITE_SHIELDED => self.accesses > 0,
            // The sizing write and its read-back, with an EJECT between them.
            BAR_READ_BACK => self.accesses > 1 && self.ejects > 0,
            _ => true,
        }
    }
}
