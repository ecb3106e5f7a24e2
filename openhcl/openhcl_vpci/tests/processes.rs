//! host_sim, `openhcl-vpci` and a Linux guest model in three processes, over the control
//! plane and ring channels of real memfds and eventfds. Every wait is bounded: a hang fails
//! the test instead of blocking the suite.

mod support;

use std::time::Duration;
use support::Rig;

/// The re-executed host or guest endpoint (does nothing in a normal test run).
#[test]
fn child_role() {
    support::child_role();
}

const LIMIT: Duration = Duration::from_secs(60);

/// (1) The guest probes a bus of two functions through the service; inspect shows it.
#[test]
fn guest_probes_two_functions_through_the_service() {
    let rig = Rig::start("probe", "buses=1,functions=2", &[], "model=6.2");
    rig.guest.wait_for(LIMIT, |l| l == "guest probed bus0");
    rig.guest.wait_for(LIMIT, |l| l == "guest devices bus0 2");
    let tree = rig.inspect("buses/bus0");
    assert!(tree.contains("\"guest_state\": \"Open\""), "{tree}");
    // The relay calls the probe done once the bus has been quiet for the settle window.
    let start = std::time::Instant::now();
    loop {
        let phase = rig.inspect("buses/bus0/relay/guest");
        if phase.contains("installed") {
            break;
        }
        assert!(start.elapsed() < LIMIT, "{phase}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !rig.guest
            .seen()
            .iter()
            .any(|l| l.contains("failure") || l.contains("violation")),
        "{:?}",
        rig.guest.seen()
    );
}
