//! Events in, findings out: the agent's one stage between the ring buffer and the outputs.

use std::{sync::Arc, time::Instant};

use sensor_common::{tracker::AuthMethod, verdict::Severity};
use tracing::{error, info};

use crate::{
    config::RunConfig,
    enrich::Enricher,
    events::KernelEvent,
    finding::Finding,
    output::{
        alertmanager::{alert_from_finding, AlertPusher},
        findings::FindingsWriter,
        http::HttpState,
    },
    pending::PendingAuth,
    session::Session,
};

pub struct Pipeline {
    findings: FindingsWriter,
    write_errors: ErrorLog,
    enricher: Enricher,
    pending: PendingAuth,
    state: Arc<HttpState>,
    alerts: Option<Alerts>,
}

/// Where and what to push to Alertmanager.
struct Alerts {
    pusher: AlertPusher,
    min_severity: Severity,
    instance: String,
    generator_url: String,
}

impl Pipeline {
    /// Must run inside the tokio runtime (the Alertmanager worker is spawned on it).
    pub fn new(
        config: &RunConfig,
        findings: FindingsWriter,
        state: Arc<HttpState>,
    ) -> anyhow::Result<Self> {
        let alerts = match &config.alertmanager {
            None => None,
            Some(am) => Some(Alerts {
                pusher: AlertPusher::spawn(&am.url, state.clone())?,
                min_severity: am.min_severity,
                instance: hostname(),
                generator_url: format!("http://{}/", config.metrics_addr),
            }),
        };
        Ok(Pipeline {
            findings,
            write_errors: ErrorLog::default(),
            enricher: Enricher::new(),
            pending: PendingAuth::new(config.auth_wait),
            state,
            alerts,
        })
    }

    pub fn handle(&mut self, event: KernelEvent, now: Instant) {
        match event {
            KernelEvent::Session(ev) => {
                let session = Session::from_event(&ev);
                if session.verdict.is_encrypted() {
                    return; // counted in the kernel; no evidence to report
                }
                let mut finding = session.finding();
                // Now, while the process most likely still runs: not when the finding is
                // written, which may wait for the auth outcome.
                if let Some(process) = &mut finding.process {
                    self.enricher.enrich(process);
                }
                if session.auth_follows {
                    if let Some(oldest) = self.pending.hold(ev.cookie, finding, now) {
                        self.write(&oldest);
                    }
                } else {
                    self.write(&finding);
                }
            }
            KernelEvent::Auth(ev) => {
                // A byte from the kernel is not trusted: out of range is `unknown`.
                let method = AuthMethod::from_u8(ev.method).unwrap_or(AuthMethod::Unknown);
                if let Some(finding) =
                    self.pending.resolve(ev.cookie, method, ev.password_sent != 0)
                {
                    self.write(&finding);
                }
            }
        }
    }

    /// Write findings whose wait for an auth outcome is over; follow a findings file that
    /// was moved or deleted.
    pub fn tick(&mut self, now: Instant) {
        for finding in self.pending.expired(now) {
            self.write(&finding);
        }
        match self.findings.follow_path() {
            Ok(true) => info!("the findings file was moved or deleted; reopened it at its path"),
            Ok(false) => {}
            Err(err) => self.write_errors.report(&format!("{err:#}"), 0, now),
        }
        self.flush();
    }

    /// Write everything still held (shutdown).
    pub fn finish(&mut self) {
        for finding in self.pending.drain() {
            self.write(&finding);
        }
        self.flush();
    }

    /// Write the findings queued by `handle` (call once per batch of events).
    pub fn flush(&mut self) {
        let flushed = self.findings.flush();
        for severity in flushed.written {
            self.state.metrics.finding_written(severity);
        }
        if let Some((lines, err)) = flushed.failed {
            self.state.metrics.findings_write_errors.inc_by(lines as u64);
            self.write_errors.report(&err, lines, Instant::now());
        }
    }

    /// Open the findings file again (SIGHUP after logrotate).
    pub fn reopen_findings(&mut self) {
        match self.findings.reopen() {
            Ok(()) => info!("findings file reopened"),
            Err(err) => error!("{err:#}; still writing to the previously open file"),
        }
    }

    fn write(&mut self, finding: &Finding) {
        self.findings.push(finding);
        if let Some(alerts) = &self.alerts {
            if finding.severity >= alerts.min_severity {
                alerts.pusher.push(alert_from_finding(
                    finding,
                    &alerts.instance,
                    &alerts.generator_url,
                ));
            }
        }
    }
}

/// Findings write errors, logged at most once per `ERROR_LOG_EVERY` (a full disk fails
/// every batch, hundreds of times a second; the counter has the exact totals).
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    lines_since: usize,
    errors_since: u64,
}

const ERROR_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl ErrorLog {
    fn report(&mut self, err: &str, lines: usize, now: Instant) {
        self.lines_since += lines;
        self.errors_since += 1;
        if self.last.is_some_and(|t| now.duration_since(t) < ERROR_LOG_EVERY) {
            return;
        }
        error!(
            %err,
            lost_lines = self.lines_since,
            errors = self.errors_since,
            "cannot write findings (lines lost are counted in \
             pgwire_sensor_findings_write_errors_total; next report in 10 s at most)"
        );
        self.last = Some(now);
        self.lines_since = 0;
        self.errors_since = 0;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
