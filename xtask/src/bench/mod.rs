//! `cargo xtask bench`: the sensor's cost on the host, measured side by side. Each workload
//! runs with the sensor detached (A) and attached (B), alternated `pairs` times; reported
//! as per-pair B/A ratios and their median, plus what the attached runs cost the agent
//! (CPU per 1000 sessions, peak RSS) and whether every session was counted. Then, with the
//! sensor attached: the kernel's own run time per program (bpf_stats) on each workload, the
//! finding latency at a steady rate, a flood into a tiny ring buffer whose counts must
//! stay exact, and what the idle agent costs (CPU and times scheduled per second, per
//! thread). With `--capture-peer`, each workload also runs with the sensor detached and a
//! packet capture of the watched port running (C), for comparison. Results go to stdout as
//! tables and to target/bench/results.json. A session count that is off fails the run and
//! names the sensor's samples that moved in that run (what it counted instead).

mod capture;
mod floor;
mod host;
mod idle;
mod kstats;
mod latency;
pub mod loadgen;
mod openssl_load;
mod report;
pub mod sensor_proc;
pub mod server;
mod storage_floor;

use sensor_common::verdict::Verdict;
use std::{net::SocketAddr, path::Path, path::PathBuf, time::Duration, time::Instant};

use anyhow::Context;
use loadgen::Session;
use report::{Flood, Report, Row};
use sensor_proc::SensorProc;

/// `cargo xtask bench`'s command line. Flags left out take their default, or with `--smoke`
/// the smoke run's; a flag given explicitly wins over `--smoke`.
#[derive(clap::Args, Debug, Default)]
pub struct BenchArgs {
    /// A short run that only proves the bench still works (`--pairs 1 --seconds 1
    /// --flood 2000`), as `cargo xtask test` runs it; no targets are asserted.
    #[arg(long)]
    pub smoke: bool,
    /// Detached/attached pairs per workload [default: 3; 1 with --smoke].
    #[arg(long, value_name = "N", value_parser = positive_usize)]
    pub pairs: Option<usize>,
    /// Seconds each run of a workload lasts [default: 5; 1 with --smoke].
    #[arg(long, value_name = "S", value_parser = positive_f64)]
    pub seconds: Option<f64>,
    /// Load generator threads (one connection per session) [default: 4].
    #[arg(long, value_name = "N", value_parser = positive_usize)]
    pub threads: Option<usize>,
    /// Plaintext sessions sent into a 4 KiB ring buffer, whose counts must stay exact
    /// [default: 100000; 2000 with --smoke].
    #[arg(long, value_name = "SESSIONS")]
    pub flood: Option<u64>,
    /// Steady rate of the finding-latency run, sessions per second [default: 500].
    #[arg(long, value_name = "PER_SECOND", value_parser = positive_f64)]
    pub latency_rate: Option<f64>,
    /// The sensor binary to measure, e.g. an older build for a before/after comparison;
    /// given, nothing is built [default: target/dist/pgwire-sensor-<machine's arch>, the
    /// static binary that is shipped, built first by `cargo xtask dist`].
    #[arg(long, value_name = "PATH")]
    pub sensor: Option<PathBuf>,
    /// Also run each A/B workload with the sensor detached and tshark capturing the watched
    /// port (C): the C/A ratio, column "capture peer", is what the usual alternative costs.
    /// Needs the Debian package tshark; not part of --smoke.
    #[arg(long)]
    pub capture_peer: bool,
}

