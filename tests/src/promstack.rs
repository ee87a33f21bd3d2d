//! Real Prometheus and Alertmanager (Debian packages) on loopback, configured from the
//! project's own deploy/ files, and a webhook receiver that records what Alertmanager
//! delivers.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use anyhow::Context;
use serde_json::Value;

use crate::{
    metrics::http_get,
    util::{free_port, repo_path, scratch_dir, wait_for},
};

fn deploy(path: &str) -> PathBuf {
    repo_path(&format!("deploy/{path}"))
}

/// Records every POST body it receives (Alertmanager's webhook notifications).
pub struct Webhook {
    pub addr: SocketAddr,
    pub bodies: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    pub fn start() -> anyhow::Result<Webhook> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let sink = bodies.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_ok() {
                    if let Ok(json) = serde_json::from_slice(&body) {
                        sink.lock().unwrap().push(json);
                    }
                }
                let _ = reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            }
        });
        Ok(Webhook { addr, bodies })
    }

    /// Every alert delivered so far (flattened out of the notifications).
    pub fn alerts(&self) -> Vec<Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Alertmanager {
    _daemon: Daemon,
    pub addr: SocketAddr,
}

impl Alertmanager {
    /// deploy/alertmanager/alertmanager.yml with the webhook's address and short waits.
    pub fn start(webhook: &Webhook) -> anyhow::Result<Alertmanager> {
        let dir = scratch_dir("alertmanager");
        let config = fs::read_to_string(deploy("alertmanager/alertmanager.yml"))?
            .replace("http://127.0.0.1:5001/", &format!("http://{}/", webhook.addr))
            .replace("group_wait: 10s", "group_wait: 1s")
            .replace("group_interval: 1m", "group_interval: 1s");
        fs::write(dir.join("alertmanager.yml"), config)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", dir.join("alertmanager.yml").display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("alertmanager.log"))?)
            .spawn()
            .context("starting prometheus-alertmanager (scripts/bootstrap.sh --test-deps)")?;
        let am = Alertmanager { _daemon: Daemon(child), addr };
        wait_for("Alertmanager to be ready", Duration::from_secs(30), || {
            matches!(http_get(addr, "/-/ready"), Ok((200, _))).then_some(())
        })
        .with_context(|| fs::read_to_string(dir.join("alertmanager.log")).unwrap_or_default())?;
        Ok(am)
    }
}

pub struct Prometheus {
    _daemon: Daemon,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// deploy/prometheus/prometheus.yml scraping `sensor`, alerting to `alertmanager`,
    /// evaluating deploy/prometheus/alerts.yml, every second.
    pub fn start(sensor: SocketAddr, alertmanager: SocketAddr) -> anyhow::Result<Prometheus> {
        let dir = scratch_dir("prometheus");
        let config = fs::read_to_string(deploy("prometheus/prometheus.yml"))?
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
            .replace("\"127.0.0.1:9093\"", &format!("\"{alertmanager}\""))
            .replace("\"127.0.0.1:9477\"", &format!("\"{sensor}\""))
            .replace("- alerts.yml", &format!("- {}", deploy("prometheus/alerts.yml").display()));
        fs::write(dir.join("prometheus.yml"), config)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .context("starting prometheus (scripts/bootstrap.sh --test-deps)")?;
        let p = Prometheus { _daemon: Daemon(child), addr, log };
        wait_for("Prometheus to be ready", Duration::from_secs(30), || {
            matches!(http_get(addr, "/-/ready"), Ok((200, _))).then_some(())
        })
        .with_context(|| p.log())?;
        Ok(p)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET an API path and parse the JSON answer.
    pub fn api(&self, path: &str) -> anyhow::Result<Value> {
        let (code, body) = http_get(self.addr, path)?;
        anyhow::ensure!(code == 200, "{path}: HTTP {code}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// Alerts currently firing with this name.
    pub fn firing(&self, alertname: &str) -> anyhow::Result<Vec<Value>> {
        let alerts = self.api("/api/v1/alerts")?;
        Ok(alerts["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == alertname && a["state"] == "firing")
            .collect())
    }
}
