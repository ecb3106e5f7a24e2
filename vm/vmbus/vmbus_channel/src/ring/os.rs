//! Operating-system plumbing of the ring backend: eventfd doorbells, the notifier thread that
//! turns a doorbell into a task wake-up, and passing descriptors over a Unix socket.

use futures::task::AtomicWaker;
use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// An eventfd used as a doorbell: one end rings, the other waits.
#[derive(Debug)]
pub(crate) struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// A new non-blocking, close-on-exec doorbell.
    pub(crate) fn new() -> io::Result<Self> {
        let fd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(Self { fd })
    }

    /// Wraps a received descriptor after checking that it is an eventfd: anything else (a
    /// regular file is always "readable") would make the notifier spin. Where `/proc` cannot
    /// tell, the descriptor is accepted; a wrong one then yields errors, never unsoundness.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        if let Ok(target) = std::fs::read_link(link) {
            if target.as_os_str() != "anon_inode:[eventfd]" {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "doorbell descriptor is {}, not an eventfd",
                        target.display()
                    ),
                ));
            }
        }
        Ok(Self { fd })
    }

    /// Rings the doorbell. A counter at its maximum (`EAGAIN`) already means "rung".
    pub(crate) fn ring(&self) -> io::Result<()> {
        match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Resets the counter; returns whether it had been rung.
    pub(crate) fn drain(&self) -> io::Result<bool> {
        let mut buf = [0u8; 8];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(_) => Ok(true),
            Err(Errno::AGAIN) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// The descriptor, for passing it to another process.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What the notifier thread shares with the channel end.
#[derive(Debug, Default)]
pub(crate) struct NotifyState {
    /// The task waiting to receive.
    pub(crate) recv: AtomicWaker,
    /// The task waiting for room to send.
    pub(crate) send: AtomicWaker,
    /// Set when the liveness socket reports that the peer went away.
    pub(crate) peer_gone: AtomicBool,
    /// Set when polling failed; the end treats it as the peer going away.
    pub(crate) failed: AtomicBool,
}

impl NotifyState {
    fn wake_all(&self) {
        self.recv.wake();
        self.send.wake();
    }
}

/// A thread that waits on a doorbell (and optionally a liveness socket) and wakes the tasks
/// of one channel end. This is what keeps the crate runtime-free: no reactor is needed, any
/// executor's waker works.
#[derive(Debug)]
pub(crate) struct Notifier {
    state: Arc<NotifyState>,
    incoming: Arc<Doorbell>,
    stop: Arc<Doorbell>,
    thread: Option<JoinHandle<Option<OwnedFd>>>,
}

impl Notifier {
    /// Starts the thread. `incoming` is the doorbell the peer rings for this end; `liveness`,
    /// if given, is a stream socket whose hang-up means the peer has gone.
    pub(crate) fn start(incoming: Arc<Doorbell>, liveness: Option<OwnedFd>) -> io::Result<Self> {
        let state = Arc::new(NotifyState::default());
        let stop = Arc::new(Doorbell::new()?);
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            let incoming = incoming.clone();
            std::thread::Builder::new()
                .name("vmbus-ring-notify".into())
                .spawn(
                    move || match notify_loop(&state, &incoming, &stop, liveness) {
                        Ok(liveness) => liveness,
                        Err(err) => {
                            tracing::warn!(error = %err, "ring channel notifier failed");
                            state.failed.store(true, Ordering::Release);
                            state.wake_all();
                            None
                        }
                    },
                )?
        };
        Ok(Self {
            state,
            incoming,
            stop,
            thread: Some(thread),
        })
    }

    /// The doorbell the thread waits on.
    pub(crate) fn doorbell(&self) -> &Arc<Doorbell> {
        &self.incoming
    }

    /// The state shared with the thread.
    pub(crate) fn state(&self) -> &NotifyState {
        &self.state
    }

    /// Sets the peer-gone flag (an end resumed after a handoff whose peer had gone).
    pub(crate) fn mark_peer_gone(&self) {
        self.state.peer_gone.store(true, Ordering::Release);
    }

    /// Stops the thread and hands its waiting to the caller's own event loop.
    pub(crate) fn detach(&mut self) -> io::Result<WaitSource> {
        let liveness = match self.thread.take() {
            Some(thread) => {
                self.stop.ring()?;
                thread
                    .join()
                    .map_err(|_| io::Error::other("the notifier thread panicked"))?
            }
            None => return Err(io::Error::other("the notifier was already detached")),
        };
        Ok(WaitSource {
            state: self.state.clone(),
            incoming: self.incoming.clone(),
            liveness,
        })
    }
}

/// A channel end's waiting, taken over by the caller's event loop instead of a notifier
/// thread ([`super::RingChannel::wait_source`]): the caller polls [`WaitSource::fds`] for
/// readability (with whatever else it waits on) and calls [`WaitSource::ready`] when one is
/// ready, which wakes the end's tasks as the notifier thread would have. One thread then
/// serves every channel it drives, and a packet's arrival wakes that thread directly.
#[derive(Debug)]
pub struct WaitSource {
    state: Arc<NotifyState>,
    incoming: Arc<Doorbell>,
    liveness: Option<OwnedFd>,
}

impl WaitSource {
    /// The descriptors to poll for readability: the doorbell, then the liveness socket (whose
    /// hang-up means the peer went away) if the end has one.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = vec![self.incoming.fd.as_fd()];
        if let Some(socket) = &self.liveness {
            fds.push(socket.as_fd());
        }
        fds
    }

    /// One of the descriptors is ready (a spurious call is harmless): resets the doorbell,
    /// notes a peer that hung up, and wakes the end's tasks.
    pub fn ready(&mut self) {
        self.drain_doorbell();
        if self.liveness.as_ref().is_some_and(peer_hung_up_if_readable) {
            self.note_peer_gone();
        }
        self.state.wake_all();
    }

    /// The descriptor at `index` in [`fds`](Self::fds) was reported ready by the caller's
    /// `poll(2)` (an index past the list is ignored): [`ready`](Self::ready) without looking
    /// at the descriptor that was not, which saves a system call per doorbell.
    pub fn ready_fd(&mut self, index: usize) {
        match index {
            0 => self.drain_doorbell(),
            1 => {
                if self.liveness.as_ref().is_some_and(peer_hung_up) {
                    self.note_peer_gone();
                }
            }
            _ => return,
        }
        self.state.wake_all();
    }

    fn drain_doorbell(&self) {
        if let Err(err) = self.incoming.drain() {
            tracing::warn!(error = %err, "ring channel doorbell failed");
            self.state.failed.store(true, Ordering::Release);
        }
    }

    fn note_peer_gone(&mut self) {
        self.liveness = None;
        self.state.peer_gone.store(true, Ordering::Release);
    }
}

