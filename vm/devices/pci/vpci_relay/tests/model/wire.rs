//! The packets the abstract host and guest exchange with the relay, and how one input is fed
//! to it.

use vmbus_channel::Packet;
use vpci_protocol::wire::*;
use vpci_protocol::*;
use vpci_relay::{AccessId, BusRelay, ConfigAccess, ConfigAction};
use zerocopy::FromZeros;

/// The vendor id of every function the host model lists.
pub const VENDOR: u16 = 0x1414;

/// A function's identity within its slot: the host gives each function it puts in a slot the
/// next number, and writes it into the device id and the serial number.
pub type Ident = u8;

fn padded(mut payload: Vec<u8>) -> Vec<u8> {
    payload.resize(payload.len().div_ceil(8) * 8, 0);
    payload
}

/// The window slot of device number `dev`, function 0.
pub fn wslot(dev: u8) -> WinSlot {
    WinSlot::new(dev, 0)
}

/// The device number of a window slot (0 for one the model never uses).
pub fn slot_dev(s: WinSlot) -> u8 {
    u8::try_from(s.raw() & 0x1f).unwrap_or(0)
}

/// The device id that carries identity `ident`.
pub fn device_id(ident: Ident) -> u16 {
    0x00b0 + u16::from(ident)
}

/// The dword at offset 0 of function `ident`'s config space (vendor and device id): what its
/// device answers to the guest's read.
pub fn vendor_dword(ident: Ident) -> u32 {
    u32::from(VENDOR) | (u32::from(device_id(ident)) << 16)
}

/// The description the host lists for function `ident` in slot `dev`.
pub fn desc2(dev: u8, ident: Ident) -> FunctionDescription2 {
    let mut d = FunctionDescription2::new_zeroed();
    d.v_id = VENDOR.into();
    d.d_id = device_id(ident).into();
    d.ser = u32::from(ident).into();
    d.base_class = 2;
    d.wslot = wslot(dev);
    d
}

/// The identity a description carries; `None` when vendor, device id and serial do not say
/// one consistent identity (the relay altered the host's description).
pub fn ident_of(d: &FunctionDescription2) -> Option<Ident> {
    let ident = u8::try_from(d.ser.get()).ok()?;
    (d.v_id.get() == VENDOR && d.d_id.get() == device_id(ident)).then_some(ident)
}

/// The identity a BUS_RELATIONS (v1) description carries (the relay would send one only if
/// the host spoke v1; the model's host never does).
pub fn ident_of_v1(d: &FunctionDescription) -> Option<Ident> {
    let ident = u8::try_from(d.ser.get()).ok()?;
    (d.v_id.get() == VENDOR && d.d_id.get() == device_id(ident)).then_some(ident)
}

fn status(s: Status) -> Vec<u8> {
    s.0.to_le_bytes().to_vec()
}

/// A guest request that asks for a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Req {
    /// QUERY_PROTOCOL_VERSION (1.4).
    Version,
    /// QUERY_RESOURCE_REQUIREMENTS.
    Requirements(u8),
    /// BUS_D0ENTRY.
    D0Entry,
    /// RESOURCES_ASSIGNED2.
    Assigned(u8),
    /// CREATE_INTERRUPT_MESSAGE2.
    Interrupt(u8),
}

impl Req {
    /// The slot the request names, if any.
    pub fn slot(self) -> Option<u8> {
        match self {
            Req::Requirements(s) | Req::Assigned(s) | Req::Interrupt(s) => Some(s),
            Req::Version | Req::D0Entry => None,
        }
    }

