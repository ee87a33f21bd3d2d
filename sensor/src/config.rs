//! Settings for `sensor run`: one schema ([`Settings`]) for the flags and the `--config`
//! file, each default written once (in its `#[arg]`, shown by `--help`; the file's defaults
//! are the same values, parsed from an empty command line). [`Settings::validate`] turns
//! them into a [`RunConfig`] before anything is loaded into the kernel, so a bad value never
//! leaves programs attached, and every error names the flag or the file key it came from.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use anyhow::{bail, ensure};
use clap::{parser::ValueSource, ArgMatches, Args, Parser};
use sensor_common::{
    limits::{EVENTS_RING_BYTES, MAX_WATCHED_PORTS},
    verdict::{Role, Severity, RUNBOOK_BASE_URL},
};
use serde::Deserialize;

use crate::output::{
    delivery::{Credentials, Delivery, Peer},
    web_config::WebSecurity,
};

/// `--tls-verification`: whether clients' OpenSSL is probed to learn if they verify the
/// server, and whether libraries that appear after start are probed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsVerification {
    /// Never: every TLS session's verification is `unknown`.
    Off,
    /// The OpenSSL copies present at start (the distribution's and every running
    /// process's); all privileges not needed to read maps are dropped after start, as
    /// without probing. A wheel or container that brings its own copy later is `unknown`
    /// until the sensor restarts.
    AtStart,
    /// As at-start, and every second the copies that appeared since (a Python wheel
    /// imported later, a new container) are probed too. Opening a uprobe needs
    /// CAP_SYS_ADMIN (and CAP_PERFMON), so the agent keeps both after start.
    #[default]
    Follow,
}

impl TlsVerification {
    pub fn enabled(self) -> bool {
        self != TlsVerification::Off
    }
}

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

impl std::fmt::Display for FindingsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FindingsTarget::Stdout => f.write_str("stdout"),
            FindingsTarget::File(path) => write!(f, "{}", path.display()),
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

