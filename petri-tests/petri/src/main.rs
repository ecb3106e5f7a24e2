//! `petri`: the vPCI relay's harness CLI.

#![forbid(unsafe_code)]

mod commands;
mod processes_cmd;

use clap::{Parser, Subcommand, ValueEnum};
use petri::scenario::{GuestKind, Servicing};
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
    /// Run the race catalogue on both guest models and the three real drivers, directly and through
    /// the relay, and print the table of failures per schedules explored.
    Demo {
        /// Schedules per scenario in each model column (linux-6.2, linux-6.3) [default: each
        /// scenario's own number, as `petri list` shows it].
        #[arg(long, value_parser = parse_schedules)]
        schedules: Option<u64>,
        /// Schedules per scenario in each real-driver column (5.10, 6.1, 6.12): each run is a
        /// guest process, so fewer.
        #[arg(long, default_value_t = 20, value_parser = parse_schedules)]
        real_schedules: u64,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print one JSON object per scenario and column instead of the table.
        #[arg(long)]
        json: bool,
        /// Service each bus's relay (save, drop, restore) at every scheduling point of every
        /// run through the relay (`every-step`), or never (`off`) [default: the scenario's
        /// `[relay] servicing`, off unless it says].
        #[arg(long, value_enum, value_name = "WHEN")]
        servicing: Option<Servicing>,
    },
    /// List the built-in scenarios.
    List {
        /// Print this built-in scenario's TOML (by name or catalogue id) instead.
        #[arg(long, value_name = "SCENARIO")]
        show: Option<String>,
    },
    /// Run a scenario (built-in name or TOML file) over many schedules.
    Run {
        /// A built-in scenario's name, or a scenario file.
        scenario: String,
        /// Only this guest (`6.2` or `6.3`, or the real driver `5.10`, `6.1` or `6.12`;
        /// `linux-6.2`, `debian-5.10`... too); both models if not given.
        #[arg(long, value_parser = parse_guest)]
        guest: Option<GuestKind>,
        /// Run directly (guest on the host), through the relay, or both.
        #[arg(long, value_enum, default_value_t = Mode::Both, conflicts_with_all = ["relay", "direct"])]
        mode: Mode,
        /// Short for --mode relay.
        #[arg(long, conflicts_with = "direct")]
        relay: bool,
        /// Short for --mode direct.
        #[arg(long)]
        direct: bool,
        /// Schedules to explore on a model guest (6.2, 6.3), at least 1 [default: the
        /// scenario's own number, as `petri list` shows it].
        #[arg(long, value_parser = parse_schedules)]
        schedules: Option<u64>,
        /// Schedules to explore on a real driver (5.10, 6.1, 6.12; each run is a guest
        /// process) [default: --schedules if given, else 20].
        #[arg(long, value_parser = parse_schedules)]
        real_schedules: Option<u64>,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Walk the choice tree (fewest deviations first) instead of drawing seeded
        /// schedules; a walk that runs every schedule is reported as exhaustive.
        #[arg(long)]
        systematic: bool,
        /// Print one JSON object per run set.
        #[arg(long)]
        json: bool,
        /// Write a message sequence chart (SVG) of one run: the first failing schedule, or
        /// the first seed if none fails. Needs one guest and one mode.
        #[arg(long, value_name = "FILE")]
        chart: Option<String>,
        /// Run through the real service in three processes (host_sim, `openhcl-vpci`, the
        /// guest), in real time: not replayable (no seed) and always through the relay (no
        /// mode); the number of runs is `--schedules` for a model, `--real-schedules` (else
        /// `--schedules`) for a real driver [default 1].
        #[arg(
            long,
            conflicts_with_all = ["systematic", "chart", "direct", "relay", "mode", "seed"]
        )]
        processes: bool,
        /// With --processes: hot-add/eject cycles per bus once the scenario played out.
        #[arg(long, default_value_t = 0, requires = "processes")]
        storm: u32,
        /// With --processes: `openhcl-vpci update`s in a row during each run (the service
        /// replaces its own image, its buses carried across); each must succeed.
        #[arg(long, default_value_t = 0, requires = "processes")]
        updates: u32,
        /// Service each bus's relay (save, drop, restore) at every scheduling point of every
        /// run through the relay (`every-step`), or never (`off`) [default: the scenario's
        /// `[relay] servicing`, off unless it says].
        #[arg(long, value_enum, value_name = "WHEN", conflicts_with = "processes")]
        servicing: Option<Servicing>,
    },
    /// Run one endpoint of a multi-process run (used by `run --processes`).
    #[command(hide = true)]
    Endpoint {
        /// `host`, `guest` or `service`.
        role: String,
        /// The host's socket (listened on), the guest's (connected to), or for the
        /// service, unused.
        #[arg(long)]
        socket: Option<std::path::PathBuf>,
        /// The role's spec.
        #[arg(long, default_value = "")]
        spec: String,
        /// Service: the host's socket.
        #[arg(long)]
        host: Option<std::path::PathBuf>,
        /// Service: the guest's socket.
        #[arg(long)]
        guest: Option<std::path::PathBuf>,
        /// Service: the control socket.
        #[arg(long)]
        control: Option<std::path::PathBuf>,
        /// Service: the settle window.
        #[arg(long)]
        settle: Option<String>,
        /// Service: the longest an EJECT is held.
        #[arg(long)]
        max_hold: Option<String>,
    },
    /// Replay one schedule of a scenario step by step: a seed, or a systematic schedule.
    #[command(group(clap::ArgGroup::new("schedule").required(true).args(["seed", "systematic"])))]
    Replay {
        /// The seed (as `petri run` names it).
        #[arg(long)]
        seed: Option<u64>,
        /// Schedule N (from 0) of the systematic walk, as `petri run --systematic` names it.
        #[arg(long, value_name = "N")]
        systematic: Option<u64>,
        /// A built-in scenario's name, or a scenario file.
        scenario: String,
        /// The guest (`6.2` or `6.3`, or the real driver `5.10`, `6.1` or `6.12`).
        #[arg(long, value_parser = parse_guest, default_value = "6.2")]
        guest: GuestKind,
        /// Direct (the default) or through the relay.
        #[arg(long, value_enum, conflicts_with = "relay")]
        mode: Option<Mode>,
        /// Short for --mode relay.
        #[arg(long)]
        relay: bool,
        /// Also write the run's message sequence chart (SVG).
        #[arg(long, value_name = "FILE")]
        chart: Option<String>,
        /// List every choice point of a real guest (5.10, 6.1, 6.12): the kernel context
        /// that ran, where it stood (lock, wait, queue_work, vmbus send, MMIO... and the
        /// driver function that called it) and what else could have run. The models'
        /// replays always list theirs.
        #[arg(long, short)]
        verbose: bool,
        /// Write the ring images of each bus (host to guest, guest to host) into this
        /// directory, as `petri ring dump` reads them.
        #[arg(long, value_name = "DIR")]
        dump_rings: Option<String>,
        /// Service each bus's relay (save, drop, restore) at every scheduling point of every
        /// run through the relay (`every-step`), or never (`off`) [default: the scenario's
        /// `[relay] servicing`, off unless it says].
        #[arg(long, value_enum, value_name = "WHEN")]
        servicing: Option<Servicing>,
    },
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

