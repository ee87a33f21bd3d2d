//! Issue 2 end to end: a real PostgreSQL 15 with TLS on 127.0.0.1:26257, the real sensor
//! attached at the cgroup v2 root, and real psql sessions with and without TLS.

use tests::{
    clients::psql,
    pg::{PgOptions, PgServer},
    sensor::Sensor,
    serial,
};

#[test]
fn psql_plaintext_session_is_reported_and_tls_session_only_counted() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::tls("e2e-psql"))?;
    pg.admin_sql("CREATE ROLE app_user LOGIN")?;
    pg.admin_sql("CREATE DATABASE app_db OWNER app_user")?;

    let sensor = Sensor::start(&[])?;
    let before = sensor.metrics()?;

    let plain =
        psql(&pg, "sslmode=disable gssencmode=disable", "app_user", "app_db")?.expect_success()?;
    assert_eq!(plain.stdout, "f", "the server says the sslmode=disable session is plaintext");
    // A client that verifies the server: TLS with nothing wrong, counted only.
    let ca = pg.certs.as_ref().unwrap().ca_cert.display().to_string();
    let tls = psql(
        &pg,
        &format!("sslmode=verify-full sslrootcert={ca} gssencmode=disable"),
        "app_user",
        "app_db",
    )?
    .expect_success()?;
    assert_eq!(tls.stdout, "t", "the server says the sslmode=verify-full session is TLS");

    let found = sensor.wait_findings_of(plain.pid, 1)?;
    assert_eq!(found.len(), 1, "exactly one finding for the plaintext session: {found:#?}");
    let f = &found[0];
    eprintln!("findings file:\n{}", std::fs::read_to_string(&sensor.findings_path)?);
    assert_eq!(f["verdict"], "plaintext");
    assert_eq!(f["severity"], "high");
    assert_eq!(f["role"], "client");
    assert_eq!(f["process"]["pid"], plain.pid);
    assert_eq!(f["process"]["comm"], "psql");
    assert_eq!(f["process"]["uid"], 0);
    assert_eq!(f["startup"]["user"], "app_user");
    assert_eq!(f["startup"]["database"], "app_db");
    assert_eq!(f["startup"]["application_name"], "psql");
    assert_eq!(f["dst"]["ip"], "127.0.0.1");
    assert_eq!(f["dst"]["port"], 26257);
    assert_eq!(f["src"]["ip"], "127.0.0.1");
    assert!(f["src"]["port"].as_u64().unwrap() > 0);
    assert!(f["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(f["auth"]["method"], "trust", "pg_hba trusts loopback: AuthenticationOk at once");
    assert_eq!(f["auth"]["password_sent"], false);
    assert!(f.get("negotiation").is_none(), "sslmode=disable asks for nothing");

    // Give the TLS session's event (if one were wrongly written) time to arrive, then check.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        sensor.findings_of(tls.pid)?.is_empty(),
        "the TLS session must produce no finding: {:#?}",
        sensor.findings_of(tls.pid)?
    );

    let after = sensor.metrics()?;
    let delta =
        |verdict: &str| after.sessions(verdict, "client") - before.sessions(verdict, "client");
    assert_eq!(delta("plaintext"), 1.0);
    assert_eq!(delta("tls"), 1.0);
    for verdict in [
        "tls_direct",
        "tls_unverified",
        "tls_rejected",
        "gssenc",
        "downgraded",
        "refused",
        "cancel",
        "rpc_plaintext",
        "unknown",
    ] {
        assert_eq!(delta(verdict), 0.0, "{verdict} moved");
    }
    assert_eq!(after.sum("pgwire_sensor_events_lost_total", &[("kind", "session")]), 0.0);
    // The build names the commit it was built from.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    let head = String::from_utf8(head.stdout)?;
    let build = [("version", "0.1.0"), ("revision", head.trim())];
    assert_eq!(
        after.sum("pgwire_sensor_build_info", &build),
        1.0,
        "build_info must name HEAD {head}: a sensor built at another commit (rebuild it)"
    );
    // The agent's own cost, as every exporter reports it.
    assert!(after.get("process_resident_memory_bytes") > 1e6);
    assert!(after.get("process_open_fds") > 0.0);
    assert!(after.has("process_cpu_seconds_total"));

    let (_, text) = tests::metrics::http_get(sensor.metrics_addr, "/metrics")?;
    eprintln!("metrics:\n{text}");
    let status = sensor.stop()?;
    assert!(status.success(), "SIGTERM must give a clean exit, got {status}");
    Ok(())
}

