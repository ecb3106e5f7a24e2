//! Well-formed replies the relay gives itself, for functions the host no longer serves
//! (guarantee 4) and for a host that is gone.

use crate::function::Function;
use vpci_protocol::wire::{
    CreateInterruptReply, PowerStateReply, ResourceRequirementsReply, TranIntDesc,
};
use vpci_protocol::{Completion, CompletionBody, Fixed, Message, Status};
use zerocopy::little_endian::{U16, U32, U64};

/// The x86 MSI address window; the relay's made-up interrupt points into it.
const MSI_ADDRESS_BASE: u64 = 0xFEE0_0000;

/// The completion the relay sends for `request` when it answers it itself. `function` is the
/// function's state when the relay still knows it (for cached probed BARs).
///
/// Interrupt requests get success and a plausible address/data pair, never a failure: a
/// failure is exactly what leaves Linux 6.2's interrupt descriptor NULL (race C2).
pub fn local_completion(request: &Message, function: Option<&Function>) -> Completion {
    let ty = request.message_type();
    let ok = |body| Completion {
        request: ty,
        status: Status::SUCCESS,
        body,
    };
    let interrupt = |vector: u32, vector_count: U16| {
        ok(CompletionBody::CreateInterrupt(Fixed::new(
            CreateInterruptReply {
                reserved: U32::ZERO,
                int_desc: TranIntDesc {
                    reserved: U16::ZERO,
                    vector_count,
                    data: U32::new(vector),
                    address: U64::new(MSI_ADDRESS_BASE),
                },
            },
        )))
    };
    match request {
        Message::QueryResourceRequirements(_) => {
            let bars = function.and_then(|f| f.probed_bars).unwrap_or_default();
            ok(CompletionBody::ResourceRequirements(Fixed::new(
                ResourceRequirementsReply {
                    probed_bar: bars.map(U32::new),
                },
            )))
        }
        Message::CreateInterruptMessage(m) => {
            interrupt(m.body.int_desc.vector.into(), m.body.int_desc.vector_count)
        }
        Message::CreateInterruptMessage2(m) => {
            interrupt(m.body.int_desc.vector.into(), m.body.int_desc.vector_count)
        }
        Message::CreateInterruptMessage3(m) => {
            interrupt(m.body.int_desc.vector.get(), m.body.int_desc.vector_count)
        }
        Message::PowerStateChange(m) => ok(CompletionBody::PowerStateChange(Fixed::new(
            PowerStateReply {
                wslot: m.body.wslot,
                resultant_state: m.body.power_state,
                reserved: U32::ZERO,
            },
        ))),
        Message::ReadBlock(m) => {
            // A removed device reads as all ones. The decoder bounds the request to 128.
            let len = m.body.bytes_requested.get().min(128) as usize;
            ok(CompletionBody::ReadBlock(vec![0xff; len]))
        }
        Message::TdispCommand(_) | Message::QueryIsolatedResources(_) => {
            // Trusted-I/O state of a device that is gone must not look valid.
            Completion::status_only(ty, Status::UNSUCCESSFUL)
        }
        _ => Completion::status_only(ty, Status::SUCCESS),
    }
}
