//! The host's monitor: one thread that looks at every open bus every 2 ms (by default) and
//! prints its state (`@@ host state ...`) whenever it changed, until the bus is rescinded. One
//! thread for all buses rather than one per bus: with many buses, a sleeping thread per bus
//! waking 500 times a second costs more CPU than the buses' own traffic.

use crate::report::HostState;
use host_sim::SharedBus;
use std::sync::mpsc;
use std::time::Duration;

/// How often each bus's state is looked at, by default.
pub(super) const DEFAULT_PERIOD: Duration = Duration::from_millis(2);

/// A bus the monitor watches.
pub(super) struct Watched {
    bus: String,
    shared: SharedBus,
    /// Whether the monitor drains the bus's events (nothing else reads them).
    drain: bool,
    last: Option<HostState>,
}

impl Watched {
    /// Watches `shared`, printed as `bus`; `drain` when nothing else reads its events.
    pub(super) fn new(bus: String, shared: SharedBus, drain: bool) -> Self {
        Self {
            bus,
            shared,
            drain,
            last: None,
        }
    }

    /// Prints the state if it changed; false once the bus was seen rescinded.
    fn check(&mut self) -> bool {
        let Self {
            bus,
            shared,
            drain,
            last,
        } = self;
        let state = shared.with(|b| {
            if *drain {
                while b.poll_event().is_some() {}
            }
            HostState {
                bus: bus.clone(),
                rescinded: b.rescinded(),
                broke_protocol: b.broke_protocol(),
                ejecting: b
                    .slots()
                    .into_iter()
                    .filter(|&s| b.eject_outstanding(s))
                    .collect(),
                functions: crate::report::host_functions(b),
                busy: b.has_scheduled(),
                unfired: b
                    .script_steps_fired()
                    .iter()
                    .enumerate()
                    .filter(|(_, fired)| !**fired)
                    .map(|(i, _)| i + 1)
                    .collect(),
            }
        });
        if last.as_ref() == Some(&state) {
            return true;
        }
        println!("@@ {}", state.line());
        let rescinded = state.rescinded;
        *last = Some(state);
        !rescinded
    }
}

/// Starts the monitor thread; buses sent on the returned sender are watched from then on.
pub(super) fn start(period: Duration) -> std::io::Result<mpsc::Sender<Watched>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("host-monitor".into())
        .spawn(move || run(&rx, period))?;
    Ok(tx)
}

fn run(rx: &mpsc::Receiver<Watched>, period: Duration) {
    let mut watched: Vec<Watched> = Vec::new();
    loop {
        if watched.is_empty() {
            // Nothing to look at: wait for the next bus rather than tick.
            match rx.recv() {
                Ok(w) => watched.push(w),
                Err(mpsc::RecvError) => return,
            }
        }
        watched.extend(rx.try_iter());
        watched.retain_mut(Watched::check);
        std::thread::sleep(period);
    }
}
