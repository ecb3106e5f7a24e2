//! The control plane: a small VMBus-like protocol between an *offerer* (the host endpoint
//! towards the service; the service towards the guest) and an *opener* (the service towards
//! the host; the guest towards the service), and the inspect queries of the control socket.
//!
//! Each message is one frame on a connected Unix stream socket: a little-endian `u32` length,
//! then that many bytes of JSON (one [`Message`]). A frame is sent with one `sendmsg`; the
//! only message that carries a descriptor, [`Message::Open`], carries exactly one (with
//! `SCM_RIGHTS`): one end of a fresh socket pair over which the opener then hands the ring to
//! the offerer with vmbus_channel's own helpers ([`vmbus_channel::RingChannel::create_over`],
//! [`vmbus_channel::RingChannel::open_from`]). That socket stays with the ring as its liveness
//! signal, so a peer process that dies ends each of its rings as well as its connection.
//!
//! The lifecycle of one bus, by its instance id (VMBus's offer/open/close/rescind/release):
//!
//! ```text
//! offerer                     opener
//!   Offer{bus}          ->                 (boot-time buses, then AllOffersDelivered)
//!                       <-    Open{bus} + socket (the opener creates the ring over it)
//!                       <-    Close{bus}   (the opener closed its ring; the offer stays)
//!   Rescind{bus}        ->                 (the offerer revoked the bus)
//!                       <-    Release{bus} (the opener let go: the id may be offered again)
//! ```
//!
//! Config-space and BAR accesses of the guest (which a VM makes through MMIO) travel as
//! [`Message::Mmio`] requests from opener to offerer and are answered by
//! [`Message::MmioDone`]. Both peers are untrusted: every frame is bounded and validated, and
//! a bad one is a [`ControlError`] that closes that peer's connection.

use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use thiserror::Error;

/// The largest frame body accepted (an inspect reply of many buses fits easily).
pub const MAX_FRAME: usize = 1 << 20;
/// The longest bus instance id accepted.
pub const MAX_BUS_ID: usize = 64;

/// One config-space or BAR access (the guest's MMIO to the config window or a BAR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum MmioOp {
    /// Reads `len` bytes of a function's config space.
    ConfigRead {
        /// The function's raw wslot.
        slot: u32,
        /// Offset in config space.
        offset: u16,
        /// 1, 2 or 4.
        len: u8,
    },
    /// Writes `len` bytes of a function's config space.
    ConfigWrite {
        /// The function's raw wslot.
        slot: u32,
        /// Offset in config space.
        offset: u16,
        /// 1, 2 or 4.
        len: u8,
        /// The value.
        value: u32,
    },
    /// Reads `len` bytes of device memory in a BAR.
    BarRead {
        /// The function's raw wslot.
        slot: u32,
        /// The BAR.
        bar: u8,
        /// Offset in the BAR.
        offset: u64,
        /// 1, 2 or 4.
        len: u8,
    },
    /// Writes `len` bytes of device memory in a BAR.
    BarWrite {
        /// The function's raw wslot.
        slot: u32,
        /// The BAR.
        bar: u8,
        /// Offset in the BAR.
        offset: u64,
        /// 1, 2 or 4.
        len: u8,
        /// The value.
        value: u32,
    },
}

impl MmioOp {
    /// The access's width, checked: 1, 2 or 4 bytes.
    pub fn width(&self) -> u8 {
        match *self {
            MmioOp::ConfigRead { len, .. }
            | MmioOp::ConfigWrite { len, .. }
            | MmioOp::BarRead { len, .. }
            | MmioOp::BarWrite { len, .. } => len,
        }
    }
}

