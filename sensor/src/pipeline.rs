//! Events in, findings out: the agent's one stage between the ring buffer and the outputs.

use std::{sync::Arc, time::Instant};

use sensor_common::{tracker::AuthMethod, verdict::Severity};
use tracing::{error, info};

use crate::{
    config::{severity_named, RunConfig},
    enrich::Enricher,
    events::KernelEvent,
    finding::Finding,
    output::{
        alertmanager::{alert_from_finding, AlertPusher},
        findings::FindingsWriter,
        http::HttpState,
    },
    pending::PendingAuth,
    session,
};

pub struct Pipeline {
    findings: FindingsWriter,
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
            enricher: Enricher::new(),
            pending: PendingAuth::new(config.auth_wait),
            state,
            alerts,
        })
    }

    pub fn handle(&mut self, event: KernelEvent, now: Instant) {
        match event {
            KernelEvent::Session(ev) => {
                let (verdict, _) = session::kernel_verdict(&ev);
                if verdict.is_encrypted() {
                    return; // counted in the kernel; no evidence to report
                }
                let mut finding = session::finding_from_event(&ev);
                // Now, while the process most likely still runs: not when the finding is
                // written, which may wait for the auth outcome.
                if let Some(process) = &mut finding.process {
                    self.enricher.enrich(process);
                }
                if session::auth_follows(&ev) {
                    if let Some(oldest) = self.pending.hold(ev.cookie, finding, now) {
                        self.write(&oldest);
                    }
                } else {
                    self.write(&finding);
                }
            }
            KernelEvent::Auth(ev) => {
                let method = AuthMethod::from_u8(ev.method);
                if let Some(finding) =
                    self.pending.resolve(ev.cookie, method, ev.password_sent != 0)
                {
                    self.write(&finding);
                }
            }
        }
    }

    /// Write findings whose wait for an auth outcome is over.
    pub fn tick(&mut self, now: Instant) {
        for finding in self.pending.expired(now) {
            self.write(&finding);
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
            error!(%err, lines, "cannot write findings; these lines are lost");
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
            if severity_named(finding.severity) >= alerts.min_severity {
                alerts.pusher.push(alert_from_finding(
                    finding,
                    &alerts.instance,
                    &alerts.generator_url,
                ));
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
