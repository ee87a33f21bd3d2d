//! Validated settings for `sensor run`. Everything is checked here, before anything is
//! loaded into the kernel, so a bad value never leaves programs attached.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{bail, ensure};
use sensor_common::{
    limits::{CONNECTIONS_MAX, EVENTS_RING_BYTES, MAX_WATCHED_PORTS},
    verdict::{Role, Severity},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindingsTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub ports: Vec<u16>,
    pub cgroup: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    pub findings: FindingsTarget,
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
}

#[derive(Debug, Clone)]
pub struct AlertmanagerConfig {
    /// Base URL, e.g. http://127.0.0.1:9093 (the v2 API path is added).
    pub url: String,
    /// Findings below this severity are not pushed.
    pub min_severity: Severity,
}

impl AlertmanagerConfig {
    pub fn new(url: &str, min_severity: &str) -> anyhow::Result<Self> {
        ensure!(
            (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() > "https://".len(),
            "--alertmanager-url: {url:?} is not an http(s) URL, e.g. http://127.0.0.1:9093"
        );
        ensure!(
            !url.starts_with("https://"),
            "--alertmanager-url: https is not supported yet; reach Alertmanager over http on \
             loopback or through a local proxy"
        );
        let min_severity = parse_severity(min_severity).ok_or_else(|| {
            anyhow::anyhow!(
                "--alertmanager-min-severity: {min_severity:?} is not one of low, medium, high, \
                 critical"
            )
        })?;
        Ok(AlertmanagerConfig { url: url.to_string(), min_severity })
    }
}

fn parse_severity(name: &str) -> Option<Severity> {
    [Severity::Low, Severity::Medium, Severity::High, Severity::Critical]
        .into_iter()
        .find(|s| s.name() == name)
}

/// The severity with this name (as findings spell it).
pub fn severity_named(name: &str) -> Severity {
    parse_severity(name).unwrap_or(Severity::Info)
}

impl Default for RunConfig {
    /// The defaults of `sensor run` with no flags.
    fn default() -> Self {
        RunConfig {
            ports: vec![DEFAULT_PORT],
            cgroup: None,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT)),
            findings: FindingsTarget::Stdout,
            ring_buffer_bytes: EVENTS_RING_BYTES,
            auth_wait: Duration::from_secs(1),
            alertmanager: None,
            max_connections: CONNECTIONS_MAX,
            roles: vec![Role::Client],
            allow_second_instance: false,
            allow_untested_kernel: false,
        }
    }
}

/// CockroachDB's SQL port.
pub const DEFAULT_PORT: u16 = 26257;
pub const DEFAULT_METRICS_PORT: u16 = 9477;

pub fn parse_metrics_addr(value: &str) -> anyhow::Result<SocketAddr> {
    value.parse().map_err(|_| {
        anyhow::anyhow!("--metrics-addr: {value:?} is not an address:port, e.g. 127.0.0.1:9477")
    })
}

pub fn validate_ports(mut ports: Vec<u16>) -> anyhow::Result<Vec<u16>> {
    ensure!(!ports.is_empty(), "--ports: give at least one port, e.g. --ports 26257");
    if ports.contains(&0) {
        bail!("--ports: 0 is not a TCP port a database listens on; use 1-65535");
    }
    ensure!(
        ports.len() <= MAX_WATCHED_PORTS,
        "--ports: at most {MAX_WATCHED_PORTS} ports can be watched, got {}",
        ports.len()
    );
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

pub fn parse_roles(names: Vec<String>) -> anyhow::Result<Vec<Role>> {
    let mut roles = Vec::new();
    for name in &names {
        let role = Role::ALL
            .into_iter()
            .find(|r| r.name() == name.trim())
            .ok_or_else(|| anyhow::anyhow!("--roles: {name:?} is not client or server"))?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    ensure!(!roles.is_empty(), "--roles: give client, server, or both");
    Ok(roles)
}

/// The kernel's role bitmask.
pub fn role_bits(roles: &[Role]) -> u32 {
    roles.iter().fold(0, |bits, r| bits | 1 << (*r as u32))
}

pub fn validate_max_connections(n: u32) -> anyhow::Result<u32> {
    ensure!((64..=1 << 20).contains(&n), "--max-connections: {n} is outside 64 to 1048576");
    Ok(n)
}

pub fn validate_ring_buffer_bytes(bytes: u32) -> anyhow::Result<u32> {
    ensure!(
        bytes >= 4096 && bytes.is_power_of_two(),
        "--ring-buffer-bytes: {bytes} is not a power of two of at least 4096"
    );
    Ok(bytes)
}

pub fn parse_findings_target(value: &str) -> anyhow::Result<FindingsTarget> {
    match value {
        "" => bail!("--findings: give a file path, or - for stdout"),
        "-" => Ok(FindingsTarget::Stdout),
        path => Ok(FindingsTarget::File(PathBuf::from(path))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_sorted_and_deduplicated() {
        assert_eq!(validate_ports(vec![5432, 26257, 5432]).unwrap(), vec![5432, 26257]);
    }

    #[test]
    fn port_zero_and_empty_lists_are_refused() {
        assert!(validate_ports(vec![]).unwrap_err().to_string().contains("--ports"));
        assert!(validate_ports(vec![0]).unwrap_err().to_string().contains("1-65535"));
    }

    #[test]
    fn too_many_ports_are_refused() {
        let many: Vec<u16> = (1..=(MAX_WATCHED_PORTS as u16 + 1)).collect();
        assert!(validate_ports(many).is_err());
    }

    #[test]
    fn alertmanager_settings() {
        let am = AlertmanagerConfig::new("http://127.0.0.1:9093", "high").unwrap();
        assert_eq!(am.min_severity, Severity::High);
        assert!(AlertmanagerConfig::new("127.0.0.1:9093", "low").is_err());
        let err = AlertmanagerConfig::new("http://am:9093", "loud").unwrap_err().to_string();
        assert!(err.contains("--alertmanager-min-severity"), "{err}");
        assert_eq!(severity_named("critical"), Severity::Critical);
        assert_eq!(severity_named("info"), Severity::Info);
    }

    #[test]
    fn roles() {
        let both = parse_roles(vec!["client".into(), "server".into(), "client".into()]).unwrap();
        assert_eq!(both, vec![Role::Client, Role::Server]);
        assert_eq!(role_bits(&both), 3);
        assert_eq!(role_bits(&[Role::Server]), 2);
        assert!(parse_roles(vec!["proxy".into()]).unwrap_err().to_string().contains("--roles"));
        assert!(parse_roles(vec![]).is_err());
    }

    #[test]
    fn ring_buffer_sizes() {
        assert_eq!(validate_ring_buffer_bytes(4096).unwrap(), 4096);
        assert!(validate_ring_buffer_bytes(5000).is_err());
        assert!(validate_ring_buffer_bytes(2048).is_err());
    }

    #[test]
    fn findings_target() {
        assert_eq!(parse_findings_target("-").unwrap(), FindingsTarget::Stdout);
        assert_eq!(
            parse_findings_target("/var/log/f.jsonl").unwrap(),
            FindingsTarget::File("/var/log/f.jsonl".into())
        );
        assert!(parse_findings_target("").is_err());
    }
}