fn positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(_) => Err("must be a positive number".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// What one bench run does, resolved from [`BenchArgs`].
#[derive(Debug, PartialEq)]
pub struct Options {
    pub pairs: usize,
    pub seconds: f64,
    pub threads: usize,
    /// Sessions in the flood.
    pub flood: u64,
    /// Steady rate of the finding-latency run, sessions per second.
    pub latency_rate: f64,
    /// The sensor binary run attached.
    pub sensor: PathBuf,
    /// Run the C series (tshark capturing) of every A/B workload.
    pub capture_peer: bool,
    pub out: PathBuf,
}

impl BenchArgs {
    pub fn options(&self, root: &Path) -> Options {
        let (pairs, seconds, flood) = if self.smoke { (1, 1.0, 2_000) } else { (3, 5.0, 100_000) };
        Options {
            pairs: self.pairs.unwrap_or(pairs),
            seconds: self.seconds.unwrap_or(seconds),
            threads: self.threads.unwrap_or(4),
            flood: self.flood.unwrap_or(flood),
            latency_rate: self.latency_rate.unwrap_or(500.0),
            sensor: self
                .sensor
                .clone()
                .unwrap_or_else(|| crate::arch::Arch::host().dist_binary(root)),
            capture_peer: self.capture_peer,
            out: root.join("target/bench/results.json"),
        }
    }
}

/// Endpoints of the bench servers: the watched port answers N on one loopback address and
/// S on another; bulk goes to a watched and an unwatched sink.
const DOWNGRADE_SERVER: &str = "127.0.0.1:26257";
const TLS_SERVER: &str = "127.0.0.2:26257";
const SINK_WATCHED: &str = "127.0.0.3:26257";
const SINK_UNWATCHED: &str = "127.0.0.3:26258";

/// A request/response workload: persistent connections to an echo server.
struct RoundTrips {
    name: &'static str,
    server: &'static str,
    /// A plaintext startup first, so that on a watched port the session's verdict is decided
    /// and the round trips measure what the sensor costs a judged session.
    startup: bool,
}

/// On their own loopback address: 127.0.0.4:26257 is the OpenSSL peer's.
const ROUND_TRIPS: [RoundTrips; 2] = [
    RoundTrips { name: "req/resp unwatched port", server: "127.0.0.6:26259", startup: false },
    WATCHED_ROUND_TRIPS,
];

/// The round trips on the watched port, the verdict decided first; its storage-lookup
/// floor and its both-ends-judged cost are measured on it too.
const WATCHED_ROUND_TRIPS: RoundTrips = RoundTrips {
    name: "req/resp watched port (verdict decided)",
    server: "127.0.0.6:26257",
    startup: true,
};

/// The idle window lasts this many runs of a workload (--seconds each).
const IDLE_RUNS: f64 = 3.0;

/// The smallest ring buffer the sensor accepts: the flood must overflow it.
const FLOOD_RING_BYTES: u32 = 4096;

/// What the run needs besides the sensor, checked before the sensor is built.
pub fn preflight(opts: &Options) -> anyhow::Result<()> {
    if opts.capture_peer {
        capture::check_installed()?;
    }
    Ok(())
}

pub fn run(root: &Path, opts: Options) -> anyhow::Result<()> {
    preflight(&opts)?;
    anyhow::ensure!(opts.sensor.is_file(), "no sensor binary at {}", opts.sensor.display());
    // A bare file name given to --sensor means the one here, not one on PATH.
    let opts = Options { sensor: std::path::absolute(&opts.sensor)?, ..opts };
    let sensor_bin = opts.sensor.as_path();
    server::spawn_pgwire(DOWNGRADE_SERVER, server::Answer::No)?;
    server::spawn_pgwire(TLS_SERVER, server::Answer::Yes)?;
    server::spawn_sink(SINK_WATCHED)?;
    server::spawn_sink(SINK_UNWATCHED)?;
    for w in &ROUND_TRIPS {
        server::spawn_echo(w.server, w.startup)?;
    }
    let duration = Duration::from_secs_f64(opts.seconds);

    let openssl = openssl_load::OpensslPeer::start(root, &root.join("target/bench/tls"))?;

    let mut rows = Vec::new();
    for kind in [Session::Plaintext, Session::Downgrade, Session::Tls] {
        let addr = session_addr(kind)?;
        rows.push(sessions_ab(kind.name(), kind.verdict(), &opts, || {
            Ok(loadgen::sessions(addr, kind, opts.threads, duration, u64::MAX))
        })?);
    }
    // Real handshakes through OpenSSL at both ends: what the TLS uprobes add per connection.
    rows.push(sessions_ab(OPENSSL_WORKLOAD, Verdict::Tls, &opts, || {
        openssl.handshakes(opts.threads, duration)
    })?);
    for (name, sink) in
        [("bulk unwatched port", SINK_UNWATCHED), ("bulk watched port", SINK_WATCHED)]
    {
        rows.push(bulk_ab(&opts, name, sink.parse()?, duration)?);
    }
    for w in &ROUND_TRIPS {
        rows.push(round_trips_ab(&opts, w, duration)?);
    }
    let kernel = kernel_costs(&opts, duration, &openssl)?;
    let latency = finding_latency(sensor_bin, opts.latency_rate, duration)?;
    let flood = flood(sensor_bin, opts.flood, opts.threads)?;
    let idle = idle::measure(sensor_bin, Duration::from_secs_f64(opts.seconds * IDLE_RUNS))?;
    let report = Report {
        host: Some(host::Host::read()),
        rows,
        latency: Some((opts.latency_rate, latency)),
        kernel,
        flood: Some(flood),
        idle: Some(idle),
    };

    print!("{}", report.markdown());
    std::fs::create_dir_all(opts.out.parent().context("--out has no parent")?)?;
    std::fs::write(&opts.out, report.json(opts.pairs, opts.seconds, opts.threads))?;
    println!("results: {}", opts.out.display());
    // Counting is correctness, not speed: a miss fails the run, whatever its length.
    // A session that failed after its first bytes may still be counted: sent is the lower
    // bound, sent + errors the upper.
    // Each run on its own too: one run's failed sessions must not hide another's miss.
    if let Some(row) = report
        .rows
        .iter()
        .find(|r| r.counted < r.sent || r.counted > r.sent + r.errors || !r.miscounted.is_empty())
    {
        let moved: Vec<String> = row
            .miscounted
            .iter()
            .map(|run| format!("\n  in one run: {}", run.join(", ")))
            .collect();
        anyhow::bail!(
            "{}: the kernel counted {} sessions; {} completed and {} failed{}",
            row.workload,
            row.counted,
            row.sent,
            row.errors,
            moved.concat()
        );
    }
    if let Some(f) = report.flood.as_ref().filter(|f| !f.exact()) {
        anyhow::bail!(
            "flood: {} sessions sent, {} counted, {} findings + {} lost session events",
            f.sent,
            f.counted,
            f.findings,
            f.lost_session
        );
    }
    Ok(())
}

fn session_addr(kind: Session) -> anyhow::Result<SocketAddr> {
    Ok(if kind == Session::Tls { TLS_SERVER } else { DOWNGRADE_SERVER }.parse()?)
}

/// The workload of real OpenSSL handshakes (TLS 1.3, RSA 2048, the client verifying).
const OPENSSL_WORKLOAD: &str = "openssl_tls_handshake";

/// Series C of one pair, into `row`: `load` (its rate) with the sensor detached and tshark
/// capturing the watched port; nothing without --capture-peer.
fn capture_run(
    opts: &Options,
    row: &mut Row,
    load: impl FnOnce() -> anyhow::Result<f64>,
) -> anyhow::Result<()> {
    if !opts.capture_peer {
        return Ok(());
    }
    let capture = capture::Capture::start()?;
    let rate = load()?;
    let counts = capture.stop()?;
    row.peer.push(rate);
    row.peer_packets += counts.captured;
    row.peer_dropped += counts.dropped;
    Ok(())
}

/// Short sessions per second from `load`, detached then attached, `pairs` times; the
/// kernel must count each as `verdict`.
fn sessions_ab(
    name: &str,
    verdict: Verdict,
    opts: &Options,
    load: impl Fn() -> anyhow::Result<loadgen::Burst>,
) -> anyhow::Result<Row> {
    let mut row = Row::new(format!("sessions/s {name}"), "sessions/s");
    let mut cpu_total = 0.0;
    for _ in 0..opts.pairs {
        let a = load()?;
        row.detached.push(a.per_second());
        let sensor = SensorProc::start_as_installed(&opts.sensor)?;
        let before = sensor.sample()?;
        let b = load()?;
        // Let the agent finish what the burst queued before reading its CPU time.
        std::thread::sleep(Duration::from_millis(300));
        let after = sensor.sample()?;
        row.attached.push(b.per_second());
        let (sent, counted) =
            (b.sessions - b.errors, after.counted(verdict) - before.counted(verdict));
        if counted < sent || counted > sent + b.errors {
            row.miscounted.push(after.moved_since(&before));
        }
        row.sent += sent;
        row.errors += b.errors;
        row.counted += counted;
        row.lost += after.lost - before.lost;
        cpu_total += after.cpu_seconds - before.cpu_seconds;
        row.peak_rss_kib = row.peak_rss_kib.max(Some(after.peak_rss_kib));
        sensor.stop()?;
        capture_run(opts, &mut row, || Ok(load()?.per_second()))?;
    }
    if row.sent > 0 {
        row.cpu_ms_per_1000 = Some(cpu_total * 1000.0 / row.sent as f64 * 1000.0);
    }
    Ok(row)
}

/// Bulk throughput on one connection, detached then attached, `pairs` times.
fn bulk_ab(
    opts: &Options,
    name: &str,
    addr: SocketAddr,
    duration: Duration,
) -> anyhow::Result<Row> {
    let mut row = Row::new(name.to_string(), "MB/s");
    let load = || -> anyhow::Result<f64> { Ok(loadgen::bulk(addr, duration)? / 1e6) };
    for _ in 0..opts.pairs {
        row.detached.push(load()?);
        let sensor = SensorProc::start(&opts.sensor, &[])?;
        row.attached.push(load()?);
        sensor.stop()?;
        capture_run(opts, &mut row, load)?;
    }
    Ok(row)
}

/// Round trips per second, detached then attached, `pairs` times. Each run opens its own
/// connections (see [`loadgen::round_trips`]); on the watched port the kernel must count
/// each as a plaintext session.
fn round_trips_ab(opts: &Options, w: &RoundTrips, duration: Duration) -> anyhow::Result<Row> {
    let mut row = Row::new(w.name.to_string(), "round trips/s");
    let addr: SocketAddr = w.server.parse()?;
    let load = || loadgen::round_trips(addr, w.startup, opts.threads, duration);
    for _ in 0..opts.pairs {
        row.detached.push(load()?);
        let sensor = SensorProc::start(&opts.sensor, &[])?;
        let before = sensor.sample()?;
        row.attached.push(load()?);
        if w.startup {
            let after = sensor.sample()?;
            let counted = after.counted(Verdict::Plaintext) - before.counted(Verdict::Plaintext);
            if counted != opts.threads as u64 {
                row.miscounted.push(after.moved_since(&before));
            }
            row.sent += opts.threads as u64;
            row.counted += counted;
            row.lost += after.lost - before.lost;
        }
        sensor.stop()?;
        capture_run(opts, &mut row, load)?;
    }
    Ok(row)
}

/// The kernel's run time per program on each workload, with bpf_stats on only for these
/// runs (the statistics cost two clock reads per run, so the A/B runs go without). Empty
/// programs on the sensor's cgroup hooks run alongside: their rows (`floor (empty program):
/// HOOK`) are what the statistics and the dispatch cost a program that does nothing.
fn kernel_costs(
    opts: &Options,
    duration: Duration,
    openssl: &openssl_load::OpensslPeer,
) -> anyhow::Result<Vec<(String, Vec<kstats::ProgramCost>)>> {
    let _stats = kstats::StatsEnabled::turn_on()?;
    let cgroup = floor::cgroup2_root()?;
    let mut costs = vec![
        storage_floor_costs(opts, duration, &cgroup)?,
        lookup_floor_costs(opts, duration, &cgroup)?,
    ];
    let sensor = SensorProc::start(&opts.sensor, &[])?;
    let floor = floor::FloorPrograms::attach(&cgroup)?;
    let sample = || -> anyhow::Result<[kstats::ProgramTimes; 2]> {
        Ok([kstats::ProgramTimes::of_process(sensor.pid())?, floor.times()?])
    };
    for kind in [Session::Plaintext, Session::Tls] {
        let before = sample()?;
        loadgen::sessions(session_addr(kind)?, kind, opts.threads, duration, u64::MAX);
        costs.push((format!("sessions {}", kind.name()), since(sample()?, before)));
    }
    let before = sample()?;
    let burst = openssl.handshakes(opts.threads, duration)?;
    costs.push((
        format!("sessions {OPENSSL_WORKLOAD} ({} handshakes)", burst.sessions - burst.errors),
        since(sample()?, before),
    ));
    for (name, sink) in
        [("bulk unwatched port", SINK_UNWATCHED), ("bulk watched port", SINK_WATCHED)]
    {
        let before = sample()?;
        loadgen::bulk(sink.parse()?, duration)?;
        costs.push((name.to_string(), since(sample()?, before)));
    }
    for w in &ROUND_TRIPS {
        let before = sample()?;
        loadgen::round_trips(w.server.parse()?, w.startup, opts.threads, duration)?;
        costs.push((w.name.to_string(), since(sample()?, before)));
    }
    // connect() to a port not watched: what every other service's connections pay.
    let before = sample()?;
    let made = loadgen::connects(opts.threads, duration)?;
    costs.push((format!("connects to an unwatched port ({made})"), since(sample()?, before)));
    drop(floor);
    sensor.stop()?;
    costs.push(both_ends_judged_costs(opts, duration, &cgroup)?);
    Ok(costs)
}

/// The watched request/response workload with both ends watched (`--roles client,server`):
/// every packet is then a judged connection's (with the default roles the echo server's
/// end is not watched and its packets leave at the port test, halving the row above).
fn both_ends_judged_costs(
    opts: &Options,
    duration: Duration,
    cgroup: &Path,
) -> anyhow::Result<(String, Vec<kstats::ProgramCost>)> {
    let watched = &WATCHED_ROUND_TRIPS;
    let sensor = SensorProc::start(&opts.sensor, &["--roles", "client,server"])?;
    let floor = floor::FloorPrograms::attach(cgroup)?;
    let sample = || -> anyhow::Result<[kstats::ProgramTimes; 2]> {
        Ok([kstats::ProgramTimes::of_process(sensor.pid())?, floor.times()?])
    };
    let before = sample()?;
    loadgen::round_trips(watched.server.parse()?, watched.startup, opts.threads, duration)?;
    let costs = since(sample()?, before);
    drop(floor);
    sensor.stop()?;
    Ok((format!("{}, both ends judged (--roles client,server)", watched.name), costs))
}

/// What creating a watched socket's storage costs connect() by itself: plaintext sessions
/// with the sensor detached, the empty floor programs and one that only creates a storage
/// entry of the sensor's size on connect4 to the watched port (see [`storage_floor`]).
fn storage_floor_costs(
    opts: &Options,
    duration: Duration,
    cgroup: &Path,
) -> anyhow::Result<(String, Vec<kstats::ProgramCost>)> {
    let addr = session_addr(Session::Plaintext)?;
    let floor = floor::FloorPrograms::attach(cgroup)?;
    let storage = storage_floor::StorageFloor::attach(cgroup, addr.port())?;
    let sample =
        || -> anyhow::Result<[kstats::ProgramTimes; 2]> { Ok([floor.times()?, storage.times()?]) };
    let before = sample()?;
    loadgen::sessions(addr, Session::Plaintext, opts.threads, duration, u64::MAX);
    let costs = since(sample()?, before);
    Ok(("sessions plaintext, sensor detached (the storage floor)".to_string(), costs))
}

/// What looking a watched socket's storage up costs each of its packets by itself: the
/// watched request/response workload with the sensor detached, the empty floor programs
/// and the lookup programs (see [`storage_floor::LookupFloor`]) attached. Detached, as the
/// connect floor is: the first program in the hook's chain to look up a socket's storage
/// pays for bringing it into the cache (about 50 ns on egress here), and the sensor is
/// that program when it runs alone; a lookup program attached after it would find the
/// storage warm and understate the floor.
fn lookup_floor_costs(
    opts: &Options,
    duration: Duration,
    cgroup: &Path,
) -> anyhow::Result<(String, Vec<kstats::ProgramCost>)> {
    let watched = &WATCHED_ROUND_TRIPS;
    let addr: SocketAddr = watched.server.parse()?;
    let floor = floor::FloorPrograms::attach(cgroup)?;
    let lookup = storage_floor::LookupFloor::attach(cgroup, addr.port())?;
    let sample =
        || -> anyhow::Result<[kstats::ProgramTimes; 2]> { Ok([floor.times()?, lookup.times()?]) };
    let before = sample()?;
    loadgen::round_trips(addr, watched.startup, opts.threads, duration)?;
    let costs = since(sample()?, before);
    Ok((format!("{}, sensor detached (the storage lookup floor)", watched.name), costs))
}

/// What ran between two samples of two sets of programs: the first set's rows, then the
/// second's (the sensor's programs, then the floor's).
fn since(
    after: [kstats::ProgramTimes; 2],
    before: [kstats::ProgramTimes; 2],
) -> Vec<kstats::ProgramCost> {
    let mut costs = after[0].since(&before[0]);
    costs.extend(after[1].since(&before[1]));
    costs
}

/// Send-to-finding latency of plaintext sessions at a steady rate.
fn finding_latency(
    sensor_bin: &Path,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<latency::Latency> {
    let mut sensor = SensorProc::start_piped(sensor_bin, &[])?;
    let findings = sensor.finding_lines().context("no findings pipe")?;
    let before = sensor.sample()?;
    let mut measured =
        latency::measure(session_addr(Session::Plaintext)?, rate, duration, &findings);
    let cpu = sensor.sample()?.cpu_seconds - before.cpu_seconds;
    if measured.sent > 0 {
        measured.cpu_ms_per_1000 = Some(cpu * 1000.0 / measured.sent as f64 * 1000.0);
    }
    sensor.stop()?;
    Ok(measured)
}

/// `sessions` plaintext sessions as fast as the load generator goes, into the smallest ring
/// buffer: the kernel's counts must equal what was sent, and every session must be either
/// reported or counted as lost.
fn flood(sensor_bin: &Path, sessions: u64, threads: usize) -> anyhow::Result<Flood> {
    let ring = FLOOD_RING_BYTES.to_string();
    let sensor = SensorProc::start(sensor_bin, &["--ring-buffer-bytes", &ring])?;
    let before = sensor.sample()?;
    let started = Instant::now();
    let burst = loadgen::sessions(
        session_addr(Session::Plaintext)?,
        Session::Plaintext,
        threads,
        Duration::from_secs(3600),
        sessions,
    );
    let seconds = started.elapsed().as_secs_f64();
    // Findings still waiting for an auth event that was lost are written after --auth-wait
    // (1 s by default).
    std::thread::sleep(Duration::from_millis(1500));
    anyhow::ensure!(burst.errors == 0, "flood: {} sessions failed", burst.errors);
    let after = sensor.sample()?;
    sensor.stop()?;
    Ok(Flood {
        ring_buffer_bytes: FLOOD_RING_BYTES,
        sent: burst.sessions - burst.errors,
        errors: burst.errors,
        seconds,
        counted: after.counted(Verdict::Plaintext) - before.counted(Verdict::Plaintext),
        findings: after.findings - before.findings,
        lost_session: after.lost_of("session") - before.lost_of("session"),
        lost_auth: after.lost_of("auth") - before.lost_of("auth"),
    })
}
