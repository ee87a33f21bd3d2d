//! Ground truth on the wire: tcpdump recording loopback traffic to the database port.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};

use crate::util::wait_for;

pub struct Tcpdump {
    child: Child,
    pub file: PathBuf,
    log: PathBuf,
}

impl Tcpdump {
    /// Record `filter` on `lo` into `dir/capture.pcap` until stopped.
    pub fn start(dir: &Path, filter: &str) -> anyhow::Result<Tcpdump> {
        let file = dir.join("capture.pcap");
        let log = dir.join("tcpdump.log");
        let child = Command::new("tcpdump")
            .args(["-i", "lo", "-U", "-n", "-s", "0", "-w"])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting tcpdump (installed by scripts/bootstrap.sh --test-deps)")?;
        let t = Tcpdump { child, file, log };
        wait_for("tcpdump to listen", Duration::from_secs(10), || {
            std::fs::read_to_string(&t.log).ok().filter(|l| l.contains("listening on"))
        })?;
        Ok(t)
    }

    /// Stop and flush the capture file.
    pub fn stop(mut self) -> anyhow::Result<PathBuf> {
        std::thread::sleep(Duration::from_millis(300)); // let the last packets land
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("tcpdump failed: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
        Ok(self.file.clone())
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
