//! Issue 13: encrypted is not authenticated. Real clients against the real PostgreSQL with
//! TLS, directly and through a real TLS-terminating man in the middle (its own certificate,
//! from no CA the clients know): the sensor must say which clients do not verify the server
//! (`tls_unverified`, learned from their OpenSSL by uprobes), which refuse a forged server
//! (`tls_rejected`, from the alert on the wire), and never call a verifying client
//! unverified.

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;
use tests::{
    clients::{psql_at, ClientRun},
    metrics::Samples,
    mitm::TlsMitm,
    pg::{PgOptions, PgServer},
    sensor::Sensor,
    serial,
};

/// Where the man in the middle listens: another loopback address, on the database port.
const MITM_LISTEN: &str = "127.0.0.2:26257";

/// Client-side session counts by verdict and by TLS verification, as the sensor exports.
fn counts(sensor: &Sensor) -> anyhow::Result<BTreeMap<String, f64>> {
    let m: Samples = sensor.metrics()?;
    let mut all = BTreeMap::new();
    for s in m.0.iter().filter(|s| s.labels.get("role").map(String::as_str) == Some("client")) {
        let key = match s.name.as_str() {
            "pgwire_sensor_sessions_total" => format!("verdict={}", s.labels["verdict"]),
            "pgwire_sensor_tls_sessions_total" => {
                format!("verification={}", s.labels["verification"])
            }
            _ => continue,
        };
        *all.entry(key).or_insert(0.0) += s.value;
    }
    Ok(all)
}

/// What moved between two readings (zeros left out).
fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

