//! A function's saved state, and the checks a restored one passes: its host state by its
//! guest state must be a pair the machine (`machine.rs`) can reach with every safeguard on,
//! and its counts, times and copy of config space within bounds.

use super::{Backing, Function, GuestState, HostState, Stage, Successor};
use crate::save::{
    Check, RestoreError, SavedConfigDword, SavedFunction, SavedSuccessor, description,
    description_bytes, enumeration, opt_ns,
};
use std::collections::BTreeMap;

/// Saved values of the enumerations, by index (index 0 of the states is "none": a field
/// that is absent from a state is never taken for a state).
pub(crate) const HOST_STATES: [Option<HostState>; 5] = [
    None,
    Some(HostState::Listed),
    Some(HostState::Ejecting),
    Some(HostState::Ejected),
    Some(HostState::Gone),
];
pub(crate) const GUEST_STATES: [Option<GuestState>; 4] = [
    None,
    Some(GuestState::Hidden),
    Some(GuestState::Announced),
    Some(GuestState::Ejecting),
];
pub(crate) const BACKINGS: [Option<Backing>; 4] = [
    None,
    Some(Backing::Device),
    Some(Backing::Shield),
    Some(Backing::Released),
];
pub(crate) const STAGES: [Stage; 3] = [Stage::NotStarted, Stage::Pending, Stage::Done];

/// A value's index in a saved enumeration.
pub(crate) fn index_of<T: PartialEq>(values: &[T], value: &T) -> u32 {
    values
        .iter()
        .position(|v| v == value)
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or(0)
}

/// A saved enumeration whose index 0 is "none".
pub(crate) fn required<T: Copy>(
    field: String,
    value: u32,
    values: &[Option<T>],
) -> Result<T, RestoreError> {
    enumeration(field.clone(), value, values)?.ok_or(RestoreError::BadValue {
        field,
        value: u64::from(value),
    })
}

impl Function {
    pub(crate) fn save(&self) -> SavedFunction {
        let Self {
            slot,
            desc,
            allowed,
            host,
            guest,
            requirements,
            resources,
            needs_resources,
            interrupts_pending,
            requests_pending,
            host_ejects_owed,
            host_eject_since,
            last_activity,
            eject_since,
            hold_reported,
            probed_bars,
            config,
            backing,
            successor,
            unlisted,
        } = self;
        SavedFunction {
            slot: slot.raw(),
            desc: description_bytes(desc),
            allowed: *allowed,
            host: index_of(&HOST_STATES, &Some(*host)),
            guest: index_of(&GUEST_STATES, &Some(*guest)),
            requirements: index_of(&STAGES, requirements),
            resources: index_of(&STAGES, resources),
            needs_resources: *needs_resources,
            interrupts_pending: *interrupts_pending,
            requests_pending: *requests_pending,
            host_ejects_owed: *host_ejects_owed,
            host_eject_since_ns: opt_ns(*host_eject_since),
            last_activity_ns: opt_ns(*last_activity),
            eject_since_ns: opt_ns(*eject_since),
            hold_reported: *hold_reported,
            probed_bars: probed_bars.map(Vec::from).unwrap_or_default(),
            config: config
                .iter()
                .map(|(&offset, &value)| SavedConfigDword {
                    offset: offset.into(),
                    value,
                })
                .collect(),
            backing: index_of(&BACKINGS, &Some(*backing)),
            successor: successor.map(|s| SavedSuccessor {
                desc: description_bytes(&s.desc),
                ejected: s.ejected,
            }),
            unlisted: *unlisted,
        }
    }

