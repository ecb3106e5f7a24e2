//! The fuzz harnesses, shared by the cargo-fuzz targets in `fuzz/` (which include this file
//! with `#[path]`) and by `tests/fuzz_regressions.rs`, which replays every input under
//! `fuzz/regressions/<target>/` through the same code in a normal `cargo test`.
//!
//! Each harness reads its input as a program: [`Source`] turns the fuzzer's bytes into
//! choices (which message to build with `vpci_protocol::build`, which corruption to apply,
//! which peer acts next), so most inputs are well-formed messages with one targeted defect
//! rather than noise the decoder refuses at byte 0. A broken promise panics.
//!
//! This module uses only crates both the relay's tests and the fuzz crate depend on, so a
//! crash file replays byte for byte in both.

#![allow(dead_code, unreachable_pub)]

pub mod accesses;
pub mod decode;
pub mod promises;
pub mod relay;
pub mod restore;

/// The fuzzer's bytes as a stream of choices. Past the end every choice is 0 (the first
/// option), so every input is a complete program.
pub struct Source<'a> {
    data: &'a [u8],
}

impl<'a> Source<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// A choice in `0..n` (`n` at most 256).
    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }

    /// Up to `max` bytes (the length is the next byte).
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.byte()).collect()
    }
}
