//! The CI pipelines.
#![forbid(unsafe_code)]
fn main() {}
