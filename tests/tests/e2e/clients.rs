//! Issue 4's client matrix: independent implementations of the wire protocol, each driven
//! against the real PostgreSQL 15 with TLS on 127.0.0.1:26257, each verdict asserted from
//! the sensor's finding (with the driver's own pid) or, for sessions with nothing wrong,
//! from the kernel count and the absence of a finding; each TLS session's verification
//! (issue 13) from the kernel's count by verification and the finding's `tls`.
//! docs/clients.md lists these cells.

use std::time::Duration;

use tests::{
    clients::{jdbc_driver, node_driver, psql, python_driver, DriverRun, FlaskApp},
    pg::{PgOptions, PgServer},
    sensor::Sensor,
    serial,
    util::wait_for,
};

/// What the TLS verification of a client's sessions must be counted as.
fn verified(sensor: &Sensor, verification: &str) -> anyhow::Result<f64> {
    Ok(sensor.metrics()?.sum(
        "pgwire_sensor_tls_sessions_total",
        &[("verification", verification), ("role", "client")],
    ))
}

/// Run one client and check the sensor's verdict for it (and, for TLS verdicts, the
/// verification counted: `verified_chain`, `unverified` or `unknown`).
fn expect(
    sensor: &Sensor,
    what: &str,
    (verdict, verification): (&str, Option<&str>),
    must_connect: bool,
    run: impl FnOnce() -> anyhow::Result<DriverRun>,
) -> anyhow::Result<()> {
    let before = sensor.metrics()?.sessions(verdict, "client");
    let verification_before = verification.map(|v| verified(sensor, v)).transpose()?;
    let earlier = sensor.findings()?.len();
    let client = run()?;
    if must_connect {
        assert!(client.ok, "{what}: the driver failed: {:?}", client.error);
    }
    // Only findings written since this client ran (in-process clients share a pid).
    let new_of_client = || -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(sensor
            .findings()?
            .split_off(earlier)
            .into_iter()
            .filter(|f| f["process"]["pid"] == client.pid)
            .collect())
    };
    let counted_only = ["tls", "tls_direct", "gssenc"].contains(&verdict);
    if counted_only {
        std::thread::sleep(Duration::from_millis(300));
        assert!(new_of_client()?.is_empty(), "{what}: nothing wrong, no finding");
    } else {
        let found = wait_for(&format!("{what}'s finding"), Duration::from_secs(10), || {
            new_of_client().ok().filter(|f| !f.is_empty())
        })?;
        let f = &found[0];
        assert_eq!(f["verdict"], verdict, "{what}: {f}");
        assert_eq!(f["process"]["pid"], client.pid, "{what}: attributed to the driver's process");
        if let Some(v) = verification {
            assert_eq!(f["tls"]["verification"], v, "{what}: {f}");
        }
    }
    let after = sensor.metrics()?.sessions(verdict, "client");
    assert_eq!(after - before, 1.0, "{what}: exactly one {verdict} session counted");
    if let (Some(v), Some(before)) = (verification, verification_before) {
        assert_eq!(verified(sensor, v)? - before, 1.0, "{what}: one session counted {v}");
    }
    eprintln!("matrix: {what} -> {verdict} {}", verification.unwrap_or_default());
    Ok(())
}

/// Verdicts with their verification.
const PLAINTEXT: (&str, Option<&str>) = ("plaintext", None);
const VERIFIED: (&str, Option<&str>) = ("tls", Some("verified_chain"));
const UNVERIFIED: (&str, Option<&str>) = ("tls_unverified", Some("unverified"));
/// TLS whose verification this sensor cannot learn (no OpenSSL, or Node, which checks in
/// JavaScript): never called unverified.
const TLS_UNKNOWN: (&str, Option<&str>) = ("tls", Some("unknown"));

/// Every matrix test's start: the serial guard held (dropped last), a TLS PostgreSQL, the
/// sensor attached.
fn arranged(
    name: &'static str,
) -> anyhow::Result<(std::sync::MutexGuard<'static, ()>, PgServer, Sensor)> {
    let serial = serial();
    let pg = tls_server(name)?;
    let sensor = Sensor::start(&[])?;
    Ok((serial, pg, sensor))
}

fn tls_server(name: &'static str) -> anyhow::Result<PgServer> {
    PgServer::start(PgOptions::tls(name))
}