#[test]
fn findings_carry_process_context_with_secrets_redacted_from_the_command_line() -> anyhow::Result<()>
{
    use std::process::Command;
    const SECRET: &str = "Cmdl1ne-S3cret-e8d1";
    let _serial = serial();
    let mut opts = PgOptions::tls("e2e-process");
    opts.hba = vec![
        "local all all trust".into(),
        "host all cmd_user 127.0.0.1/32 password".into(),
        "host all all 127.0.0.1/32 trust".into(),
    ];
    let pg = PgServer::start(opts)?;
    pg.admin_sql(&format!("CREATE ROLE cmd_user LOGIN PASSWORD '{SECRET}'"))?;
    let sensor = Sensor::start(&[])?;

    // The password on the command line, as careless scripts do.
    let uri = format!(
        "postgresql://cmd_user:{SECRET}@127.0.0.1:26257/postgres?sslmode=disable&gssencmode=disable"
    );
    let pid = tests::clients::run_client(
        Command::new("psql")
            .args([uri.as_str(), "-X", "-At", "-c", "select 1"])
            .env("PGPASSFILE", "/dev/null"),
    )?
    .expect_success()?
    .pid;

    let f = &sensor.wait_findings_of(pid, 1)?[0];
    let p = &f["process"];
    assert_eq!(p["comm"], "psql");
    assert_eq!(p["user"], "root");
    assert!(p["exe"].as_str().unwrap().ends_with("/psql"), "{p}");
    assert_eq!(p["ppid"], std::process::id(), "the test runner started psql");
    assert!(p["parent_comm"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(p["cgroup"].as_str().unwrap().starts_with('/'));
    let cmdline = p["cmdline"].as_str().unwrap();
    assert!(cmdline.contains("postgresql://cmd_user:***@127.0.0.1:26257/postgres"), "{cmdline}");
    assert_eq!(f["severity"], "critical", "the URI's password also crossed the wire in clear");

    std::thread::sleep(std::time::Duration::from_millis(200));
    let findings_text = std::fs::read_to_string(&sensor.findings_path)?;
    assert!(!findings_text.contains(SECRET), "the password leaked into a finding");
    assert!(!sensor.stderr().contains(SECRET), "the password leaked into the log");
    Ok(())
}

#[test]
fn a_process_gone_before_its_finding_keeps_the_kernel_record() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::tls("e2e-exited"))?;
    let sensor = Sensor::start(&[])?;
    // Freeze the agent: psql connects, finishes and exits before the event is read.
    unsafe { libc::kill(sensor.pid() as i32, libc::SIGSTOP) };
    let run = psql(&pg, "sslmode=disable gssencmode=disable", "postgres", "postgres");
    unsafe { libc::kill(sensor.pid() as i32, libc::SIGCONT) };
    let gone = run?.expect_success()?;
    let f = &sensor.wait_findings_of(gone.pid, 1)?[0];
    let p = &f["process"];
    assert_eq!(p["comm"], "psql", "from the kernel's connect-time record");
    assert_eq!(p["uid"], 0);
    assert_eq!(p["exited"], true);
    assert!(p.get("exe").is_none() && p.get("cmdline").is_none(), "nothing guessed: {p}");
    assert_eq!(f["verdict"], "plaintext");
    Ok(())
}
