//! The bench's results: markdown tables (terminal, docs/performance.md) and one JSON file.

use std::fmt::Write as _;

use super::{kstats::ProgramCost, latency::Latency};

/// One A/B workload.
pub struct Row {
    pub workload: String,
    pub unit: &'static str,
    pub detached: Vec<f64>,
    pub attached: Vec<f64>,
    /// Attached runs: sessions completed, sessions failed, sessions the kernel counted,
    /// events lost.
    pub sent: u64,
    pub errors: u64,
    pub counted: u64,
    pub lost: u64,
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
            sent: 0,
            errors: 0,
            counted: 0,
            lost: 0,
            cpu_ms_per_1000: None,
            peak_rss_kib: None,
        }
    }

    fn ratios(&self) -> Vec<f64> {
        self.detached.iter().zip(&self.attached).map(|(a, b)| b / a).collect()
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
    pub rows: Vec<Row>,
    pub latency: Option<(f64, Latency)>,
    pub kernel: Vec<(String, Vec<ProgramCost>)>,
    pub flood: Option<Flood>,
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
    pub fn markdown(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "| workload | detached (A) | attached (B) | B/A per pair | median B/A | counted/sent | lost | agent CPU ms/1000 sessions | agent peak RSS |");
        let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let sessions = r.sent > 0;
            let _ = writeln!(
                t,
                "| {} | {} {} | {} | {} | {:.3} | {} | {} | {} | {} |",
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
                 max {:.2} ms ({} of {} sessions matched)",
                l.p50_ms, l.p99_ms, l.max_ms, l.matched, l.sent
            );
        }
        if !self.kernel.is_empty() {
            let _ = writeln!(t, "\n| kernel cost (bpf_stats) | program | runs | avg ns/run |");
            let _ = writeln!(t, "|---|---|---|---|");
            for (workload, costs) in &self.kernel {
                for c in costs.iter().filter(|c| c.runs > 0) {
                    let _ = writeln!(
                        t,
                        "| {workload} | {} | {} | {:.0} |",
                        c.program, c.runs, c.avg_ns
                    );
                }
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
        t
    }

    pub fn json(&self, pairs: usize, seconds: f64, threads: usize) -> String {
        let mut out = format!(
            "{{\"pairs\": {pairs}, \"seconds\": {seconds}, \"threads\": {threads}, \"results\": ["
        );
        for (i, r) in self.rows.iter().enumerate() {
            let _ = write!(
                out,
                "{}{{\"workload\": \"{}\", \"unit\": \"{}\", \"detached\": [{}], \
                 \"attached\": [{}], \"ratios\": [{}], \"median_ratio\": {:.4}, \"sent\": {}, \
                 \"counted\": {}, \"lost\": {}, \"cpu_ms_per_1000\": {}, \"peak_rss_kib\": {}}}",
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
        if let Some((rate, l)) = &self.latency {
            let num = |v: f64| if v.is_finite() { format!("{v:.3}") } else { "null".into() };
            let _ = write!(
                out,
                ", \"latency\": {{\"rate\": {rate}, \"sent\": {}, \"matched\": {}, \
                 \"p50_ms\": {}, \"p99_ms\": {}, \"max_ms\": {}}}",
                l.sent,
                l.matched,
                num(l.p50_ms),
                num(l.p99_ms),
                num(l.max_ms)
            );
        }
        out.push_str(", \"kernel\": [");
        let mut first = true;
        for (workload, costs) in &self.kernel {
            for c in costs {
                let _ = write!(
                    out,
                    "{}{{\"workload\": \"{workload}\", \"program\": \"{}\", \"runs\": {}, \
                     \"avg_ns\": {:.1}}}",
                    if first { "" } else { ", " },
                    c.program,
                    c.runs,
                    c.avg_ns
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
        out.push_str("}\n");
        out
    }
}
