//! Diagnostics tree: #[derive(Inspect)], path queries, JSON output.

#![forbid(unsafe_code)]
