//! The bench's results: markdown tables (terminal, docs/performance.md) and one JSON file.

use std::fmt::Write as _;

use super::{floor, idle::Idle, kstats::ProgramCost, latency::Latency};

/// One A/B workload.
pub struct Row {
    pub workload: String,
    pub unit: &'static str,
    pub detached: Vec<f64>,
    pub attached: Vec<f64>,
    /// The capture peer (C): detached, tshark capturing; empty without --capture-peer.
    pub peer: Vec<f64>,
    /// Packets the capture peer wrote, and the kernel dropped before it read them: a peer
    /// that drops did less than a capture of every packet, so its ratio flatters it.
    pub peer_packets: u64,
    pub peer_dropped: u64,
    /// Attached runs: sessions completed, sessions failed, sessions the kernel counted,
    /// events lost.
    pub sent: u64,
    pub errors: u64,
    pub counted: u64,
    pub lost: u64,
    /// For each attached run whose count was off: the sensor's samples that moved in it.
    pub miscounted: Vec<Vec<String>>,
    pub cpu_ms_per_1000: Option<f64>,
    pub peak_rss_kib: Option<u64>,
}

impl Row {
    pub fn new(workload: String, unit: &'static str) -> Row {
        Row {
            workload,
            unit,
            detached: vec![],
            attached: vec![],
            peer: vec![],
            peer_packets: 0,
            peer_dropped: 0,
            sent: 0,
            errors: 0,
            counted: 0,
            lost: 0,
            miscounted: vec![],
            cpu_ms_per_1000: None,
            peak_rss_kib: None,
        }
    }

    fn ratios(&self) -> Vec<f64> {
        self.detached.iter().zip(&self.attached).map(|(a, b)| b / a).collect()
    }

    fn peer_ratios(&self) -> Vec<f64> {
        self.detached.iter().zip(&self.peer).map(|(a, c)| c / a).collect()
    }

    /// The median C/A, and how many packets the peer dropped when it dropped any (a count,
    /// not a share: a peer of an unwatched port captures nothing, yet the kernel may count a
    /// few drops from before its filter was set).
    fn peer_cell(&self) -> String {
        let ratio = format!("{:.3}", median(self.peer_ratios()));
        if self.peer_dropped == 0 {
            return ratio;
        }
        let seen = self.peer_packets + self.peer_dropped;
        format!("{ratio} (dropped {} of {seen} packets)", self.peer_dropped)
    }
}

/// The flood: many sessions as fast as possible into a deliberately tiny ring buffer.
pub struct Flood {
    pub ring_buffer_bytes: u32,
    pub sent: u64,
    pub errors: u64,
    pub seconds: f64,
    pub counted: u64,
    pub findings: u64,
    pub lost_session: u64,
    pub lost_auth: u64,
}

impl Flood {
    /// Every session counted, and every session either reported or counted as lost.
    pub fn exact(&self) -> bool {
        self.counted == self.sent && self.findings + self.lost_session == self.sent
    }
}

pub struct Report {
    /// The machine it ran on (None in unit tests).
    pub host: Option<super::host::Host>,
    pub rows: Vec<Row>,
    pub latency: Option<(f64, Latency)>,
    pub kernel: Vec<(String, Vec<ProgramCost>)>,
    pub flood: Option<Flood>,
    pub idle: Option<Idle>,
}

