//! Settings for `sensor run`: one schema ([`Settings`]) for the flags and the `--config`
//! file, each default written once (in its `#[arg]`, shown by `--help`; the file's defaults
//! are the same values, parsed from an empty command line). [`Settings::validate`] turns
//! them into a [`RunConfig`] before anything is loaded into the kernel, so a bad value never
//! leaves programs attached, and every error names the flag or the file key it came from.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use anyhow::{bail, ensure};
use clap::{parser::ValueSource, ArgMatches, Args, Parser};
use sensor_common::{
    limits::{CONNECTIONS_MAX, EVENTS_RING_BYTES, MAX_WATCHED_PORTS},
    verdict::{Role, Severity},
};
use serde::Deserialize;

/// Where findings go: a file (appended) or stdout.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum FindingsTarget {
    Stdout,
    File(PathBuf),
}

impl FromStr for FindingsTarget {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "" => Err("give a file path, or - for stdout".into()),
            "-" => Ok(FindingsTarget::Stdout),
            path => Ok(FindingsTarget::File(PathBuf::from(path))),
        }
    }
}

impl TryFrom<String> for FindingsTarget {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        value.parse()
    }
}

/// A duration written as people write them: `60s`, `5m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        humantime::parse_duration(value)
            .map(HumanDuration)
            .map_err(|err| format!("{value:?} is not a duration like 60s or 5m: {err}"))
    }
}

impl TryFrom<String> for HumanDuration {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        value.parse()
    }
}

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// `--repeat-window`'s default, for `run` and `analyze` alike.
pub const REPEAT_WINDOW: &str = "60s";

/// How findings are written, for `sensor analyze` (`run` has the same two settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct FindingLines {
    /// Sessions of one identity after the first, within this window, are counted and written
    /// as one summary line when it closes, as the live sensor does.
    #[arg(long, default_value = REPEAT_WINDOW, value_name = "DURATION")]
    pub repeat_window: HumanDuration,
    /// Write one line per session instead (every line has `sessions: 1`).
    #[arg(long)]
    pub findings_every_session: bool,
}

impl FindingLines {
    /// The repeat window, or `None` for one line per session.
    pub fn window(&self) -> Option<Duration> {
        (!self.findings_every_session).then_some(self.repeat_window.0)
    }
}

/// Every `sensor run` setting. A flag `--some-name` is the file key `some_name`.
#[derive(Debug, Clone, PartialEq, Args, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
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
    pub findings: FindingsTarget,
    /// Sessions of one identity (verdict, severity, process, destination, database user and
    /// database) after the first, within this window, are counted and written as one summary
    /// line when it closes (`sessions: N`, `repeats`).
    #[arg(long, default_value = REPEAT_WINDOW, value_name = "DURATION")]
    pub repeat_window: HumanDuration,
    /// Write one line per session instead (a Zeek-like log; every line has `sessions: 1`).
    #[arg(long)]
    pub findings_every_session: bool,
    /// Size of the kernel-to-agent ring buffer in bytes, a power of two >= 4096. Counts stay
    /// exact when it overflows; only evidence is lost.
    #[arg(long, default_value_t = EVENTS_RING_BYTES, value_name = "BYTES")]
    pub ring_buffer_bytes: u32,
    /// How long a plaintext session's finding waits for its authentication outcome.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub auth_wait_ms: u64,
    /// Connections the kernel follows at once (an LRU map: past it, the oldest not yet
    /// judged are evicted and counted), 64 to 1048576.
    #[arg(long, default_value_t = CONNECTIONS_MAX, value_name = "N")]
    pub max_connections: u32,
    /// Push each finding to this Alertmanager (v2 API) as an alert, e.g.
    /// http://127.0.0.1:9093.
    #[arg(long, value_name = "URL")]
    pub alertmanager_url: Option<String>,
    /// Push only findings at least this severe: low, medium, high, critical.
    #[arg(long, default_value_t = Severity::Low, value_name = "SEVERITY")]
    pub alertmanager_min_severity: Severity,
    /// Which ends of sessions to watch: `client` (local processes connecting to a watched
    /// port), `server` (sessions a local server accepts on a watched port), or both.
    #[arg(long, value_delimiter = ',', default_value = "client", value_name = "ROLE[,ROLE]")]
    pub roles: Vec<Role>,
    /// Run even when another sensor already runs on this host (each finding and alert
    /// then arrives twice, and every packet is inspected twice).
    #[arg(long)]
    pub allow_second_instance: bool,
    /// Run on a kernel older than the oldest tested one (6.1), down to 5.8.
    #[arg(long)]
    pub allow_untested_kernel: bool,
    /// The Kubernetes node this sensor runs on, stamped on findings and used as the alerts'
    /// `instance` (the DaemonSet sets NODE_NAME from the downward API).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Where the host's machine id is (findings' `host.id`) [default: /etc/machine-id, then
    /// /var/lib/dbus/machine-id, then the boot id]. In a container, mount the host's file.
    #[arg(long, value_name = "PATH")]
    pub machine_id_file: Option<PathBuf>,
    /// Log the kernel programs' diagnostics at info, with the ports: a connection adopted or
    /// not adopted after start, a session's start not seen, a capture evicted. Verbose (every
    /// later packet of a judged connection reports "not adopted"): for debugging a host.
    #[arg(long)]
    pub kernel_log: bool,
}

