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
    certs::ServerCerts,
    metrics::http_get,
    util::{free_port, repo_path, scratch_dir, wait_for},
};

fn deploy(path: &str) -> PathBuf {
    repo_path(&format!("deploy/{path}"))
}

/// A request's path and `Authorization` header.
pub type Request = (String, Option<String>);

/// Records every POST it receives: Alertmanager's webhook notifications, or (standing in
/// for an Alertmanager behind an authenticating proxy) the sensor's own pushes.
pub struct Webhook {
    pub addr: SocketAddr,
    pub bodies: Arc<Mutex<Vec<Value>>>,
    /// Each request's path and `Authorization` header, in order.
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Webhook {
    pub fn start() -> anyhow::Result<Webhook> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (body_sink, request_sink) = (bodies.clone(), requests.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
                let (mut length, mut authorization) = (0usize, None);
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                    if let Some((name, value)) = line.split_once(':') {
                        match name.trim().to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap_or(0),
                            "authorization" => authorization = Some(value.trim().to_string()),
                            _ => {}
                        }
                    }
                    line.clear();
                }
                request_sink.lock().unwrap().push((path, authorization));
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_ok() {
                    if let Ok(json) = serde_json::from_slice(&body) {
                        body_sink.lock().unwrap().push(json);
                    }
                }
                let _ = reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            }
        });
        Ok(Webhook { addr, bodies, requests })
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

/// How an Alertmanager is run beyond the project's config: TLS and basic auth from a web
/// config file (as people expose it), and an HA peer to gossip with.
#[derive(Default)]
pub struct AlertmanagerOptions<'a> {
    /// Serve https with this certificate (its CA verifies it).
    pub tls: Option<&'a ServerCerts>,
    /// Require this user and password (basic auth).
    pub basic_auth: Option<(&'a str, &'a str)>,
    /// This peer's cluster address, and the other peers' (an HA cluster on loopback).
    pub cluster: Option<(SocketAddr, Vec<SocketAddr>)>,
}

pub struct Alertmanager {
    _daemon: Daemon,
    pub addr: SocketAddr,
    /// http(s)://addr
    pub url: String,
    client: reqwest::blocking::Client,
    basic_auth: Option<(String, String)>,
}

impl Alertmanager {
    /// deploy/alertmanager/alertmanager.yml with the webhook's address and short waits.
    pub fn start(webhook: &Webhook) -> anyhow::Result<Alertmanager> {
        Self::start_with(webhook, AlertmanagerOptions::default())
    }

    pub fn start_with(
        webhook: &Webhook,
        options: AlertmanagerOptions,
    ) -> anyhow::Result<Alertmanager> {
        let dir = scratch_dir("alertmanager");
        let config = fs::read_to_string(deploy("alertmanager/alertmanager.yml"))?
            .replace("http://127.0.0.1:5001/", &format!("http://{}/", webhook.addr))
            .replace("group_wait: 10s", "group_wait: 1s")
            .replace("group_interval: 1m", "group_interval: 1s");
        fs::write(dir.join("alertmanager.yml"), config)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let mut command = Command::new("prometheus-alertmanager");
        command
            .arg(format!("--config.file={}", dir.join("alertmanager.yml").display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"));
        match &options.cluster {
            None => {
                command.arg("--cluster.listen-address=");
            }
            Some((listen, peers)) => {
                command.arg(format!("--cluster.listen-address={listen}"));
                command.arg(format!("--cluster.advertise-address={listen}"));
                for peer in peers {
                    command.arg(format!("--cluster.peer={peer}"));
                }
            }
        }
        let mut web = String::new();
        let mut client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5));
        if let Some(certs) = options.tls {
            web.push_str(&format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                certs.cert.display(),
                certs.key.display()
            ));
            let ca = reqwest::Certificate::from_pem(&fs::read(&certs.ca_cert)?)?;
            client = client.add_root_certificate(ca);
        }
        if let Some((user, password)) = options.basic_auth {
            let hash = bcrypt::hash(password, 4)?;
            web.push_str(&format!("basic_auth_users:\n  {user}: {hash}\n"));
        }
        if !web.is_empty() {
            fs::write(dir.join("web.yml"), web)?;
            command.arg(format!("--web.config.file={}", dir.join("web.yml").display()));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("alertmanager.log"))?)
            .spawn()
            .context("starting prometheus-alertmanager (scripts/bootstrap.sh --test-deps)")?;
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        let am = Alertmanager {
            _daemon: Daemon(child),
            addr,
            url: format!("{scheme}://{addr}"),
            client: client.build()?,
            basic_auth: options.basic_auth.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        wait_for("Alertmanager to be ready", Duration::from_secs(30), || {
            matches!(am.get("/-/ready"), Ok((200, _))).then_some(())
        })
        .with_context(|| fs::read_to_string(dir.join("alertmanager.log")).unwrap_or_default())?;
        Ok(am)
    }

    /// GET `path` as a client that trusts its CA and knows its password.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let mut request = self.client.get(format!("{}{path}", self.url));
        if let Some((user, password)) = &self.basic_auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send()?;
        Ok((response.status().as_u16(), response.text()?))
    }

    /// The alerts it holds now (API v2), the inhibited ones included.
    pub fn alerts(&self) -> anyhow::Result<Vec<Value>> {
        let (code, body) = self.get("/api/v2/alerts")?;
        anyhow::ensure!(code == 200, "GET /api/v2/alerts: HTTP {code}: {body}");
        Ok(serde_json::from_str(&body)?)
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
        Self::start_in(dir, &config)
    }

    /// Prometheus with `config` as its prometheus.yml (a scrape of the sensor over TLS,
    /// say), in its own scratch directory.
    pub fn start_with_config(config: &str) -> anyhow::Result<Prometheus> {
        Self::start_in(scratch_dir("prometheus"), config)
    }

    fn start_in(dir: PathBuf, config: &str) -> anyhow::Result<Prometheus> {
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

    /// Evaluate `expr` now; the result vector (or matrix) as Prometheus returns it.
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let answer = self.api(&format!("/api/v1/query?query={}", percent_encode(expr)))?;
        anyhow::ensure!(answer["status"] == "success", "{expr}: {answer}");
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
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

/// `text` as a URL query value: everything but unreserved characters percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
