//! The test rigs' host and guest endpoints (`vpci_endpoints`), to run by hand around `openhcl-vpci`:
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

use clap::Parser;
use std::path::PathBuf;
use vpci_endpoints::host::{self, HostSpec};
use vpci_endpoints::model::{self, ModelSpec};

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
    let spec = &args.spec;
    let result = match args.role.as_str() {
        "host" => host::run(
            &args.socket,
            HostSpec::parse(spec).map_err(|e| e.to_string())?,
        ),
        "guest" => model::run(
            &args.socket,
            ModelSpec::parse(spec).map_err(|e| e.to_string())?,
        ),
        other => return Err(format!("unknown role {other:?}: host or guest")),
    };
    result.map_err(|e| e.to_string())
}