impl WaitSource {
    /// Takes the end's liveness socket back (for a handoff), and whether the peer was already
    /// seen gone or the waiting failed.
    pub(crate) fn into_parts(self) -> (Option<OwnedFd>, bool) {
        let gone = self.state.peer_gone.load(Ordering::Acquire)
            || self.state.failed.load(Ordering::Acquire);
        (self.liveness, gone)
    }
}

/// Whether a liveness socket that may or may not be readable says the peer hung up.
fn peer_hung_up_if_readable(socket: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(socket, PollFlags::IN | PollFlags::RDHUP)];
    match poll(&mut fds, Some(&rustix::event::Timespec::default())) {
        Ok(n) if n > 0 => peer_hung_up(socket),
        _ => false,
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        // If ringing fails the thread cannot be told to stop; leave it detached rather than
        // hang the dropping thread.
        if self.stop.ring().is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn notify_loop(
    state: &NotifyState,
    incoming: &Doorbell,
    stop: &Doorbell,
    mut liveness: Option<OwnedFd>,
) -> io::Result<Option<OwnedFd>> {
    loop {
        let (doorbell_ready, stop_ready, socket_ready) = {
            let mut fds = vec![
                PollFd::new(&incoming.fd, PollFlags::IN),
                PollFd::new(&stop.fd, PollFlags::IN),
            ];
            if let Some(socket) = &liveness {
                fds.push(PollFd::new(socket, PollFlags::IN | PollFlags::RDHUP));
            }
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(err) => return Err(err.into()),
            }
            (
                !fds[0].revents().is_empty(),
                !fds[1].revents().is_empty(),
                fds.get(2).is_some_and(|fd| !fd.revents().is_empty()),
            )
        };
        if stop_ready {
            return Ok(liveness);
        }
        if doorbell_ready {
            incoming.drain()?;
            state.wake_all();
        }
        if socket_ready {
            if let Some(socket) = &liveness {
                if peer_hung_up(socket) {
                    liveness = None;
                    state.peer_gone.store(true, Ordering::Release);
                    state.wake_all();
                }
            }
        }
    }
}

