//! Validated settings for `sensor run`. Everything is checked here, before anything is
//! loaded into the kernel, so a bad value never leaves programs attached.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{bail, ensure};
use sensor_common::limits::{EVENTS_RING_BYTES, MAX_WATCHED_PORTS};

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
}

impl RunConfig {
    pub fn new(
        ports: Vec<u16>,
        cgroup: Option<PathBuf>,
        metrics_addr: SocketAddr,
        findings: &str,
    ) -> anyhow::Result<Self> {
        Ok(RunConfig {
            ports: validate_ports(ports)?,
            cgroup,
            metrics_addr,
            findings: parse_findings_target(findings)?,
            ring_buffer_bytes: EVENTS_RING_BYTES,
            auth_wait: Duration::from_secs(1),
        })
    }
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
