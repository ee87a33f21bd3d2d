//! The release sensor as the bench runs it: started, sampled (kernel counts from /metrics,
//! CPU and peak RSS from /proc), stopped.

use sensor_common::verdict::{Role, Verdict, Verification};
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

pub struct SensorProc {
    child: Child,
    metrics: SocketAddr,
    /// How long it took from start to attached (verifier included).
    pub attached_after: Duration,
}

pub struct Sample {
    text: String,
    /// Events the kernel could not deliver, all kinds.
    pub lost: u64,
    /// Finding lines written.
    pub findings: u64,
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
}

impl Sample {
    /// Events of one kind (`session`, `auth`) the kernel could not deliver.
    pub fn lost_of(&self, kind: &str) -> u64 {
        sum_where(&self.text, "pgwire_sensor_events_lost_total", &[&format!("kind=\"{kind}\"")])
    }

    /// Client sessions of `verdict`, over all ports.
    pub fn counted(&self, verdict: Verdict) -> u64 {
        let verdict = format!("verdict=\"{verdict}\"");
        let role = format!("role=\"{}\"", Role::Client);
        sum_where(&self.text, "pgwire_sensor_sessions_total", &[&verdict, &role])
    }

    /// Client TLS sessions whose verification was `verification`, over all ports.
    pub fn tls_counted(&self, verification: Verification) -> u64 {
        let verification = format!("verification=\"{verification}\"");
        let role = format!("role=\"{}\"", Role::Client);
        sum_where(&self.text, "pgwire_sensor_tls_sessions_total", &[&verification, &role])
    }
}

/// The sum of a metric family's samples (all label sets).
fn sum(text: &str, family: &str) -> u64 {
    sum_where(text, family, &[])
}

/// The sum of a metric family's samples whose line contains every one of `labels`.
fn sum_where(text: &str, family: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut r = String::new();
    s.read_to_string(&mut r)?;
    let (head, body) = r.split_once("\r\n\r\n").context("bad HTTP answer")?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no status")?;
    Ok((code, body.to_string()))
}

/// Which finding lines the sensor writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lines {
    /// One line per session (`--findings-every-session`): the latency and flood bookkeeping
    /// match lines to sessions.
    EverySession,
    /// The installed default: a session's first line, then summaries per repeat window.
    AsInstalled,
}

impl SensorProc {
    /// Findings (one line per session) go to /dev/null.
    pub fn start(binary: &Path, extra: &[&str]) -> anyhow::Result<SensorProc> {
        Self::spawn(binary, extra, false)
    }

    /// Findings go to /dev/null, written as an installed sensor writes them (summary
    /// lines): what the agent costs a host in its default configuration.
    pub fn start_as_installed(binary: &Path) -> anyhow::Result<SensorProc> {
        Self::spawn_within(binary, &[], false, Lines::AsInstalled, Duration::from_secs(30))
    }

    /// Findings go to a pipe: read them with `finding_lines`.
    pub fn start_piped(binary: &Path, extra: &[&str]) -> anyhow::Result<SensorProc> {
        Self::spawn(binary, extra, true)
    }

    /// As `start_piped`, waiting up to `within` for the attach (an emulated VM verifies the
    /// programs many times slower than the host).
    pub fn start_piped_within(
        binary: &Path,
        extra: &[&str],
        within: Duration,
    ) -> anyhow::Result<SensorProc> {
        Self::spawn_within(binary, extra, true, Lines::EverySession, within)
    }

    fn spawn(binary: &Path, extra: &[&str], piped: bool) -> anyhow::Result<SensorProc> {
        Self::spawn_within(binary, extra, piped, Lines::EverySession, Duration::from_secs(30))
    }

    fn spawn_within(
        binary: &Path,
        extra: &[&str],
        piped: bool,
        lines: Lines,
        within: Duration,
    ) -> anyhow::Result<SensorProc> {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let findings = if piped { "-" } else { "/dev/null" };
        // Kept in a file: a sensor that fails to start says why there.
        let stderr_path =
            std::env::temp_dir().join(format!("pgwire-sensor-{}.stderr", metrics.port()));
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let child = Command::new(binary)
            .arg("run")
            .args(["--findings", findings, "--metrics-addr", &metrics.to_string()])
            .args((lines == Lines::EverySession).then_some("--findings-every-session"))
            .args(extra)
            .stdout(if piped { Stdio::piped() } else { Stdio::null() })
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut p = SensorProc { child, metrics, attached_after: Duration::ZERO };
        let started = Instant::now();
        let deadline = started + within;
        loop {
            if matches!(http_get(metrics, "/healthz"), Ok((200, _))) {
                p.attached_after = started.elapsed();
                return Ok(p);
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                let tail: Vec<&str> = said.lines().rev().take(600).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "the sensor exited ({status}) before attaching; its stderr ends:\n{}",
                    tail.join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!("the sensor did not attach within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The finding lines of a `start_piped` sensor, each with the instant it arrived, read
    /// on a thread that ends when the sensor's stdout closes. `None` if not piped (or
    /// already taken).
    pub fn finding_lines(&mut self) -> Option<mpsc::Receiver<(Instant, String)>> {
        let out: ChildStdout = self.child.stdout.take()?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Some(rx)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sample(&self) -> anyhow::Result<Sample> {
        let (_, text) = http_get(self.metrics, "/metrics")?;
        let lost = sum(&text, "pgwire_sensor_events_lost_total");
        let findings = sum(&text, "pgwire_sensor_findings_total");
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the ")" of comm: utime is the 12th, stime the 13th.
        let after = stat.rsplit_once(')').context("bad stat")?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
        // Nanoseconds on the CPU (schedstat), where the kernel has it: clock ticks are 10 ms,
        // coarse for a few thousand sessions.
        let cpu_seconds = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(ticks / clock_ticks(), |ns| ns / 1e9);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let peak_rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Ok(Sample { text, lost, findings, cpu_seconds, peak_rss_kib })
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "the sensor exited with {status}");
        Ok(())
    }
}

/// A bench step that fails between start and stop must not leave an attached sensor
/// behind (it would also hold the host's instance lock).
impl Drop for SensorProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
