//! A guest process: the real driver of one version linked with the shim runtime, started as
//! a child process and driven frame by frame.
//!
//! Running the driver in its own process keeps this crate free of `unsafe` (no FFI) and turns
//! every crash of the kernel code into an exit status that [`Session::run`] reports, so each
//! schedule can be explored in a fresh process.

use std::io::{BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command as Process, ExitStatus, Stdio};
use std::thread::JoinHandle;

use thiserror::Error;

use crate::protocol::{
    Command, ContextKind, ControllerFrame, EventKind, GuestFrame, GuestPacket, MAX_FRAME,
    ProtocolError, SchedPoint,
};
use crate::{DriverVersion, Instrumentation};

/// Why a guest process could not be run to an outcome.
#[derive(Debug, Error)]
pub enum GuestError {
    /// The executable could not be started.
    #[error("cannot start the {version:?} guest: {source}")]
    Spawn {
        /// The driver version.
        version: DriverVersion,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading from or writing to the guest failed for another reason than its exit.
    #[error("guest pipe: {0}")]
    Io(#[from] std::io::Error),
    /// The guest sent a frame that does not decode.
    #[error("guest protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The guest's first frame was not its greeting.
    #[error("the guest did not greet")]
    NoHello,
}

/// What a controller tells the guest at a scheduling point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run this context.
    Run(u32),
    /// Deliver a host packet, then ask again.
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
    /// Rescind a bus's channel, then ask again.
    Rescind(u32),
    /// Move virtual time forward, then ask again.
    Advance(u64),
    /// Queue a command for the process context, then ask again.
    Command(Command),
    /// End the run here (a hang, or the scenario has seen enough): the guest is killed.
    Stop(String),
}

/// A scheduling point as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sched {
    /// Why the running context offered the baton.
    pub point: SchedPoint,
    /// The context that offered it.
    pub current: u32,
    /// Virtual time in nanoseconds.
    pub now_ns: u64,
    /// The earliest virtual deadline of a timed wait (0 = none).
    pub next_deadline_ns: u64,
    /// The contexts that may run now (possibly empty).
    pub runnable: Vec<u32>,
    /// Where the offering context is: its callers' return addresses relative to the
    /// executable's start, innermost first (symbolise with `forensics::Symbolizer`).
    pub callers: Vec<u64>,
    /// The last shim call the offering context made.
    pub last_call: String,
}

/// The host, the scheduler and the scenario, as one object the session calls.
pub trait Controller {
    /// A scheduling point: what happens next.
    fn schedule(&mut self, sched: &Sched) -> Action;
    /// The guest sent a packet to the host.
    fn packet(&mut self, packet: GuestPacket);
    /// The guest reads device memory (the config window or a BAR).
    fn mmio_read(&mut self, addr: u64, size: u32) -> u64;
    /// The guest writes device memory.
    fn mmio_write(&mut self, addr: u64, size: u32, value: u64);
    /// The guest makes a hypercall; returns its status (0 = success).
    fn hypercall(&mut self, control: u64, input: &[u8]) -> u64;
    /// A command finished.
    fn result(&mut self, command: u32, result: i32);
    /// A new kernel context.
    fn context(&mut self, _id: u32, _kind: ContextKind, _name: &str) {}
    /// A kernel log line.
    fn log(&mut self, _level: u32, _ctx: u32, _text: &str) {}
    /// A runtime event (WARN, BUG, leak, milestone).
    fn event(&mut self, _kind: EventKind, _ctx: u32, _text: &str) {}
}

/// How a guest run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `cleanup_module` ran and the process exited cleanly.
    Done {
        /// Allocations outstanding at exit.
        leaks: u32,
    },
    /// The kernel code crashed.
    Crash {
        /// The signal.
        signal: u32,
        /// The context that was running.
        ctx: u32,
        /// The last shim call it made.
        last_call: String,
    },
    /// The controller stopped the run.
    Stopped(String),
    /// The process exited without a final frame (status code, or None if killed).
    Exited(Option<i32>),
}

/// The result of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The driver's Debian package version, from the guest's greeting.
    pub package_version: String,
    /// How it ended.
    pub ending: Ending,
    /// How many scheduling points the run went through.
    pub sched_points: u64,
    /// What the guest wrote to stderr (runtime diagnostics).
    pub stderr: String,
}

/// One guest process.
pub struct Session {
    child: Child,
    input: BufWriter<ChildStdin>,
    output: BufReader<ChildStdout>,
    stderr: Option<JoinHandle<String>>,
    package_version: String,
}

impl Session {
    /// Starts the plain guest executable for `version` and reads its greeting.
    pub fn spawn(version: DriverVersion) -> Result<Self, GuestError> {
        Self::spawn_with(version, Instrumentation::Plain)
    }