    fn payload(self) -> Vec<u8> {
        let m = match self {
            Req::Version => Message::QueryProtocolVersion(Fixed::new(VersionBody {
                protocol_version: ProtocolVersion::V1_4.0.into(),
            })),
            Req::Requirements(s) => {
                Message::QueryResourceRequirements(Fixed::new(SlotBody { wslot: wslot(s) }))
            }
            Req::D0Entry => Message::BusD0Entry(Fixed::new(D0EntryBody {
                reserved: 0.into(),
                mmio_base: 0xf_e000_0000.into(),
            })),
            Req::Assigned(s) => {
                let mut head = ResourcesHead::new_zeroed();
                head.wslot = wslot(s);
                Message::ResourcesAssigned2(ResourcesAssigned {
                    head,
                    msi_resources: Vec::new(),
                    trailing: vec![0; 66],
                })
            }
            Req::Interrupt(s) => {
                let mut body = CreateInterrupt2Body::new_zeroed();
                body.wslot = wslot(s);
                body.int_desc.vector = 0x30 + s;
                body.int_desc.vector_count = 1.into();
                body.int_desc.processor_count = 1.into();
                Message::CreateInterruptMessage2(Fixed::new(body))
            }
        };
        padded(encode(&m))
    }

    /// The host's successful completion.
    fn success(self) -> Vec<u8> {
        let mut v = status(Status::SUCCESS);
        match self {
            Req::Requirements(_) => {
                v.extend_from_slice(&BAR0_MASK.to_le_bytes());
                v.extend_from_slice(&[0; 20]);
            }
            Req::Interrupt(_) => v.extend_from_slice(&[0; 20]),
            _ => {}
        }
        padded(v)
    }

    /// The request a guest packet carries, if it is one the guest model sends.
    pub fn of(m: &Message) -> Option<Req> {
        Some(match m {
            Message::QueryProtocolVersion(_) => Req::Version,
            Message::QueryResourceRequirements(x) => Req::Requirements(slot_dev(x.body.wslot)),
            Message::BusD0Entry(_) => Req::D0Entry,
            Message::ResourcesAssigned2(x) => Req::Assigned(slot_dev(x.head.wslot)),
            Message::CreateInterruptMessage2(x) => Req::Interrupt(slot_dev(x.body.wslot)),
            _ => return None,
        })
    }
}

/// A guest message that asks for no completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Note {
    /// QUERY_BUS_RELATIONS.
    QueryRelations,
    /// DELETE_INTERRUPT_MESSAGE.
    DeleteInterrupt(u8),
    /// EJECTION_COMPLETE.
    EjectionComplete(u8),
}

impl Note {
    fn payload(self) -> Vec<u8> {
        let m = match self {
            Note::QueryRelations => Message::QueryBusRelations(Fixed::new(Empty {})),
            Note::DeleteInterrupt(s) => {
                let mut body = DeleteInterruptBody::new_zeroed();
                body.wslot = wslot(s);
                body.int_desc.vector_count = 1.into();
                body.int_desc.data = u32::from(0x30 + s).into();
                body.int_desc.address = 0xFEE0_0000u64.into();
                Message::DeleteInterruptMessage(Fixed::new(body))
            }
            Note::EjectionComplete(s) => {
                Message::EjectionComplete(Fixed::new(EjectionCompleteBody {
                    wslot: wslot(s),
                    status: 0.into(),
                }))
            }
        };
        padded(encode(&m))
    }
}

/// One input to the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// BUS_RELATIONS2 listing these (slot, identity) pairs.
    HostRelations(Vec<(u8, Ident)>),
    /// EJECT for a slot.
    HostEject(u8),
    /// The host's completion of a forwarded request.
    HostComplete { txid: u64, req: Req, ok: bool },
    /// The host rescinds the channel.
    HostClosed,
    /// A guest request.
    GuestRequest { txid: u64, req: Req },
    /// A guest message without completion.
    GuestNote(Note),
    /// The guest starts a config access to a slot through the window.
    Config(u8, Acc),
    /// The device answered the forwarded config access `id` (with the dword a read read, 0
    /// for a write it took, or nothing when the device is gone).
    ConfigDone { id: u64, value: Option<u32> },
    /// The relay's timer fired.
    Timeout,
}

