//! The end-of-run verdict of a multi-process run from what the endpoints reported on their
//! `@@` lines ([`vpci_endpoints::report`]: the host's state and the guest's holdings per bus,
//! each printed whenever it changes, and a guest's failure): the same checks as a simulated
//! run (`eject_unanswered`, `lost_bus`, `ghost_device`, `lost_device` through
//! [`compare_functions`]), applied to the last state each side reported once the run went
//! quiet.

use crate::outcome::{Identity, Outcome, compare_functions};
use vpci_endpoints::report::{FunctionId, GuestFailure, GuestState, HostState};
use vpci_protocol::WinSlot;

/// petri's identity of an endpoint's function.
fn identity(id: FunctionId) -> Identity {
    let FunctionId {
        vendor_id,
        device_id,
        serial,
    } = id;
    Identity {
        vendor_id,
        device_id,
        serial,
    }
}

/// An endpoint's function id of petri's identity.
pub(crate) fn function_id(id: Identity) -> FunctionId {
    let Identity {
        vendor_id,
        device_id,
        serial,
    } = id;
    FunctionId {
        vendor_id,
        device_id,
        serial,
    }
}

fn identities(f: &[(WinSlot, FunctionId)]) -> Vec<(WinSlot, Identity)> {
    f.iter().map(|&(s, id)| (s, identity(id))).collect()
}

/// A guest failure's `@@` line (without the `@@ `) for `bus`.
pub(crate) fn failure_line(bus: &str, o: &Outcome) -> String {
    let failure = match o {
        Outcome::Guest {
            failure,
            context,
            function,
            message,
            ..
        } => GuestFailure {
            bus: bus.to_owned(),
            kind: failure.clone(),
            context: context.clone(),
            function: function.clone(),
            message: message.clone(),
        },
        other => GuestFailure {
            bus: bus.to_owned(),
            kind: other.kind().to_owned(),
            context: String::new(),
            function: String::new(),
            message: other.to_string(),
        },
    };
    failure.line()
}

/// Parses a guest failure's line as the failure of bus index `index`.
pub(crate) fn parse_failure(line: &str, index: usize) -> Option<Outcome> {
    let GuestFailure {
        kind,
        context,
        function,
        message,
        ..
    } = GuestFailure::parse(line)?;
    Some(Outcome::Guest {
        bus: index,
        failure: kind,
        context,
        function,
        message,
    })
}

/// The end-of-run verdict of bus `index` from the last states both sides reported.
pub(crate) fn verdict(
    index: usize,
    host: Option<&HostState>,
    guest: Option<&GuestState>,
) -> Outcome {
    let Some(host) = host else {
        return Outcome::LostBus { bus: index };
    };
    if let Some(slot) = host.ejecting.first() {
        return Outcome::EjectUnanswered {
            bus: index,
            slot: slot.to_string(),
        };
    }
    let Some(guest) = guest else {
        return Outcome::LostBus { bus: index };
    };
    if guest.closed {
        if !host.rescinded && !host.broke_protocol {
            return Outcome::LostBus { bus: index };
        }
        return Outcome::Ok;
    }
    if host.rescinded {
        return Outcome::Ok;
    }
    compare_functions(
        index,
        &identities(&host.functions),
        &identities(&guest.held),
        guest.probed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(serial: u32) -> FunctionId {
        FunctionId {
            vendor_id: 0x15b3,
            device_id: 0x101a,
            serial,
        }
    }

    /// The verdict looks both ways; a failure line round-trips into the same outcome.
    #[test]
    fn verdicts() {
        let host = HostState {
            bus: "bus0".into(),
            rescinded: false,
            broke_protocol: false,
            ejecting: vec![],
            functions: vec![(WinSlot::from_raw(1), id(1))],
            busy: false,
            unfired: vec![],
        };
        let mut guest = GuestState {
            bus: "bus0".into(),
            probed: true,
            closed: false,
            held: vec![(WinSlot::from_raw(1), id(1))],
        };
        assert_eq!(verdict(0, Some(&host), Some(&guest)), Outcome::Ok);
        guest.held = vec![(WinSlot::from_raw(1), id(2))];
        assert_eq!(verdict(0, Some(&host), Some(&guest)).kind(), "ghost_device");
        guest.held.clear();
        assert_eq!(verdict(0, Some(&host), Some(&guest)).kind(), "lost_device");
        guest.closed = true;
        assert_eq!(verdict(0, Some(&host), Some(&guest)).kind(), "lost_bus");
        let mut ejecting = host.clone();
        ejecting.ejecting = vec![WinSlot::from_raw(1)];
        assert_eq!(
            verdict(0, Some(&ejecting), Some(&guest)).kind(),
            "eject_unanswered"
        );
        let f = Outcome::Guest {
            bus: 0,
            failure: "null_deref".into(),
            context: "ctx".into(),
            function: "f".into(),
            message: "m|n".into(),
        };
        assert_eq!(parse_failure(&failure_line("bus0", &f), 0), Some(f));
        assert_eq!(function_id(identity(id(3))), id(3));
    }
}
