//! The test rigs' host and guest endpoints, to run by hand around `openhcl-vpci`:
//!
//! ```sh
//! cargo run -p openhcl_vpci --example vpci_endpoint -- host --socket /tmp/vpci/host.sock --spec buses=2,functions=2
//! cargo run -p openhcl_vpci --bin openhcl-vpci -- serve --host /tmp/vpci/host.sock --guest /tmp/vpci/guest.sock --control /tmp/vpci/control.sock
//! cargo run -p openhcl_vpci --example vpci_endpoint -- guest --socket /tmp/vpci/guest.sock --spec model=6.2
//! ```
//!
//! Host spec: `buses=N,functions=N,latency_ms=N` and one of `storm=CYCLES` or
//! `reoffer=TIMES`. Guest spec: `model=6.2|6.3,release_ms=N`. Both print `@@` progress lines.

#![forbid(unsafe_code)]
#![allow(unreachable_pub, dead_code)]

#[path = "../tests/support/guest.rs"]
mod guest;
#[path = "../tests/support/host.rs"]
mod host;

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    /// `host` or `guest`.
    role: String,
    /// The socket: the host listens on it, the guest connects to it.
    #[arg(long)]
    socket: PathBuf,
    /// The endpoint's spec (see the module documentation).
    #[arg(long, default_value = "")]
    spec: String,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    match args.role.as_str() {
        "host" => host::run(&args.socket, host::HostSpec::parse(&args.spec)?),
        "guest" => guest::run(&args.socket, guest::GuestSpec::parse(&args.spec)?),
        other => return Err(format!("unknown role {other:?}: host or guest")),
    }
    Ok(())
}
