//! The capture peer: what the usual way of watching the wire costs, for comparison. tshark
//! captures every packet of the watched port on loopback while a workload runs with the
//! sensor detached.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// The watched port's packets, both directions: what the sensor watches.
const FILTER: &str = "tcp port 26257";

/// Fails, naming the package, when tshark cannot run.
pub fn check_installed() -> anyhow::Result<()> {
    let ran = Command::new("tshark")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match ran {
        Ok(status) if status.success() => Ok(()),
        _ => bail!(
            "--capture-peer runs tshark, which is not installed: install the Debian package \
             `tshark` (scripts/bootstrap.sh --test-deps does)"
        ),
    }
}

/// A running capture; killed if dropped without `stop`.
pub struct Capture {
    child: Child,
    /// tshark's stderr, line by line: "Capturing on" when it starts, the counts when it stops.
    stderr: mpsc::Receiver<String>,
}

/// What a capture saw, from tshark's own counts.
pub struct Counts {
    pub captured: u64,
    pub dropped: u64,
}

impl Capture {
    /// Starts tshark and returns once it says it is capturing. Packets go to /dev/null:
    /// dumpcap still copies each one out of the kernel and writes it, which is the cost of
    /// a capture; only the disk is left out.
    pub fn start() -> anyhow::Result<Capture> {
        // -q: no running count on stderr, only "Capturing on" and the final counts.
        let mut child = Command::new("tshark")
            .args(["-i", "lo", "-f", FILTER, "-w", "/dev/null", "-q"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tshark (Debian package `tshark`)")?;
        let out = child.stderr.take().context("no tshark stderr")?;
        let (tx, stderr) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let capture = Capture { child, stderr };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut said = Vec::new();
        while let Ok(line) =
            capture.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.starts_with("Capturing on") {
                return Ok(capture);
            }
            said.push(line);
        }
        bail!("tshark did not start capturing within 10 s; it said:\n{}", said.join("\n"))
    }

    /// Stops tshark as a terminal's ^C does, after which it prints its counts.
    pub fn stop(mut self) -> anyhow::Result<Counts> {
        Command::new("kill").args(["-INT", &self.child.id().to_string()]).status()?;
        let status = self.child.wait()?;
        let mut said = Vec::new();
        // The reader ends at tshark's exit; the deadline covers a dumpcap left holding stderr.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(line) =
            self.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            said.push(line);
        }
        // "2006 packets captured", and "N packets dropped ..." when the kernel's buffer
        // overflowed.
        let count = |word: &str| {
            said.iter()
                .filter(|l| l.contains(word))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>()
        };
        anyhow::ensure!(
            status.success() && said.iter().any(|l| l.contains("captured")),
            "tshark exited with {status} without its packet count; it said:\n{}",
            said.join("\n")
        );
        Ok(Counts { captured: count("captured"), dropped: count("dropped") })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
