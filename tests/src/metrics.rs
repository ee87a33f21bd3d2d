//! A tiny Prometheus text-format reader and HTTP GET, enough for assertions.

use std::{
    collections::BTreeMap,
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

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed /metrics page.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    pub fn parse(text: &str) -> anyhow::Result<Samples> {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                bail!("bad sample line {line:?}");
            };
            let (name, labels) = match key.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))?),
                None => (key, BTreeMap::new()),
            };
            let value = value.parse().with_context(|| line.to_string())?;
            out.push(Sample { name: name.to_string(), labels, value });
        }
        Ok(Samples(out))
    }

    /// The sum of `name`'s samples whose labels include all of `labels` (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// A metric without labels, or the sum over its label sets.
    pub fn get(&self, name: &str) -> f64 {
        self.sum(name, &[])
    }

    /// Sessions of a verdict and role, over all watched ports.
    pub fn sessions(&self, verdict: &str, role: &str) -> f64 {
        self.sum("pgwire_sensor_sessions_total", &[("verdict", verdict), ("role", role)])
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name)
    }
}

fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    // Values never contain `",` in this sensor's output: a simple split is enough here.
    for pair in text.split("\",").filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once("=\"").with_context(|| format!("bad label {pair:?}"))?;
        labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
    }
    Ok(labels)
}
