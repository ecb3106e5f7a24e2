//! `petri`: the vPCI relay's harness CLI.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use vpci_protocol::{ProtocolVersion, Sender};

/// The vPCI relay's test harness.
#[derive(Parser)]
#[command(name = "petri", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode one vPCI payload (the bytes after the VMBus packet descriptor) and print it as
    /// one JSON object.
    Decode {
        /// Negotiated protocol version, 1.0 to 1.7.
        #[arg(long = "version", default_value = "1.4", value_parser = parse_version)]
        protocol_version: ProtocolVersion,
        /// Who sent the payload.
        #[arg(long, value_enum, default_value_t = From::Host)]
        from: From,
        /// Decode the payload as the completion of a request of this type
        /// (e.g. PCI_QUERY_RESOURCE_REQUIREMENTS).
        #[arg(long, value_name = "TYPE")]
        completion_of: Option<String>,
        /// Pretty-print the JSON.
        #[arg(long)]
        pretty: bool,
        /// The payload in hex; spaces allowed (as one argument or several).
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        hex: Vec<String>,
    },
    /// Work with captured VMBus ring images.
    Ring {
        #[command(subcommand)]
        command: RingCommand,
    },
}

#[derive(Subcommand)]
enum RingCommand {
    /// Print every unread packet of a ring image (4 KiB control page, then the data area) as
    /// one JSON object per line, validating it as a hardened reader would.
    Dump {
        /// Negotiated vPCI protocol version for decoding payloads, 1.0 to 1.7.
        #[arg(long = "version", default_value = "1.4", value_parser = parse_version)]
        protocol_version: ProtocolVersion,
        /// Who wrote the ring.
        #[arg(long, value_enum, default_value_t = From::Host)]
        from: From,
        /// The ring image.
        file: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum From {
    Host,
    Guest,
}

fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    s.parse()
        .map_err(|e: vpci_protocol::ParseVersionError| e.to_string())
}

fn sender(from: From) -> Sender {
    match from {
        From::Host => Sender::Host,
        From::Guest => Sender::Guest,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Ring {
            command:
                RingCommand::Dump {
                    protocol_version,
                    from,
                    file,
                },
        } => {
            let result = petri::ring_dump::dump_file(&file, protocol_version, sender(from), |v| {
                println!("{v}");
            });
            match result {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("petri ring dump: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Decode {
            protocol_version,
            from,
            completion_of,
            pretty,
            hex,
        } => {
            let from = sender(from);
            let result = petri::decode::parse_hex(&hex.join(" ")).and_then(|bytes| {
                petri::decode::decode_to_json(
                    &bytes,
                    protocol_version,
                    from,
                    completion_of.as_deref(),
                )
            });
            match result {
                Ok(value) => {
                    let text = if pretty {
                        serde_json::to_string_pretty(&value)
                    } else {
                        serde_json::to_string(&value)
                    };
                    println!("{}", text.unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("petri decode: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