impl Default for Settings {
    /// The defaults of `sensor run` with no flags: the `#[arg]` defaults above.
    fn default() -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            settings: Settings,
        }
        Defaults::parse_from(["sensor"]).settings
    }
}

/// Where a setting's value came from, for error messages that name it.
pub struct Origins<'a> {
    matches: Option<&'a ArgMatches>,
    config: Option<&'a std::path::Path>,
}

impl<'a> Origins<'a> {
    pub fn new(matches: Option<&'a ArgMatches>, config: Option<&'a std::path::Path>) -> Self {
        Origins { matches, config }
    }

    /// Given on the command line, or in the flag's environment variable (both win over the
    /// file).
    fn on_command_line(&self, id: &str) -> bool {
        self.matches.is_some_and(|m| {
            matches!(m.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
        })
    }

    /// `--flag-name` when given on the command line (or with no file), else
    /// `key `flag_name` in --config FILE`: the file set it, or left it to the default.
    fn name(&self, id: &str) -> String {
        let flag = format!("--{}", id.replace('_', "-"));
        match self.config {
            Some(path) if !self.on_command_line(id) => {
                format!("key `{id}` in --config {} ({flag})", path.display())
            }
            _ => flag,
        }
    }
}

impl Settings {
    /// `file`'s settings with every flag given on the command line laid over them.
    pub fn overlay(file: Settings, flags: Settings, origins: &Origins) -> Settings {
        // A struct literal: a new setting that is not listed here does not compile.
        macro_rules! pick {
            ($($field:ident),* $(,)?) => {
                Settings {
                    $($field: if origins.on_command_line(stringify!($field)) {
                        flags.$field
                    } else {
                        file.$field
                    },)*
                }
            };
        }
        pick!(
            ports,
            cgroup,
            metrics_addr,
            findings,
            repeat_window,
            findings_every_session,
            ring_buffer_bytes,
            auth_wait_ms,
            max_connections,
            alertmanager_url,
            alertmanager_min_severity,
            roles,
            allow_second_instance,
            allow_untested_kernel,
            node_name,
            machine_id_file,
            kernel_log,
        )
    }

