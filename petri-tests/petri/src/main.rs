//! petri: the harness CLI.
#![forbid(unsafe_code)]
fn main() {}
