//! Issue 3 end to end: what the server answers and what the client does next, and the
//! authentication exchange on plaintext sessions, with real servers and real clients.

use serde_json::Value;
use tests::{
    clients::psql_at,
    memscan::process_memory_contains,
    metrics::http_get,
    mitm::Mitm,
    pg::{PgOptions, PgServer},
    sensor::Sensor,
    serial,
};

const CLEAR_PASSWORD: &str = "Cl34r-S3cret-pw-7f3a";
const MD5_PASSWORD: &str = "Md5-S3cret-pw-91bc";

fn only_finding(sensor: &Sensor, pid: u32) -> anyhow::Result<Value> {
    let found = sensor.wait_findings_of(pid, 1)?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let found_now = sensor.findings_of(pid)?;
    assert_eq!(found_now.len(), 1, "one session, one finding: {found_now:#?}");
    Ok(found.into_iter().next().unwrap())
}

#[test]
fn server_without_tls_downgrades_prefer_refuses_require_and_exposes_passwords() -> anyhow::Result<()>
{
    let _serial = serial();
    let mut opts = PgOptions::no_tls("e2e-downgrade");
    opts.hba = vec![
        "local all all trust".into(),
        "host all clear_user 127.0.0.1/32 password".into(),
        "host all md5_user 127.0.0.1/32 md5".into(),
        "host all all 127.0.0.1/32 trust".into(),
    ];
    // Store an MD5 verifier so the md5 hba method really does MD5 (not SCRAM).
    opts.conf = vec!["password_encryption = md5".into()];
    let pg = PgServer::start(opts)?;
    pg.admin_sql(&format!("CREATE ROLE clear_user LOGIN PASSWORD '{CLEAR_PASSWORD}'"))?;
    pg.admin_sql(&format!("CREATE ROLE md5_user LOGIN PASSWORD '{MD5_PASSWORD}'"))?;
    let sensor = Sensor::start(&[])?;
    let before = sensor.metrics()?;
    let (host, port) = (pg.host.as_str(), pg.port);

    // sslmode=prefer: asks, hears N, carries on in plaintext.
    let prefer =
        psql_at(host, port, "sslmode=prefer gssencmode=disable", "postgres", "postgres", None)?
            .expect_success()?;
    assert_eq!(prefer.stdout, "f");
    let f = only_finding(&sensor, prefer.pid)?;
    assert_eq!((&f["verdict"], &f["severity"]), (&"downgraded".into(), &"high".into()));
    assert_eq!(f["negotiation"]["requested"], serde_json::json!(["ssl"]));
    assert_eq!(f["negotiation"]["server_answers"], "N");
    assert_eq!(f["startup"]["user"], "postgres");
    assert_eq!(f["auth"]["method"], "trust");
    assert_eq!(f["process"]["comm"], "psql");

    // sslmode=require: asks, hears N, gives up.
    let require =
        psql_at(host, port, "sslmode=require gssencmode=disable", "postgres", "postgres", None)?;
    assert!(!require.success && require.stderr.contains("SSL"), "{}", require.stderr);
    let f = only_finding(&sensor, require.pid)?;
    assert_eq!((&f["verdict"], &f["severity"]), (&"refused".into(), &"medium".into()));
    assert_eq!(f["negotiation"]["server_answers"], "N");
    assert!(f.get("startup").is_none(), "no startup message was sent");

    // A successful password login by `user`, and its one finding.
    let login = |settings: &str, user: &str, password: &str| -> anyhow::Result<Value> {
        let run = psql_at(host, port, settings, user, "postgres", Some(password))?;
        only_finding(&sensor, run.expect_success()?.pid)
    };

    // pg_hba `password`: the password itself crosses in clear.
    let f = login("sslmode=disable gssencmode=disable", "clear_user", CLEAR_PASSWORD)?;
    assert_eq!((&f["verdict"], &f["severity"]), (&"plaintext".into(), &"critical".into()));
    assert_eq!(f["auth"], serde_json::json!({"method": "cleartext", "password_sent": true}));
    assert_eq!(f["startup"]["user"], "clear_user");

    // pg_hba `md5` after a downgrade: a replayable hash crosses in clear.
    let f = login("sslmode=prefer gssencmode=disable", "md5_user", MD5_PASSWORD)?;
    assert_eq!((&f["verdict"], &f["severity"]), (&"downgraded".into(), &"high".into()));
    assert_eq!(f["auth"], serde_json::json!({"method": "md5", "password_sent": true}));

    let after = sensor.metrics()?;
    let delta = |v: &str| after.sessions(v, "client") - before.sessions(v, "client");
    assert_eq!(delta("downgraded"), 2.0);
    assert_eq!(delta("refused"), 1.0);
    assert_eq!(delta("plaintext"), 1.0);
    assert_eq!(delta("tls"), 0.0);

    // The passwords appear nowhere: findings, logs, metrics, the agent's memory.
    let (_, metrics_text) = http_get(sensor.metrics_addr, "/metrics")?;
    let findings_text = std::fs::read_to_string(&sensor.findings_path)?;
    for secret in [CLEAR_PASSWORD, MD5_PASSWORD] {
        assert!(!findings_text.contains(secret));
        assert!(!sensor.stderr().contains(secret));
        assert!(!metrics_text.contains(secret));
        assert!(
            !process_memory_contains(sensor.pid(), secret.as_bytes())?,
            "the password must never be in the sensor's memory"
        );
    }
    // The scan itself works: a metric name the agent built on its heap is found.
    assert!(process_memory_contains(sensor.pid(), b"pgwire_sensor_findings_total")?);
    Ok(())
}