#[test]
fn libpq_psql_every_sslmode() -> anyhow::Result<()> {
    let (_serial, pg, sensor) = arranged("matrix-psql")?;
    let ca = pg.certs.as_ref().unwrap().ca_cert.display().to_string();
    // With a root file libpq verifies in every TLS mode; without one, prefer and require
    // accept any certificate.
    for (mode, root, verdict) in [
        ("disable", true, PLAINTEXT),
        ("allow", true, PLAINTEXT), // tries without TLS first; this server accepts that
        ("prefer", true, VERIFIED),
        ("require", true, VERIFIED),
        ("verify-ca", true, VERIFIED),
        ("verify-full", true, VERIFIED),
        ("prefer", false, UNVERIFIED),
        ("require", false, UNVERIFIED),
    ] {
        let root = if root { format!("sslrootcert={ca}") } else { String::new() };
        let settings = format!("sslmode={mode} {root} gssencmode=disable");
        expect(&sensor, &format!("psql {settings}"), verdict, true, || {
            let r = psql(&pg, &settings, "postgres", "postgres")?;
            Ok(DriverRun { pid: r.pid, ok: r.success, error: Some(r.stderr) })
        })?;
    }
    Ok(())
}

#[test]
fn python_drivers() -> anyhow::Result<()> {
    let (_serial, pg, sensor) = arranged("matrix-python")?;
    // psycopg2 and psycopg 3 bring their own libpq and OpenSSL (binary wheels); asyncpg and
    // pg8000 use Python's ssl module (the system's OpenSSL), verification set on the context.
    for (driver, mode, verdict, must_connect) in [
        ("psycopg2", "disable", PLAINTEXT, true),
        ("psycopg2", "require", UNVERIFIED, true),
        ("psycopg2", "verify-full", VERIFIED, true),
        ("psycopg3", "disable", PLAINTEXT, true),
        ("psycopg3", "require", UNVERIFIED, true),
        // PostgreSQL 15 does not speak direct TLS: the session fails, the sensor still
        // sees (and counts) a ClientHello as the first bytes, from a client that does not
        // verify (sslmode=require).
        ("psycopg3", "direct", UNVERIFIED, false),
        ("asyncpg", "disable", PLAINTEXT, true),
        ("asyncpg", "require", UNVERIFIED, true),
        ("asyncpg", "verify", VERIFIED, true),
        ("asyncpg", "direct", UNVERIFIED, false),
        ("pg8000", "disable", PLAINTEXT, true),
        ("pg8000", "unverified", UNVERIFIED, true),
        ("pg8000", "verify", VERIFIED, true),
    ] {
        expect(&sensor, &format!("{driver} {mode}"), verdict, must_connect, || {
            python_driver(driver, mode, &pg)
        })?;
    }
    Ok(())
}

#[test]
fn node_postgres_and_pgjdbc() -> anyhow::Result<()> {
    let (_serial, pg, sensor) = arranged("matrix-node-jdbc")?;
    expect(&sensor, "node-postgres ssl: false", PLAINTEXT, true, || node_driver("disable", &pg))?;
    // Node's OpenSSL is told SSL_VERIFY_NONE either way (it checks in JavaScript): both are
    // `unknown`, the one that does not check included; never `tls_unverified` from it.
    expect(&sensor, "node-postgres ssl: {ca}", TLS_UNKNOWN, true, || node_driver("require", &pg))?;
    expect(&sensor, "node-postgres rejectUnauthorized: false", TLS_UNKNOWN, true, || {
        node_driver("no-verify", &pg)
    })?;
    expect(&sensor, "pgjdbc sslmode=disable", PLAINTEXT, true, || {
        jdbc_driver("sslmode=disable&gssEncMode=disable", &pg)
    })?;
    // Java's own TLS (JSSE): no OpenSSL to ask.
    expect(&sensor, "pgjdbc sslmode=require", TLS_UNKNOWN, true, || {
        jdbc_driver("sslmode=require&gssEncMode=disable", &pg)
    })?;
    Ok(())
}

