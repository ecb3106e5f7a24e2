//! A scriptable simulated Hyper-V host vPCI endpoint (work in progress).

#![forbid(unsafe_code)]
