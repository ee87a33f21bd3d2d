//! Command-line interface. Flag names are a public interface: keep them stable.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{
    analyze::{self, AnalyzeConfig},
    config::{
        parse_findings_target, parse_metrics_addr, parse_roles, validate_max_connections,
        validate_ports, validate_ring_buffer_bytes, AlertmanagerConfig, RunConfig,
    },
    config_file::{self, FileSettings},
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
    Check {
        /// Accept a kernel older than the oldest tested one (5.8 at the very least).
        #[arg(long)]
        allow_untested_kernel: bool,
    },
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
    /// Settings file (YAML or TOML) with the same keys as these flags (dashes as
    /// underscores); flags given here win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// TCP ports that carry pgwire (comma-separated) [default: 26257].
    #[arg(long, value_delimiter = ',', value_name = "PORT[,PORT...]")]
    pub ports: Option<Vec<u16>>,
    /// cgroup v2 directory to attach at [default: the cgroup2 root from /proc/self/mountinfo].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Where to serve /metrics and /healthz [default: 127.0.0.1:9477]. Loopback by default:
    /// metrics reveal which sessions are exposed.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<String>,
    /// Where to append findings (JSON lines); `-` is stdout [default: -].
    #[arg(long, value_name = "PATH|-")]
    pub findings: Option<String>,
    /// Size of the kernel-to-agent ring buffer in bytes, a power of two >= 4096
    /// [default: 1048576]. Counts stay exact when it overflows; only evidence is lost.
    #[arg(long, value_name = "BYTES")]
    pub ring_buffer_bytes: Option<u32>,
    /// How long a plaintext session's finding waits for its authentication outcome
    /// [default: 1000].
    #[arg(long, value_name = "MS")]
    pub auth_wait_ms: Option<u64>,
    /// Connections the kernel follows at once (an LRU map: past it, the oldest not yet
    /// judged are evicted and counted), 64 to 1048576 [default: 16384].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,
    /// Push each finding to this Alertmanager (v2 API) as an alert, e.g.
    /// http://127.0.0.1:9093.
    #[arg(long, value_name = "URL")]
    pub alertmanager_url: Option<String>,
    /// Push only findings at least this severe: low, medium, high, critical [default: low].
    #[arg(long, value_name = "SEVERITY")]
    pub alertmanager_min_severity: Option<String>,
    /// Which ends of sessions to watch: `client` (local processes connecting to a watched
    /// port), `server` (sessions a local server accepts on a watched port), or both
    /// [default: client].
    #[arg(long, value_delimiter = ',', value_name = "ROLE[,ROLE]")]
    pub roles: Option<Vec<String>>,
    /// Run even when another sensor already runs on this host (each finding and alert
    /// then arrives twice, and every packet is inspected twice).
    #[arg(long)]
    pub allow_second_instance: bool,
    /// Run on a kernel older than the oldest tested one (6.1), down to 5.8.
    #[arg(long)]
    pub allow_untested_kernel: bool,
}

/// Parse the command line, run, and turn the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse(); // clap exits 2 itself on usage errors
    init_logging();
    let outcome = match cli.command {
        Command::Run(args) => RunConfig::try_from(args).and_then(run::run),
        Command::Check { allow_untested_kernel } => {
            return preflight::print_report(allow_untested_kernel)
        }
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

    /// Flags over the config file over defaults; each value validated where it came from,
    /// so an error names the flag or the file key.
    fn try_from(args: RunArgs) -> Result<Self, Failure> {
        let file = match &args.config {
            Some(path) => config_file::load(path).map_err(Failure::config)?,
            None => FileSettings::default(),
        };
        let config_path = args.config.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let in_file = |key: &'static str| {
            let path = config_path.clone();
            move |err: anyhow::Error| err.context(format!("key `{key}` in --config {path}"))
        };
        macro_rules! pick {
            ($flag:expr, $file:expr, $key:literal, $check:expr) => {
                match ($flag, $file) {
                    (Some(v), _) => Some($check(v).map_err(Failure::config)?),
                    (None, Some(v)) => {
                        Some($check(v).map_err(in_file($key)).map_err(Failure::config)?)
                    }
                    (None, None) => None,
                }
            };
        }
        let defaults = RunConfig::default();
        Ok(RunConfig {
            ports: pick!(args.ports, file.ports, "ports", validate_ports).unwrap_or(defaults.ports),
            cgroup: pick!(args.cgroup, file.cgroup, "cgroup", anyhow::Ok),
            metrics_addr: pick!(
                args.metrics_addr.as_deref(),
                file.metrics_addr.as_deref(),
                "metrics_addr",
                parse_metrics_addr
            )
            .unwrap_or(defaults.metrics_addr),
            findings: pick!(
                args.findings.as_deref(),
                file.findings.as_deref(),
                "findings",
                parse_findings_target
            )
            .unwrap_or(defaults.findings),
            ring_buffer_bytes: pick!(
                args.ring_buffer_bytes,
                file.ring_buffer_bytes,
                "ring_buffer_bytes",
                validate_ring_buffer_bytes
            )
            .unwrap_or(defaults.ring_buffer_bytes),
            auth_wait: pick!(
                args.auth_wait_ms,
                file.auth_wait_ms,
                "auth_wait_ms",
                |ms| anyhow::Ok(std::time::Duration::from_millis(ms))
            )
            .unwrap_or(defaults.auth_wait),
            max_connections: pick!(
                args.max_connections,
                file.max_connections,
                "max_connections",
                validate_max_connections
            )
            .unwrap_or(defaults.max_connections),
            roles: pick!(args.roles, file.roles, "roles", parse_roles).unwrap_or(defaults.roles),
            allow_second_instance: args.allow_second_instance
                || file.allow_second_instance.unwrap_or(false),
            allow_untested_kernel: args.allow_untested_kernel
                || file.allow_untested_kernel.unwrap_or(false),
            alertmanager: {
                let severity = args
                    .alertmanager_min_severity
                    .clone()
                    .or(file.alertmanager_min_severity.clone())
                    .unwrap_or_else(|| "low".into());
                pick!(
                    args.alertmanager_url,
                    file.alertmanager_url,
                    "alertmanager_url",
                    |url: String| { AlertmanagerConfig::new(&url, &severity) }
                )
            },
        })
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
