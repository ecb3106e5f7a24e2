//! The byte builder and round-trip helpers the vector tests share: every vector is built by
//! hand from the spec's field offsets (never from the encoder).

#![allow(dead_code, unreachable_pub)]

use vpci_protocol::*;

pub const V: ProtocolVersion = ProtocolVersion::V1_7;

/// Little-endian byte builder: pushes fields in the order the spec lists them.
#[derive(Default)]
pub struct B(pub Vec<u8>);

impl B {
    pub fn ty(off: u32) -> Self {
        B::default().u32(0x4249_0000 + off)
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn zeros(mut self, n: usize) -> Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn desc(self, v_id: u16, d_id: u16, wslot: u32, ser: u32) -> Self {
        self.u16(v_id)
            .u16(d_id)
            .u8(1) // rev
            .u8(0) // prog_intf
            .u8(2) // subclass
            .u8(1) // base_class
            .u32(0x1234_5678) // subsystem_id
            .u32(wslot)
            .u32(ser)
    }
    pub fn desc2(self, v_id: u16, d_id: u16, wslot: u32, numa: u16) -> Self {
        self.desc(v_id, d_id, wslot, 7).u32(1).u16(numa).u16(0)
    }
    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

pub fn round_trip(bytes: &[u8], from: Sender) -> Message {
    let m = decode(bytes, from, V).unwrap_or_else(|e| panic!("{e}: {bytes:02x?}"));
    assert_eq!(encode(&m), bytes, "re-encoding {m:?}");
    m
}

pub fn slot(dev: u8, func: u8) -> u32 {
    u32::from(dev) | (u32::from(func) << 5)
}

pub fn comp_round_trip(bytes: &[u8], request: MessageType) -> Completion {
    let c = decode_completion(bytes, request, V).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.encode(), bytes);
    c
}