    /// Starts the guest executable for `version` with the given instrumentation.
    pub fn spawn_with(
        version: DriverVersion,
        instrumentation: Instrumentation,
    ) -> Result<Self, GuestError> {
        let mut child = Process::new(version.guest_executable_with(instrumentation))
            // AddressSanitizer: abort (a crash the session reports), find writes to dead stack
            // frames, leave leak checking to the runtime, keep the runtime's crash handler.
            .env(
                "ASAN_OPTIONS",
                "abort_on_error=1:detect_stack_use_after_return=1:detect_leaks=0:\
                 allow_user_segv_handler=1",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| GuestError::Spawn { version, source })?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(GuestError::Io(std::io::Error::other("missing pipes")));
        };
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut session = Session {
            child,
            input: BufWriter::new(stdin),
            output: BufReader::new(stdout),
            stderr: Some(stderr),
            package_version: String::new(),
        };
        match session.read_frame()? {
            Some(GuestFrame::Hello {
                package_version, ..
            }) => session.package_version = package_version,
            _ => {
                session.kill();
                return Err(GuestError::NoHello);
            }
        }
        Ok(session)
    }

    /// The next frame, or None when the guest closed its output (it exited).
    fn read_frame(&mut self) -> Result<Option<GuestFrame>, GuestError> {
        let mut header = [0u8; 8];
        match self.output.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let [l0, l1, l2, l3, t0, t1, t2, t3] = header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        let frame_type = u32::from_le_bytes([t0, t1, t2, t3]);
        if len > MAX_FRAME {
            return Err(ProtocolError::TooLong(len).into());
        }
        let mut data = vec![0u8; len as usize];
        match self.output.read_exact(&mut data) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        Ok(Some(GuestFrame::decode(frame_type, &data)?))
    }

    fn send(&mut self, frame: &ControllerFrame) -> Result<(), GuestError> {
        self.input.write_all(&frame.encode())?;
        self.input.flush()?;
        Ok(())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    fn finish(mut self, ending: Ending, sched_points: u64) -> Outcome {
        let status: Option<ExitStatus> = match &ending {
            Ending::Done { .. } | Ending::Crash { .. } | Ending::Exited(_) => {
                self.child.wait().ok()
            }
            Ending::Stopped(_) => {
                self.kill();
                self.child.wait().ok()
            }
        };
        let ending = match ending {
            Ending::Exited(_) => Ending::Exited(status.and_then(|s| s.code())),
            other => other,
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Outcome {
            package_version: std::mem::take(&mut self.package_version),
            ending,
            sched_points,
            stderr,
        }
    }

    /// Runs the guest to its end under `controller`.
    pub fn run(mut self, controller: &mut impl Controller) -> Result<Outcome, GuestError> {
        let mut sched_points = 0u64;
        loop {
            let Some(frame) = self.read_frame()? else {
                return Ok(self.finish(Ending::Exited(None), sched_points));
            };
            match frame {
                GuestFrame::Hello { .. } => return Err(GuestError::NoHello),
                GuestFrame::Context { id, kind, name } => controller.context(id, kind, &name),
                GuestFrame::Sched {
                    point,
                    current,
                    now_ns,
                    next_deadline_ns,
                    runnable,
                    callers,
                    last_call,
                } => {
                    sched_points += 1;
                    let sched = Sched {
                        point,
                        current,
                        now_ns,
                        next_deadline_ns,
                        runnable,
                        callers,
                        last_call,
                    };
                    let reply = match controller.schedule(&sched) {
                        Action::Run(id) => ControllerFrame::Run(id),
                        Action::Stop(why) => {
                            return Ok(self.finish(Ending::Stopped(why), sched_points));
                        }
                        // These change the world: the guest answers with a fresh G_SCHED.
                        Action::Packet {
                            bus,
                            packet_type,
                            flags,
                            trans_id,
                            payload,
                        } => ControllerFrame::Packet {
                            bus,
                            packet_type,
                            flags,
                            trans_id,
                            payload,
                        },
                        Action::Rescind(bus) => ControllerFrame::Rescind(bus),
                        Action::Advance(ns) => ControllerFrame::Advance(ns),
                        Action::Command(cmd) => ControllerFrame::Command(cmd),
                    };
                    self.send(&reply)?;
                }
                GuestFrame::Send(packet) => controller.packet(packet),
                GuestFrame::MmioRead { addr, size } => {
                    let value = controller.mmio_read(addr, size);
                    self.send(&ControllerFrame::Value(value))?;
                }
                GuestFrame::MmioWrite { addr, size, value } => {
                    controller.mmio_write(addr, size, value)
                }
                GuestFrame::Hypercall { control, input } => {
                    let status = controller.hypercall(control, &input);
                    self.send(&ControllerFrame::Value(status))?;
                }
                GuestFrame::Log { level, ctx, text } => controller.log(level, ctx, &text),
                GuestFrame::Event { kind, ctx, text } => controller.event(kind, ctx, &text),
                GuestFrame::Result { command, result } => controller.result(command, result),
                GuestFrame::Done { leaks } => {
                    return Ok(self.finish(Ending::Done { leaks }, sched_points));
                }
                GuestFrame::Crash {
                    signal,
                    ctx,
                    last_call,
                } => {
                    let ending = Ending::Crash {
                        signal,
                        ctx,
                        last_call,
                    };
                    return Ok(self.finish(ending, sched_points));
                }
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