/// The average of the empty program on `c`'s hook in the same workload (`costs`), for the
/// sensor's cgroup programs; None for the others, or when the floor program did not run.
fn floor_ns(costs: &[ProgramCost], c: &ProgramCost) -> Option<f64> {
    let row = floor::floor_row_of(&c.program)?;
    costs.iter().find(|f| f.program == row && f.runs > 0).map(|f| f.avg_ns)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn joined(v: &[f64], digits: usize) -> String {
    v.iter().map(|x| format!("{x:.digits$}")).collect::<Vec<_>>().join(", ")
}

impl Report {
    /// Whether the rows have a capture peer series (--capture-peer).
    fn with_peer(&self) -> bool {
        self.rows.iter().any(|r| !r.peer.is_empty())
    }

    pub fn markdown(&self) -> String {
        let mut t = String::new();
        if let Some(host) = &self.host {
            let _ = writeln!(t, "{}\n", host.line());
        }
        let (peer_head, peer_rule) =
            if self.with_peer() { (" capture peer |", "---|") } else { ("", "") };
        let _ = writeln!(t, "| workload | detached (A) | attached (B) | B/A per pair | median B/A |{peer_head} counted/sent | lost | agent CPU ms/1000 sessions | agent peak RSS |");
        let _ = writeln!(t, "|---|---|---|---|---|{peer_rule}---|---|---|---|");
        for r in &self.rows {
            let sessions = r.sent > 0;
            let peer =
                if self.with_peer() { format!(" {} |", r.peer_cell()) } else { String::new() };
            let _ = writeln!(
                t,
                "| {} | {} {} | {} | {} | {:.3} |{peer} {} | {} | {} | {} |",
                r.workload,
                joined(&r.detached, 0),
                r.unit,
                joined(&r.attached, 0),
                joined(&r.ratios(), 3),
                median(r.ratios()),
                if sessions { format!("{}/{}", r.counted, r.sent) } else { "-".into() },
                if sessions { r.lost.to_string() } else { "-".into() },
                r.cpu_ms_per_1000.map_or("-".into(), |v| format!("{v:.1}")),
                r.peak_rss_kib.map_or("-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0)),
            );
        }
        if let Some((rate, l)) = &self.latency {
            let _ = writeln!(
                t,
                "\nfinding latency, plaintext sessions at {rate:.0}/s: p50 {:.2} ms, p99 {:.2} ms, \
                 max {:.2} ms ({} of {} sessions matched); agent CPU {} ms/1000 sessions",
                l.p50_ms,
                l.p99_ms,
                l.max_ms,
                l.matched,
                l.sent,
                l.cpu_ms_per_1000.map_or("-".into(), |v| format!("{v:.1}"))
            );
        }
        if !self.kernel.is_empty() {
            let _ = writeln!(
                t,
                "\n| kernel cost (bpf_stats) | program | runs | avg ns/run | above floor ns/run |"
            );
            let _ = writeln!(t, "|---|---|---|---|---|");
            for (workload, costs) in &self.kernel {
                for c in costs.iter().filter(|c| c.runs > 0) {
                    let above =
                        floor_ns(costs, c).map_or("-".into(), |f| format!("{:.0}", c.avg_ns - f));
                    let _ = writeln!(
                        t,
                        "| {workload} | {} | {} | {:.0} | {above} |",
                        c.program, c.runs, c.avg_ns
                    );
                }
            }
            if self
                .kernel
                .iter()
                .flat_map(|(_, costs)| costs)
                .any(|c| c.program.starts_with("floor"))
            {
                let _ = writeln!(
                    t,
                    "\nabove floor: a program's average minus that of an empty program on the \
                     same hook in the same workload, which is what bpf_stats' clock reads and \
                     the dispatch cost a program that does nothing."
                );
            }
        }
        if let Some(f) = &self.flood {
            let _ = writeln!(
                t,
                "\nflood: {} sessions in {:.1} s ({} errors) with a {} B ring buffer: counted {}, \
                 findings {}, events lost: session {}, auth {} -> {}",
                f.sent,
                f.seconds,
                f.errors,
                f.ring_buffer_bytes,
                f.counted,
                f.findings,
                f.lost_session,
                f.lost_auth,
                if f.exact() { "exact (counted = sent = findings + lost)" } else { "NOT EXACT" }
            );
        }
        if let Some(idle) = &self.idle {
            let threads: Vec<String> = idle
                .threads
                .iter()
                .map(|t| {
                    format!("{} {:.2} ms/s, {:.1}/s", t.name, t.cpu_ms_per_s, t.scheduled_per_s)
                })
                .collect();
            let _ = writeln!(
                t,
                "\nidle ({:.0} s, no sessions, {} processes on the host): agent CPU {:.2} ms per \
                 second, on a CPU {:.1} times per second ({})",
                idle.seconds,
                idle.processes,
                idle.cpu_ms_per_s(),
                idle.scheduled_per_s(),
                threads.join("; ")
            );
        }
        t
    }

    pub fn json(&self, pairs: usize, seconds: f64, threads: usize) -> String {
        let mut out = format!(
            "{{\"pairs\": {pairs}, \"seconds\": {seconds}, \"threads\": {threads}, \"results\": ["
        );
        for (i, r) in self.rows.iter().enumerate() {
            let peer = if r.peer.is_empty() {
                String::new()
            } else {
                format!(
                    ", \"capture_peer\": [{}], \"capture_peer_ratios\": [{}], \
                     \"capture_peer_median_ratio\": {:.4}, \"capture_peer_packets\": {}, \
                     \"capture_peer_dropped\": {}",
                    joined(&r.peer, 3),
                    joined(&r.peer_ratios(), 4),
                    median(r.peer_ratios()),
                    r.peer_packets,
                    r.peer_dropped
                )
            };
            let _ = write!(
                out,
                "{}{{\"workload\": \"{}\", \"unit\": \"{}\", \"detached\": [{}], \
                 \"attached\": [{}], \"ratios\": [{}], \"median_ratio\": {:.4}{peer}, \
                 \"sent\": {}, \"counted\": {}, \"lost\": {}, \"cpu_ms_per_1000\": {}, \
                 \"peak_rss_kib\": {}}}",
                if i > 0 { ", " } else { "" },
                r.workload,
                r.unit,
                joined(&r.detached, 3),
                joined(&r.attached, 3),
                joined(&r.ratios(), 4),
                median(r.ratios()),
                r.sent,
                r.counted,
                r.lost,
                r.cpu_ms_per_1000.map_or("null".into(), |v| format!("{v:.3}")),
                r.peak_rss_kib.map_or("null".into(), |v| v.to_string()),
            );
        }
        out.push(']');
        if let Some(host) = &self.host {
            let _ = write!(out, ", \"host\": {}", host.json());
        }
        if let Some((rate, l)) = &self.latency {
            let num = |v: f64| if v.is_finite() { format!("{v:.3}") } else { "null".into() };
            let _ = write!(
                out,
                ", \"latency\": {{\"rate\": {rate}, \"sent\": {}, \"matched\": {}, \
                 \"p50_ms\": {}, \"p99_ms\": {}, \"max_ms\": {}, \"cpu_ms_per_1000\": {}}}",
                l.sent,
                l.matched,
                num(l.p50_ms),
                num(l.p99_ms),
                num(l.max_ms),
                l.cpu_ms_per_1000.map_or("null".into(), num)
            );
        }
        out.push_str(", \"kernel\": [");
        let mut first = true;
        for (workload, costs) in &self.kernel {
            for c in costs {
                let floor = floor_ns(costs, c);
                let num = |v: Option<f64>| v.map_or("null".into(), |v| format!("{v:.1}"));
                let _ = write!(
                    out,
                    "{}{{\"workload\": \"{workload}\", \"program\": \"{}\", \"runs\": {}, \
                     \"avg_ns\": {:.1}, \"floor_ns\": {}, \"above_floor_ns\": {}}}",
                    if first { "" } else { ", " },
                    c.program,
                    c.runs,
                    c.avg_ns,
                    num(floor),
                    num(floor.map(|f| c.avg_ns - f)),
                );
                first = false;
            }
        }
        out.push(']');
        if let Some(f) = &self.flood {
            let _ = write!(
                out,
                ", \"flood\": {{\"ring_buffer_bytes\": {}, \"sent\": {}, \"errors\": {}, \
                 \"seconds\": {:.3}, \"counted\": {}, \"findings\": {}, \"lost_session\": {}, \
                 \"lost_auth\": {}, \"exact\": {}}}",
                f.ring_buffer_bytes,
                f.sent,
                f.errors,
                f.seconds,
                f.counted,
                f.findings,
                f.lost_session,
                f.lost_auth,
                f.exact()
            );
        }
        if let Some(idle) = &self.idle {
            let threads: Vec<String> = idle
                .threads
                .iter()
                .map(|t| {
                    format!(
                        "{{\"name\": {}, \"cpu_ms_per_s\": {:.3}, \"scheduled_per_s\": {:.2}}}",
                        serde_json::Value::from(t.name.as_str()),
                        t.cpu_ms_per_s,
                        t.scheduled_per_s
                    )
                })
                .collect();
            let _ = write!(
                out,
                ", \"idle\": {{\"seconds\": {:.1}, \"processes\": {}, \"cpu_ms_per_s\": {:.3}, \
                 \"scheduled_per_s\": {:.2}, \"threads\": [{}]}}",
                idle.seconds,
                idle.processes,
                idle.cpu_ms_per_s(),
                idle.scheduled_per_s(),
                threads.join(", ")
            );
        }
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{ProgramCost, Report, Row};

    fn report(peer: &[f64], dropped: u64) -> Report {
        let mut row = Row::new("w".into(), "round trips/s");
        row.detached = vec![100.0];
        row.attached = vec![90.0];
        row.peer = peer.to_vec();
        row.peer_packets = 10;
        row.peer_dropped = dropped;
        Report {
            host: None,
            rows: vec![row],
            latency: None,
            kernel: vec![],
            flood: None,
            idle: None,
        }
    }

    #[test]
    fn the_capture_peer_column_is_there_only_with_its_series() {
        let without = report(&[], 0);
        assert!(!without.markdown().contains("capture peer"));
        assert!(!without.json(1, 1.0, 4).contains("capture_peer"));
        let with = report(&[80.0], 0);
        assert!(with.markdown().contains("| 0.900 | 0.900 | 0.800 |"), "{}", with.markdown());
        assert!(with.json(1, 1.0, 4).contains("\"capture_peer_median_ratio\": 0.8000"));
        let dropping = report(&[80.0], 30).markdown();
        assert!(dropping.contains("| 0.800 (dropped 30 of 40 packets) |"), "{dropping}");
    }

    fn cost(program: &str, runs: u64, avg_ns: f64) -> ProgramCost {
        ProgramCost { program: program.into(), runs, avg_ns }
    }

    #[test]
    fn the_kernel_table_subtracts_the_same_hooks_floor() {
        let mut report = report(&[], 0);
        report.kernel = vec![
            (
                "w".into(),
                vec![
                    cost("sensor_connect4", 10, 130.0),
                    cost("sensor_egress", 100, 105.0),
                    cost("sensor_ingress", 100, 99.0),
                    cost("tls_ssl_new", 5, 300.0),
                    cost("floor (empty program): egress", 200, 90.0),
                    cost("floor (empty program): ingress", 200, 95.0),
                    // connect4's floor did not run: nothing to subtract.
                    cost("floor (empty program): connect4", 0, 0.0),
                ],
            ),
            // Another workload's floor is not this one's.
            ("v".into(), vec![cost("sensor_egress", 100, 120.0)]),
        ];
        let md = report.markdown();
        assert!(md.contains("| avg ns/run | above floor ns/run |"), "{md}");
        assert!(md.contains("| w | sensor_egress | 100 | 105 | 15 |"), "{md}");
        assert!(md.contains("| w | sensor_ingress | 100 | 99 | 4 |"), "{md}");
        assert!(md.contains("| w | sensor_connect4 | 10 | 130 | - |"), "{md}");
        assert!(md.contains("| w | tls_ssl_new | 5 | 300 | - |"), "{md}");
        assert!(md.contains("| w | floor (empty program): egress | 200 | 90 | - |"), "{md}");
        assert!(md.contains("| v | sensor_egress | 100 | 120 | - |"), "{md}");
        let json = report.json(1, 1.0, 4);
        assert!(
            json.contains(
                "\"program\": \"sensor_egress\", \"runs\": 100, \"avg_ns\": 105.0, \
                 \"floor_ns\": 90.0, \"above_floor_ns\": 15.0}"
            ),
            "{json}"
        );
        assert!(
            json.contains(
                "\"program\": \"floor (empty program): egress\", \"runs\": 200, \
                 \"avg_ns\": 90.0, \"floor_ns\": null, \"above_floor_ns\": null}"
            ),
            "{json}"
        );
    }
}
