//! `openhcl-vpci update`s in a row during a multi-process run: a thread asks the service to
//! replace its own image again and again while the guest probes and is hot-plugged. Each
//! update must be answered by the new image ("updated: ..."); the first one that is not ends
//! the series and is the run's harness error (the service's failure, not the guest's).

use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The pause between two updates (the guest and the storm make progress in between).
const SPACING: Duration = Duration::from_millis(5);

/// A running series of updates.
pub(super) struct Updater {
    done: mpsc::Receiver<Result<u32, String>>,
}

/// Starts `count` updates of the service behind `control`, with its binary `bin`.
pub(super) fn start(bin: PathBuf, control: PathBuf, count: u32) -> Updater {
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut ok = 0;
        for i in 0..count {
            std::thread::sleep(SPACING);
            let out = Command::new(&bin)
                .arg("update")
                .arg("--control")
                .arg(&control)
                .output();
            match out {
                Ok(out) if out.status.success() && out.stdout.starts_with(b"updated: ") => ok += 1,
                Ok(out) => {
                    let _ = tx.send(Err(format!(
                        "update {} of {count} failed: {}{}",
                        i + 1,
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot run openhcl-vpci update: {e}")));
                    return;
                }
            }
        }
        let _ = tx.send(Ok(ok));
    });
    Updater { done }
}

impl Updater {
    /// Waits for the series to end, at most until `deadline`: how many updates succeeded,
    /// or why one did not.
    pub(super) fn finish(self, deadline: Instant) -> Result<u32, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.done
            .recv_timeout(left)
            .unwrap_or_else(|_| Err("the updates did not finish in time".to_owned()))
    }
}
