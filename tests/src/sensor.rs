//! The real `sensor` binary, started as a child process and attached to the kernel.

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::{
    metrics::{http_get, Samples},
    util::{free_port, scratch_dir, wait_for},
};

/// `$SENSOR_BIN`, or the workspace's debug build (`cargo xtask test` builds it first).
pub fn sensor_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("SENSOR_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sensor"),
    };
    if !path.exists() {
        bail!("{} missing: build it with `cargo build -p sensor`", path.display());
    }
    Ok(path)
}

pub struct Sensor {
    child: Child,
    pub findings_path: PathBuf,
    pub metrics_addr: SocketAddr,
    stderr_path: PathBuf,
}

impl Sensor {
    /// Start `sensor run` with `args` (plus its own findings file and metrics port) and wait
    /// until /healthz says the programs are attached. One finding line per session
    /// (`--findings-every-session`): most tests check each session's own evidence.
    pub fn start(args: &[&str]) -> anyhow::Result<Sensor> {
        Self::launch(&[], args, None)
    }

    /// Like `start`, with the sensor's default aggregation (sessions of one identity after
    /// the first counted into one summary line per `window`).
    pub fn start_aggregating(window: &str, args: &[&str]) -> anyhow::Result<Sensor> {
        let mut all = vec!["--repeat-window", window];
        all.extend_from_slice(args);
        Self::launch(&[], &all, None)
    }

    /// Like `start`, run through `wrapper` (e.g. setpriv and its options) and, if given,
    /// with findings at `findings_path` instead of a fresh scratch file. One line per session
    /// unless `args` set a `--repeat-window`.
    pub fn launch(
        wrapper: &[&str],
        args: &[&str],
        findings_path: Option<PathBuf>,
    ) -> anyhow::Result<Sensor> {
        let dir = scratch_dir("sensor");
        let findings_path = findings_path.unwrap_or_else(|| dir.join("findings.jsonl"));
        let stderr_path = dir.join("sensor.log");
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(sensor_binary()?);
                c
            }
            None => Command::new(sensor_binary()?),
        };
        command.arg("run").args(args);
        if !args.contains(&"--repeat-window") {
            command.arg("--findings-every-session");
        }
        let child = command
            .arg("--findings")
            .arg(&findings_path)
            .arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_path)?)
            .spawn()
            .context("starting the sensor")?;
        let mut sensor = Sensor { child, findings_path, metrics_addr, stderr_path };
        let ready = wait_for("the sensor to attach", Duration::from_secs(30), || {
            if let Ok(Some(status)) = sensor.child.try_wait() {
                return Some(Err(status));
            }
            matches!(http_get(metrics_addr, "/healthz"), Ok((200, _))).then_some(Ok(()))
        });
        match ready {
            Ok(Ok(())) => Ok(sensor),
            Ok(Err(status)) => bail!("sensor exited early ({status}): {}", sensor.stderr()),
            Err(err) => Err(err.context(sensor.stderr())),
        }
    }

    /// Every finding line written so far, parsed.
    pub fn findings(&self) -> anyhow::Result<Vec<Value>> {
        let text = fs::read_to_string(&self.findings_path).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad finding line {l:?}")))
            .collect()
    }

    /// Findings whose process is `pid`.
    pub fn findings_of(&self, pid: u32) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .findings()?
            .into_iter()
            .filter(|f| f["process"]["pid"].as_u64() == Some(u64::from(pid)))
            .collect())
    }

    /// Wait until at least `n` findings of `pid` are written.
    pub fn wait_findings_of(&self, pid: u32, n: usize) -> anyhow::Result<Vec<Value>> {
        wait_for(&format!("{n} finding(s) of pid {pid}"), Duration::from_secs(10), || {
            self.findings_of(pid).ok().filter(|f| f.len() >= n)
        })
        .with_context(|| format!("findings so far: {:?}", self.findings()))
    }

    /// Wait until more than `n` OpenSSL copies carry the TLS uprobes (a library a client
    /// started after the sensor brought along is found by the next rescan).
    pub fn wait_tls_libraries_probed(&self, n: f64) -> anyhow::Result<f64> {
        wait_for(&format!("more than {n} OpenSSL copies probed"), Duration::from_secs(10), || {
            let probed = self.metrics().ok()?.get("pgwire_sensor_tls_libraries_probed");
            (probed > n).then_some(probed)
        })
    }

    pub fn metrics(&self) -> anyhow::Result<Samples> {
        let (code, body) = http_get(self.metrics_addr, "/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Samples::parse(&body)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up; the kernel must detach on its own.
    pub fn kill9(mut self) -> anyhow::Result<ExitStatus> {
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// Send a signal (SIGHUP to reopen the findings file, say).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Wait for the started process (or its wrapper) to exit by itself.
    pub fn wait_exit(mut self) -> anyhow::Result<ExitStatus> {
        wait_for("the sensor to exit", Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        })
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_for("the sensor to exit", Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
