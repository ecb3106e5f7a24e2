//! Model check of the real `BusRelay` (see `model/mod.rs`).

mod model;

use model::*;
use stateright::{Checker, Model};
use std::time::Instant;
use vpci_relay::Safeguards;

/// Prints a counterexample: each action and what it made the relay send to either side.
fn print_path(name: &str, path: stateright::Path<State, Action>) {
    println!("counterexample for \"{name}\":");
    let steps = path.into_vec();
    let mut prev: Option<Action> = None;
    let mut last = None;
    for (state, action) in steps {
        if let Some(a) = prev {
            println!("  {:>8?}  {a:?}  => {}", state.now, state.last);
        }
        prev = action;
        last = Some(state);
    }
    if let Some(s) = last {
        println!("  failure: {:?}; seen: {:?}", s.guest.failure, s.seen);
    }
}

/// Runs the checker and returns it.
fn check(bounds: Bounds, safeguards: Safeguards) -> impl Checker<RelayModel> {
    let start = Instant::now();
    let c = RelayModel::new(bounds, safeguards)
        .checker()
        .threads(2)
        .spawn_bfs()
        .join();
    println!(
        "{bounds:?}: {} unique states, {} total, depth {}, {:?}",
        c.unique_state_count(),
        c.state_count(),
        c.max_depth(),
        start.elapsed()
    );
    c
}

/// Every property holds for every interleaving within the bounds, with all safeguards on.
#[test]
fn model_check_all_safeguards_on() {
    let c = check(Bounds::SMALL, Safeguards::ALL_ON);
    for (name, path) in c.discoveries() {
        print_path(name, path);
    }
    c.assert_properties();
}
