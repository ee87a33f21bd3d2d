//! Push alerts to Alertmanager's v2 API: one alert per identity (see `alert_book`), built
//! here from its latest finding and its running count.
//!
//! The event pipeline only `try_send`s into a bounded queue per Alertmanager peer: a slow or
//! dead Alertmanager never blocks or slows it, nor delays its peers (a full queue counts
//! `alerts_failed_total{reason="queue_full"}`). A worker task per peer posts batches with
//! retries and exponential backoff; `alerts_sent_total` and `alerts_failed_total` count
//! alerts per peer (two peers: each alert counts twice).
//!
//! Labels follow what routes already use and stay bounded: alertname, `severity`
//! (critical, warning, info), `sensor_severity` (the sensor's own scale), verdict, `port`
//! (the destination's), `method` (when a password was sent), instance and host (the node,
//! else the host), and `identity` (a fingerprint of the app, so two apps
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

use super::{
    delivery::{Credentials, Delivery, Peer},
    http::HttpState,
};
use crate::finding::{format_ts, Finding};

/// Alerts waiting to be sent at most; past it new ones are dropped and counted.
pub const QUEUE_LEN: usize = 1024;
/// Alerts per POST at most.
const BATCH: usize = 64;
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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

/// What every alert of this sensor says about where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSource {
    /// The node, else the host: the `instance` label.
    pub instance: String,
    /// The sensor's own endpoint (`generatorURL`).
    pub generator_url: String,
    /// Where the runbooks are: `runbook_url` is `<base>/<alertname>.md`.
    pub runbook_base: String,
}

/// The runbook of an alert under `base` (docs/runbooks/<alertname>.md in the repository).
pub fn runbook_url(base: &str, alertname: &str) -> String {
    format!("{}/{alertname}.md", base.trim_end_matches('/'))
}

/// The alert for an identity: `latest` is its latest session's finding.
pub fn alert_for(latest: &Finding, tally: &Tally, source: &AlertSource) -> Alert {
    let finding = latest;
    let instance = source.instance.as_str();
    let alertname = alert_name(finding.verdict, finding.severity);
    let mut labels = BTreeMap::new();
    labels.insert("alertname", alertname.to_string());
    labels.insert("severity", finding.severity.alert_severity().to_string());
    labels.insert("sensor_severity", finding.severity.to_string());
    labels.insert("verdict", finding.verdict.to_string());
    // `port`, `method` and `host` are the label names of the Prometheus rules' alerts for
    // the same problem: alertmanager.yml inhibits a rule's alert on them.
    labels.insert("port", finding.dst.port.to_string());
    if let Some(auth) = finding.auth.as_ref().filter(|auth| auth.password_sent) {
        labels.insert("method", auth.method.to_string());
    }
    labels.insert("instance", instance.to_string());
    labels.insert("host", instance.to_string());
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
    a.insert("runbook_url", runbook_url(&source.runbook_base, alertname));
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
                a.insert(key, v.to_string());
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
    if let Some(tls) = &finding.tls {
        a.insert("tls_verification", tls.verification.to_string());
        if let Some(alert) = &tls.alert {
            a.insert("tls_alert", alert.description.unwrap_or("unassigned").to_string());
        }
    }
    a.insert("finding", serde_json::to_string(finding).unwrap_or_default());

    Alert {
        labels,
        annotations: a,
        starts_at: format_ts(tally.first_seen),
        ends_at: format_ts(tally.ends_at),
        generator_url: source.generator_url.clone(),
    }
}

/// The pipeline's handle: hands alerts to each peer's worker without waiting.
pub struct AlertPusher {
    queues: Vec<mpsc::Sender<Alert>>,
    state: Arc<HttpState>,
}

impl AlertPusher {
    /// Start a worker per Alertmanager peer.
    pub fn spawn(delivery: &Delivery, state: Arc<HttpState>) -> anyhow::Result<AlertPusher> {
        let client = delivery.client()?;
        let mut queues = Vec::with_capacity(delivery.peers.len());
        for peer in &delivery.peers {
            let (queue, rx) = mpsc::channel(QUEUE_LEN);
            let target = Target {
                client: client.clone(),
                peer: peer.clone(),
                credentials: delivery.credentials.clone(),
            };
            tokio::spawn(worker(target, rx, state.clone()));
            queues.push(queue);
        }
        Ok(AlertPusher { queues, state })
    }

    pub fn push(&self, alert: Alert) {
        for queue in &self.queues {
            if queue.try_send(alert.clone()).is_err() {
                self.state.metrics.alerts_failed.with_label_values(&["queue_full"]).inc();
            }
        }
    }
}

