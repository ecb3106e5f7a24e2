//! VMBus packets, transactions and channels over ring pairs or in memory.
//!
//! This crate sits between the ring buffer (`vmbus_ring`) and the protocols (vPCI):
//!
//! - [`packet`]: the [`Packet`] model (kind, flags, transaction id, payload) and its limits;
//! - [`channel`]: the poll-based [`Channel`] trait, its `async` conveniences ([`ChannelExt`])
//!   and typed errors; how a channel ends (closed or revoked);
//! - [`transactions`]: request/response matching, sans-IO ([`Transactions`]) and awaitable
//!   ([`AsyncTransactions`]);
//! - [`memory`]: an in-memory pair of ends for tests and the deterministic simulator;
//! - [`ring`]: the ring-backed channel, two `vmbus_ring` rings over a memfd with eventfd
//!   doorbells, between threads or processes.
//!
//! Both backends behave the same way (payloads padded to 8 bytes, limits checked, packets
//! sent before an end delivered before it), which a property test pins down.
//!
//! The crate is runtime-free: it uses `futures` types only, and any executor can drive it.
//! The ring backend waits on its doorbell with one small thread per end instead of a reactor.

#![forbid(unsafe_code)]

pub mod channel;
pub mod memory;
pub mod packet;
pub mod ring;
pub mod transactions;

pub use channel::{Channel, ChannelError, ChannelExt, ChannelState, EndReason};
pub use memory::{MemoryChannel, MemoryChannelConfig, channel_pair, channel_pair_with};
pub use packet::{
    Packet, PacketError, PacketFlags, PacketKind, PacketLimits, pad_payload, padded, padded_len,
};
pub use ring::{
    HandoffState, RingChannel, RingChannelConfig, RingChannelPeer, RingHandoff, WaitSource,
    ring_channel_pair,
};
pub use transactions::{
    AsyncTransactions, Response, TransactionConfig, TransactionError, Transactions,
};
