//! SIGTERM and SIGINT: only the watcher thread takes them.
//!
//! Every other thread of the service blocks both ([`block_in_this_thread`] runs before the
//! first thread is spawned, and threads inherit their creator's mask), so a signal is
//! delivered to the watcher or stays pending. That is what lets a shutdown asked for during
//! an update survive the `exec`: the update stops the watcher ([`Watcher::stop`]), after
//! which a signal stays pending in the kernel; the mask and the pending signal are kept across
//! `exec`, and the successor's watcher takes it once it has registered its handler. Without
//! this, a signal in the last moments before the `exec` was caught by the old image and lost
//! with it, and one just after killed the successor before it had a handler.

use super::Event;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use signal_hook::iterator::{Handle, Signals};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The signals the service shuts down on.
fn shutdown_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Blocks SIGTERM and SIGINT in the calling thread (and so in every thread it spawns later).
pub(super) fn block_in_this_thread() -> std::io::Result<()> {
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&shutdown_set()), None)
        .map_err(std::io::Error::from)
}

/// The thread that turns the first SIGTERM or SIGINT into [`Event::Shutdown`].
pub(super) struct Watcher {
    handle: Handle,
    thread: JoinHandle<bool>,
}

impl Watcher {
    /// Registers the handlers, then starts the watcher, which unblocks the signals for itself
    /// alone: a signal already pending (one that arrived during an update's `exec`) is taken
    /// at once.
    pub(super) fn start(tx: mpsc::Sender<Event>) -> std::io::Result<Self> {
        let mut signals =
            Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Err(e) =
                    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&shutdown_set()), None)
                {
                    tracing::error!(error = %e, "cannot take signals; SIGTERM stays pending");
                }
                let mut caught = false;
                if let Some(signal) = signals.forever().next() {
                    tracing::info!(signal, "shutting down");
                    let _ = tx.send(Event::Shutdown);
                    caught = true;
                }
                // Closed (or done): from here on a signal stays pending for the successor.
                let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&shutdown_set()), None);
                // One caught between the close and the block is still reported.
                if !caught && signals.pending().next().is_some() {
                    tracing::info!("shutting down (signal during the stop)");
                    let _ = tx.send(Event::Shutdown);
                    caught = true;
                }
                caught
            })?;
        Ok(Self { handle, thread })
    }

    /// Stops the watcher: once this returns, no thread of this process takes SIGTERM or
    /// SIGINT, so one that arrives stays pending (across an `exec`, for the successor). True
    /// if the watcher had taken one (its [`Event::Shutdown`] is queued).
    pub(super) fn stop(self) -> bool {
        self.handle.close();
        self.thread.join().unwrap_or(false)
    }
}
