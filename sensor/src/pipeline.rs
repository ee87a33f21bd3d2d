//! Events in, findings out: the agent's one stage between the ring buffer and the outputs.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use sensor_common::{tracker::AuthMethod, verdict::Severity};
use tracing::{error, info};

use crate::{
    config::RunConfig,
    enrich::Enricher,
    events::KernelEvent,
    finding::Finding,
    identity::Origin,
    output::{
        alert_book::AlertBook,
        alertmanager::{AlertPusher, AlertSource},
        findings::FindingsOutputs,
        http::HttpState,
    },
    pending::PendingAuth,
    repeats::Repeater,
    retries::Retries,
    session::Session,
};

/// `Pipeline::tick`'s period while findings wait, summaries or alerts are open: the
/// precision of their deadlines.
const TICK: Duration = Duration::from_millis(100);
/// Its period otherwise: how soon a findings file moved or deleted is reopened.
const IDLE_TICK: Duration = Duration::from_secs(1);

pub struct Pipeline {
    findings: FindingsOutputs,
    write_errors: ErrorLog,
    enricher: Enricher,
    pending: PendingAuth,
    state: Arc<HttpState>,
    alerts: Option<Alerts>,
    /// This host (and node), stamped on every finding.
    origin: Origin,
    /// Sessions of one identity counted into summary lines; `None`: one line per session.
    repeater: Option<Repeater>,
    /// Recent certificate rejections, to name the plaintext retry that follows one.
    retries: Retries,
}

/// Where and what to push to Alertmanager: one alert per identity.
struct Alerts {
    pusher: AlertPusher,
    min_severity: Severity,
    book: AlertBook,
}

impl Pipeline {
    /// Must run inside the tokio runtime (the Alertmanager worker is spawned on it).
    pub fn new(
        config: &RunConfig,
        origin: Origin,
        findings: FindingsOutputs,
        state: Arc<HttpState>,
    ) -> anyhow::Result<Self> {
        let alerts = match &config.alertmanager {
            None => None,
            Some(am) => Some(Alerts {
                pusher: AlertPusher::spawn(&am.delivery, state.clone())?,
                min_severity: am.min_severity,
                book: AlertBook::new(AlertSource {
                    instance: origin.instance().to_string(),
                    generator_url: format!("{}://{}/", config.web.scheme(), config.metrics_addr),
                    runbook_base: am.runbook_base.clone(),
                }),
            }),
        };
        Ok(Pipeline {
            findings,
            write_errors: ErrorLog::default(),
            enricher: Enricher::new(),
            pending: PendingAuth::new(config.auth_wait),
            state,
            alerts,
            origin,
            repeater: config.finding_lines.window().map(Repeater::new),
            retries: Retries::default(),
        })
    }

    pub fn handle(&mut self, event: KernelEvent<'_>, now: Instant) {
        match event {
            KernelEvent::Session(ev) => {
                let session = Session::from_event(ev);
                if session.verdict.counted_only() {
                    return; // counted in the kernel; no evidence to report
                }
                let auth_follows = session.auth_follows;
                let mut finding = session.finding(&self.origin);
                // Now, while the process most likely still runs: not when the finding is
                // written, which may wait for the auth outcome.
                if let Some(process) = &mut finding.process {
                    self.enricher.enrich(process);
                }
                self.retries.observe(&mut finding);
                if auth_follows {
                    if let Some(oldest) = self.pending.hold(ev.cookie, finding, now) {
                        self.report(oldest);
                    }
                } else {
                    self.report(finding);
                }
            }
            KernelEvent::Auth(ev) => {
                // A byte from the kernel is not trusted: out of range is `unknown`.
                let method = AuthMethod::from_u8(ev.method).unwrap_or(AuthMethod::Unknown);
                if let Some(finding) =
                    self.pending.resolve(ev.cookie, method, ev.password_sent != 0)
                {
                    self.report(finding);
                }
            }
        }
    }

    /// How soon `tick` has work: soon while a finding waits for its auth outcome or a
    /// summary or alert is open (their deadlines are checked each tick), else only the
    /// findings file's path to follow. An idle agent wakes ten times less often.
    pub fn tick_period(&self) -> Duration {
        let timed = !self.pending.is_empty()
            || self.repeater.as_ref().is_some_and(|r| !r.is_empty())
            || self.alerts.as_ref().is_some_and(|a| !a.book.is_empty());
        if timed {
            TICK
        } else {
            IDLE_TICK
        }
    }

    /// Write findings whose wait for an auth outcome is over; follow a findings file that
    /// was moved or deleted.
    pub fn tick(&mut self, now: Instant) {
        for finding in self.pending.expired(now) {
            self.report(finding);
        }
        let wall = SystemTime::now();
        if let Some(repeater) = &mut self.repeater {
            let lines = repeater.due(wall);
            lines.iter().for_each(|line| self.write(line));
        }
        if let Some(alerts) = &mut self.alerts {
            alerts.book.tick(wall).into_iter().for_each(|a| alerts.pusher.push(a));
        }
        match self.findings.follow_path() {
            Ok(true) => info!("the findings file was moved or deleted; reopened it at its path"),
            Ok(false) => {}
            Err(err) => self.write_errors.report(&format!("{err:#}"), 0, now),
        }
        self.flush();
    }

    /// Write everything still held (shutdown): findings waiting for their auth outcome, then
    /// every pending summary.
    pub fn finish(&mut self) {
        for finding in self.pending.drain() {
            self.report(finding);
        }
        self.flush_summaries();
        self.flush();
    }

    /// A session's complete finding: written now, or counted toward its identity's summary.
    fn report(&mut self, finding: Finding) {
        // Every session counts toward its identity's alert (a summary line would hide them).
        if let Some(alerts) = &mut self.alerts {
            if finding.severity >= alerts.min_severity {
                if let Some(alert) = alerts.book.observe(&finding, SystemTime::now()) {
                    alerts.pusher.push(alert);
                }
            }
        }
        match &mut self.repeater {
            None => self.write(&finding),
            Some(repeater) => {
                let evicted_before = repeater.evicted;
                let lines = repeater.observe(finding);
                let evicted = repeater.evicted - evicted_before;
                self.state.metrics.repeat_windows_evicted.inc_by(evicted);
                lines.iter().for_each(|line| self.write(line));
            }
        }
    }

    /// Write every pending summary now (SIGTERM, SIGHUP): nothing counted waits in memory
    /// across a rotation or a stop.
    fn flush_summaries(&mut self) {
        if let Some(repeater) = &mut self.repeater {
            let lines = repeater.flush();
            lines.iter().for_each(|line| self.write(line));
        }
    }

    /// Write the findings queued by `handle` (call once per batch of events).
    pub fn flush(&mut self) {
        let flushed = self.findings.flush();
        self.state.metrics.findings_written(&flushed.written);
        if let Some((lines, err)) = flushed.failed {
            self.state.metrics.findings_write_errors.inc_by(lines as u64);
            self.write_errors.report(&err, lines, Instant::now());
        }
    }

    /// Open the findings file again (SIGHUP after logrotate), after writing the pending
    /// summaries to the old one.
    pub fn reopen_findings(&mut self) {
        self.flush_summaries();
        self.flush();
        match self.findings.reopen() {
            Ok(()) => info!("findings file reopened"),
            Err(err) => error!("{err:#}; still writing to the previously open file"),
        }
    }

    fn write(&mut self, finding: &Finding) {
        self.findings.push(finding);
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
