//! Push alerts to Alertmanager's v2 API: one alert per identity (see `alert_book`), built
//! here from its latest finding and its running count.
//!
//! The event pipeline only `try_send`s into a bounded queue: a slow or dead Alertmanager
//! never blocks or slows it (a full queue counts `alerts_failed_total{reason="queue_full"}`).
//! A worker task posts batches with retries and exponential backoff.
//!
//! Labels follow what routes already use and stay bounded: alertname, `severity`
//! (critical, warning, info), `sensor_severity` (the sensor's own scale), verdict, dst_port,
//! instance (the node, else the host), and `identity` (a fingerprint of the app, so two apps
//! are two alerts and ten thousand sessions of one app are one). The detail metrics must
//! not carry (process, user, database, addresses, counts) goes in annotations.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::warn;

use sensor_common::verdict::alert_name;

use super::http::HttpState;
use crate::finding::{format_ts, Finding};

/// Alerts waiting to be sent at most; past it new ones are dropped and counted.
pub const QUEUE_LEN: usize = 1024;
/// Alerts per POST at most.
const BATCH: usize = 64;
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Alert {
    pub labels: BTreeMap<&'static str, String>,
    pub annotations: BTreeMap<&'static str, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

/// What an identity's alert says beyond its latest finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    /// The identity's fingerprint (the `identity` label).
    pub identity: String,
    /// Sessions seen since the alert started.
    pub sessions: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// When Alertmanager should consider it resolved: in the future while it goes on, now
    /// when it is over.
    pub ends_at: SystemTime,
}

/// The alert for an identity: `latest` is its latest session's finding.
pub fn alert_for(latest: &Finding, tally: &Tally, instance: &str, generator_url: &str) -> Alert {
    let finding = latest;
    let mut labels = BTreeMap::new();
    labels.insert("alertname", alert_name(finding.verdict, finding.severity).to_string());
    labels.insert("severity", finding.severity.alert_severity().to_string());
    labels.insert("sensor_severity", finding.severity.to_string());
    labels.insert("verdict", finding.verdict.to_string());
    labels.insert("dst_port", finding.dst.port.to_string());
    labels.insert("instance", instance.to_string());
    labels.insert("identity", tally.identity.clone());

    let mut a = BTreeMap::new();
    let who = match &finding.process {
        Some(p) => format!("{} (pid {}, uid {})", p.comm, p.pid, p.uid),
        None => "a process the sensor did not see connect".to_string(),
    };
    let (db_user, database) = match &finding.startup {
        Some(s) => (
            s.user.clone().unwrap_or_else(|| "?".into()),
            s.database.clone().unwrap_or_else(|| "?".into()),
        ),
        None => ("?".into(), "?".into()),
    };
    a.insert(
        "summary",
        format!(
            "{} {} session(s) from {} to {}:{} on {instance}",
            tally.sessions, finding.verdict, who, finding.dst.ip, finding.dst.port
        ),
    );
    a.insert("sessions", tally.sessions.to_string());
    a.insert("first_seen", format_ts(tally.first_seen));
    a.insert("last_seen", format_ts(tally.last_seen));
    a.insert(
        "description",
        format!(
            "{who} opened a {} database session ({} severity) as user {db_user:?} to database \
             {database:?}, from {}:{} to {}:{}.{}",
            finding.verdict,
            finding.severity,
            finding.src.ip,
            finding.src.port,
            finding.dst.ip,
            finding.dst.port,
            match &finding.auth {
                Some(auth) if auth.password_sent => {
                    format!(" A {} password message was sent in clear.", auth.method)
                }
                _ => String::new(),
            }
        ),
    );
    if let Some(p) = &finding.process {
        a.insert("process", p.comm.clone());
        a.insert("pid", p.pid.to_string());
        a.insert("uid", p.uid.to_string());
        for (key, value) in [
            ("exe", &p.exe),
            ("cmdline", &p.cmdline),
            ("user", &p.user),
            ("container_id", &p.container_id),
            ("systemd_unit", &p.systemd_unit),
        ] {
            if let Some(v) = value {
                a.insert(key, v.clone());
            }
        }
    }
    a.insert("db_user", db_user);
    a.insert("database", database);
    a.insert("src", format!("{}:{}", finding.src.ip, finding.src.port));
    a.insert("dst", format!("{}:{}", finding.dst.ip, finding.dst.port));
    if let Some(auth) = &finding.auth {
        a.insert("auth_method", auth.method.to_string());
        a.insert("password_sent", auth.password_sent.to_string());
    }
    a.insert("finding", serde_json::to_string(finding).unwrap_or_default());

    Alert {
        labels,
        annotations: a,
        starts_at: format_ts(tally.first_seen),
        ends_at: format_ts(tally.ends_at),
        generator_url: generator_url.to_string(),
    }
}

/// The pipeline's handle: hands alerts to the worker without waiting.
pub struct AlertPusher {
    queue: mpsc::Sender<Alert>,
    state: Arc<HttpState>,
}

impl AlertPusher {
    /// Start the worker posting to `base_url` (e.g. http://127.0.0.1:9093).
    pub fn spawn(base_url: &str, state: Arc<HttpState>) -> anyhow::Result<AlertPusher> {
        let url = format!("{}/api/v2/alerts", base_url.trim_end_matches('/'));
        let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
        let (queue, rx) = mpsc::channel(QUEUE_LEN);
        tokio::spawn(worker(client, url, rx, state.clone()));
        Ok(AlertPusher { queue, state })
    }

    pub fn push(&self, alert: Alert) {
        if self.queue.try_send(alert).is_err() {
            self.state.metrics.alerts_failed.with_label_values(&["queue_full"]).inc();
        }
    }
}

