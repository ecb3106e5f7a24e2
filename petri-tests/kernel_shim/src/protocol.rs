//! The framed protocol between a guest process and its controller (mirror of
//! `shim/runtime/proto.h`; change both together).
//!
//! Every frame is `{ u32 payload_len; u32 type; }` little-endian, then the payload. The guest
//! drives: at each scheduling point it sends [`GuestFrame::Sched`] and reads controller frames
//! until a [`ControllerFrame::Run`]; MMIO reads and hypercalls are answered by one
//! [`ControllerFrame::Value`].

use thiserror::Error;

const G_HELLO: u32 = 0x100;
const G_CTX: u32 = 0x101;
const G_SCHED: u32 = 0x102;
/// The most caller addresses a scheduling frame carries that are read.
const MAX_CALLERS: u32 = 64;
const G_SEND: u32 = 0x103;
const G_MMIO_READ: u32 = 0x104;
const G_MMIO_WRITE: u32 = 0x105;
const G_HYPERCALL: u32 = 0x106;
const G_LOG: u32 = 0x107;
const G_EVENT: u32 = 0x108;
const G_RESULT: u32 = 0x109;
const G_DONE: u32 = 0x10a;
const G_CRASH: u32 = 0x10b;

const C_RUN: u32 = 0x200;
const C_PACKET: u32 = 0x201;
const C_RESCIND: u32 = 0x202;
const C_ADVANCE: u32 = 0x203;
const C_COMMAND: u32 = 0x204;
const C_VALUE: u32 = 0x205;

/// The largest frame either side accepts.
pub const MAX_FRAME: u32 = 1 << 20;

/// A frame that does not decode.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The frame type is not one the protocol defines.
    #[error("unknown frame type {0:#x}")]
    UnknownType(u32),
    /// The payload is shorter than the frame type needs.
    #[error("frame type {frame_type:#x} too short: {len} bytes")]
    TooShort {
        /// The frame type.
        frame_type: u32,
        /// The payload length received.
        len: usize,
    },
    /// The announced payload length exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit")]
    TooLong(u32),
}

/// Why the running context offered the baton (`SP_*` in proto.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SchedPoint {
    /// The guest process just started.
    Start,
    /// A context waits for something to do (a command, a packet, a work item).
    Idle,
    /// `spin_lock_irqsave`.
    SpinLock,
    /// `spin_unlock_irqrestore`.
    SpinUnlock,
    /// `mutex_lock` (also the PCI rescan/remove lock and the 6.1 MSI descriptor lock).
    MutexLock,
    /// `mutex_unlock`.
    MutexUnlock,
    /// `complete`.
    Complete,
    /// `wait_for_completion*` or `try_wait_for_completion`.
    Wait,
    /// `tasklet_disable*`.
    TaskletDisable,
    /// `tasklet_enable`.
    TaskletEnable,
    /// `queue_work`.
    QueueWork,
    /// `flush_workqueue` or `destroy_workqueue`.
    Flush,
    /// A packet was sent (also `vmbus_open` and `vmbus_close`).
    Send,
    /// `vmbus_recvpacket_raw`.
    Recv,
    /// `udelay`.
    Udelay,
    /// An MMIO access.
    Mmio,
    /// `hv_do_hypercall`.
    Hypercall,
    /// An allocation.
    Alloc,
    /// A value this crate does not know.
    Other(u32),
}

impl SchedPoint {
    fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Start,
            1 => Self::Idle,
            2 => Self::SpinLock,
            3 => Self::SpinUnlock,
            4 => Self::MutexLock,
            5 => Self::MutexUnlock,
            6 => Self::Complete,
            7 => Self::Wait,
            8 => Self::TaskletDisable,
            9 => Self::TaskletEnable,
            10 => Self::QueueWork,
            11 => Self::Flush,
            12 => Self::Send,
            13 => Self::Recv,
            14 => Self::Udelay,
            15 => Self::Mmio,
            16 => Self::Hypercall,
            17 => Self::Alloc,
            other => Self::Other(other),
        }
    }
}

/// The kind of a kernel context (`CTX_*` in proto.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextKind {
    /// Process context: module init, probe, remove, the PCI core and the endpoint driver.
    Process,
    /// A channel's tasklet, running the driver's channel callback.
    Tasklet,
    /// A workqueue's worker.
    Worker,
    /// A value this crate does not know.
    Other(u32),
}

/// A kernel-visible event the runtime reports (`EV_*` in proto.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `WARN_ON_ONCE` or a refcount saturation.
    Warn,
    /// A kernel BUG: sleeping in atomic context, a double free, a bad unlock.
    Bug,
    /// An allocation still outstanding at exit.
    Leak,
    /// Right after a [`EventKind::Leak`]: its allocation stack, each frame as `exe+0xOFF`
    /// (the allocation site first, then its callers; see [`crate::forensics::Leak`]).
    LeakStack,
    /// A milestone for the trace (device found, endpoint bound, vectors allocated).
    Note,
    /// A value this crate does not know.
    Other(u32),
}