/// A file key that takes one value or a list (`alertmanager_url: http://am:9093`, or a list
/// of peers).
fn one_or_many<'de, D, T>(de: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(de)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
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
    /// TLS and basic auth for the metrics endpoint: a web configuration file in the format
    /// of node_exporter and Prometheus (`tls_server_config`, `basic_auth_users`), for a
    /// central Prometheus to scrape it without exposing which sessions are weak.
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<PathBuf>,
    /// Where to append findings (JSON lines); `-` is stdout. Repeat it to write every line
    /// to each (stdout for `kubectl logs` and a file, say). In the file: a path or a list.
    #[arg(long, default_value = "-", value_name = "PATH|-")]
    #[serde(deserialize_with = "one_or_many")]
    pub findings: Vec<FindingsTarget>,
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
    /// No longer used, accepted so that existing configurations still load (a warning
    /// says so): the kernel keeps each connection's state in its socket's own storage,
    /// freed with the socket, so there is no table to size and nothing is evicted.
    #[arg(long, hide = true, value_name = "N")]
    pub max_connections: Option<u32>,
    /// Push one alert per misconfigured app to this Alertmanager (v2 API), e.g.
    /// http://127.0.0.1:9093. Repeat it for every peer of an HA cluster (each gets every
    /// alert, as from Prometheus). In the file: a URL or a list.
    #[arg(long, value_name = "URL")]
    #[serde(deserialize_with = "one_or_many")]
    pub alertmanager_url: Vec<String>,
    /// Push only findings at least this severe: low, medium, high, critical.
    #[arg(long, default_value_t = Severity::Low, value_name = "SEVERITY")]
    pub alertmanager_min_severity: Severity,
    /// Trust only this CA (PEM) for https Alertmanager URLs [default: the public roots
    /// compiled into the sensor].
    #[arg(long, value_name = "PATH")]
    pub alertmanager_ca_file: Option<PathBuf>,
    /// Basic auth user for Alertmanager (with --alertmanager-basic-auth-password-file).
    #[arg(long, value_name = "USER")]
    pub alertmanager_basic_auth_user: Option<String>,
    /// File holding the basic auth password (read for each push: rotation needs no restart).
    #[arg(long, value_name = "PATH")]
    pub alertmanager_basic_auth_password_file: Option<PathBuf>,
    /// File holding a bearer token for Alertmanager or the proxy in front of it (read for
    /// each push).
    #[arg(long, value_name = "PATH")]
    pub alertmanager_bearer_token_file: Option<PathBuf>,
    /// Where the runbooks are: pushed alerts carry `runbook_url` = <BASE>/<alertname>.md
    /// (docs/runbooks/ in the source, copied onto the host at the default; give a base
    /// on-call can open, such as your git host's or wiki's).
    #[arg(long, default_value = RUNBOOK_BASE_URL, value_name = "BASE")]
    pub runbook_base_url: String,
    /// Which ends of sessions to watch: `client` (local processes connecting to a watched
    /// port), `server` (sessions a local server accepts on a watched port), or both.
    #[arg(long, value_delimiter = ',', default_value = "client", value_name = "ROLE[,ROLE]")]
    pub roles: Vec<Role>,
    /// Run even when another sensor already runs on this host (each finding and alert
    /// then arrives twice, and every packet is inspected twice).
    #[arg(long)]
    pub allow_second_instance: bool,
    /// Run on a kernel older than the oldest tested one (5.10), down to 5.8.
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
    /// Learn from each client's OpenSSL whether it verifies the server's certificate
    /// (uprobes on every copy of libssl found on the host, through /proc/PID/root): sessions
    /// of clients known not to verify become `tls_unverified`. `follow` also probes copies
    /// that appear after start and keeps CAP_SYS_ADMIN and CAP_PERFMON to do so; `at-start`
    /// drops them; `off` leaves every TLS session's verification `unknown`.
    #[arg(long, value_enum, default_value_t = TlsVerification::Follow, value_name = "MODE")]
    pub tls_verification: TlsVerification,
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

    /// `err` about the setting `id`, naming it (with the error's causes).
    fn error(&self, id: &str, err: anyhow::Error) -> anyhow::Error {
        anyhow::anyhow!("{}: {err:#}", self.name(id))
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
            web_config,
            findings,
            repeat_window,
            findings_every_session,
            ring_buffer_bytes,
            auth_wait_ms,
            max_connections,
            alertmanager_url,
            alertmanager_min_severity,
            alertmanager_ca_file,
            alertmanager_basic_auth_user,
            alertmanager_basic_auth_password_file,
            alertmanager_bearer_token_file,
            runbook_base_url,
            roles,
            allow_second_instance,
            allow_untested_kernel,
            node_name,
            machine_id_file,
            kernel_log,
            tls_verification,
        )
    }

    /// Check every value; errors name the flag or file key.
    pub fn validate(self, origins: &Origins) -> anyhow::Result<RunConfig> {
        let named =
            |id: &str, result: anyhow::Result<()>| result.map_err(|err| origins.error(id, err));
        named("ports", check_ports(&self.ports))?;
        named("ring_buffer_bytes", check_ring_buffer_bytes(self.ring_buffer_bytes))?;
        named("roles", ensure_nonempty(&self.roles))?;
        named("repeat_window", check_repeat_window(self.repeat_window))?;
        named("findings", check_findings_targets(&self.findings))?;
        let alertmanager = self.alertmanager(origins)?;
        let web = match &self.web_config {
            Some(path) => {
                Arc::new(WebSecurity::load(path).map_err(|err| origins.error("web_config", err))?)
            }
            None => Arc::new(WebSecurity::none()),
        };
        let mut roles = self.roles;
        roles.sort_unstable();
        roles.dedup();
        Ok(RunConfig {
            ports: normalized_ports(self.ports),
            cgroup: self.cgroup,
            metrics_addr: self.metrics_addr,
            web,
            findings: self.findings,
            finding_lines: FindingLines {
                repeat_window: self.repeat_window,
                findings_every_session: self.findings_every_session,
            },
            ring_buffer_bytes: self.ring_buffer_bytes,
            auth_wait: Duration::from_millis(self.auth_wait_ms),
            alertmanager,
            ignored_settings: self.max_connections.map(|_| "max_connections").into_iter().collect(),
            roles,
            allow_second_instance: self.allow_second_instance,
            allow_untested_kernel: self.allow_untested_kernel,
            node_name: self.node_name,
            machine_id_file: self.machine_id_file,
            kernel_log: self.kernel_log,
            tls_verification: self.tls_verification,
        })
    }
}