/// The size mask BAR0 of every function the host model lists reads after all ones were
/// written to it (a 16 KiB 32-bit memory BAR: what its QUERY_RESOURCE_REQUIREMENTS answer
/// says).
pub const BAR0_MASK: u32 = 0xffff_c000;

/// The guest's config accesses the model covers: one per relay path worth telling apart (a
/// read the relay may answer from the description, a read it may answer from what the guest
/// wrote, a write of a BAR and a write of the command register).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Acc {
    /// A 4-byte read at offset 0 (vendor and device id): the first access of every context.
    Vendor,
    /// A 4-byte write of all ones to BAR0 (offset 0x10): the PCI core sizing the BAR.
    BarSize,
    /// A 4-byte read of BAR0 (offset 0x10) after the sizing write: the size mask.
    BarRead,
    /// A 2-byte write of the command register (offset 4): memory decoding and bus mastering
    /// on (a driver's `pci_enable_device`) or off (its remove path's `pci_disable_device`).
    Command(u16),
}

impl Acc {
    /// Whether it writes config space.
    pub fn is_write(self) -> bool {
        matches!(self, Acc::BarSize | Acc::Command(_))
    }

    /// The window access for slot `s`.
    pub fn access(self, s: u8) -> ConfigAccess {
        let slot = wslot(s);
        match self {
            Acc::Vendor => ConfigAccess::Read {
                slot,
                offset: 0,
                len: 4,
            },
            Acc::BarRead => ConfigAccess::Read {
                slot,
                offset: 0x10,
                len: 4,
            },
            Acc::BarSize => ConfigAccess::Write {
                slot,
                offset: 0x10,
                len: 4,
                value: u32::MAX,
            },
            Acc::Command(v) => ConfigAccess::Write {
                slot,
                offset: 4,
                len: 2,
                value: v.into(),
            },
        }
    }

    /// What function `ident`'s device answers to it (a read's dword; 0 for a write).
    pub fn device_answer(self, ident: Ident) -> u32 {
        match self {
            Acc::Vendor => vendor_dword(ident),
            Acc::BarRead => BAR0_MASK,
            Acc::BarSize | Acc::Command(_) => 0,
        }
    }
}

/// Feeds one input to the relay; for the start of a config access, returns what the relay
/// decided.
pub fn feed(relay: &mut BusRelay, now: std::time::Duration, input: &Input) -> Option<ConfigAction> {
    match input {
        Input::HostRelations(fns) => {
            let m = Message::BusRelations2(BusRelations {
                functions: fns.iter().map(|&(d, i)| desc2(d, i)).collect(),
                trailing: Vec::new(),
            });
            relay.handle_host(now, Packet::in_band(0, padded(encode(&m))));
        }
        Input::HostEject(s) => {
            let m = Message::Eject(Fixed::new(SlotBody { wslot: wslot(*s) }));
            relay.handle_host(now, Packet::in_band(0, padded(encode(&m))));
        }
        Input::HostComplete { txid, req, ok } => {
            let payload = if *ok {
                req.success()
            } else {
                padded(status(Status::UNSUCCESSFUL))
            };
            relay.handle_host(now, Packet::completion(*txid, payload));
        }
        Input::HostClosed => relay.handle_host_closed(now),
        Input::GuestRequest { txid, req } => {
            relay.handle_guest(now, Packet::request(*txid, req.payload()))
        }
        Input::GuestNote(n) => relay.handle_guest(now, Packet::in_band(0, n.payload())),
        Input::Config(s, acc) => {
            // The relay decides at once; a forwarded access is answered later, by its own
            // input (`ConfigDone`), and the guest's vCPU waits in it meanwhile.
            return Some(relay.handle_config_access(now, acc.access(*s)));
        }
        Input::ConfigDone { id, value } => {
            relay.handle_config_done(now, AccessId::from_raw(*id), *value);
        }
        Input::Timeout => relay.handle_timeout(now),
    }
    None
}
