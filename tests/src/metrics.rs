//! A tiny Prometheus text-format reader and HTTP GET, enough for assertions.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context};

/// Plain HTTP/1.0 GET; returns (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status code")?;
    Ok((code, body.to_string()))
}

/// Samples keyed by `name{labels}` exactly as exposed (labels in exposition order).
#[derive(Debug, Clone, Default)]
pub struct Samples(pub HashMap<String, f64>);

impl Samples {
    pub fn parse(text: &str) -> anyhow::Result<Samples> {
        let mut map = HashMap::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                bail!("bad sample line {line:?}");
            };
            map.insert(key.to_string(), value.parse().with_context(|| line.to_string())?);
        }
        Ok(Samples(map))
    }

    /// The value of a sample, 0 when absent.
    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    pub fn sessions(&self, verdict: &str, role: &str) -> f64 {
        self.get(&format!("pgwire_sensor_sessions_total{{role=\"{role}\",verdict=\"{verdict}\"}}"))
    }
}