    /// A function from its saved state, at `path` (`functions[01.0]`), checked.
    pub(crate) fn restore(
        saved: &SavedFunction,
        path: &str,
        check: &Check<'_>,
    ) -> Result<Self, RestoreError> {
        let SavedFunction {
            slot,
            desc,
            allowed,
            host,
            guest,
            requirements,
            resources,
            needs_resources,
            interrupts_pending,
            requests_pending,
            host_ejects_owed,
            host_eject_since_ns,
            last_activity_ns,
            eject_since_ns,
            hold_reported,
            probed_bars,
            config,
            backing,
            successor,
            unlisted,
        } = saved;
        let f = |name: &str| format!("{path}.{name}");
        let illegal = |why| RestoreError::IllegalState {
            field: path.to_owned(),
            why,
        };
        let slot = crate::save::slot(f("slot"), *slot)?;
        let desc = description(f("desc"), desc)?;
        if desc.wslot != slot {
            return Err(illegal("the description names another slot"));
        }
        let host = required(f("host"), *host, &HOST_STATES)?;
        let guest = required(f("guest"), *guest, &GUEST_STATES)?;
        let backing = required(f("backing"), *backing, &BACKINGS)?;
        let limits = &check.config.limits;
        let requests_limit = limits.max_outstanding_requests;
        check.count(
            f("requests_pending"),
            *requests_pending as usize,
            requests_limit,
        )?;
        check.count(
            f("interrupts_pending"),
            *interrupts_pending as usize,
            requests_limit,
        )?;
        check.count(
            f("host_ejects_owed"),
            *host_ejects_owed as usize,
            requests_limit.max(1),
        )?;
        check.count(f("config"), config.len(), limits.max_config_cache)?;
        let host_eject_since = check.opt_time(f("host_eject_since_ns"), *host_eject_since_ns)?;
        let probed_bars = match probed_bars.as_slice() {
            [] => None,
            bars => Some(
                <[u32; 6]>::try_from(bars).map_err(|_| RestoreError::OverLimit {
                    field: f("probed_bars"),
                    count: bars.len(),
                    limit: 6,
                })?,
            ),
        };
        let mut copy = BTreeMap::new();
        for (i, d) in config.iter().enumerate() {
            let offset = u16::try_from(d.offset)
                .ok()
                .filter(|o| o % 4 == 0)
                .ok_or_else(|| RestoreError::BadValue {
                    field: format!("{path}.config[{i}].offset"),
                    value: u64::from(d.offset),
                })?;
            if copy.insert(offset, d.value).is_some() {
                return Err(RestoreError::BadValue {
                    field: format!("{path}.config[{i}].offset"),
                    value: u64::from(d.offset),
                });
            }
        }
        let successor = successor
            .as_ref()
            .map(|s| {
                let desc = description(f("successor.desc"), &s.desc)?;
                if desc.wslot != slot {
                    return Err(illegal("the successor names another slot"));
                }
                Ok(Successor {
                    desc,
                    ejected: s.ejected,
                })
            })
            .transpose()?;
        let function = Self {
            slot,
            desc,
            allowed: *allowed,
            host,
            guest,
            requirements: enumeration(f("requirements"), *requirements, &STAGES)?,
            resources: enumeration(f("resources"), *resources, &STAGES)?,
            needs_resources: *needs_resources,
            interrupts_pending: *interrupts_pending,
            requests_pending: *requests_pending,
            host_ejects_owed: *host_ejects_owed,
            host_eject_since,
            last_activity: check.opt_time(f("last_activity_ns"), *last_activity_ns)?,
            eject_since: check.opt_time(f("eject_since_ns"), *eject_since_ns)?,
            hold_reported: *hold_reported,
            probed_bars,
            config: copy,
            backing,
            successor,
            unlisted: *unlisted,
        };
        function.legal().map_err(illegal)?;
        Ok(function)
    }

    /// Whether its states can occur together with every safeguard on (the table in
    /// `machine.rs`); the rule broken if not.
    fn legal(&self) -> Result<(), &'static str> {
        let visible = self.guest_visible();
        match (self.host, self.guest) {
            (HostState::Listed, GuestState::Ejecting) => {
                return Err("a function the host lists is never ejected from the guest");
            }
            (HostState::Ejecting, GuestState::Hidden) => {
                return Err("a function the guest never saw is not ejected (it coalesces)");
            }
            (HostState::Gone, GuestState::Hidden) => {
                return Err("a gone function the guest never saw is forgotten");
            }
            _ => {}
        }
        let ejecting = self.host == HostState::Ejecting;
        if ejecting != (self.host_ejects_owed > 0) || ejecting != self.host_eject_since.is_some() {
            return Err("host EJECTs are owed exactly while the host is ejecting it");
        }
        if visible == (self.backing == Backing::Released) {
            return Err("a function is backed exactly while the guest can see it");
        }
        if !visible && (self.eject_since.is_some() || self.successor.is_some()) {
            return Err("a function the guest never saw has no eject or successor");
        }
        if self.guest == GuestState::Ejecting && self.eject_since.is_none() {
            return Err("an EJECT reached the guest without an eject pending");
        }
        Ok(())
    }
}
