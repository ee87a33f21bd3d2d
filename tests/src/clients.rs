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
    run_client(
        cmd.args([&conninfo, "-X", "-At", "-c"])
            // pg_sleep keeps psql alive 200 ms after its session started, so the agent
            // reads its /proc entry (exe, command line) before it exits even on a loaded
            // CI machine; without it the docs' examples lost `exe` once in a CI run.
            .arg("select ssl from pg_stat_ssl, pg_sleep(0.2) where pid = pg_backend_pid()")
            // No ~/.pgpass, service files or environment defaults leak in from the host.
            .env_remove("PGSSLMODE")
            .env_remove("PGGSSENCMODE")
            .env("PGPASSFILE", "/dev/null"),
    )
}

/// Run a client to completion with its output captured, remembering its pid (the process
/// the sensor must attribute the session to; wrappers like `ip netns exec` or `sh -c exec`
/// keep the pid).
pub fn run_client(cmd: &mut Command) -> anyhow::Result<ClientRun> {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {shown}"))?;
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

/// tests/clients: the driver scripts, the Python venv and node-postgres.
pub fn clients_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// What a driver script reported: its own pid, and whether its query worked.
#[derive(Debug)]
pub struct DriverRun {
    pub pid: u32,
    pub ok: bool,
    pub error: Option<String>,
}

/// Run a driver script that prints one JSON line `{"pid", "ok", "error"}`.
pub fn run_driver(cmd: &mut Command) -> anyhow::Result<DriverRun> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).with_context(|| {
        format!("{shown} printed no result: {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    })?;
    Ok(DriverRun {
        pid: v["pid"].as_u64().context("pid")? as u32,
        ok: v["ok"].as_bool().unwrap_or(false),
        error: v["error"].as_str().map(str::to_string),
    })
}

/// How long a Python driver waits between importing its module and connecting, as a
/// long-running app does: longer than the sensor's library rescan, so a wheel's own OpenSSL
/// (psycopg2-binary, psycopg[binary]) is probed before the first handshake.
pub const PYTHON_SETTLE: &str = "1.5";

/// A Python driver (psycopg2, psycopg3, asyncpg, pg8000) from the project's venv.
pub fn python_driver(driver: &str, mode: &str, pg: &PgServer) -> anyhow::Result<DriverRun> {
    let dir = clients_dir();
    let ca = pg.certs.as_ref().map(|c| c.ca_cert.display().to_string()).unwrap_or_default();
    run_driver(
        Command::new(dir.join(".venv/bin/python"))
            .env("PGWIRE_TEST_SETTLE_SECONDS", PYTHON_SETTLE)
            .arg(dir.join("py_driver.py"))
            .args([driver, mode, &pg.host, &pg.port.to_string(), &ca])
            .env_remove("PGSSLMODE"),
    )
}

/// node-postgres (`pg`), `mode` disable or require.
pub fn node_driver(mode: &str, pg: &PgServer) -> anyhow::Result<DriverRun> {
    let dir = clients_dir().join("node");
    let ca = pg.certs.as_ref().map(|c| c.ca_cert.display().to_string()).unwrap_or_default();
    run_driver(Command::new("node").current_dir(&dir).arg("driver.js").args([
        mode,
        &pg.host,
        &pg.port.to_string(),
        &ca,
    ]))
}

/// pgjdbc (Debian's libpostgresql-jdbc-java) with a JDBC URL's query string.
pub fn jdbc_driver(params: &str, pg: &PgServer) -> anyhow::Result<DriverRun> {
    let url = format!("jdbc:postgresql://{}:{}/postgres?{params}", pg.host, pg.port);
    run_driver(
        Command::new("java")
            .args(["-cp", "/usr/share/java/postgresql.jar"])
            .arg(clients_dir().join("JdbcDriver.java"))
            .arg(url),
    )
}

/// The project's story as a real app: tests/clients/flask_app.py (Flask + psycopg2, one
/// database connection per request) serving on a free port. Killed when dropped.
pub struct FlaskApp {
    child: std::process::Child,
    pub port: u16,
}

impl FlaskApp {
    /// Start it against `pg` (whose CA, if any, the verify-full route uses) and wait until it
    /// listens.
    pub fn start(pg: &PgServer) -> anyhow::Result<FlaskApp> {
        let dir = clients_dir();
        let port = crate::util::free_port();
        let ca = pg.certs.as_ref().map(|c| c.ca_cert.display().to_string()).unwrap_or_default();
        let child = Command::new(dir.join(".venv/bin/python"))
            .arg(dir.join("flask_app.py"))
            .args([&port.to_string(), &pg.host, &pg.port.to_string(), &ca])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting the Flask app")?;
        let app = FlaskApp { child, port };
        crate::util::wait_for(
            "the Flask app to listen",
            std::time::Duration::from_secs(30),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
        )?;
        Ok(app)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET `path`; the response body (a 200 is required).
    pub fn get(&self, path: &str) -> anyhow::Result<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let (code, body) = crate::metrics::http_get(addr, path)?;
        anyhow::ensure!(code == 200, "GET {path}: HTTP {code}: {body}");
        Ok(body)
    }
}

impl Drop for FlaskApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