/// One control-plane message. See the [module documentation](self) for who sends which.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Offerer: a bus is available.
    Offer {
        /// The bus's instance id.
        bus: String,
    },
    /// Offerer: every boot-time bus has been offered.
    AllOffersDelivered {},
    /// Offerer: the bus is gone; the opener must [`Message::Release`] it.
    Rescind {
        /// The bus's instance id.
        bus: String,
    },
    /// Opener: opens an offered bus; carries one socket for the ring handoff.
    Open {
        /// The bus's instance id.
        bus: String,
    },
    /// Opener: closed its ring of the bus (the offer stays).
    Close {
        /// The bus's instance id.
        bus: String,
    },
    /// Opener: let go of a rescinded bus.
    Release {
        /// The bus's instance id.
        bus: String,
    },
    /// Opener: a config-space or BAR access on an open bus.
    Mmio {
        /// Names the answer.
        id: u64,
        /// The bus's instance id.
        bus: String,
        /// The access.
        op: MmioOp,
    },
    /// Offerer: the answer to [`Message::Mmio`]: the value read (0 for a write), or `None`
    /// when nothing backs the access (the guest faults).
    MmioDone {
        /// The request's id.
        id: u64,
        /// The value, or `None` for a fault.
        value: Option<u32>,
    },
    /// Inspect client: the tree at `path` (empty: the whole tree).
    Inspect {
        /// A `/`-separated path.
        path: String,
        /// JSON rather than indented text.
        json: bool,
    },
    /// Service: the answer to [`Message::Inspect`], the subtree rendered, or why not.
    InspectReply {
        /// The rendered subtree, or an error.
        result: Result<String, String>,
    },
    /// Control client: replace the running service with `binary` (its own if absent), its
    /// buses carried across.
    Update {
        /// The new binary's path.
        binary: Option<String>,
    },
    /// Service: the answer to [`Message::Update`]: from the new image once it has restored
    /// everything, or from the old one if the update was refused or failed (the old image
    /// then runs on).
    UpdateReply {
        /// What the new image restored, or why the update did not happen.
        result: Result<String, String>,
    },
}

impl Message {
    /// The bus a message names, if any.
    pub fn bus(&self) -> Option<&str> {
        match self {
            Message::Offer { bus }
            | Message::Rescind { bus }
            | Message::Open { bus }
            | Message::Close { bus }
            | Message::Release { bus }
            | Message::Mmio { bus, .. } => Some(bus),
            _ => None,
        }
    }

    /// Checks what serde cannot: bus ids are short printable names, access widths are 1, 2 or
    /// 4 bytes.
    pub fn validate(&self) -> Result<(), ControlError> {
        if let Some(bus) = self.bus() {
            let ok = !bus.is_empty()
                && bus.len() <= MAX_BUS_ID
                && bus
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.{}:".contains(c));
            if !ok {
                return Err(ControlError::BadBusId(bus.chars().take(80).collect()));
            }
        }
        if let Message::Mmio { op, .. } = self {
            if !matches!(op.width(), 1 | 2 | 4) {
                return Err(ControlError::BadAccessWidth(op.width()));
            }
        }
        Ok(())
    }
}

/// Why a control connection failed; each closes that connection.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The socket failed.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// A frame claimed more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    /// The connection ended inside a frame.
    #[error("connection ended inside a frame")]
    Truncated,
    /// The body is not a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A bus id that is empty, too long or not printable.
    #[error("bad bus id {0:?}")]
    BadBusId(String),
    /// An access that is not 1, 2 or 4 bytes wide.
    #[error("bad access width {0}")]
    BadAccessWidth(u8),
    /// An open without its socket, or a descriptor on another message.
    #[error("{0} carried {1} descriptors")]
    Descriptors(&'static str, usize),
    /// A message this side does not accept from this peer.
    #[error("unexpected message from the peer: {0}")]
    Unexpected(String),
}

fn rustix_io(e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.raw_os_error())
}

/// Sends one message, with `fd` attached when given (only [`Message::Open`] carries one).
pub fn send(
    socket: &UnixStream,
    message: &Message,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), ControlError> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let body = serde_json::to_vec(message).map_err(|e| ControlError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(ControlError::FrameTooLarge(body.len()));
    }
    let len = u32::try_from(body.len())
        .map_err(|_| ControlError::FrameTooLarge(body.len()))?
        .to_le_bytes();
    let fds: Vec<_> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(ControlError::Descriptors("a send", fds.len()));
    }
    let total = len.len() + body.len();
    let mut sent = loop {
        match sendmsg(
            socket,
            &[IoSlice::new(&len), IoSlice::new(&body)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other.map_err(rustix_io)?,
        }
    };
    // The rest of a frame the kernel took only part of (never the descriptors again).
    let frame: Vec<u8> = len.iter().chain(body.iter()).copied().collect();
    while sent < total {
        let rest = frame.get(sent..).unwrap_or_default();
        match rustix::net::send(socket, rest, SendFlags::NOSIGNAL) {
            Err(rustix::io::Errno::INTR) => continue,
            Ok(0) => return Err(ControlError::Truncated),
            Ok(n) => sent += n,
            Err(e) => return Err(rustix_io(e).into()),
        }
    }
    Ok(())
}

