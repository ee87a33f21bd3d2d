//! Real TLS handshakes through the system's OpenSSL (xtask/bench/tls_handshakes.py, Python's
//! ssl module), to measure what the TLS uprobes add per connection: a local OpenSSL server
//! on a watched port and a verifying OpenSSL client, both probed by an attached sensor.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};

use super::loadgen::Burst;

/// Where the OpenSSL server listens: a watched port on its own loopback address.
const ADDR: &str = "127.0.0.4";
const PORT: &str = "26257";

pub struct OpensslPeer {
    server: Child,
    script: PathBuf,
    ca: PathBuf,
}

impl OpensslPeer {
    /// A certificate for `localhost` in `dir`, and the server started on it.
    pub fn start(root: &Path, dir: &Path) -> anyhow::Result<OpensslPeer> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
            .args(["-keyout", "server.key", "-out", "server.crt"])
            .current_dir(dir)
            .output()
            .context("running openssl (scripts/bootstrap.sh --test-deps installs it)")?;
        if !out.status.success() {
            bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
        }
        let script = root.join("xtask/bench/tls_handshakes.py");
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        let mut server = Command::new("python3")
            .arg(&script)
            .args(["server", ADDR, PORT])
            .args([&cert, &key])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the OpenSSL (Python ssl) bench server")?;
        let mut ready = String::new();
        BufReader::new(server.stdout.take().context("no stdout")?).read_line(&mut ready)?;
        if ready.trim() != "ready" {
            let _ = server.kill();
            bail!("the OpenSSL bench server did not start");
        }
        Ok(OpensslPeer { server, script, ca: cert })
    }

    /// Handshakes as fast as `threads` clients go for `duration`.
    pub fn handshakes(&self, threads: usize, duration: Duration) -> anyhow::Result<Burst> {
        let out = Command::new("python3")
            .arg(&self.script)
            .args(["client", ADDR, PORT])
            .arg(&self.ca)
            .args([duration.as_secs_f64().to_string(), threads.to_string()])
            .output()
            .context("running the OpenSSL (Python ssl) bench client")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |key: &str| -> anyhow::Result<f64> {
            let at = text.find(&format!("\"{key}\": ")).context(format!("no {key} in {text}"))?;
            let rest = &text[at + key.len() + 4..];
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            Ok(rest[..end].trim().parse()?)
        };
        Ok(Burst {
            sessions: field("sessions")? as u64 + field("errors")? as u64,
            errors: field("errors")? as u64,
            elapsed: Duration::from_secs_f64(field("seconds")?),
        })
    }
}

impl Drop for OpensslPeer {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
