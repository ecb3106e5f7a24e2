//! A guest endpoint's control connection to the service: the offers and rescinds it reads
//! (on a thread of its own), and the config-space and BAR accesses it makes as `mmio`
//! requests, each waited for (with a limit) while other messages queue up behind it.

use openhcl_vpci::control::{self, ControlError, Message, MmioOp};
use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vmbus_channel::{RingChannel, RingChannelConfig};

/// How long an access waits for the service's answer before the service counts as gone.
const MMIO_LIMIT: Duration = Duration::from_secs(10);

/// How long [`Ctl::connect`] retries while the service starts.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// The control connection of a guest endpoint (the opener's side of the control plane).
pub struct Ctl {
    stream: UnixStream,
    rx: mpsc::Receiver<Option<Message>>,
    backlog: VecDeque<Message>,
    next_id: u64,
    gone: bool,
}

impl Ctl {
    /// Connects to the service's guest socket, retrying for up to 10 s while it starts.
    pub fn connect(socket: &Path) -> std::io::Result<Self> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < CONNECT_LIMIT => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        };
        let (tx, rx) = mpsc::channel();
        let reader = stream.try_clone()?;
        std::thread::spawn(move || {
            // A frame that does not decode ends the connection like a close.
            while let Ok(Some((m, _))) = control::recv(&reader) {
                if tx.send(Some(m)).is_err() {
                    return;
                }
            }
            let _ = tx.send(None);
        });
        Ok(Self {
            stream,
            rx,
            backlog: VecDeque::new(),
            next_id: 1,
            gone: false,
        })
    }

    /// The service closed the connection (or stopped answering an access).
    pub fn gone(&self) -> bool {
        self.gone
    }

    /// Makes one access and waits for its answer: the value read (0 for a write), or `None`
    /// for a fault or a service that is gone.
    pub fn mmio(&mut self, bus: &str, op: MmioOp) -> Option<u32> {
        if self.gone {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let m = Message::Mmio {
            id,
            bus: bus.to_owned(),
            op,
        };
        if control::send(&self.stream, &m, None).is_err() {
            self.gone = true;
            return None;
        }
        loop {
            match self.rx.recv_timeout(MMIO_LIMIT) {
                Ok(Some(Message::MmioDone { id: got, value })) if got == id => return value,
                Ok(Some(other)) => self.backlog.push_back(other),
                Ok(None) | Err(_) => {
                    self.gone = true;
                    return None;
                }
            }
        }
    }

    /// The next message from the service, if one is waiting.
    pub fn next_message(&mut self) -> Option<Message> {
        if let Some(m) = self.backlog.pop_front() {
            return Some(m);
        }
        match self.rx.try_recv() {
            Ok(Some(m)) => Some(m),
            Ok(None) | Err(mpsc::TryRecvError::Disconnected) => {
                self.gone = true;
                None
            }
            Err(mpsc::TryRecvError::Empty) => None,
        }
    }

    /// Opens `bus`'s ring.
    pub fn open(&self, bus: &str) -> Result<RingChannel, ControlError> {
        control::open_ring(&self.stream, bus, RingChannelConfig::default())
    }

    /// Tells the service the guest closed its ring of `bus` (the offer stays).
    pub fn close(&self, bus: &str) {
        self.tell(Message::Close {
            bus: bus.to_owned(),
        });
    }

    /// Tells the service the guest let go of `bus`.
    pub fn release(&self, bus: &str) {
        self.tell(Message::Release {
            bus: bus.to_owned(),
        });
    }

    fn tell(&self, m: Message) {
        if !self.gone {
            let _ = control::send(&self.stream, &m, None);
        }
    }
}

/// Reads the driving process's commands (one per line on stdin, such as `teardown`) on a
/// thread of its own.
pub fn stdin_commands() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line.trim().to_owned()).is_err() {
                return;
            }
        }
    });
    rx
}