/// Receives one message and the descriptor it carried. `Ok(None)` when the peer closed the
/// connection between frames.
pub fn recv(socket: &UnixStream) -> Result<Option<(Message, Option<OwnedFd>)>, ControlError> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut len = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut len)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::WAITALL,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other.map_err(rustix_io)?,
        }
    };
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.bytes == 0 {
        return Ok(None);
    }
    if got.bytes < len.len() {
        let mut rest = [0u8; 4];
        let need = len.len() - got.bytes;
        (&*socket)
            .read_exact(rest.get_mut(..need).unwrap_or_default())
            .map_err(|_| ControlError::Truncated)?;
        for (dst, src) in len.iter_mut().skip(got.bytes).zip(rest) {
            *dst = src;
        }
    }
    let size = u32::from_le_bytes(len) as usize;
    if size > MAX_FRAME {
        return Err(ControlError::FrameTooLarge(size));
    }
    let mut body = vec![0u8; size];
    (&*socket)
        .read_exact(&mut body)
        .map_err(|_| ControlError::Truncated)?;
    let message: Message =
        serde_json::from_slice(&body).map_err(|e| ControlError::Malformed(e.to_string()))?;
    message.validate()?;
    let expected = usize::from(matches!(message, Message::Open { .. }));
    if fds.len() != expected {
        return Err(ControlError::Descriptors(
            if expected == 1 {
                "an open"
            } else {
                "a message"
            },
            fds.len(),
        ));
    }
    Ok(Some((message, fds.pop())))
}

/// Opens a bus's ring as the opener: sends [`Message::Open`] with one end of a fresh socket
/// pair and creates the ring over the other end (the offerer calls
/// [`vmbus_channel::RingChannel::open_from`] on the socket it received).
pub fn open_ring(
    socket: &UnixStream,
    bus: &str,
    config: vmbus_channel::RingChannelConfig,
) -> Result<vmbus_channel::RingChannel, ControlError> {
    let (ours, theirs) = UnixStream::pair()?;
    send(
        socket,
        &Message::Open {
            bus: bus.to_owned(),
        },
        Some(theirs.as_fd()),
    )?;
    drop(theirs);
    vmbus_channel::RingChannel::create_over(OwnedFd::from(ours), config)
        .map_err(|e| ControlError::Io(std::io::Error::other(e.to_string())))
}

/// Accepts a bus's ring as the offerer, from the socket a [`Message::Open`] carried.
pub fn accept_ring(fd: OwnedFd) -> Result<vmbus_channel::RingChannel, ControlError> {
    vmbus_channel::RingChannel::open_from(fd)
        .map_err(|e| ControlError::Io(std::io::Error::other(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn round_trip_with_and_without_descriptor() {
        let (a, b) = UnixStream::pair().unwrap();
        let offer = Message::Offer { bus: "bus0".into() };
        send(&a, &offer, None).unwrap();
        let (p, _q) = UnixStream::pair().unwrap();
        let open = Message::Open { bus: "bus0".into() };
        send(&a, &open, Some(p.as_fd())).unwrap();
        assert_eq!(
            recv(&b).unwrap().map(|(m, f)| (m, f.is_some())),
            Some((offer, false))
        );
        assert_eq!(
            recv(&b).unwrap().map(|(m, f)| (m, f.is_some())),
            Some((open, true))
        );
        drop(a);
        assert!(recv(&b).unwrap().is_none());
    }

    #[test]
    fn hostile_frames_are_typed_errors() {
        let cases: Vec<Vec<u8>> = vec![
            u32::MAX.to_le_bytes().to_vec(),
            [&5u32.to_le_bytes()[..], b"{nope"].concat(),
            [&3u32.to_le_bytes()[..], b"{}"].concat(),
        ];
        for bytes in cases {
            let (mut a, b) = UnixStream::pair().unwrap();
            a.write_all(&bytes).unwrap();
            drop(a);
            assert!(recv(&b).is_err(), "{bytes:?}");
        }
        for body in [
            r#"{"type":"offer","bus":""}"#,
            r#"{"type":"offer","bus":"a/b"}"#,
            r#"{"type":"open","bus":"x"}"#,
            r#"{"type":"mmio","id":1,"bus":"x","op":{"op":"config_read","slot":0,"offset":0,"len":3}}"#,
            r#"{"type":"offer","bus":"x","extra":1}"#,
            // A message without fields refuses one too (serde let it through on a unit
            // variant).
            r#"{"type":"all_offers_delivered","extra":1}"#,
        ] {
            let (mut a, b) = UnixStream::pair().unwrap();
            a.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
            a.write_all(body.as_bytes()).unwrap();
            assert!(recv(&b).is_err(), "{body}");
        }
    }
}
