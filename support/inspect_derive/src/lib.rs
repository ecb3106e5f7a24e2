//! The `#[derive(Inspect)]` macro for the `inspect` crate.

#![forbid(unsafe_code)]