/// Reads (and discards) what is readable on the liveness socket; true when the peer hung up.
fn peer_hung_up(socket: &OwnedFd) -> bool {
    let mut buf = [0u8; 64];
    match rustix::net::recv(socket, &mut buf, RecvFlags::DONTWAIT) {
        Ok((0, _)) => true,
        Ok(_) | Err(Errno::AGAIN) | Err(Errno::INTR) => false,
        Err(_) => true,
    }
}

/// The most descriptors one [`send_with_fds`] message carries.
pub const MAX_FDS: usize = 8;

/// Sends `data` and up to [`MAX_FDS`] descriptors as one message over a connected Unix
/// stream or seqpacket socket (`SCM_RIGHTS`); [`recv_with_fds`] receives it.
pub fn send_with_fds(
    socket: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if fds.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    let sent = sendmsg(
        socket,
        &[IoSlice::new(data)],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short handoff message",
        ));
    }
    Ok(())
}

/// Receives one message sent by [`send_with_fds`]: fills `data` and returns the descriptors
/// (close-on-exec). A message of any other length, or a truncated descriptor list, is an
/// error; the received descriptors are then closed.
pub fn recv_with_fds(socket: BorrowedFd<'_>, data: &mut [u8]) -> io::Result<Vec<OwnedFd>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let expected = data.len();
    let msg = loop {
        match recvmsg(
            socket,
            &mut [IoSliceMut::new(data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::WAITALL,
        ) {
            Err(Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "handoff carried too many descriptors",
        ));
    }
    if msg.bytes != expected {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "handoff message of {} bytes, expected {expected}",
                msg.bytes
            ),
        ));
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::task::{Wake, Waker};

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn wait_for(flag: &Flag) {
        for _ in 0..1000 {
            if flag.0.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("not woken");
    }

    /// Ringing the doorbell wakes the registered task; drain resets it.
    #[test]
    fn doorbell_wakes_registered_task() {
        let bell = Arc::new(Doorbell::new().unwrap());
        let notifier = Notifier::start(bell.clone(), None).unwrap();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        notifier.state().recv.register(&Waker::from(flag.clone()));
        bell.ring().unwrap();
        wait_for(&flag);
        drop(notifier);
        assert!(!bell.drain().unwrap());
    }

    /// Closing the liveness socket's other end reads as the peer going away.
    #[test]
    fn liveness_hangup_is_peer_gone() {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let bell = Arc::new(Doorbell::new().unwrap());
        let notifier = Notifier::start(bell, Some(OwnedFd::from(mine))).unwrap();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        notifier.state().send.register(&Waker::from(flag.clone()));
        drop(theirs);
        wait_for(&flag);
        assert!(notifier.state().peer_gone.load(Ordering::Acquire));
    }

    /// `ready_fd` acts on the descriptor named: the doorbell's index drains it and wakes the
    /// end's task; the liveness socket's index notes the peer's hang-up.
    #[test]
    fn ready_fd_acts_on_the_descriptor_named() {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let bell = Arc::new(Doorbell::new().unwrap());
        let mut notifier = Notifier::start(bell.clone(), Some(OwnedFd::from(mine))).unwrap();
        let mut source = notifier.detach().unwrap();
        assert_eq!(source.fds().len(), 2);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        source.state.recv.register(&Waker::from(flag.clone()));
        bell.ring().unwrap();
        source.ready_fd(0);
        assert!(flag.0.load(Ordering::SeqCst));
        assert!(!bell.drain().unwrap(), "the doorbell was not drained");
        drop(theirs);
        source.ready_fd(0);
        assert!(!source.state.peer_gone.load(Ordering::Acquire));
        source.ready_fd(1);
        assert!(source.state.peer_gone.load(Ordering::Acquire));
        assert_eq!(source.fds().len(), 1);
    }

    /// A descriptor that is not an eventfd is refused as a doorbell.
    #[test]
    fn non_eventfd_doorbell_is_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(Doorbell::from_fd(OwnedFd::from(a)).is_err());
        let bell = Doorbell::new().unwrap();
        assert!(Doorbell::from_fd(bell.as_fd().try_clone_to_owned().unwrap()).is_ok());
    }

    /// Descriptors and bytes cross a socket together.
    #[test]
    fn fds_cross_a_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let bell = Doorbell::new().unwrap();
        send_with_fds(a.as_fd(), b"hello", &[bell.as_fd()]).unwrap();
        let mut buf = [0u8; 5];
        let fds = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(fds.len(), 1);
        let received = Doorbell::from_fd(fds.into_iter().next().unwrap()).unwrap();
        received.ring().unwrap();
        assert!(bell.drain().unwrap());
    }
}
