//! Hardened Hyper-V VMBus ring buffer over an untrusted shared-memory region.

#![forbid(unsafe_code)]
