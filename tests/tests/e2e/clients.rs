//! Issue 4's client matrix: independent implementations of the wire protocol, each driven
//! against the real PostgreSQL 15 with TLS on 127.0.0.1:26257, each verdict asserted from
//! the sensor's finding (with the driver's own pid) or, for encrypted sessions, from the
//! kernel count and the absence of a finding. docs/clients.md lists these cells.

use std::time::Duration;

use tests::{
    clients::{jdbc_driver, node_driver, psql, python_driver, DriverRun, FlaskApp},
    pg::{PgOptions, PgServer},
    sensor::Sensor,
    serial,
    util::wait_for,
};

/// Run one client and check the sensor's verdict for it.
fn expect(
    sensor: &Sensor,
    what: &str,
    verdict: &str,
    must_connect: bool,
    run: impl FnOnce() -> anyhow::Result<DriverRun>,
) -> anyhow::Result<()> {
    let before = sensor.metrics()?.sessions(verdict, "client");
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
    let encrypted = ["tls", "tls_direct", "gssenc"].contains(&verdict);
    if encrypted {
        std::thread::sleep(Duration::from_millis(300));
        assert!(new_of_client()?.is_empty(), "{what}: encrypted, no finding");
    } else {
        let found = wait_for(&format!("{what}'s finding"), Duration::from_secs(10), || {
            new_of_client().ok().filter(|f| !f.is_empty())
        })?;
        let f = &found[0];
        assert_eq!(f["verdict"], verdict, "{what}: {f}");
        assert_eq!(f["process"]["pid"], client.pid, "{what}: attributed to the driver's process");
    }
    let after = sensor.metrics()?.sessions(verdict, "client");
    assert_eq!(after - before, 1.0, "{what}: exactly one {verdict} session counted");
    eprintln!("matrix: {what} -> {verdict}");
    Ok(())
}

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
    for (mode, verdict) in [
        ("disable", "plaintext"),
        ("allow", "plaintext"), // tries without TLS first; this server accepts that
        ("prefer", "tls"),
        ("require", "tls"),
        ("verify-ca", "tls"),
        ("verify-full", "tls"),
    ] {
        let settings = format!("sslmode={mode} sslrootcert={ca} gssencmode=disable");
        expect(&sensor, &format!("psql sslmode={mode}"), verdict, true, || {
            let r = psql(&pg, &settings, "postgres", "postgres")?;
            Ok(DriverRun { pid: r.pid, ok: r.success, error: Some(r.stderr) })
        })?;
    }
    Ok(())
}

#[test]
fn python_drivers() -> anyhow::Result<()> {
    let (_serial, pg, sensor) = arranged("matrix-python")?;
    for (driver, mode, verdict, must_connect) in [
        ("psycopg2", "disable", "plaintext", true),
        ("psycopg2", "verify-full", "tls", true),
        ("psycopg3", "disable", "plaintext", true),
        ("psycopg3", "require", "tls", true),
        // PostgreSQL 15 does not speak direct TLS: the session fails, the sensor still
        // sees (and counts) a ClientHello as the first bytes.
        ("psycopg3", "direct", "tls_direct", false),
        ("asyncpg", "disable", "plaintext", true),
        ("asyncpg", "require", "tls", true),
        ("asyncpg", "direct", "tls_direct", false),
        ("pg8000", "disable", "plaintext", true),
        ("pg8000", "verify", "tls", true),
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
    expect(&sensor, "node-postgres ssl: false", "plaintext", true, || node_driver("disable", &pg))?;
    expect(&sensor, "node-postgres ssl: {ca}", "tls", true, || node_driver("require", &pg))?;
    expect(&sensor, "pgjdbc sslmode=disable", "plaintext", true, || {
        jdbc_driver("sslmode=disable&gssEncMode=disable", &pg)
    })?;
    expect(&sensor, "pgjdbc sslmode=require", "tls", true, || {
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

    expect(&sensor, "tokio-postgres NoTls", "plaintext", true, || {
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
    expect(&sensor, "tokio-postgres rustls sslmode=require", "tls", true, || {
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
    let app = FlaskApp::start(&pg)?;
    let app_pid = app.pid();
    let result = (|| -> anyhow::Result<()> {
        assert_eq!(app.get("/orders/plain")?, "plain");
        assert_eq!(app.get("/orders/secure")?, "tls");

        let found = sensor.wait_findings_of(app_pid, 1)?;
        std::thread::sleep(Duration::from_millis(300));
        let found_now = sensor.findings_of(app_pid)?;
        assert_eq!(found_now.len(), 1, "only the sslmode=disable route: {found_now:#?}");
        let p = &found[0]["process"];
        assert_eq!(found[0]["verdict"], "plaintext");
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