/// A packet the guest sent to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPacket {
    /// The bus (channel) index.
    pub bus: u32,
    /// The VMBus packet type (6 = in-band data).
    pub packet_type: u16,
    /// The VMBus packet flags (1 = completion requested).
    pub flags: u16,
    /// The transaction id (5.10: a raw guest pointer; 6.1: a requestor id or 0).
    pub trans_id: u64,
    /// The vPCI message.
    pub payload: Vec<u8>,
}

/// A frame from the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestFrame {
    /// The guest started: shim version macro and the driver's Debian package version.
    Hello {
        /// `KSHIM_KVER` (510, 601 or 612).
        kver: u32,
        /// The Debian package version the driver came from.
        package_version: String,
    },
    /// A new kernel context.
    Context {
        /// Its id.
        id: u32,
        /// Its kind.
        kind: ContextKind,
        /// Its name.
        name: String,
    },
    /// A scheduling point: the controller must answer.
    Sched {
        /// Why.
        point: SchedPoint,
        /// The context offering the baton.
        current: u32,
        /// Virtual time in nanoseconds.
        now_ns: u64,
        /// The earliest virtual deadline of a timed wait (0 = none).
        next_deadline_ns: u64,
        /// The contexts that may run now (possibly empty).
        runnable: Vec<u32>,
        /// Where the offering context is: its callers' return addresses relative to the
        /// executable's start, innermost first (empty from a guest that does not report
        /// them).
        callers: Vec<u64>,
        /// The last shim call the offering context made (empty if none or not reported).
        last_call: String,
    },
    /// A packet to the host.
    Send(GuestPacket),
    /// An MMIO read: the controller must answer with a value.
    MmioRead {
        /// Physical address.
        addr: u64,
        /// Access size in bytes.
        size: u32,
    },
    /// An MMIO write.
    MmioWrite {
        /// Physical address.
        addr: u64,
        /// Access size in bytes.
        size: u32,
        /// The value written.
        value: u64,
    },
    /// A hypercall: the controller must answer with its status.
    Hypercall {
        /// The control word.
        control: u64,
        /// The input page's used bytes.
        input: Vec<u8>,
    },
    /// A kernel log line.
    Log {
        /// printk level (3 error, 4 warning, 6 info).
        level: u32,
        /// The context that logged it.
        ctx: u32,
        /// The text.
        text: String,
    },
    /// A runtime event.
    Event {
        /// Its kind.
        kind: EventKind,
        /// The context it happened in.
        ctx: u32,
        /// What happened.
        text: String,
    },
    /// A command finished.
    Result {
        /// The command number.
        command: u32,
        /// Its return value (a negative errno on failure).
        result: i32,
    },
    /// The guest exited cleanly after `cleanup_module`.
    Done {
        /// Allocations outstanding at exit (each also reported as a leak event).
        leaks: u32,
    },
    /// The guest crashed.
    Crash {
        /// The signal.
        signal: u32,
        /// The context that was running.
        ctx: u32,
        /// The last shim call it made.
        last_call: String,
    },
}

struct Reader<'a> {
    frame_type: u32,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(ProtocolError::TooShort {
                frame_type: self.frame_type,
                len: self.data.len(),
            });
        };
        let bytes = self.data.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let len = self.data.len();
        let frame_type = self.frame_type;
        self.take(N)?
            .try_into()
            .map_err(|_| ProtocolError::TooShort { frame_type, len })
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        self.pos = self.data.len();
        rest
    }

    fn text(&mut self) -> String {
        String::from_utf8_lossy(self.rest()).into_owned()
    }
}