#[test]
fn tokio_postgres() -> anyhow::Result<()> {
    let (_serial, pg, sensor) = arranged("matrix-tokio")?;
    let me = std::process::id();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let config = format!("host={} port={} user=postgres dbname=postgres", pg.host, pg.port);

    expect(&sensor, "tokio-postgres NoTls", PLAINTEXT, true, || {
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(
                &format!("{config} sslmode=disable"),
                tokio_postgres::NoTls,
            )
            .await?;
            let task = tokio::spawn(conn);
            client.simple_query("select 1").await?;
            drop(client);
            let _ = task.await;
            Ok(DriverRun { pid: me, ok: true, error: None })
        })
    })?;

    let ca = std::fs::read(&pg.certs.as_ref().unwrap().ca_cert)?;
    // rustls: no OpenSSL to ask.
    expect(&sensor, "tokio-postgres rustls sslmode=require", TLS_UNKNOWN, true, || {
        rt.block_on(async {
            let mut roots = rustls::RootCertStore::empty();
            use rustls_pki_types::pem::PemObject;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
                roots.add(cert?)?;
            }
            let tls_config = rustls::ClientConfig::builder_with_provider(
                rustls::crypto::ring::default_provider().into(),
            )
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config);
            let (client, conn) = tokio_postgres::connect(
                &format!("host=localhost hostaddr={} port={} user=postgres dbname=postgres sslmode=require", pg.host, pg.port),
                tls,
            )
            .await?;
            let task = tokio::spawn(conn);
            client.simple_query("select 1").await?;
            drop(client);
            let _ = task.await;
            Ok(DriverRun { pid: me, ok: true, error: None })
        })
    })?;
    Ok(())
}

#[test]
fn flask_app_using_psycopg2_is_named_in_the_finding() -> anyhow::Result<()> {
    let (_serial, pg, sensor) = arranged("matrix-flask")?;
    let probed = sensor.metrics()?.get("pgwire_sensor_tls_libraries_probed");
    let app = FlaskApp::start(&pg)?;
    let app_pid = app.pid();
    let result = (|| -> anyhow::Result<()> {
        // The app imported psycopg2 (a wheel with its own OpenSSL) when it started; the
        // sensor's rescan finds that copy before the first request, as it would for a
        // service that has been up for more than a second.
        sensor.wait_tls_libraries_probed(probed)?;
        let verified_before = verified(&sensor, "verified_chain")?;
        assert_eq!(app.get("/orders/plain")?, "plain");
        assert_eq!(app.get("/orders/require")?, "tls");
        assert_eq!(app.get("/orders/secure")?, "tls");

        let found = sensor.wait_findings_of(app_pid, 2)?;
        std::thread::sleep(Duration::from_millis(300));
        let found_now = sensor.findings_of(app_pid)?;
        assert_eq!(found_now.len(), 2, "the sslmode=disable and =require routes: {found_now:#?}");
        let p = &found[0]["process"];
        assert_eq!(found[0]["verdict"], "plaintext");
        assert_eq!(found[1]["verdict"], "tls_unverified", "{}", found[1]);
        assert_eq!(found[1]["tls"]["verification"], "unverified");
        assert_eq!(found[1]["process"]["pid"], app_pid);
        assert_eq!(
            verified(&sensor, "verified_chain")? - verified_before,
            1.0,
            "the verify-full route is counted verified"
        );
        assert_eq!(p["pid"], app_pid, "the Flask process, not the test runner");
        assert_ne!(p["pid"], std::process::id());
        assert!(p["exe"].as_str().unwrap().contains("python"), "{p}");
        assert!(p["cmdline"].as_str().unwrap().contains("flask_app.py"), "{p}");
        assert_eq!(p["ppid"], std::process::id());
        Ok(())
    })();
    drop(app);
    result
}

#[test]
fn psycopg3_async_connections_interleaved_on_one_thread() -> anyhow::Result<()> {
    let (_serial, pg, sensor) = arranged("matrix-psycopg3-async")?;
    for (mode, verdict, verification) in
        [("require", "tls_unverified", "unverified"), ("verify-full", "tls", "verified_chain")]
    {
        let before = sensor.metrics()?;
        let run = tests::clients::python_driver("psycopg3", &format!("interleaved-{mode}"), &pg)?;
        assert!(run.ok, "{mode}: {:?}", run.error);
        std::thread::sleep(Duration::from_millis(300));
        let after = sensor.metrics()?;
        let moved = |name: &str, labels: &[(&str, &str)]| {
            after.sum(name, labels) - before.sum(name, labels)
        };
        assert_eq!(
            moved("pgwire_sensor_sessions_total", &[("verdict", verdict), ("role", "client")]),
            4.0,
            "{mode}: four sessions, four handshakes on one thread"
        );
        assert_eq!(
            moved(
                "pgwire_sensor_tls_sessions_total",
                &[("verification", verification), ("role", "client")]
            ),
            4.0,
            "{mode}: every one judged, none left ambiguous"
        );
        let findings = sensor.findings_of(run.pid)?;
        let expected_findings = if verdict == "tls" { 0 } else { 4 };
        assert_eq!(findings.len(), expected_findings, "{mode}: {findings:#?}");
    }
    Ok(())
}
