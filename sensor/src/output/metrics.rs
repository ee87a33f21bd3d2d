//! Prometheus metrics. Session counts come straight from the kernel's counters at scrape
//! time, so they are exact even when events were lost; labels are bounded enums only.

use std::sync::Arc;

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    Encoder, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use sensor_common::{
    limits::Stat,
    verdict::{Role, Severity, Verdict},
};

use crate::bpf::KernelCounters;

const PREFIX: &str = "pgwire_sensor";

pub struct Metrics {
    registry: Registry,
    findings: IntCounterVec,
    pub findings_write_errors: IntCounter,
}

impl Metrics {
    pub fn new(kernel: Arc<KernelCounters>) -> anyhow::Result<Self> {
        let registry = Registry::new();

        let build_info = IntGaugeVec::new(
            Opts::new(format!("{PREFIX}_build_info"), "Build of the running sensor (always 1)."),
            &["version"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build_info))?;

        let findings = IntCounterVec::new(
            Opts::new(format!("{PREFIX}_findings_total"), "Finding lines written, by severity."),
            &["severity"],
        )?;
        for severity in [Severity::Low, Severity::Medium, Severity::High, Severity::Critical] {
            findings.with_label_values(&[severity.name()]);
        }
        registry.register(Box::new(findings.clone()))?;

        let findings_write_errors = IntCounter::new(
            format!("{PREFIX}_findings_write_errors_total"),
            "Finding lines that could not be written (disk full, file removed...).",
        )?;
        registry.register(Box::new(findings_write_errors.clone()))?;

        registry.register(Box::new(KernelCollector::new(kernel)?))?;
        Ok(Metrics { registry, findings, findings_write_errors })
    }

    pub fn finding_written(&self, severity: &str) {
        self.findings.with_label_values(&[severity]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%err, "encoding metrics failed");
        }
        out
    }
}

/// Reads the kernel counters on every scrape.
struct KernelCollector {
    kernel: Arc<KernelCounters>,
    descs: Vec<Desc>,
}

fn sessions_vec() -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(
        Opts::new(
            format!("{PREFIX}_sessions_total"),
            "Sessions to watched ports by verdict and role, counted in the kernel.",
        ),
        &["verdict", "role"],
    )
}

fn events_lost() -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(
        Opts::new(
            format!("{PREFIX}_events_lost_total"),
            "Events the kernel could not deliver (ring buffer full), by kind (session, auth); \
             verdicts and password counts stay exact in their own counters.",
        ),
        &["kind"],
    )
}

impl KernelCollector {
    fn new(kernel: Arc<KernelCounters>) -> prometheus::Result<Self> {
        let mut descs = Vec::new();
        descs.extend(sessions_vec()?.desc().into_iter().cloned());
        descs.extend(events_lost()?.desc().into_iter().cloned());
        Ok(KernelCollector { kernel, descs })
    }

    fn families(&self) -> prometheus::Result<Vec<MetricFamily>> {
        let stats = match self.kernel.read() {
            Ok(stats) => stats,
            Err(err) => {
                tracing::error!(err = format!("{err:#}"), "reading kernel counters failed");
                return Ok(Vec::new());
            }
        };
        let sessions = sessions_vec()?;
        for role in Role::ALL {
            for verdict in Verdict::ALL {
                sessions
                    .with_label_values(&[verdict.name(), role.name()])
                    .inc_by(stats.sessions(role, verdict));
            }
        }
        let lost = events_lost()?;
        lost.with_label_values(&["session"]).inc_by(stats.stat(Stat::EventsLost));
        lost.with_label_values(&["auth"]).inc_by(stats.stat(Stat::AuthEventsLost));
        let mut families = sessions.collect();
        families.extend(lost.collect());
        Ok(families)
    }
}

impl Collector for KernelCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families().unwrap_or_else(|err| {
            tracing::error!(%err, "building kernel metrics failed");
            Vec::new()
        })
    }
}