impl GuestFrame {
    /// Decodes one frame's payload.
    pub fn decode(frame_type: u32, data: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader {
            frame_type,
            data,
            pos: 0,
        };
        Ok(match frame_type {
            G_HELLO => GuestFrame::Hello {
                kver: r.u32()?,
                package_version: r.text(),
            },
            G_CTX => GuestFrame::Context {
                id: r.u32()?,
                kind: match r.u32()? {
                    0 => ContextKind::Process,
                    1 => ContextKind::Tasklet,
                    2 => ContextKind::Worker,
                    other => ContextKind::Other(other),
                },
                name: r.text(),
            },
            G_SCHED => {
                let point = SchedPoint::from_u32(r.u32()?);
                let current = r.u32()?;
                let now_ns = r.u64()?;
                let next_deadline_ns = r.u64()?;
                let n = r.u32()?;
                let mut runnable = Vec::new();
                for _ in 0..n {
                    runnable.push(r.u32()?);
                }
                // Optional: where the offering context is.
                let mut callers = Vec::new();
                let mut last_call = String::new();
                if r.pos < r.data.len() {
                    let m = r.u32()?;
                    for _ in 0..m.min(MAX_CALLERS) {
                        callers.push(r.u64()?);
                    }
                    last_call = r.text();
                }
                GuestFrame::Sched {
                    point,
                    current,
                    now_ns,
                    next_deadline_ns,
                    runnable,
                    callers,
                    last_call,
                }
            }
            G_SEND => GuestFrame::Send(GuestPacket {
                bus: r.u32()?,
                packet_type: r.u16()?,
                flags: r.u16()?,
                trans_id: r.u64()?,
                payload: r.rest().to_vec(),
            }),
            G_MMIO_READ => GuestFrame::MmioRead {
                addr: r.u64()?,
                size: r.u32()?,
            },
            G_MMIO_WRITE => GuestFrame::MmioWrite {
                addr: r.u64()?,
                size: r.u32()?,
                value: r.u64()?,
            },
            G_HYPERCALL => GuestFrame::Hypercall {
                control: r.u64()?,
                input: r.rest().to_vec(),
            },
            G_LOG => GuestFrame::Log {
                level: r.u32()?,
                ctx: r.u32()?,
                text: r.text(),
            },
            G_EVENT => GuestFrame::Event {
                kind: match r.u32()? {
                    1 => EventKind::Warn,
                    2 => EventKind::Bug,
                    3 => EventKind::Leak,
                    4 => EventKind::Note,
                    5 => EventKind::LeakStack,
                    other => EventKind::Other(other),
                },
                ctx: r.u32()?,
                text: r.text(),
            },
            G_RESULT => GuestFrame::Result {
                command: r.u32()?,
                result: r.u32()? as i32,
            },
            G_DONE => GuestFrame::Done { leaks: r.u32()? },
            G_CRASH => GuestFrame::Crash {
                signal: r.u32()?,
                ctx: r.u32()?,
                last_call: r.text(),
            },
            other => return Err(ProtocolError::UnknownType(other)),
        })
    }
}

/// A command for the guest's process context (`CMD_*` in proto.h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `init_module()`.
    Init,
    /// The driver's probe for bus `bus` with this VMBus instance GUID (wire byte order).
    Probe {
        /// The bus index.
        bus: u32,
        /// The instance GUID bytes as `hv_device.dev_instance` holds them.
        instance: [u8; 16],
    },
    /// The driver's remove for a bus.
    Remove {
        /// The bus index.
        bus: u32,
    },
    /// The driver's suspend for a bus.
    Suspend {
        /// The bus index.
        bus: u32,
    },
    /// The driver's resume for a bus.
    Resume {
        /// The bus index.
        bus: u32,
    },
    /// What the test endpoint driver allocates when it binds.
    Endpoint {
        /// Number of vectors.
        nvec: u32,
        /// MSI-X (true) or multi-MSI (false).
        msix: bool,
    },
    /// `cleanup_module()`, the leak report, then exit.
    Exit,
    /// Fault injection: the `nth` allocation from now fails (0 cancels).
    FailAlloc {
        /// Which allocation, counting from 1.
        nth: u32,
    },
    /// The hints word Hyper-V reports (`ms_hyperv.hints`), read by a bus's probe: bit 21
    /// (`HV_X64_USE_MMIO_HYPERCALLS`) makes 6.2 and later access config space through MMIO
    /// hypercalls, which the runtime performs as the same MMIO the controller sees.
    HvHints {
        /// The hints word.
        hints: u32,
    },
}

impl Command {
    /// The command's number as [`GuestFrame::Result`] reports it.
    pub fn number(&self) -> u32 {
        match self {
            Command::Init => 1,
            Command::Probe { .. } => 2,
            Command::Remove { .. } => 3,
            Command::Suspend { .. } => 4,
            Command::Resume { .. } => 5,
            Command::Exit => 6,
            Command::Endpoint { .. } => 7,
            Command::FailAlloc { .. } => 8,
            Command::HvHints { .. } => 9,
        }
    }
}

/// A frame from the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControllerFrame {
    /// Run this context (it must be in the last runnable set).
    Run(u32),
    /// A host-to-guest packet on a bus's channel.
    Packet {
        /// The bus index.
        bus: u32,
        /// The VMBus packet type (6 in-band, 11 completion).
        packet_type: u16,
        /// The VMBus packet flags.
        flags: u16,
        /// The transaction id.
        trans_id: u64,
        /// The vPCI message.
        payload: Vec<u8>,
    },
    /// The host rescinds a bus's channel.
    Rescind(u32),
    /// Virtual time moves forward to this many nanoseconds.
    Advance(u64),
    /// A command for the process context.
    Command(Command),
    /// The answer to an MMIO read or a hypercall.
    Value(u64),
}

