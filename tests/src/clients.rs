//! Real database clients, run as child processes so their pids are known.

use std::process::Command;

use anyhow::{bail, Context};

use crate::pg::PgServer;

/// One finished client run: the pid the sensor should attribute the session to, and what
/// the client printed.
#[derive(Debug)]
pub struct ClientRun {
    pub pid: u32,
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

/// Run `psql` over TCP with the given libpq settings (e.g. `sslmode=disable`), asking the
/// server whether the session uses TLS: stdout is `t` or `f` on success.
pub fn psql(pg: &PgServer, settings: &str, user: &str, dbname: &str) -> anyhow::Result<ClientRun> {
    psql_at(&pg.host, pg.port, settings, user, dbname, None)
}

/// [`psql`] against any address, with an optional password (passed as PGPASSWORD, so it is
/// in psql's environment, never on a command line).
pub fn psql_at(
    host: &str,
    port: u16,
    settings: &str,
    user: &str,
    dbname: &str,
    password: Option<&str>,
) -> anyhow::Result<ClientRun> {
    let conninfo = format!("host={host} port={port} user={user} dbname={dbname} {settings}");
    let mut cmd = Command::new("psql");
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    } else {
        cmd.env_remove("PGPASSWORD");
    }
    let child = cmd
        .args([&conninfo, "-X", "-At", "-c"])
        .arg("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        // No ~/.pgpass, service files or environment defaults leak in from the host.
        .env_remove("PGSSLMODE")
        .env_remove("PGGSSENCMODE")
        .env("PGPASSFILE", "/dev/null")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running psql")?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    Ok(ClientRun {
        pid,
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        success: out.status.success(),
    })
}

impl ClientRun {
    pub fn expect_success(self) -> anyhow::Result<Self> {
        if !self.success {
            bail!("client pid {} failed: {}", self.pid, self.stderr);
        }
        Ok(self)
    }
}
