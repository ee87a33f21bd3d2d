//! The release sensor as the bench runs it: started, sampled (kernel counts from /metrics,
//! CPU and peak RSS from /proc), stopped.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

pub struct SensorProc {
    child: Child,
    metrics: SocketAddr,
}

pub struct Sample {
    text: String,
    pub lost: u64,
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
}

impl Sample {
    /// Client sessions of `verdict`, over all ports.
    pub fn counted(&self, verdict: &str) -> u64 {
        self.text
            .lines()
            .filter(|l| l.starts_with("pgwire_sensor_sessions_total{"))
            .filter(|l| {
                l.contains(&format!("verdict=\"{verdict}\"")) && l.contains("role=\"client\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
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

impl SensorProc {
    pub fn start(binary: &Path, extra: &[&str]) -> anyhow::Result<SensorProc> {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let child = Command::new(binary)
            .arg("run")
            .args(["--findings", "/dev/null", "--metrics-addr", &metrics.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut p = SensorProc { child, metrics };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(http_get(metrics, "/healthz"), Ok((200, _))) {
                return Ok(p);
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!("the sensor exited ({status}) before attaching; run it by hand to see why");
            }
            if Instant::now() > deadline {
                bail!("the sensor did not attach within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn sample(&self) -> anyhow::Result<Sample> {
        let (_, text) = http_get(self.metrics, "/metrics")?;
        let lost = text
            .lines()
            .filter(|l| l.starts_with("pgwire_sensor_events_lost_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the ")" of comm: utime is the 12th, stime the 13th.
        let after = stat.rsplit_once(')').context("bad stat")?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let peak_rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Ok(Sample { text, lost, cpu_seconds: ticks / clock_ticks(), peak_rss_kib })
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "the sensor exited with {status}");
        Ok(())
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