async fn worker(
    client: reqwest::Client,
    url: String,
    mut rx: mpsc::Receiver<Alert>,
    state: Arc<HttpState>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        match post_with_retries(&client, &url, &batch).await {
            Ok(()) => state.metrics.alerts_sent.inc_by(batch.len() as u64),
            Err(reason) => {
                state.metrics.alerts_failed.with_label_values(&[reason]).inc_by(batch.len() as u64)
            }
        }
        batch.clear();
    }
}

/// Post one batch; on failure retry with exponential backoff. Returns the failure reason.
async fn post_with_retries(
    client: &reqwest::Client,
    url: &str,
    batch: &[Alert],
) -> Result<(), &'static str> {
    let mut backoff = FIRST_BACKOFF;
    let mut reason = "unreachable";
    for attempt in 1..=ATTEMPTS {
        match client.post(url).json(batch).send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            // A 4xx will not get better by retrying.
            Ok(resp) if resp.status().is_client_error() => {
                warn!(status = %resp.status(), "Alertmanager rejected alerts");
                return Err("rejected");
            }
            Ok(resp) => {
                warn!(status = %resp.status(), attempt, "Alertmanager failed; retrying");
                reason = "rejected";
            }
            Err(err) => {
                warn!(%err, attempt, "Alertmanager unreachable; retrying");
                reason = "unreachable";
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    Err(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Auth, Endpoint, Process, Startup};
    use sensor_common::{
        tracker::AuthMethod,
        verdict::{Severity, Verdict},
    };

    fn finding(verdict: Verdict, severity: Severity) -> Finding {
        Finding {
            ts: humantime::parse_rfc3339("2026-11-28T12:00:00.000000Z").unwrap(),
            verdict,
            severity,
            src: Endpoint { ip: [10, 1, 2, 3].into(), port: 40000 },
            dst: Endpoint { ip: [10, 9, 9, 9].into(), port: 26257 },
            process: Some(Process {
                pid: 42,
                tid: 42,
                comm: "python3".into(),
                uid: 1000,
                gid: 1000,
                cgroup_id: 1,
                exe: Some("/usr/bin/python3.11".into()),
                ..Process::default()
            }),
            negotiation: None,
            startup: Some(Startup {
                protocol: "3.0".into(),
                user: Some("app".into()),
                database: Some("orders".into()),
                application_name: None,
                truncated: false,
            }),
            auth: Some(Auth { method: AuthMethod::Cleartext, password_sent: true }),
            socket_cookie: Some(7),
            ..Finding::example()
        }
    }

    #[test]
    fn labels_are_bounded_and_detail_goes_in_annotations() {
        let f = finding(Verdict::Plaintext, Severity::Critical);
        let a = alert_for(&f, &tally(&f, 3), "app1", "http://x/");
        assert_eq!(a.labels["alertname"], "PgwireCredentialsExposed");
        assert_eq!(a.labels["severity"], "critical");
        assert_eq!(a.labels["sensor_severity"], "critical");
        assert_eq!(a.labels["identity"], crate::repeats::fingerprint(&f));
        assert_eq!(a.labels["instance"], "app1");
        assert_eq!(a.annotations["sessions"], "3");
        assert!(a.annotations["summary"].starts_with("3 plaintext session(s)"));
        assert_eq!(a.labels["verdict"], "plaintext");
        assert_eq!(a.labels["dst_port"], "26257");
        for key in a.labels.keys() {
            assert!(!["pid", "process", "db_user", "src", "dst"].contains(key), "{key}");
        }
        assert_eq!(a.annotations["process"], "python3");
        assert_eq!(a.annotations["exe"], "/usr/bin/python3.11");
        assert_eq!(a.annotations["pid"], "42");
        assert_eq!(a.annotations["db_user"], "app");
        assert_eq!(a.annotations["database"], "orders");
        assert!(a.annotations["description"].contains("cleartext password"));
        assert_eq!(a.starts_at, "2026-11-28T12:00:00.000000Z");
        assert_eq!(a.ends_at, "2026-11-28T12:05:00.000000Z");
        let json = serde_json::to_value(&a).unwrap();
        assert!(json.get("startsAt").is_some() && json.get("generatorURL").is_some());
    }

    /// `sessions` sessions of `f`'s identity, the first and last at `f.ts`.
    fn tally(f: &Finding, sessions: u64) -> Tally {
        Tally {
            identity: crate::repeats::fingerprint(f),
            sessions,
            first_seen: f.ts,
            last_seen: f.ts,
            ends_at: f.ts + Duration::from_secs(300),
        }
    }

    #[test]
    fn alertnames_and_routing_severities_by_verdict() {
        let labels = |v, s| {
            let f = finding(v, s);
            alert_for(&f, &tally(&f, 1), "h", "u").labels
        };
        let l = labels(Verdict::Downgraded, Severity::High);
        assert_eq!(
            (l["alertname"].as_str(), l["severity"].as_str()),
            ("PgwireDowngradedSession", "warning")
        );
        let l = labels(Verdict::Refused, Severity::Medium);
        assert_eq!(
            (l["alertname"].as_str(), l["severity"].as_str()),
            ("PgwireTlsRefused", "warning")
        );
        let l = labels(Verdict::Plaintext, Severity::High);
        assert_eq!(
            (l["alertname"].as_str(), l["sensor_severity"].as_str()),
            ("PgwirePlaintextSession", "high")
        );
        let l = labels(Verdict::Cancel, Severity::Low);
        assert_eq!(l["severity"], "info");
    }
}