/// With or without the relay.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The guest on the simulated host, no relay.
    Direct,
    /// The guest behind the relay.
    Relay,
    /// Both, one after the other.
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
enum From {
    Host,
    Guest,
}

fn parse_guest(s: &str) -> Result<GuestKind, String> {
    GuestKind::parse(s).ok_or_else(|| {
        format!(
            "unknown guest {s:?} (expected 6.2, 6.3, 5.10, 6.1 or 6.12, or linux-6.2, \
             linux-6.3, debian-5.10, debian-6.1 or debian-6.12)"
        )
    })
}

fn parse_schedules(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1: a run of no schedules would show nothing".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?} is not a number of schedules: {e}")),
    }
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

/// A reader that goes away (`petri run ... | head`) ends petri quietly, as it ends `cat`:
/// `println!` panics on a closed pipe (Rust ignores SIGPIPE), so the panic for exactly that is
/// turned into the shell's exit status for SIGPIPE; every other panic is reported as before.
fn exit_quietly_on_broken_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

fn main() -> ExitCode {
    exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo {
            schedules,
            real_schedules,
            seed,
            json,
            servicing,
        } => commands::demo(schedules, real_schedules, seed, json, servicing),
        Command::List { show: None } => commands::list(),
        Command::List { show: Some(name) } => commands::show(&name),
        Command::Run {
            scenario,
            guest,
            schedules,
            real_schedules,
            json,
            processes: true,
            storm,
            updates,
            ..
        } => processes_cmd::run(processes_cmd::ProcessArgs {
            scenario,
            guests: guest.map_or(vec![GuestKind::Linux62], |g| vec![g]),
            // A real driver's runs are counted as in a simulated run set.
            runs: match guest.and_then(|g| g.driver()) {
                Some(_) => real_schedules.or(schedules).unwrap_or(1),
                None => schedules.unwrap_or(1),
            },
            storm,
            updates,
            json,
        }),
        Command::Endpoint {
            role,
            socket,
            spec,
            host,
            guest,
            control,
            settle,
            max_hold,
        } => {
            let duration = |d: Option<String>| {
                d.map(|s| openhcl_vpci::config::parse_duration(&s))
                    .transpose()
            };
            let result = match (role.as_str(), host, guest, control) {
                ("service", Some(h), Some(g), Some(c)) => duration(settle).and_then(|s| {
                    duration(max_hold).and_then(|m| petri::processes::service(h, g, c, s, m))
                }),
                ("service", ..) => Err("the service needs --host, --guest and --control".into()),
                (role, ..) => match socket {
                    Some(socket) => petri::processes::endpoint(role, &socket, &spec),
                    None => Err("--socket is required".to_owned()),
                },
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("petri endpoint: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run {
            scenario,
            guest,
            mode,
            relay,
            direct,
            schedules,
            real_schedules,
            seed,
            systematic,
            json,
            chart,
            processes: false,
            storm: _,
            updates: _,
            servicing,
        } => commands::run(commands::RunArgs {
            scenario,
            guest,
            mode: match (relay, direct, mode) {
                (true, _, _) | (_, _, Mode::Relay) => Some(true),
                (_, true, _) | (_, _, Mode::Direct) => Some(false),
                _ => None,
            },
            schedules,
            real_schedules,
            seed,
            systematic,
            json,
            chart,
            servicing,
        }),
        Command::Replay {
            seed,
            systematic,
            scenario,
            guest,
            mode,
            relay,
            chart,
            verbose,
            dump_rings,
            servicing,
        } => {
            let relay = match mode {
                Some(Mode::Both) => {
                    eprintln!("petri replay: a replay is one run: --mode direct or --mode relay");
                    return ExitCode::from(2);
                }
                Some(m) => m == Mode::Relay,
                None => relay,
            };
            let which = match (seed, systematic) {
                (_, Some(n)) => commands::Schedule::Systematic(n),
                (seed, None) => commands::Schedule::Seed(seed.unwrap_or(0)),
            };
            commands::replay(
                &scenario,
                guest,
                relay,
                which,
                commands::ReplayOutput {
                    chart: chart.as_deref(),
                    verbose,
                    dump_rings: dump_rings.as_deref(),
                    servicing,
                },
            )
        }
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
