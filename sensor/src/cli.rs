//! Command-line interface. Flag names are a public interface: keep them stable.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{
    analyze::{self, AnalyzeConfig},
    config::{
        parse_findings_target, validate_max_connections, validate_ports,
        validate_ring_buffer_bytes, AlertmanagerConfig, RunConfig,
    },
    error::Failure,
    preflight, run,
};

#[derive(Debug, Parser)]
#[command(
    name = "sensor",
    version,
    about = "eBPF sensor that reports PostgreSQL-wire (CockroachDB) sessions sent in plaintext"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to the kernel and report sessions until SIGINT/SIGTERM (needs root or
    /// CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN).
    Run(RunArgs),
    /// Check each kernel and privilege requirement and say what is missing.
    Check,
    /// Classify the sessions in a pcap/pcapng capture, offline (no privileges needed).
    Analyze(AnalyzeArgs),
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// The capture to read (pcap or pcapng; Ethernet, raw IP, Linux cooked, loopback).
    #[arg(long, value_name = "FILE")]
    pub pcap: PathBuf,
    /// TCP ports that carry pgwire (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "26257", value_name = "PORT[,PORT...]")]
    pub ports: Vec<u16>,
    /// Where to write findings (JSON lines); `-` is stdout.
    #[arg(long, default_value = "-", value_name = "PATH|-")]
    pub findings: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// TCP ports that carry pgwire (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "26257", value_name = "PORT[,PORT...]")]
    pub ports: Vec<u16>,
    /// cgroup v2 directory to attach at [default: the cgroup2 root from /proc/self/mountinfo].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Where to serve /metrics and /healthz. Loopback by default: metrics reveal which
    /// sessions are exposed.
    #[arg(long, default_value = "127.0.0.1:9477", value_name = "ADDR:PORT")]
    pub metrics_addr: SocketAddr,
    /// Where to append findings (JSON lines); `-` is stdout.
    #[arg(long, default_value = "-", value_name = "PATH|-")]
    pub findings: String,
    /// Size of the kernel-to-agent ring buffer in bytes (a power of two, >= 4096). Counts
    /// stay exact when it overflows; only evidence is lost (and reported).
    #[arg(long, default_value_t = sensor_common::limits::EVENTS_RING_BYTES, value_name = "BYTES")]
    pub ring_buffer_bytes: u32,
    /// How long a plaintext session's finding waits for its authentication outcome.
    #[arg(long, default_value = "1000", value_name = "MS")]
    pub auth_wait_ms: u64,
    /// Connections the kernel follows at once (an LRU map: past it, the oldest not yet
    /// judged are evicted and counted). 64 to 1048576.
    #[arg(long, default_value_t = sensor_common::limits::CONNECTIONS_MAX, value_name = "N")]
    pub max_connections: u32,
    /// Push each finding to this Alertmanager (v2 API) as an alert, e.g.
    /// http://127.0.0.1:9093.
    #[arg(long, value_name = "URL")]
    pub alertmanager_url: Option<String>,
    /// Push only findings at least this severe (low, medium, high, critical).
    #[arg(long, default_value = "low", value_name = "SEVERITY")]
    pub alertmanager_min_severity: String,
}

/// Parse the command line, run, and turn the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse(); // clap exits 2 itself on usage errors
    init_logging();
    let outcome = match cli.command {
        Command::Run(args) => RunConfig::try_from(args).and_then(run::run),
        Command::Check => return preflight::print_report(),
        Command::Analyze(args) => analyze_config(args).and_then(analyze::run),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("sensor: error: {failure}");
            failure.exit_code()
        }
    }
}

/// Logs go to stderr (findings may be on stdout). `RUST_LOG` overrides the `info` default.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

impl TryFrom<RunArgs> for RunConfig {
    type Error = Failure;

    fn try_from(args: RunArgs) -> Result<Self, Failure> {
        let mut config = RunConfig::new(args.ports, args.cgroup, args.metrics_addr, &args.findings)
            .map_err(Failure::config)?;
        config.ring_buffer_bytes =
            validate_ring_buffer_bytes(args.ring_buffer_bytes).map_err(Failure::config)?;
        config.auth_wait = std::time::Duration::from_millis(args.auth_wait_ms);
        config.max_connections =
            validate_max_connections(args.max_connections).map_err(Failure::config)?;
        config.alertmanager = match args.alertmanager_url {
            None => None,
            Some(url) => Some(
                AlertmanagerConfig::new(&url, &args.alertmanager_min_severity)
                    .map_err(Failure::config)?,
            ),
        };
        Ok(config)
    }
}

fn analyze_config(args: AnalyzeArgs) -> Result<AnalyzeConfig, Failure> {
    // The same validation as `run`'s flags of the same names.
    Ok(AnalyzeConfig {
        pcap: args.pcap,
        ports: validate_ports(args.ports).map_err(Failure::config)?,
        findings: parse_findings_target(&args.findings).map_err(Failure::config)?,
    })
}