fn expected(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The findings of `pid` once the session's are in (or none, after a grace period).
fn findings_of(sensor: &Sensor, pid: u32, want: usize) -> anyhow::Result<Vec<Value>> {
    if want > 0 {
        sensor.wait_findings_of(pid, want)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    sensor.findings_of(pid)
}

fn psql_to(host: &str, settings: &str) -> anyhow::Result<ClientRun> {
    psql_at(host, 26257, &format!("{settings} gssencmode=disable"), "postgres", "postgres", None)
}

struct Setup {
    _serial: std::sync::MutexGuard<'static, ()>,
    pg: PgServer,
    mitm: TlsMitm,
    sensor: Sensor,
    ca: String,
}

fn arranged(name: &'static str) -> anyhow::Result<Setup> {
    let serial = serial();
    let pg = PgServer::start(PgOptions::tls(name))?;
    let upstream = format!("{}:{}", pg.host, pg.port).parse()?;
    let mitm = TlsMitm::start(MITM_LISTEN, upstream)?;
    let sensor = Sensor::start(&[])?;
    let ca = pg.certs.as_ref().unwrap().ca_cert.display().to_string();
    Ok(Setup { _serial: serial, pg, mitm, sensor, ca })
}

#[test]
fn psql_every_sslmode_direct_and_through_a_tls_terminating_man_in_the_middle() -> anyhow::Result<()>
{
    let s = arranged("e2e-tls-verify-psql")?;
    assert!(
        !std::path::Path::new(&format!("{}/.postgresql/root.crt", std::env::var("HOME")?)).exists(),
        "a root.crt in $HOME would make every libpq client verify"
    );
    let sensor = &s.sensor;
    let direct = &s.pg.host;
    let ca = &s.ca;
    // Every psql below is a process started after the sensor, judged from its first (and
    // only) connection: the system's OpenSSL is probed at start, before any client maps it.

    // Clients that encrypt but accept any certificate: unverified, reported.
    for mode in ["require", "prefer"] {
        let before = counts(sensor)?;
        let run = psql_to(direct, &format!("sslmode={mode}"))?.expect_success()?;
        assert_eq!(run.stdout, "t", "sslmode={mode}: TLS, says the server");
        let found = findings_of(sensor, run.pid, 1)?;
        assert_eq!(found.len(), 1, "sslmode={mode}: {found:#?}");
        let f = &found[0];
        assert_eq!(f["verdict"], "tls_unverified", "sslmode={mode}: {f}");
        assert_eq!(f["severity"], "medium");
        assert_eq!(f["tls"]["verification"], "unverified");
        assert!(f["tls"].get("alert").is_none());
        assert_eq!(f["process"]["comm"], "psql");
        assert_eq!(f["negotiation"]["server_answers"], "S");
        assert!(f.get("startup").is_none(), "nothing inside TLS is read");
        assert_eq!(
            moved(&before, &counts(sensor)?),
            expected(&[("verdict=tls_unverified", 1.0), ("verification=unverified", 1.0)]),
            "sslmode={mode}"
        );
    }

    // Clients that check the chain: plain `tls`, counted as verified, no finding. libpq
    // verifies in every TLS mode once it has a root file, `require` included.
    for settings in [
        format!("sslmode=require sslrootcert={ca}"),
        format!("sslmode=verify-ca sslrootcert={ca}"),
        format!("sslmode=verify-full sslrootcert={ca}"),
    ] {
        let before = counts(sensor)?;
        let run = psql_to(direct, &settings)?.expect_success()?;
        assert_eq!(run.stdout, "t");
        assert!(findings_of(sensor, run.pid, 0)?.is_empty(), "{settings}: verified, no finding");
        assert_eq!(
            moved(&before, &counts(sensor)?),
            expected(&[("verdict=tls", 1.0), ("verification=verified_chain", 1.0)]),
            "{settings}"
        );
    }

    // `require` with the root file libpq looks for by itself (~/.postgresql/root.crt) and
    // no setting naming it: verified too.
    let home = tests::util::scratch_dir("tls-verify-home");
    std::fs::create_dir_all(home.join(".postgresql"))?;
    std::fs::copy(ca, home.join(".postgresql/root.crt"))?;
    let before = counts(sensor)?;
    let run = tests::clients::run_client(
        std::process::Command::new("psql")
            .arg(format!(
                "host={direct} port=26257 user=postgres dbname=postgres sslmode=require gssencmode=disable"
            ))
            .args(["-X", "-At", "-c", "select 1"])
            .env("HOME", &home)
            .env_remove("PGSSLMODE")
            .env_remove("PGSSLROOTCERT"),
    )?
    .expect_success()?;
    assert!(findings_of(sensor, run.pid, 0)?.is_empty(), "root.crt in HOME: verified");
    assert_eq!(
        moved(&before, &counts(sensor)?),
        expected(&[("verdict=tls", 1.0), ("verification=verified_chain", 1.0)]),
        "sslmode=require with ~/.postgresql/root.crt"
    );

    // Through the man in the middle. An unverifying client logs in: the attacker reads the
    // session. (The attacker's own TLS to the server is a `tls` session of unknown
    // verification: rustls, not OpenSSL.)
    let mitm = s.mitm.addr.ip().to_string();
    let before = counts(sensor)?;
    let victim = psql_to(&mitm, "sslmode=require")?.expect_success()?;
    let found = findings_of(sensor, victim.pid, 1)?;
    assert_eq!(found[0]["verdict"], "tls_unverified", "{:#?}", found);
    assert_eq!(found[0]["dst"]["ip"], "127.0.0.2");
    assert_eq!(
        moved(&before, &counts(sensor)?),
        expected(&[
            ("verdict=tls", 1.0),
            ("verdict=tls_unverified", 1.0),
            ("verification=unknown", 1.0),
            ("verification=unverified", 1.0),
        ])
    );

    // A verifying client refuses the forged certificate, with an alert in clear.
    let before = counts(sensor)?;
    let refused = psql_to(&mitm, &format!("sslmode=verify-full sslrootcert={ca}"))?;
    assert!(!refused.success, "verify-full must refuse the attacker's certificate");
    assert!(refused.stderr.contains("certificate verify failed"), "{}", refused.stderr);
    let found = findings_of(sensor, refused.pid, 1)?;
    assert_eq!(found.len(), 1, "{found:#?}");
    let f = &found[0];
    assert_eq!(f["verdict"], "tls_rejected", "{f}");
    assert_eq!(f["severity"], "high");
    assert_eq!(f["tls"]["verification"], "verified_chain");
    assert_eq!(f["tls"]["alert"]["code"], 48);
    assert_eq!(f["tls"]["alert"]["description"], "unknown_ca");
    assert_eq!(f["process"]["pid"], refused.pid);
    // The attacker had asked the server for TLS and gives up before its ClientHello:
    // `unknown` (no_tls_after_accept), as the sensor sees it from this host.
    assert_eq!(
        moved(&before, &counts(sensor)?),
        expected(&[
            ("verdict=tls_rejected", 1.0),
            ("verdict=unknown", 1.0),
            ("verification=verified_chain", 1.0),
        ]),
    );

    // sslmode=prefer with a root file verifies too, refuses the forged certificate... and
    // then tries again without TLS on a new socket, which the attacker relays: the plaintext
    // session names the rejected one it retries.
    let retrying = psql_to(&mitm, &format!("sslmode=prefer sslrootcert={ca}"))?.expect_success()?;
    assert_eq!(retrying.stdout, "f", "the retry is plaintext, says the server");
    let found = findings_of(sensor, retrying.pid, 2)?;
    assert_eq!(found.len(), 2, "{found:#?}");
    let (rejected, retry) = (&found[0], &found[1]);
    assert_eq!(rejected["verdict"], "tls_rejected", "{rejected}");
    assert_eq!(retry["verdict"], "plaintext", "{retry}");
    assert_eq!(retry["retry_of"]["verdict"], "tls_rejected");
    assert_eq!(retry["retry_of"]["socket_cookie"], rejected["socket_cookie"]);
    assert_eq!(retry["retry_of"]["ts"], rejected["ts"]);
    Ok(())
}

/// A client in its own mount namespace, with its own copies of libpq and OpenSSL on a tmpfs
/// only that namespace sees (as a container brings its own): found through /proc/PID/root
/// once a process there maps them, probed as its own file, and its next client judged.
#[test]
fn a_client_in_its_own_mount_namespace_with_its_own_libpq_and_openssl() -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let s = arranged("e2e-tls-verify-mntns")?;
    let probed = s.sensor.metrics()?.get("pgwire_sensor_tls_libraries_probed");
    let lib = "/usr/lib/x86_64-linux-gnu";
    // A holder maps the copy of OpenSSL and stays 20 s; on a line from us, psql runs there
    // with the same copies and its pid and output come back.
    let script = format!(
        "mount -t tmpfs private /mnt && cp {lib}/libpq.so.5 {lib}/libssl.so.3 {lib}/libcrypto.so.3 /mnt && \
         (LD_LIBRARY_PATH=/mnt python3 -c \"import ctypes, os, time; ctypes.CDLL('/mnt/libssl.so.3'); \
         print('ready', flush=True); os.close(1); time.sleep(20)\" &) && read go && \
         sh -c 'echo $$; LD_LIBRARY_PATH=/mnt exec psql \"host=127.0.0.1 port=26257 user=postgres \
         dbname=postgres sslmode=require gssencmode=disable\" -X -At -c \"select 1\"'"
    );
    let mut child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_remove("PGSSLMODE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line)?;
    assert_eq!(line.trim(), "ready", "unshare --mount and mount need root, as the suite");
    // The next rescan finds the namespace's own OpenSSL and probes it.
    s.sensor.wait_tls_libraries_probed(probed)?;
    writeln!(child.stdin.as_mut().unwrap(), "go")?;
    line.clear();
    out.read_line(&mut line)?;
    let psql_pid: u32 = line.trim().parse()?;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest)?;
    drop(child.stdin.take());
    child.wait()?;
    assert_eq!(rest.trim(), "1", "psql in the namespace ran its query");

    let found = findings_of(&s.sensor, psql_pid, 1)?;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0]["verdict"], "tls_unverified", "{}", found[0]);
    assert_eq!(found[0]["process"]["pid"], psql_pid);
    assert!(
        s.sensor.stderr().contains("/root/mnt/libssl.so.3"),
        "probed through /proc/PID/root as its own file: {}",
        s.sensor.stderr()
    );
    Ok(())
}
