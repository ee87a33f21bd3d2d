//! Prometheus metrics, named as the Prometheus guidelines ask: one `pgwire_sensor_` prefix,
//! base units, `_total` only on counters, and only bounded enums as labels (verdict, role,
//! watched port, severity, kind, method). Pids, addresses and users go in findings instead.
//!
//! Kernel counts are read from the kernel's per-CPU maps at scrape time, so they are exact
//! even when events were lost.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use sensor_common::{
    limits::Stat,
    tracker::AuthMethod,
    verdict::{Role, Severity, Verdict, Verification},
};

use crate::bpf::{AttachmentCheck, KernelCounters};

const PREFIX: &str = "pgwire_sensor";

/// What the kernel-side collector reads.
pub struct KernelSources {
    pub counters: Arc<KernelCounters>,
    /// The watched ports in slot order.
    pub ports: Vec<u16>,
    pub attachment: Option<Arc<AttachmentCheck>>,
}

pub struct Metrics {
    registry: Registry,
    findings: IntCounterVec,
    pub findings_write_errors: IntCounter,
    /// Metrics endpoint connections closed at once because the limit was reached.
    pub http_connections_refused: IntCounter,
    pub alerts_sent: IntCounter,
    /// Repeat windows closed early because the identity table was full.
    pub repeat_windows_evicted: IntCounter,
    /// By reason: `rejected` (Alertmanager said no), `unreachable`, `queue_full`,
    /// `credentials` (the secret file unreadable at push time); each peer counts.
    pub alerts_failed: IntCounterVec,
    /// OpenSSL copies carrying the TLS uprobes.
    pub tls_libraries_probed: IntGauge,
    /// TLS uprobes that could not be attached.
    pub tls_probe_failures: IntCounter,
}

