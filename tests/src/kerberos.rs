//! A throwaway MIT Kerberos realm on loopback (Debian's krb5-kdc), for real GSSAPI-encrypted
//! PostgreSQL sessions: a KDC on a free port, a client principal with a ticket in a private
//! cache, and a keytab for `postgres/localhost`.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};

use crate::util::{free_port, scratch_dir, wait_for};

pub const REALM: &str = "PGSENSOR.TEST";
pub const CLIENT: &str = "gssclient";
const CLIENT_PASSWORD: &str = "kerberos-test-only";

pub struct Realm {
    kdc: Child,
    pub krb5_conf: PathBuf,
    pub ccache: PathBuf,
    pub keytab: PathBuf,
    dir: PathBuf,
}

fn run(cmd: &mut Command, input: Option<&str>) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("{shown} (krb5 tools come from scripts/bootstrap.sh --test-deps)")
        })?;
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Realm {
    pub fn start() -> anyhow::Result<Realm> {
        let dir = scratch_dir("krb5");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let port = free_port();
        let krb5_conf = dir.join("krb5.conf");
        let kdc_conf = dir.join("kdc.conf");
        fs::write(
            &krb5_conf,
            format!(
                "[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n \
                 dns_lookup_realm = false\n rdns = false\n udp_preference_limit = 1\n\
                 [realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{port}\n }}\n\
                 [domain_realm]\n localhost = {REALM}\n"
            ),
        )?;
        fs::write(
            &kdc_conf,
            format!(
                "[kdcdefaults]\n kdc_ports = {port}\n kdc_tcp_ports = {port}\n\
                 [realms]\n {REALM} = {{\n  database_name = {d}/principal\n  \
                 key_stash_file = {d}/stash\n  acl_file = {d}/kadm5.acl\n }}\n\
                 [logging]\n kdc = FILE:{d}/kdc.log\n",
                d = dir.display()
            ),
        )?;
        let env = |cmd: &mut Command| {
            cmd.env("KRB5_CONFIG", &krb5_conf).env("KRB5_KDC_PROFILE", &kdc_conf);
        };
        let mut create = Command::new("kdb5_util");
        env(&mut create);
        run(create.args(["create", "-s", "-r", REALM, "-P", "master-test-only"]), None)?;
        let keytab = dir.join("postgres.keytab");
        for query in [
            format!("addprinc -pw {CLIENT_PASSWORD} {CLIENT}@{REALM}"),
            format!("addprinc -randkey postgres/localhost@{REALM}"),
            format!("ktadd -k {} postgres/localhost@{REALM}", keytab.display()),
        ] {
            let mut k = Command::new("kadmin.local");
            env(&mut k);
            run(k.args(["-r", REALM, "-q", &query]), None)?;
        }
        let mut kdc = Command::new("krb5kdc");
        env(&mut kdc);
        let kdc =
            kdc.args(["-n", "-r", REALM]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let ccache = dir.join("ccache");
        let realm = Realm { kdc, krb5_conf, ccache, keytab, dir };
        wait_for("a Kerberos ticket from the test KDC", Duration::from_secs(15), || {
            let mut kinit = Command::new("kinit");
            kinit.env("KRB5_CONFIG", &realm.krb5_conf).env("KRB5CCNAME", realm.ccache_name());
            run(kinit.arg(format!("{CLIENT}@{REALM}")), Some(&format!("{CLIENT_PASSWORD}\n"))).ok()
        })
        .with_context(|| fs::read_to_string(realm.dir.join("kdc.log")).unwrap_or_default())?;
        Ok(realm)
    }

    pub fn ccache_name(&self) -> String {
        format!("FILE:{}", self.ccache.display())
    }
}

impl Drop for Realm {
    fn drop(&mut self) {
        let _ = self.kdc.kill();
        let _ = self.kdc.wait();
    }
}
