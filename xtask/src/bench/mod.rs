//! `cargo xtask bench`: the sensor's cost on the host, measured side by side. Each workload
//! runs with the sensor detached (A) and attached (B), alternated `pairs` times; reported
//! as per-pair B/A ratios and their median, plus what the attached runs cost the agent
//! (CPU per 1000 sessions, peak RSS) and whether every session was counted. Results go to
//! stdout as a table and to target/bench/results.json.
//!
//! Not yet measured here (issue 6 continues): finding latency, kernel run time per program
//! from bpf_stats, the 100,000-session flood with a tiny ring buffer.

mod loadgen;
mod sensor_proc;
mod server;

use std::{fmt::Write as _, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use loadgen::Session;

pub struct Options {
    pub pairs: usize,
    pub seconds: f64,
    pub threads: usize,
    pub out: PathBuf,
}

impl Options {
    pub fn parse(args: &[String], root: &std::path::Path) -> anyhow::Result<Options> {
        let mut o = Options {
            pairs: 3,
            seconds: 5.0,
            threads: 4,
            out: root.join("target/bench/results.json"),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || it.next().context(format!("{arg} needs a value"));
            match arg.as_str() {
                "--smoke" => {
                    o.pairs = 1;
                    o.seconds = 1.0;
                }
                "--pairs" => o.pairs = value()?.parse().context("--pairs")?,
                "--seconds" => o.seconds = value()?.parse().context("--seconds")?,
                "--threads" => o.threads = value()?.parse().context("--threads")?,
                other => anyhow::bail!(
                    "bench: unknown option {other} (--smoke, --pairs N, --seconds S, --threads N)"
                ),
            }
        }
        anyhow::ensure!(o.pairs >= 1 && o.seconds > 0.0 && o.threads >= 1, "bench: bad options");
        Ok(o)
    }
}

/// Endpoints of the bench servers: the watched port answers N on one loopback address and
/// S on another; bulk goes to a watched and an unwatched sink.
const DOWNGRADE_SERVER: &str = "127.0.0.1:26257";
const TLS_SERVER: &str = "127.0.0.2:26257";
const SINK_WATCHED: &str = "127.0.0.3:26257";
const SINK_UNWATCHED: &str = "127.0.0.3:26258";

struct Row {
    workload: String,
    unit: &'static str,
    detached: Vec<f64>,
    attached: Vec<f64>,
    /// Attached runs: sessions sent, sessions the kernel counted, events lost.
    sent: u64,
    counted: u64,
    lost: u64,
    cpu_ms_per_1000: Option<f64>,
    peak_rss_kib: Option<u64>,
}

impl Row {
    fn new(workload: String, unit: &'static str) -> Row {
        Row {
            workload,
            unit,
            detached: vec![],
            attached: vec![],
            sent: 0,
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(root: &std::path::Path, opts: Options) -> anyhow::Result<()> {
    let sensor_bin = root.join("target/release/sensor");
    server::spawn_pgwire(DOWNGRADE_SERVER, server::Answer::No)?;
    server::spawn_pgwire(TLS_SERVER, server::Answer::Yes)?;
    server::spawn_sink(SINK_WATCHED)?;
    server::spawn_sink(SINK_UNWATCHED)?;
    let duration = Duration::from_secs_f64(opts.seconds);
    let mut rows = Vec::new();

    for kind in [Session::Plaintext, Session::Downgrade, Session::Tls] {
        let addr: SocketAddr =
            if kind == Session::Tls { TLS_SERVER } else { DOWNGRADE_SERVER }.parse()?;
        let mut row = Row::new(format!("sessions/s {}", kind.name()), "sessions/s");
        let mut cpu_total = 0.0;
        for _ in 0..opts.pairs {
            let a = loadgen::sessions(addr, kind, opts.threads, duration, u64::MAX);
            row.detached.push(a.per_second());
            let sensor = sensor_proc::SensorProc::start(&sensor_bin, &[])?;
            let before = sensor.sample()?;
            let b = loadgen::sessions(addr, kind, opts.threads, duration, u64::MAX);
            std::thread::sleep(Duration::from_millis(300));
            let after = sensor.sample()?;
            row.attached.push(b.per_second());
            row.sent += b.sessions - b.errors;
            row.counted += after.counted(kind.verdict()) - before.counted(kind.verdict());
            row.lost += after.lost - before.lost;
            cpu_total += after.cpu_seconds - before.cpu_seconds;
            row.peak_rss_kib = row.peak_rss_kib.max(Some(after.peak_rss_kib));
            sensor.stop()?;
        }
        if row.sent > 0 {
            row.cpu_ms_per_1000 = Some(cpu_total * 1000.0 / row.sent as f64 * 1000.0);
        }
        rows.push(row);
    }

    for (name, sink) in
        [("bulk unwatched port", SINK_UNWATCHED), ("bulk watched port", SINK_WATCHED)]
    {
        let addr: SocketAddr = sink.parse()?;
        let mut row = Row::new(name.to_string(), "MB/s");
        for _ in 0..opts.pairs {
            row.detached.push(loadgen::bulk(addr, duration)? / 1e6);
            let sensor = sensor_proc::SensorProc::start(&sensor_bin, &[])?;
            row.attached.push(loadgen::bulk(addr, duration)? / 1e6);
            sensor.stop()?;
        }
        rows.push(row);
    }

    print!("{}", table(&rows));
    std::fs::create_dir_all(opts.out.parent().unwrap())?;
    std::fs::write(&opts.out, json(&rows, &opts))?;
    println!("results: {}", opts.out.display());
    Ok(())
}

fn table(rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| workload | detached (A) | attached (B) | B/A per pair | median B/A | counted/sent | lost | agent CPU ms/1000 sessions | agent peak RSS |");
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
        let ratios = r.ratios();
        let _ = writeln!(
            t,
            "| {} | {} {} | {} | {} | {:.3} | {} | {} | {} | {} |",
            r.workload,
            fmt(&r.detached),
            r.unit,
            fmt(&r.attached),
            ratios.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", "),
            median(ratios.clone()),
            if r.sent > 0 { format!("{}/{}", r.counted, r.sent) } else { "-".into() },
            if r.sent > 0 { r.lost.to_string() } else { "-".into() },
            r.cpu_ms_per_1000.map_or("-".into(), |v| format!("{v:.1}")),
            r.peak_rss_kib.map_or("-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0)),
        );
    }
    t
}

fn json(rows: &[Row], opts: &Options) -> String {
    let mut out = format!(
        "{{\"pairs\": {}, \"seconds\": {}, \"threads\": {}, \"results\": [",
        opts.pairs, opts.seconds, opts.threads
    );
    for (i, r) in rows.iter().enumerate() {
        let list = |v: &[f64]| v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ");
        let _ = write!(
            out,
            "{}{{\"workload\": \"{}\", \"unit\": \"{}\", \"detached\": [{}], \"attached\": [{}], \
             \"ratios\": [{}], \"median_ratio\": {:.4}, \"sent\": {}, \"counted\": {}, \
             \"lost\": {}, \"cpu_ms_per_1000\": {}, \"peak_rss_kib\": {}}}",
            if i > 0 { ", " } else { "" },
            r.workload,
            r.unit,
            list(&r.detached),
            list(&r.attached),
            list(&r.ratios()),
            median(r.ratios()),
            r.sent,
            r.counted,
            r.lost,
            r.cpu_ms_per_1000.map_or("null".into(), |v| format!("{v:.3}")),
            r.peak_rss_kib.map_or("null".into(), |v| v.to_string()),
        );
    }
    out.push_str("]}\n");
    out
}