impl ControllerFrame {
    /// Encodes the frame, header included.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        let frame_type = match self {
            ControllerFrame::Run(id) => {
                p.extend_from_slice(&id.to_le_bytes());
                C_RUN
            }
            ControllerFrame::Packet {
                bus,
                packet_type,
                flags,
                trans_id,
                payload,
            } => {
                p.extend_from_slice(&bus.to_le_bytes());
                p.extend_from_slice(&packet_type.to_le_bytes());
                p.extend_from_slice(&flags.to_le_bytes());
                p.extend_from_slice(&trans_id.to_le_bytes());
                p.extend_from_slice(payload);
                C_PACKET
            }
            ControllerFrame::Rescind(bus) => {
                p.extend_from_slice(&bus.to_le_bytes());
                C_RESCIND
            }
            ControllerFrame::Advance(ns) => {
                p.extend_from_slice(&ns.to_le_bytes());
                C_ADVANCE
            }
            ControllerFrame::Command(cmd) => {
                p.extend_from_slice(&cmd.number().to_le_bytes());
                let bus = match cmd {
                    Command::Probe { bus, .. }
                    | Command::Remove { bus }
                    | Command::Suspend { bus }
                    | Command::Resume { bus } => *bus,
                    _ => 0,
                };
                p.extend_from_slice(&bus.to_le_bytes());
                match cmd {
                    Command::Probe { instance, .. } => p.extend_from_slice(instance),
                    Command::Endpoint { nvec, msix } => {
                        p.extend_from_slice(&nvec.to_le_bytes());
                        p.extend_from_slice(&u32::from(*msix).to_le_bytes());
                    }
                    Command::FailAlloc { nth } => p.extend_from_slice(&nth.to_le_bytes()),
                    Command::HvHints { hints } => p.extend_from_slice(&hints.to_le_bytes()),
                    _ => {}
                }
                C_COMMAND
            }
            ControllerFrame::Value(v) => {
                p.extend_from_slice(&v.to_le_bytes());
                C_VALUE
            }
        };
        let len = u32::try_from(p.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(8 + p.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&frame_type.to_le_bytes());
        out.extend_from_slice(&p);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scheduling frame decodes its runnable set in order.
    #[test]
    fn sched_frame_decodes() {
        let mut p = Vec::new();
        for v in [7u32, 2] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p.extend_from_slice(&5u64.to_le_bytes());
        p.extend_from_slice(&0u64.to_le_bytes());
        for v in [2u32, 0, 3] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(
            GuestFrame::decode(G_SCHED, &p),
            Ok(GuestFrame::Sched {
                point: SchedPoint::Wait,
                current: 2,
                now_ns: 5,
                next_deadline_ns: 0,
                runnable: vec![0, 3],
                callers: Vec::new(),
                last_call: String::new(),
            })
        );
        // With where the offering context is: two callers and the last shim call.
        p.extend_from_slice(&2u32.to_le_bytes());
        p.extend_from_slice(&0xc8f6u64.to_le_bytes());
        p.extend_from_slice(&0x18fd4u64.to_le_bytes());
        p.extend_from_slice(b"mutex_lock");
        assert!(matches!(
            GuestFrame::decode(G_SCHED, &p),
            Ok(GuestFrame::Sched { callers, last_call, .. })
                if callers == [0xc8f6, 0x18fd4] && last_call == "mutex_lock"
        ));
        // A caller count past the payload is an error, not a panic.
        let cut = p.len() - 14;
        assert!(GuestFrame::decode(G_SCHED, &p[..cut]).is_err());
    }

    /// A frame whose runnable count runs past its payload is an error, not a panic.
    #[test]
    fn truncated_frame_is_an_error() {
        let mut p = vec![0u8; 24];
        p.extend_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            GuestFrame::decode(G_SCHED, &p),
            Err(ProtocolError::TooShort { .. })
        ));
        assert_eq!(
            GuestFrame::decode(0x999, &[]),
            Err(ProtocolError::UnknownType(0x999))
        );
    }

    /// A probe command carries its bus and the instance GUID after the command number.
    #[test]
    fn probe_command_encodes() {
        let bytes = ControllerFrame::Command(Command::Probe {
            bus: 1,
            instance: [0xab; 16],
        })
        .encode();
        assert_eq!(&bytes[0..4], &24u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &C_COMMAND.to_le_bytes());
        assert_eq!(&bytes[8..12], &2u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &1u32.to_le_bytes());
        assert_eq!(&bytes[16..], &[0xab; 16]);
    }
}
