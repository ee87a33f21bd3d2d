//! Command-line interface. Flag names are a public interface: keep them stable.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::{
    analyze::{self, AnalyzeConfig},
    config::{
        check_ports, normalized_ports, FindingLines, FindingsTarget, Origins, RunConfig, Settings,
    },
    config_file,
    error::Failure,
    preflight, run,
};

/// Exit codes, shown by `--help`; `error::Failure` maps errors to them.
const EXIT_CODES: &str = "Exit status:
  0  success (run: stopped by SIGINT/SIGTERM)
  1  runtime failure: a missing privilege or kernel feature, an attach or I/O error
  2  usage or configuration error: a bad flag or --config value, named in the message";

#[derive(Debug, Parser)]
#[command(
    name = "sensor",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SENSOR_REVISION"), ")"),
    about = "eBPF sensor that reports PostgreSQL-wire (CockroachDB) sessions sent in plaintext",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to the kernel and report sessions until SIGINT/SIGTERM (needs root or
    /// CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN).
    #[command(after_help = EXIT_CODES)]
    Run(Box<RunArgs>),
    /// Check what `run` with the same settings (flags, --config) needs: kernel, privileges,
    /// cgroup, BPF support, metrics address, findings target; say what is missing and how
    /// to fix it. Exit 0 when `run` would start.
    #[command(after_help = EXIT_CODES)]
    Check(Box<CheckArgs>),
    /// Classify the sessions in a pcap/pcapng capture, offline (no privileges needed).
    #[command(after_help = EXIT_CODES)]
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
    pub findings: FindingsTarget,
    #[command(flatten)]
    pub lines: FindingLines,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Settings file (YAML or TOML) with the same keys as these flags (dashes as
    /// underscores); keys it leaves out take the defaults below, flags given here win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Text for people, or one JSON object for automation.
    #[arg(long, value_enum, default_value_t = preflight::Format::Text)]
    pub format: preflight::Format,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Parse the command line, run, and turn the outcome into an exit code.
pub fn main() -> ExitCode {
    // Matches are kept: they say which settings were given on the command line.
    let matches = Cli::command().get_matches(); // clap exits 2 itself on usage errors
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    init_logging();
    let outcome = match cli.command {
        Command::Run(args) => {
            let run_matches = matches.subcommand_matches("run");
            run_config(*args, run_matches).and_then(run::run)
        }
        Command::Check(args) => {
            let check_matches = matches.subcommand_matches("check");
            match run_config(args.run, check_matches) {
                Ok(config) => return preflight::print_report(&config, args.format),
                Err(failure) => Err(failure),
            }
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

/// Flags over the config file over defaults, then validated; errors name the flag or key.
fn run_config(args: RunArgs, matches: Option<&clap::ArgMatches>) -> Result<RunConfig, Failure> {
    let origins = Origins::new(matches, args.config.as_deref());
    let settings = match &args.config {
        Some(path) => {
            let file = config_file::load(path).map_err(Failure::config)?;
            Settings::overlay(file, args.settings, &origins)
        }
        None => args.settings,
    };
    settings.validate(&origins).map_err(Failure::config)
}

fn analyze_config(args: AnalyzeArgs) -> Result<AnalyzeConfig, Failure> {
    // The same validation as `run`'s flag of the same name.
    check_ports(&args.ports).map_err(|err| Failure::config(err.context("--ports")))?;
    let ports = normalized_ports(args.ports);
    Ok(AnalyzeConfig { pcap: args.pcap, ports, findings: args.findings, lines: args.lines })
}