#[test]
fn man_in_the_middle_answering_n_downgrades_a_prefer_client() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::tls("e2e-mitm"))?;
    let upstream = format!("{}:{}", pg.host, pg.port).parse()?;
    // The attacker sits on another loopback address, on the database port.
    let mitm = Mitm::start("127.0.0.2:26257", upstream)?;
    let sensor = Sensor::start(&[])?;

    // Straight to the server, sslmode=prefer gets TLS...
    let direct = psql_at(
        &pg.host,
        pg.port,
        "sslmode=prefer gssencmode=disable",
        "postgres",
        "postgres",
        None,
    )?
    .expect_success()?;
    assert_eq!(direct.stdout, "t");
    // ...through the man in the middle it silently does not.
    let victim = psql_at(
        &mitm.addr.ip().to_string(),
        mitm.addr.port(),
        "sslmode=prefer gssencmode=disable",
        "postgres",
        "postgres",
        None,
    )?
    .expect_success()?;
    assert_eq!(victim.stdout, "f", "the server confirms the relayed session is plaintext");

    let f = only_finding(&sensor, victim.pid)?;
    assert_eq!(f["verdict"], "downgraded");
    assert_eq!(f["process"]["pid"], victim.pid);
    assert_eq!(f["process"]["comm"], "psql");
    assert_eq!(f["dst"]["ip"], "127.0.0.2");
    assert_eq!(f["negotiation"]["server_answers"], "N");
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Straight to the server the session is TLS (from a client that does not verify: the
    // TLS-terminating attacker of tls_verification.rs would read it).
    let direct_findings = sensor.findings_of(direct.pid)?;
    assert_eq!(direct_findings.len(), 1, "{direct_findings:#?}");
    assert_eq!(direct_findings[0]["verdict"], "tls_unverified", "the direct session used TLS");
    Ok(())
}

#[test]
fn kerberos_gss_encrypted_session_is_counted_gssenc_without_a_finding() -> anyhow::Result<()> {
    use std::process::Command;
    use tests::kerberos::{Realm, CLIENT};
    let _serial = serial();
    let realm = Realm::start()?;
    let mut opts = PgOptions::tls("e2e-gss");
    // pg_hba matches the client's source address: 127.0.0.1 on loopback.
    opts.hba = vec![
        "local all all trust".into(),
        "hostgssenc all all 127.0.0.1/32 gss include_realm=0".into(),
        "host all all 127.0.0.1/32 trust".into(),
    ];
    opts.conf = vec!["krb_server_keyfile = 'postgres.keytab'".into()];
    opts.files = vec![realm.keytab.clone()];
    opts.env = vec![("KRB5_CONFIG".into(), realm.krb5_conf.display().to_string())];
    let pg = PgServer::start(opts)?;
    pg.admin_sql(&format!("CREATE ROLE {CLIENT} LOGIN"))?;
    let sensor = Sensor::start(&[])?;
    let before = sensor.metrics()?;

    let run = tests::clients::run_client(
        Command::new("psql")
            .arg(format!(
                "host=localhost hostaddr=127.0.0.1 port={} user={CLIENT} dbname=postgres \
                 gssencmode=require sslmode=disable",
                pg.port
            ))
            .args(["-X", "-At", "-c"])
            .arg("select encrypted from pg_stat_gssapi where pid = pg_backend_pid()")
            .env("KRB5_CONFIG", &realm.krb5_conf)
            .env("KRB5CCNAME", realm.ccache_name()),
    )?;
    assert!(run.success, "GSS session failed: {}\n{}", run.stderr, pg.log());
    assert_eq!(run.stdout, "t", "the server says GSS-encrypted");
    let pid = run.pid;

    std::thread::sleep(std::time::Duration::from_millis(300));
    let after = sensor.metrics()?;
    assert_eq!(after.sessions("gssenc", "client") - before.sessions("gssenc", "client"), 1.0);
    assert!(sensor.findings_of(pid)?.is_empty(), "an encrypted session gets no finding");
    Ok(())
}