/// One peer and how to reach it.
struct Target {
    client: reqwest::Client,
    peer: Peer,
    credentials: Option<Credentials>,
}

async fn worker(target: Target, mut rx: mpsc::Receiver<Alert>, state: Arc<HttpState>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        match post_with_retries(&target, &batch).await {
            Ok(()) => state.metrics.alerts_sent.inc_by(batch.len() as u64),
            Err(reason) => {
                state.metrics.alerts_failed.with_label_values(&[reason]).inc_by(batch.len() as u64)
            }
        }
        batch.clear();
    }
}

/// Post one batch; on failure retry with exponential backoff. Returns the failure reason.
async fn post_with_retries(target: &Target, batch: &[Alert]) -> Result<(), &'static str> {
    let peer = &target.peer;
    let url = peer.alerts_endpoint();
    let mut backoff = FIRST_BACKOFF;
    let mut reason = "unreachable";
    for attempt in 1..=ATTEMPTS {
        let mut request = target.client.post(&url).json(batch);
        if let Some(credentials) = &target.credentials {
            request = match credentials.apply(request) {
                Ok(request) => request,
                Err(err) => {
                    warn!(%peer, "Alertmanager credentials unreadable: {err:#}");
                    return Err("credentials");
                }
            };
        }
        match request.send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            // A 4xx will not get better by retrying.
            Ok(resp) if resp.status().is_client_error() => {
                warn!(%peer, status = %resp.status(), "Alertmanager rejected alerts");
                return Err("rejected");
            }
            Ok(resp) => {
                warn!(%peer, status = %resp.status(), attempt, "Alertmanager failed; retrying");
                reason = "rejected";
            }
            Err(err) => {
                // {:#} names the cause (refused, TLS: unknown issuer, timeout).
                warn!(%peer, attempt, "Alertmanager unreachable; retrying: {:#}", anyhow::Error::from(err));
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
                protocol: crate::finding::ProtocolVersion { major: 3, minor: 0 },
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
        let a = alert_for(&f, &tally(&f, 3), &source("app1"));
        assert_eq!(a.labels["alertname"], "PgwireCredentialsExposed");
        assert_eq!(a.labels["severity"], "critical");
        assert_eq!(a.labels["sensor_severity"], "critical");
        assert_eq!(a.labels["identity"], crate::repeats::fingerprint(&f));
        assert_eq!(a.labels["instance"], "app1");
        assert_eq!(a.labels["host"], "app1");
        assert_eq!(a.annotations["sessions"], "3");
        assert_eq!(
            a.annotations["runbook_url"],
            "https://runbooks.example.com/pgwire/PgwireCredentialsExposed.md"
        );
        assert!(a.annotations["summary"].starts_with("3 plaintext session(s)"));
        assert_eq!(a.labels["verdict"], "plaintext");
        assert_eq!(a.labels["port"], "26257");
        assert_eq!(a.labels["method"], "cleartext", "as the rule's PgwireCredentialsExposed");
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

    fn source(instance: &str) -> AlertSource {
        AlertSource {
            instance: instance.into(),
            generator_url: "http://x/".into(),
            runbook_base: "https://runbooks.example.com/pgwire/".into(),
        }
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

    /// Every alert the sensor can push and every Prometheus rule has its runbook in
    /// docs/runbooks/, and the rules' runbook_url is the one the sensor builds.
    #[test]
    fn every_alert_has_a_runbook_at_its_url() {
        use sensor_common::verdict::RUNBOOK_BASE_URL;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut names = std::collections::BTreeSet::new();
        for verdict in Verdict::ALL {
            for severity in Severity::ALL {
                names.insert(alert_name(verdict, severity).to_string());
            }
        }
        let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap(),
        )
        .unwrap();
        let mut rule_count = 0;
        for group in rules["groups"].as_sequence().unwrap() {
            for rule in group["rules"].as_sequence().unwrap() {
                let name = rule["alert"].as_str().unwrap();
                let url = rule["annotations"]["runbook_url"].as_str().unwrap();
                assert_eq!(url, runbook_url(RUNBOOK_BASE_URL, name), "{name}");
                names.insert(name.to_string());
                rule_count += 1;
            }
        }
        assert!(rule_count >= 12, "{rule_count}");
        for name in &names {
            let path = root.join(format!("docs/runbooks/{name}.md"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            assert_eq!(text.lines().next(), Some(format!("# {name}").as_str()), "{name}");
        }
    }

    #[test]
    fn alertnames_and_routing_severities_by_verdict() {
        let labels = |v, s| {
            let f = finding(v, s);
            alert_for(&f, &tally(&f, 1), &source("h")).labels
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
