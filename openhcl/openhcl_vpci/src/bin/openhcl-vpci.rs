//! `openhcl-vpci`: the paravisor's vPCI relay service as a process.
//!
//! `openhcl-vpci serve --host H --guest G --control C [--config file.toml]` relays every bus
//! the host endpoint at `H` offers to the guest that connects at `G`; `openhcl-vpci inspect
//! [PATH] --control C` reads its inspect tree.

#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use openhcl_vpci::config::{ServiceConfig, parse_duration};
use openhcl_vpci::inspect_server;
use openhcl_vpci::service::{Endpoints, Service};
use std::io::Write as _;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "openhcl-vpci",
    version,
    about = "The paravisor's vPCI relay service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Relay the host's vPCI buses to the guest until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Print the running service's inspect tree, or one subtree.
    Inspect(InspectArgs),
    /// Replace the running service with a new binary (its own by default) while the VM runs:
    /// its buses stop between two packets, are saved and handed over, and resume in the new
    /// image, which answers once everything is restored.
    Update(UpdateArgs),
}

#[derive(Parser)]
struct UpdateArgs {
    /// The service's control socket.
    #[arg(long)]
    control: PathBuf,
    /// The new binary (the running one's if absent).
    #[arg(long)]
    binary: Option<PathBuf>,
}

#[derive(Parser)]
struct ServeArgs {
    /// The host endpoint's Unix socket (connected to).
    #[arg(long)]
    host: PathBuf,
    /// The Unix socket the guest endpoint connects to (created).
    #[arg(long)]
    guest: PathBuf,
    /// The control socket for `inspect` (created).
    #[arg(long)]
    control: PathBuf,
    /// A TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The tracing filter (overrides the file's `log`; RUST_LOG overrides both).
    #[arg(long)]
    log: Option<String>,
    /// The settle window (overrides the file), e.g. `100ms`.
    #[arg(long, value_parser = parse_duration)]
    settle: Option<Duration>,
    /// The longest a host EJECT is held (overrides the file), e.g. `30s`.
    #[arg(long, value_parser = parse_duration)]
    max_hold: Option<Duration>,
    /// How long to keep trying to reach the host at start.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    connect_timeout: Duration,
    /// How long shutdown waits for each bus to close.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    shutdown_timeout: Duration,
    /// Resume from a predecessor's handover on standard input (set by `update`, not by hand).
    #[arg(long = "resume-from-stdin", hide = true)]
    resume_from_stdin: bool,
}

#[derive(Parser)]
struct InspectArgs {
    /// The subtree to print (`buses/<bus>/relay/functions/<slot>`); the whole tree if absent.
    path: Option<String>,
    /// The service's control socket.
    #[arg(long)]
    control: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Print again whenever the answer changes, until interrupted (an update of the service
    /// is followed across: the client reconnects).
    #[arg(long)]
    watch: bool,
    /// How often --watch asks, e.g. `20ms` (each ask is one message to the service; a held
    /// eject lasts at least the settle window, 100 ms by default).
    #[arg(long, value_parser = parse_duration, default_value = "50ms", requires = "watch")]
    interval: Duration,
}

fn init_tracing(filter: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => ServiceConfig::from_file(path)?,
        None => ServiceConfig::default(),
    };
    if let Some(log) = args.log {
        config.log = Some(log);
    }
    if args.settle.is_some() {
        config.settle = args.settle;
    }
    if args.max_hold.is_some() {
        config.max_hold = args.max_hold;
    }
    config.validate()?;
    if let Some(filter) = &config.log {
        EnvFilter::try_new(filter).with_context(|| format!("invalid `log` filter {filter:?}"))?;
    }
    init_tracing(config.log.as_deref());
    let endpoints = Endpoints {
        host: args.host,
        guest: args.guest,
        control: args.control,
        connect_timeout: args.connect_timeout,
        shutdown_timeout: args.shutdown_timeout,
    };
    if args.resume_from_stdin {
        let stdin = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("standard input")?;
        return Service::resume(config, endpoints, UnixStream::from(stdin))?.run();
    }
    Service::start(config, endpoints)?.run()
}

fn update(args: UpdateArgs) -> anyhow::Result<()> {
    let stream = UnixStream::connect(&args.control)
        .with_context(|| format!("cannot reach the service at {}", args.control.display()))?;
    let answer = inspect_server::update(&stream, args.binary.as_deref())?;
    println!("{answer}");
    Ok(())
}

/// How long --watch keeps trying to reach the service again after its connection ended (an
/// update closes every control connection but the requester's).
const RECONNECT: Duration = Duration::from_secs(10);

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let connect = || {
        UnixStream::connect(&args.control)
            .with_context(|| format!("cannot reach the service at {}", args.control.display()))
    };
    let mut stream = connect()?;
    let path = args.path.unwrap_or_default();
    let mut last = None;
    loop {
        let answer = match inspect_server::query(&stream, &path, args.json) {
            Ok(answer) => answer,
            Err(e) if args.watch => {
                // The service may be replacing itself: reconnect, for a while.
                let deadline = std::time::Instant::now() + RECONNECT;
                stream = loop {
                    std::thread::sleep(args.interval);
                    match connect() {
                        Ok(s) => break s,
                        Err(_) if std::time::Instant::now() < deadline => {}
                        Err(_) => return Err(e),
                    }
                };
                continue;
            }
            Err(e) => return Err(e),
        };
        if last.as_ref() != Some(&answer) {
            let separator = if args.watch && last.is_some() {
                "---\n"
            } else {
                ""
            };
            let newline = if answer.ends_with('\n') { "" } else { "\n" };
            let mut out = std::io::stdout().lock();
            let written = write!(out, "{separator}{answer}{newline}").and_then(|()| out.flush());
            match written {
                Ok(()) => {}
                // The reader went away (`inspect --watch | head`): done, quietly.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            last = Some(answer);
        }
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(args.interval);
    }
}

fn main() -> ExitCode {
    // Failpoints act only in a build with the `failpoints` feature and when FAILPOINTS says.
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Inspect(args) => inspect(args),
        Command::Update(args) => update(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openhcl-vpci: {e:#}");
            ExitCode::FAILURE
        }
    }
}