impl Settings {
    /// The Alertmanager settings, checked together: a URL per peer, the CA file and the
    /// credentials readable now, and no TLS or auth setting without a URL to use it.
    fn alertmanager(&self, origins: &Origins) -> anyhow::Result<Option<AlertmanagerConfig>> {
        let named = |id: &str, err: anyhow::Error| origins.error(id, err);
        let dependents = [
            ("alertmanager_ca_file", self.alertmanager_ca_file.is_some()),
            ("alertmanager_basic_auth_user", self.alertmanager_basic_auth_user.is_some()),
            (
                "alertmanager_basic_auth_password_file",
                self.alertmanager_basic_auth_password_file.is_some(),
            ),
            ("alertmanager_bearer_token_file", self.alertmanager_bearer_token_file.is_some()),
            ("runbook_base_url", self.runbook_base_url != RUNBOOK_BASE_URL),
        ];
        if self.alertmanager_url.is_empty() {
            if let Some((id, _)) = dependents.iter().find(|(_, given)| *given) {
                return Err(named(id, anyhow::anyhow!("needs --alertmanager-url")));
            }
            return Ok(None);
        }
        let mut peers: Vec<Peer> = Vec::new();
        for url in &self.alertmanager_url {
            let peer = Peer::parse(url).map_err(|err| named("alertmanager_url", err))?;
            if !peers.contains(&peer) {
                peers.push(peer);
            }
        }
        let min_severity = self.alertmanager_min_severity;
        check_min_severity(min_severity).map_err(|err| named("alertmanager_min_severity", err))?;
        let basic =
            (&self.alertmanager_basic_auth_user, &self.alertmanager_basic_auth_password_file);
        let credentials = match (basic, &self.alertmanager_bearer_token_file) {
            ((None, None), None) => None,
            ((None, None), Some(token_file)) => {
                Some(Credentials::Bearer { token_file: token_file.clone() })
            }
            ((Some(user), Some(password_file)), None) => Some(Credentials::Basic {
                user: user.clone(),
                password_file: password_file.clone(),
            }),
            ((Some(_), None), _) => {
                let err = anyhow::anyhow!("needs --alertmanager-basic-auth-password-file");
                return Err(named("alertmanager_basic_auth_user", err));
            }
            ((None, Some(_)), _) => {
                let err = anyhow::anyhow!("needs --alertmanager-basic-auth-user");
                return Err(named("alertmanager_basic_auth_password_file", err));
            }
            ((Some(_), Some(_)), Some(_)) => {
                let err = anyhow::anyhow!("give basic auth or a bearer token, not both");
                return Err(named("alertmanager_bearer_token_file", err));
            }
        };
        if self.alertmanager_ca_file.is_some() && !peers.iter().any(Peer::is_https) {
            return Err(named(
                "alertmanager_ca_file",
                anyhow::anyhow!("no --alertmanager-url is https, so the CA would never be used"),
            ));
        }
        let delivery = Delivery { peers, ca_file: self.alertmanager_ca_file.clone(), credentials };
        delivery.client().map_err(|err| named("alertmanager_ca_file", err))?;
        if let Some(credentials) = &delivery.credentials {
            let id = match credentials {
                Credentials::Basic { .. } => "alertmanager_basic_auth_password_file",
                Credentials::Bearer { .. } => "alertmanager_bearer_token_file",
            };
            delivery.check_credentials().map_err(|err| named(id, err))?;
        }
        let runbook_base = self.runbook_base_url.trim_end_matches('/').to_string();
        reqwest::Url::parse(&runbook_base).map_err(|err| {
            named("runbook_base_url", anyhow::anyhow!("{runbook_base:?} is not a URL: {err}"))
        })?;
        Ok(Some(AlertmanagerConfig { delivery, min_severity, runbook_base }))
    }
}

/// Validated settings, as `run` uses them.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Sorted, no duplicates.
    pub ports: Vec<u16>,
    pub cgroup: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    /// TLS and basic auth of the metrics endpoint (`--web-config`; neither by default).
    pub web: Arc<WebSecurity>,
    /// At least one; no two the same.
    pub findings: Vec<FindingsTarget>,
    /// Aggregated per identity, or one line per session.
    pub finding_lines: FindingLines,
    pub ring_buffer_bytes: u32,
    /// How long a plaintext session's finding waits for its authentication outcome.
    pub auth_wait: Duration,
    pub alertmanager: Option<AlertmanagerConfig>,
    /// Settings given that no longer do anything (start-up warns about each).
    pub ignored_settings: Vec<&'static str>,
    /// Which ends of sessions to watch: client (local processes connecting out) and/or
    /// server (sessions accepted by a local server on a watched port).
    pub roles: Vec<Role>,
    /// Run even though another sensor holds this host's instance lock.
    pub allow_second_instance: bool,
    /// Run on a kernel older than the oldest tested one (down to 5.8).
    pub allow_untested_kernel: bool,
    /// Forward the kernel programs' diagnostics to the log.
    pub kernel_log: bool,
    /// Probe clients' OpenSSL for certificate verification, and for how long.
    pub tls_verification: TlsVerification,
    /// The Kubernetes node name, if told.
    pub node_name: Option<String>,
    /// The file holding the host's machine id, if not the usual places.
    pub machine_id_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AlertmanagerConfig {
    /// The peers, and how to reach them.
    pub delivery: Delivery,
    /// Findings below this severity are not pushed.
    pub min_severity: Severity,
    /// `runbook_url` is `<runbook_base>/<alertname>.md`; no trailing slash.
    pub runbook_base: String,
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

/// At least one, and each once: a file given twice would get every line twice, from two
/// writers racing on one file.
fn check_findings_targets(targets: &[FindingsTarget]) -> anyhow::Result<()> {
    ensure!(!targets.is_empty(), "give a file path, or - for stdout");
    for (index, target) in targets.iter().enumerate() {
        ensure!(!targets[..index].contains(target), "{target} is given twice");
    }
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

/// The kernel's role bitmask.
pub fn role_bits(roles: &[Role]) -> u32 {
    roles.iter().fold(0, |bits, r| bits | 1 << (*r as u32))
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
