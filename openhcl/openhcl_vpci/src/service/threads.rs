//! The service's small threads (a reader per peer connection, the guest and control
//! listeners), each of which can be paused between two frames or two connections so the
//! service can hand its sockets to a successor with nothing half-read.
//!
//! A paused thread exits; what it had not read stays in its socket for the successor, and a
//! listener thread gives its listener back.

use crate::control::{self, ControlError, Message};
use crate::service::Event;
use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// A latch the threads poll beside their sockets: once set it stays set, and every thread
/// waiting on it (or about to) stops.
#[derive(Clone, Debug)]
pub(crate) struct Pause {
    fd: Arc<OwnedFd>,
}

/// What a wait ended with.
enum Woke {
    Readable,
    Paused,
}

impl Pause {
    pub(crate) fn new() -> std::io::Result<Self> {
        let fd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(Self { fd: Arc::new(fd) })
    }

    /// Sets the latch (never reset: the counter is not drained, so it stays readable).
    pub(crate) fn set(&self) -> std::io::Result<()> {
        rustix::io::write(&*self.fd, &1u64.to_ne_bytes())?;
        Ok(())
    }

    fn is_set(&self) -> bool {
        let mut fds = [PollFd::new(&*self.fd, PollFlags::IN)];
        matches!(poll(&mut fds, Some(&rustix::event::Timespec::default())), Ok(n) if n > 0)
    }

    /// Waits until `fd` is readable (or hung up) or the latch is set; the latch wins a tie so
    /// a paused thread reads nothing more.
    fn wait(&self, fd: BorrowedFd<'_>) -> std::io::Result<Woke> {
        loop {
            let mut fds = [
                PollFd::new(&*self.fd, PollFlags::IN),
                PollFd::new(&fd, PollFlags::IN | PollFlags::RDHUP),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if !fds[0].revents().is_empty() {
                return Ok(Woke::Paused);
            }
            if !fds[1].revents().is_empty() {
                return Ok(Woke::Readable);
            }
        }
    }
}

/// Starts a thread that reads whole frames from `stream` and sends each as an event, until
/// the connection ends (then `on_end`) or the service pauses (then it just returns, leaving
/// the rest in the socket).
pub(crate) fn spawn_reader(
    name: &str,
    stream: UnixStream,
    sender: mpsc::Sender<Event>,
    pause: Pause,
    on_msg: impl Fn(Message, Option<OwnedFd>) -> Event + Send + 'static,
    on_end: impl FnOnce(Option<ControlError>) -> Event + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let end = loop {
                match pause.wait(stream.as_fd()) {
                    Ok(Woke::Paused) => return,
                    Ok(Woke::Readable) => {}
                    Err(e) => break Some(ControlError::Io(e)),
                }
                match control::recv(&stream) {
                    Ok(Some((m, fd))) => {
                        if sender.send(on_msg(m, fd)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            let _ = sender.send(on_end(end));
        })
}

/// Starts a thread that accepts connections on `listener` and passes each to `on_conn`
/// (which returns false to stop), until the service pauses: then the thread returns the
/// listener, with any connection not yet accepted still in its backlog.
pub(crate) fn spawn_listener(
    name: &str,
    listener: UnixListener,
    pause: Pause,
    mut on_conn: impl FnMut(UnixStream) -> bool + Send + 'static,
) -> std::io::Result<JoinHandle<Option<UnixListener>>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            loop {
                match pause.wait(listener.as_fd()) {
                    Ok(Woke::Paused) => return Some(listener),
                    Ok(Woke::Readable) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "listener failed");
                        return None;
                    }
                }
                // The latch may have been set while we woke for a connection: leave it to
                // the successor.
                if pause.is_set() {
                    return Some(listener);
                }
                match listener.accept() {
                    Ok((stream, _)) => {
                        if !on_conn(stream) {
                            return None;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "accept failed"),
                }
            }
        })
}
