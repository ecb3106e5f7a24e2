//! A guest that stalls on one bus (issue 13, item 6): buses are independent (guarantee 6).
//! The guest on bus 0 stops at 2 s (its kernel wedged on that bus); the host then ejects bus
//! 0's function and hot-adds one on bus 1. Through the relay, bus 1's guest gets its new
//! function as if nothing happened, the host's EJECT on bus 0 is answered within its budget
//! by the relay itself, and the relay's inspect tree shows the stall: bus 0's EJECT held, its
//! function still shielded. Directly, the host waits out its 60 s on bus 0.

use petri::explore::{Strategy, explore, run_seed};
use petri::outcome::Outcome;
use petri::scenario::{GuestKind, Scenario};

const STALL: &str = concat!(
    include_str!("data/stall-one-bus.toml"),
    "\n",
    r#"[[expect]]
guest = "linux-6.2"
relay = true
result = "pass"

[[expect]]
guest = "linux-6.2"
relay = false
result = "fail"
kinds = ["eject_unanswered"]
"#
);

/// Through the relay the stalled bus costs the other nothing, and every check of the
/// relay's tree holds; directly the host's EJECT on the stalled bus goes unanswered.
#[test]
fn a_stalled_bus_leaves_the_other_alone() {
    let scenario = Scenario::from_toml("stall-one-bus", STALL).expect("scenario");
    for guest in [GuestKind::Linux62, GuestKind::Linux63] {
        let relay = explore(
            &scenario,
            guest,
            true,
            10,
            Strategy::Random { first_seed: 0 },
            |_| {},
        )
        .expect("runs");
        assert_eq!(
            relay.failures, 0,
            "{guest} relay: {:?}",
            relay.first_failure
        );
        assert!(relay.unfired_steps.is_empty(), "{:?}", relay.unfired_steps);
        let direct = run_seed(&scenario, guest, false, 0, false).expect("run");
        assert!(
            matches!(direct.outcome, Outcome::EjectUnanswered { bus: 0, .. }),
            "{guest} direct: {}",
            direct.outcome
        );
    }
}

/// A check that does not hold fails the run, naming the path and both values, on a model
/// and on a real driver alike.
#[test]
fn a_failed_check_fails_the_run() {
    let text = STALL.replace(
        "path = \"guest/phase\"\nequals = \"installed\"",
        "path = \"guest/phase\"\nequals = \"silent\"",
    );
    let scenario = Scenario::from_toml("stall-one-bus", &text).expect("scenario");
    for guest in [GuestKind::Linux63, GuestKind::Debian61] {
        let r = run_seed(&scenario, guest, true, 0, false).expect("run");
        match &r.outcome {
            Outcome::CheckFailed {
                bus,
                path,
                expected,
                got,
            } => {
                assert_eq!((*bus, path.as_str()), (1, "guest/phase"));
                assert_eq!(expected, "\"silent\"");
                assert_eq!(got, "\"installed\"");
            }
            other => panic!("{}: {other}", guest.name()),
        }
    }
}

/// Without the stall the guest (a model or a real driver) answers bus 0's EJECT itself: the
/// relay never answers at the deadline, so the stalled bus's checks fail. The stall is what
/// the checks see.
#[test]
fn without_the_stall_the_guest_answers() {
    let text = STALL.replace("[guest]\nstall = { bus = 0, at = \"2s\" }\n", "");
    let scenario = Scenario::from_toml("no-stall", &text).expect("scenario");
    for guest in [GuestKind::Linux63, GuestKind::Debian612] {
        let r = run_seed(&scenario, guest, true, 0, false).expect("run");
        assert!(
            matches!(&r.outcome, Outcome::CheckFailed { bus: 0, .. }),
            "{}: the stalled bus's checks cannot hold when nothing stalls: {}",
            guest.name(),
            r.outcome
        );
    }
}

/// A stall or a check names a bus the scenario has.
#[test]
fn a_stall_or_check_of_a_missing_bus_is_refused() {
    let text = STALL.replace("stall = { bus = 0,", "stall = { bus = 5,");
    let e = Scenario::from_toml("bad", &text).expect_err("refused");
    assert!(e.to_string().contains("stall names bus 5"), "{e}");
    let text = STALL.replace(
        "[[check]]\nbus = 1\npath = \"guest/phase\"",
        "[[check]]\nbus = 7\npath = \"guest/phase\"",
    );
    let e = Scenario::from_toml("bad", &text).expect_err("refused");
    assert!(e.to_string().contains("names bus 7"), "{e}");
}
