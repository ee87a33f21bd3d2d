//! A real PostgreSQL 15 server (Debian's `postgresql-15`), started by the test as the
//! `postgres` OS user in a scratch directory, optionally with TLS.

use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};

use crate::{
    certs::{self, ServerCerts},
    util::{scratch_dir, wait_for},
};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const DB_PORT: u16 = 26257;

pub struct PgOptions {
    pub name: &'static str,
    /// Addresses to listen on (`listen_addresses`).
    pub listen: Vec<String>,
    pub port: u16,
    pub ssl: bool,
    /// pg_hba.conf lines; the default trusts loopback clients.
    pub hba: Vec<String>,
    /// Extra postgresql.conf lines.
    pub conf: Vec<String>,
    /// Extra environment for the server process (e.g. KRB5_CONFIG).
    pub env: Vec<(String, String)>,
    /// Files to copy into the data directory, owned by postgres, mode 0600 (e.g. a keytab).
    pub files: Vec<PathBuf>,
}

impl PgOptions {
    /// 127.0.0.1:26257, TLS on, trust auth on loopback.
    pub fn tls(name: &'static str) -> Self {
        PgOptions {
            name,
            listen: vec!["127.0.0.1".into()],
            port: DB_PORT,
            ssl: true,
            hba: vec![
                "local all all trust".into(),
                "host all all 127.0.0.1/32 trust".into(),
                "host all all ::1/128 trust".into(),
            ],
            conf: Vec::new(),
            env: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Like [`PgOptions::tls`] but with `ssl = off`: the server answers `N` to SSLRequest.
    pub fn no_tls(name: &'static str) -> Self {
        PgOptions { ssl: false, ..PgOptions::tls(name) }
    }
}

pub struct PgServer {
    pub dir: PathBuf,
    pub socket_dir: PathBuf,
    pub host: String,
    pub port: u16,
    pub certs: Option<ServerCerts>,
    child: Child,
}

/// uid and gid of the `postgres` OS user (created by the postgresql package).
fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd")?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .context("no postgres user: run scripts/bootstrap.sh --test-deps")?;
    let f: Vec<&str> = line.split(':').collect();
    Ok((f[2].parse()?, f[3].parse()?))
}

fn chown(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

impl PgServer {
    pub fn start(opts: PgOptions) -> anyhow::Result<PgServer> {
        let bin = Path::new(PG_BIN);
        if !bin.join("postgres").exists() {
            bail!("{PG_BIN}/postgres missing: run scripts/bootstrap.sh --test-deps");
        }
        let (uid, gid) = postgres_ids()?;
        let dir = scratch_dir(opts.name);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let data = dir.join("data");
        let socket_dir = dir.join("sock");
        for d in [&data, &socket_dir] {
            fs::create_dir_all(d)?;
            chown(d, uid, gid)?;
        }
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))?;

        let out = Command::new(bin.join("initdb"))
            .args(["-D", data.to_str().unwrap(), "-U", "postgres", "-A", "trust", "--no-sync"])
            .uid(uid)
            .gid(gid)
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }

        let mut conf = format!(
            "\nlisten_addresses = '{}'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_connections = 50\nlog_connections = on\n",
            opts.listen.join(","),
            opts.port,
            socket_dir.display()
        );
        let certs = if opts.ssl {
            let c = certs::generate(&dir)?;
            for file in [&c.cert, &c.key, &c.ca_cert] {
                let target = data.join(file.file_name().unwrap());
                fs::copy(file, &target)?;
                chown(&target, uid, gid)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(0o600))?;
            }
            conf.push_str(
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                 ssl_ca_file = 'ca.crt'\n",
            );
            Some(c)
        } else {
            conf.push_str("ssl = off\n");
            None
        };
        for file in &opts.files {
            let target = data.join(file.file_name().context("a file name")?);
            fs::copy(file, &target)?;
            chown(&target, uid, gid)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o600))?;
        }
        for line in &opts.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf)?;
        fs::write(data.join("pg_hba.conf"), opts.hba.join("\n") + "\n")?;

        let log = fs::File::create(dir.join("postgres.log"))?;
        let child = Command::new(bin.join("postgres"))
            .args(["-D", data.to_str().unwrap()])
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        let server = PgServer {
            dir,
            socket_dir,
            host: opts.listen[0].clone(),
            port: opts.port,
            certs,
            child,
        };
        wait_for("postgres to accept connections", Duration::from_secs(30), || {
            Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", server.socket_dir.to_str().unwrap()])
                .args(["-p", &server.port.to_string()])
                .status()
                .ok()
                .filter(|s| s.success())
        })
        .with_context(|| server.log())?;
        Ok(server)
    }

    /// Run SQL as the superuser over the Unix socket (invisible to the TCP sensor).
    pub fn admin_sql(&self, sql: &str) -> anyhow::Result<String> {
        let out = Command::new("psql")
            .args(["-h", self.socket_dir.to_str().unwrap(), "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .output()?;
        if !out.status.success() {
            bail!("admin SQL {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's "fast" shutdown.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let stopped = wait_for("postgres to stop", Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten()
        });
        if stopped.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