/// A counter named `pgwire_sensor_<suffix>`, registered in `registry`.
fn registered_counter(
    registry: &Registry,
    suffix: &str,
    help: &str,
) -> prometheus::Result<IntCounter> {
    let counter = IntCounter::new(name(suffix), help)?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

fn name(suffix: &str) -> String {
    format!("{PREFIX}_{suffix}")
}

impl Metrics {
    /// `host`: the node, else the host name (the `host` label of the sensor's alerts).
    pub fn new(kernel: KernelSources, host: &str) -> anyhow::Result<Self> {
        let registry = Registry::new();

        // One series per sensor: the Prometheus rules join it to give their alerts the same
        // `host` as the sensor's pushed alerts, whatever the scrape's `instance` is.
        let host_info = IntGaugeVec::new(
            Opts::new(
                name("host_info"),
                "The node, else the host, this sensor watches (always 1): the `host` label of \
                 its alerts.",
            ),
            &["host"],
        )?;
        host_info.with_label_values(&[host]).set(1);
        registry.register(Box::new(host_info))?;

        let build_info = IntGaugeVec::new(
            Opts::new(
                name("build_info"),
                "Build of the running sensor (always 1): its version and source revision.",
            ),
            &["version", "revision"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("SENSOR_REVISION")]).set(1);
        registry.register(Box::new(build_info))?;

        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;

        let start_time = Gauge::new(
            name("start_time_seconds"),
            "When the sensor started, in seconds since the Unix epoch.",
        )?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        start_time.set(now.as_secs_f64());
        registry.register(Box::new(start_time))?;

        let findings = IntCounterVec::new(
            Opts::new(name("findings_total"), "Finding lines written, by severity."),
            &["severity"],
        )?;
        for severity in Severity::ALL {
            findings.with_label_values(&[severity.name()]);
        }
        registry.register(Box::new(findings.clone()))?;

        let findings_write_errors = registered_counter(
            &registry,
            "findings_write_errors_total",
            "Finding lines that could not be written (disk full, I/O error).",
        )?;
        let http_connections_refused = registered_counter(
            &registry,
            "http_connections_refused_total",
            "Connections to this endpoint closed unserved: too many open at once.",
        )?;
        let repeat_windows_evicted = registered_counter(
            &registry,
            "repeat_windows_evicted_total",
            "Repeat windows closed early because too many identities were open at once (their \
             summary line was written then: no session uncounted).",
        )?;
        let alerts_sent = registered_counter(
            &registry,
            "alerts_sent_total",
            "Alerts accepted by an Alertmanager peer (each peer counts).",
        )?;
        let alerts_failed = IntCounterVec::new(
            Opts::new(
                name("alerts_failed_total"),
                "Alerts that did not reach an Alertmanager peer, by reason (rejected, \
                 unreachable, queue_full, credentials: the secret file unreadable).",
            ),
            &["reason"],
        )?;
        for reason in ["rejected", "unreachable", "queue_full", "credentials"] {
            alerts_failed.with_label_values(&[reason]);
        }
        registry.register(Box::new(alerts_failed.clone()))?;
        let tls_libraries_probed = IntGauge::new(
            name("tls_libraries_probed"),
            "OpenSSL copies on this host (by file) whose calls tell the sensor whether a client \
             verifies the server (--tls-verification).",
        )?;
        registry.register(Box::new(tls_libraries_probed.clone()))?;
        let tls_probe_failures = registered_counter(
            &registry,
            "tls_probe_failures_total",
            "TLS uprobes that could not be attached (that library's sessions stay `unknown` \
             verification; the log names the file).",
        )?;

        registry.register(Box::new(KernelCollector::new(kernel)?))?;
        Ok(Metrics {
            registry,
            findings,
            findings_write_errors,
            http_connections_refused,
            alerts_sent,
            repeat_windows_evicted,
            alerts_failed,
            tls_libraries_probed,
            tls_probe_failures,
        })
    }

    /// Count a batch's written lines: one label lookup per severity present, not per line.
    pub fn findings_written(&self, severities: &[Severity]) {
        for severity in Severity::ALL {
            let lines = severities.iter().filter(|&&s| s == severity).count() as u64;
            if lines > 0 {
                self.findings.with_label_values(&[severity.name()]).inc_by(lines);
            }
        }
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

/// Plain kernel counters: (metric suffix, help, counter).
const KERNEL_COUNTERS: &[(&str, &str, Stat)] = &[
    (
        "kernel_packets_inspected_total",
        "Packets to or from a watched port, with data or SYN/FIN/RST, the kernel programs \
         looked at (pure ACKs are skipped unread).",
        Stat::PacketsInspected,
    ),
    (
        "kernel_packets_untracked_total",
        "Connections to a watched port found under way (opened before start, byte 0 \
         unprovable): not judged. Counted once per connection.",
        Stat::PacketsUntracked,
    ),
    (
        "kernel_connections_tracked_total",
        "Connections to a watched port followed from their connect() or their SYN (the port \
         dialled or, after NAT on this host, the one on the wire).",
        Stat::ConnectionsTracked,
    ),
    (
        "kernel_connections_nat_total",
        "Connections followed because a NAT rule on this host sent them to a watched port.",
        Stat::ConnectionsNat,
    ),
    (
        "kernel_nat_process_unknown_total",
        "NAT-rewritten connections whose process could not be taken from their connect() \
         (reported without a process, never a guessed one).",
        Stat::NatProcessUnknown,
    ),
    (
        "kernel_nat_decided_total",
        "NAT-rewritten connections whose session was decided. connections_nat_total minus \
         this is how many are open; while any is, the kernel programs look up the state of \
         every other connection's packets too (a NAT'd connection that timed out in its SYN \
         stays open here).",
        Stat::NatDecided,
    ),
    (
        "kernel_connections_judged_total",
        "Sessions decided: nothing more is read on their sockets.",
        Stat::ConnectionsForgotten,
    ),
    (
        "kernel_connections_adopted_total",
        "Connections opened before start whose first byte was proven and judged.",
        Stat::ConnectionsAdopted,
    ),
    (
        "kernel_connection_track_failures_total",
        "Connections to a watched port whose state the kernel had no memory for: not judged.",
        Stat::TrackFailed,
    ),
    (
        "kernel_captures_evicted_total",
        "Sessions whose capture buffer was evicted under load (reported unknown).",
        Stat::CapturesEvicted,
    ),
    ("kernel_events_sent_total", "Events the kernel sent to the agent.", Stat::EventsSent),
    (
        "auth_outcomes_total",
        "Authentication exchanges followed on plaintext or downgraded sessions.",
        Stat::AuthSeen,
    ),
    (
        "tls_handshakes_announced_total",
        "TLS handshakes the probed OpenSSL copies announced (any port: the ClientHello \
         decides whether one belongs to a watched session).",
        Stat::TlsHandshakesSeen,
    ),
    (
        "tls_verification_ambiguous_total",
        "ClientHellos of a thread with handshakes of both verification modes under way: \
         judged `unknown` rather than guessed.",
        Stat::TlsVerificationAmbiguous,
    ),
];

/// Reads the kernel counters and the attachment state on every scrape.
struct KernelCollector {
    kernel: KernelSources,
    descs: Vec<Desc>,
}

struct Families {
    sessions: IntCounterVec,
    verification: IntCounterVec,
    lost: IntCounterVec,
    passwords: IntCounterVec,
    plain: Vec<(IntCounter, Stat)>,
    attached: IntGauge,
    expected: IntGauge,
}

impl Families {
    fn new() -> prometheus::Result<Self> {
        Ok(Families {
            sessions: IntCounterVec::new(
                Opts::new(
                    name("sessions_total"),
                    "Sessions to watched ports by verdict, role and port, counted in the kernel \
                     when decided.",
                ),
                &["verdict", "role", "port"],
            )?,
            verification: IntCounterVec::new(
                Opts::new(
                    name("tls_sessions_total"),
                    "TLS sessions (tls, tls_direct, tls_unverified, tls_rejected) by what the \
                     client's TLS library said about verifying the server (verified_chain, \
                     unverified, unknown), role and port, counted in the kernel with the verdict.",
                ),
                &["verification", "role", "port"],
            )?,
            lost: IntCounterVec::new(
                Opts::new(
                    name("events_lost_total"),
                    "Events the kernel could not deliver (ring buffer full), by kind (session, \
                     auth); verdict and password counts stay exact.",
                ),
                &["kind"],
            )?,
            passwords: IntCounterVec::new(
                Opts::new(
                    name("passwords_exposed_total"),
                    "Password messages sent on plaintext or downgraded sessions, by method \
                     (cleartext: the password itself; md5: a replayable hash).",
                ),
                &["method"],
            )?,
            plain: KERNEL_COUNTERS
                .iter()
                .map(|(suffix, help, stat)| Ok((IntCounter::new(name(suffix), *help)?, *stat)))
                .collect::<prometheus::Result<_>>()?,
            attached: IntGauge::new(
                name("programs_attached"),
                "Kernel programs of this sensor the kernel lists as attached right now.",
            )?,
            expected: IntGauge::new(
                name("programs_expected"),
                "Kernel programs this sensor attaches (programs_attached should equal it).",
            )?,
        })
    }

    fn collectors(&self) -> Vec<&dyn Collector> {
        let mut all: Vec<&dyn Collector> = vec![
            &self.sessions,
            &self.verification,
            &self.lost,
            &self.passwords,
            &self.attached,
            &self.expected,
        ];
        all.extend(self.plain.iter().map(|(c, _)| c as &dyn Collector));
        all
    }
}

impl KernelCollector {
    fn new(kernel: KernelSources) -> prometheus::Result<Self> {
        let families = Families::new()?;
        let descs = families
            .collectors()
            .into_iter()
            .flat_map(|c| c.desc().into_iter().cloned().collect::<Vec<_>>())
            .collect();
        Ok(KernelCollector { kernel, descs })
    }

    fn families(&self) -> prometheus::Result<Vec<MetricFamily>> {
        let f = Families::new()?;
        match self.kernel.counters.read() {
            Ok(stats) => {
                for (slot, port) in self.kernel.ports.iter().enumerate() {
                    let port = port.to_string();
                    for role in Role::ALL {
                        for verdict in Verdict::ALL {
                            f.sessions
                                .with_label_values(&[verdict.name(), role.name(), &port])
                                .inc_by(stats.sessions(slot, role, verdict));
                        }
                        for verification in Verification::ALL {
                            f.verification
                                .with_label_values(&[verification.name(), role.name(), &port])
                                .inc_by(stats.verifications(slot, role, verification));
                        }
                    }
                }
                f.lost.with_label_values(&["session"]).inc_by(stats.stat(Stat::EventsLost));
                f.lost.with_label_values(&["auth"]).inc_by(stats.stat(Stat::AuthEventsLost));
                for (method, stat) in [
                    (AuthMethod::Cleartext, Stat::PasswordsCleartext),
                    (AuthMethod::Md5, Stat::PasswordsMd5),
                ] {
                    f.passwords.with_label_values(&[method.name()]).inc_by(stats.stat(stat));
                }
                for (counter, stat) in &f.plain {
                    counter.inc_by(stats.stat(*stat));
                }
            }
            Err(err) => tracing::error!(err = format!("{err:#}"), "reading kernel counters failed"),
        }
        if let Some(check) = &self.kernel.attachment {
            f.expected.set(check.expected() as i64);
            f.attached.set(check.attached().map(|n| n as i64).unwrap_or(0));
        }
        Ok(f.collectors().into_iter().flat_map(|c| c.collect()).collect())
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