    /// Check every value; errors name the flag or file key.
    pub fn validate(self, origins: &Origins) -> anyhow::Result<RunConfig> {
        let named = |id: &str, result: anyhow::Result<()>| {
            result.map_err(|err| anyhow::anyhow!("{}: {err}", origins.name(id)))
        };
        named("ports", check_ports(&self.ports))?;
        named("ring_buffer_bytes", check_ring_buffer_bytes(self.ring_buffer_bytes))?;
        named("max_connections", check_max_connections(self.max_connections))?;
        named("roles", ensure_nonempty(&self.roles))?;
        named("repeat_window", check_repeat_window(self.repeat_window))?;
        let alertmanager = match self.alertmanager_url {
            None => None,
            Some(url) => {
                named("alertmanager_url", check_alertmanager_url(&url))?;
                let min_severity = self.alertmanager_min_severity;
                named("alertmanager_min_severity", check_min_severity(min_severity))?;
                Some(AlertmanagerConfig { url, min_severity })
            }
        };
        let mut roles = self.roles;
        roles.sort_unstable();
        roles.dedup();
        Ok(RunConfig {
            ports: normalized_ports(self.ports),
            cgroup: self.cgroup,
            metrics_addr: self.metrics_addr,
            findings: self.findings,
            finding_lines: FindingLines {
                repeat_window: self.repeat_window,
                findings_every_session: self.findings_every_session,
            },
            ring_buffer_bytes: self.ring_buffer_bytes,
            auth_wait: Duration::from_millis(self.auth_wait_ms),
            alertmanager,
            max_connections: self.max_connections,
            roles,
            allow_second_instance: self.allow_second_instance,
            allow_untested_kernel: self.allow_untested_kernel,
            node_name: self.node_name,
            machine_id_file: self.machine_id_file,
            kernel_log: self.kernel_log,
        })
    }
}

/// Validated settings, as `run` uses them.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Sorted, no duplicates.
    pub ports: Vec<u16>,
    pub cgroup: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    pub findings: FindingsTarget,
    /// Aggregated per identity, or one line per session.
    pub finding_lines: FindingLines,
    pub ring_buffer_bytes: u32,
    /// How long a plaintext session's finding waits for its authentication outcome.
    pub auth_wait: Duration,
    pub alertmanager: Option<AlertmanagerConfig>,
    /// Entries of the kernel's connection map.
    pub max_connections: u32,
    /// Which ends of sessions to watch: client (local processes connecting out) and/or
    /// server (sessions accepted by a local server on a watched port).
    pub roles: Vec<Role>,
    /// Run even though another sensor holds this host's instance lock.
    pub allow_second_instance: bool,
    /// Run on a kernel older than the oldest tested one (down to 5.8).
    pub allow_untested_kernel: bool,
    /// Forward the kernel programs' diagnostics to the log.
    pub kernel_log: bool,
    /// The Kubernetes node name, if told.
    pub node_name: Option<String>,
    /// The file holding the host's machine id, if not the usual places.
    pub machine_id_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AlertmanagerConfig {
    /// Base URL, e.g. http://127.0.0.1:9093 (the v2 API path is added).
    pub url: String,
    /// Findings below this severity are not pushed.
    pub min_severity: Severity,
}

pub fn check_ports(ports: &[u16]) -> anyhow::Result<()> {
    ensure!(!ports.is_empty(), "give at least one port, e.g. 26257");
    if ports.contains(&0) {
        bail!("0 is not a TCP port a database listens on; use 1-65535");
    }
    ensure!(
        ports.len() <= MAX_WATCHED_PORTS,
        "at most {MAX_WATCHED_PORTS} ports can be watched, got {}",
        ports.len()
    );
    Ok(())
}

/// Ports in order, each once.
pub fn normalized_ports(mut ports: Vec<u16>) -> Vec<u16> {
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn check_repeat_window(window: HumanDuration) -> anyhow::Result<()> {
    ensure!(
        (Duration::from_secs(1)..=Duration::from_secs(86400)).contains(&window.0),
        "{window} is outside 1s to 24h"
    );
    Ok(())
}

fn ensure_nonempty(roles: &[Role]) -> anyhow::Result<()> {
    ensure!(!roles.is_empty(), "give client, server, or both");
    Ok(())
}

fn check_min_severity(severity: Severity) -> anyhow::Result<()> {
    ensure!(severity > Severity::Info, "{severity} is not one of low, medium, high, critical");
    Ok(())
}

fn check_alertmanager_url(url: &str) -> anyhow::Result<()> {
    ensure!(
        (url.starts_with("http://") || url.starts_with("https://")) && url.len() > "https://".len(),
        "{url:?} is not an http(s) URL, e.g. http://127.0.0.1:9093"
    );
    ensure!(
        !url.starts_with("https://"),
        "https is not supported yet; reach Alertmanager over http on loopback or through a \
         local proxy"
    );
    Ok(())
}

/// The kernel's role bitmask.
pub fn role_bits(roles: &[Role]) -> u32 {
    roles.iter().fold(0, |bits, r| bits | 1 << (*r as u32))
}

fn check_max_connections(n: u32) -> anyhow::Result<()> {
    ensure!((64..=1 << 20).contains(&n), "{n} is outside 64 to 1048576");
    Ok(())
}

fn check_ring_buffer_bytes(bytes: u32) -> anyhow::Result<()> {
    ensure!(
        bytes >= 4096 && bytes.is_power_of_two(),
        "{bytes} is not a power of two of at least 4096"
    );
    Ok(())
}

/// Parse `args` (after `sensor run`) as the command line would, for tests.
#[cfg(test)]
pub fn settings_from(args: &[&str]) -> (Settings, ArgMatches) {
    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        settings: Settings,
    }
    let matches = <Run as clap::CommandFactory>::command()
        .try_get_matches_from(std::iter::once("run").chain(args.iter().copied()))
        .unwrap();
    let settings = <Run as clap::FromArgMatches>::from_arg_matches(&matches).unwrap().settings;
    (settings, matches)
}

#[cfg(test)]
mod tests;
