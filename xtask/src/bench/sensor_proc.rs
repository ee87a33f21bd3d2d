//! The release sensor as the bench runs it: started, sampled (kernel counts from /metrics,
//! CPU and peak RSS from /proc), stopped.

use sensor_common::verdict::{Role, Verdict, Verification};
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
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
    /// Where its stderr (its log) goes.
    stderr_path: PathBuf,
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

    /// The sensor's own samples that moved since `before`, as `name{labels} +delta`: what
    /// a run whose count is off counted instead (another verdict, a kernel stat).
    pub fn moved_since(&self, before: &Sample) -> Vec<String> {
        let was: std::collections::HashMap<&str, f64> = samples(&before.text).collect();
        samples(&self.text)
            .filter_map(|(key, value)| {
                let delta = value - was.get(key).copied().unwrap_or(0.0);
                (delta != 0.0).then(|| format!("{key} {delta:+}"))
            })
            .collect()
    }
}

/// The sensor's own samples (`pgwire_sensor_*`, histogram buckets left out): series
/// (name and labels) and value.
fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines().filter(|l| l.starts_with("pgwire_sensor_") && !l.contains("_bucket{")).filter_map(
        |l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key, value.parse().ok()?))
        },
    )
}

/// One thread's time on the CPU so far, from /proc/PID/task/TID/schedstat.
#[derive(Clone, Debug)]
pub struct ThreadTime {
    pub tid: u32,
    pub name: String,
    pub cpu_ns: u64,
    /// Times it was put on a CPU: each wakeup is one, and so is a return after preemption.
    pub runs: u64,
}

/// Every live thread of `pid` (empty when the kernel keeps no schedstat: the file is
/// missing, or all zeros without CONFIG_SCHED_INFO). A thread that ended takes its time
/// with it: the sensor's threads live as long as it does (but for the blocking pool's,
/// only started by --web-config basic auth, which the bench does not use).
pub fn thread_times(pid: u32) -> Vec<ThreadTime> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return vec![] };
    let threads: Vec<ThreadTime> = tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let mut fields = stat.split_whitespace().map(|v| v.parse::<u64>().ok());
            let cpu_ns = fields.next()??;
            let runs = fields.nth(1)??;
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            Some(ThreadTime { tid, name: name.trim_end().to_string(), cpu_ns, runs })
        })
        .collect();
    if threads.iter().all(|t| t.cpu_ns == 0 && t.runs == 0) {
        return vec![];
    }
    threads
}

/// The sum of a metric family's samples (all label sets).
fn sum(text: &str, family: &str) -> u64 {
    sum_where(text, family, &[])
}

/// The sum of a metric family's samples whose series contains every one of `labels`.
fn sum_where(text: &str, family: &str, labels: &[&str]) -> u64 {
    samples(text)
        .filter(|(series, _)| {
            series.strip_prefix(family).is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
        })
        .filter(|(series, _)| labels.iter().all(|label| series.contains(label)))
        .map(|(_, value)| value)
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
        let mut p = SensorProc { child, metrics, attached_after: Duration::ZERO, stderr_path };
        let started = Instant::now();
        let deadline = started + within;
        loop {
            if matches!(http_get(metrics, "/healthz"), Ok((200, _))) {
                p.attached_after = started.elapsed();
                return Ok(p);
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                let said = std::fs::read_to_string(&p.stderr_path).unwrap_or_default();
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

    /// The first line of its log that contains `text`, waiting up to `within` for it (the
    /// sensor answers /healthz a little before it logs that it is attached).
    pub fn log_line(&self, text: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let log = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
            if let Some(line) = log.lines().find(|line| line.contains(text)) {
                return Some(line.to_string());
            }
            if Instant::now() > deadline {
                return None;
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
        // Nanoseconds on the CPU of every thread (schedstat), where the kernel has it: clock
        // ticks are 10 ms, coarse for a few thousand sessions. (/proc/PID/schedstat is the
        // main thread's alone; the library scanner runs on its own thread.)
        let threads = thread_times(pid);
        let cpu_seconds = if threads.is_empty() {
            ticks / clock_ticks()
        } else {
            threads.iter().map(|t| t.cpu_ns).sum::<u64>() as f64 / 1e9
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# HELP pgwire_sensor_sessions_total Sessions.\n\
        pgwire_sensor_sessions_total{port=\"26257\",role=\"client\",verdict=\"plaintext\"} 5\n\
        pgwire_sensor_sessions_total{port=\"26257\",role=\"server\",verdict=\"plaintext\"} 7\n\
        pgwire_sensor_sessions_total_other{role=\"client\",verdict=\"plaintext\"} 100\n\
        pgwire_sensor_findings_total 3\n\
        pgwire_sensor_finding_latency_seconds_bucket{le=\"0.1\"} 9\n";

    fn sample(text: &str) -> Sample {
        Sample { text: text.into(), lost: 0, findings: 0, cpu_seconds: 0.0, peak_rss_kib: 0 }
    }

    #[test]
    fn sums_one_family_by_its_labels() {
        let s = sample(BEFORE);
        assert_eq!(s.counted(Verdict::Plaintext), 5, "client role only, not a longer family");
        assert_eq!(sum(BEFORE, "pgwire_sensor_sessions_total"), 12);
        assert_eq!(sum(BEFORE, "pgwire_sensor_findings_total"), 3);
    }

    #[test]
    fn moved_since_names_what_changed() {
        let after = BEFORE
            .replace("verdict=\"plaintext\"} 5", "verdict=\"plaintext\"} 6")
            .replace("} 9\n", "} 10\n")
            + "pgwire_sensor_sessions_total{port=\"26257\",role=\"client\",verdict=\"unknown\"} 1\n";
        let moved = sample(&after).moved_since(&sample(BEFORE));
        assert_eq!(
            moved,
            [
                "pgwire_sensor_sessions_total{port=\"26257\",role=\"client\",verdict=\"plaintext\"} +1",
                "pgwire_sensor_sessions_total{port=\"26257\",role=\"client\",verdict=\"unknown\"} +1",
            ]
        );
    }
}
