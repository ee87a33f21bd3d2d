//! The other first-message verdicts, end to end through the kernel: a CancelRequest sent by
//! a real psql (Ctrl-C during a query), and hand-written clients for bytes real drivers do
//! not send (garbage, the HTTP/2 preface, a direct TLS ClientHello).

use std::{
    io::Write,
    net::TcpStream,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use tests::{
    pg::{PgOptions, PgServer},
    sensor::Sensor,
    serial,
    util::wait_for,
};

#[test]
fn psql_interrupted_during_a_query_sends_a_cancel_request() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::tls("e2e-cancel"))?;
    let sensor = Sensor::start(&[])?;
    let before = sensor.metrics()?;

    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres sslmode=disable gssencmode=disable",
        pg.host, pg.port
    );
    let child = Command::new("psql")
        .args([&conninfo, "-X", "-c", "select pg_sleep(20)"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    // The first finding (the plaintext session) says the query is on its way.
    sensor.wait_findings_of(pid, 1)?;
    thread::sleep(Duration::from_millis(500));
    // psql answers SIGINT by sending a CancelRequest on a new connection.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("canceling statement"), "the server cancelled the query: {stderr}");

    let found = sensor.wait_findings_of(pid, 2)?;
    let verdicts: Vec<&str> = found.iter().map(|f| f["verdict"].as_str().unwrap()).collect();
    assert_eq!(verdicts, ["plaintext", "cancel"], "{found:#?}");
    assert_eq!(found[1]["severity"], "low");
    assert_eq!(found[1]["process"]["comm"], "psql");
    assert!(found[1].get("startup").is_none(), "a cancel carries no startup parameters");

    let after = sensor.metrics()?;
    assert_eq!(after.sessions("cancel", "client") - before.sessions("cancel", "client"), 1.0);
    assert_eq!(after.sessions("plaintext", "client") - before.sessions("plaintext", "client"), 1.0);
    Ok(())
}

/// Send `bytes` as the first thing on a new connection; return the local port.
fn send_first(bytes: &[u8]) -> anyhow::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", tests::pg::DB_PORT))?;
    s.write_all(bytes)?;
    let port = s.local_addr()?.port();
    thread::sleep(Duration::from_millis(50));
    Ok(port)
}

fn finding_from_port(sensor: &Sensor, port: u16) -> anyhow::Result<Value> {
    let me = std::process::id();
    wait_for(&format!("a finding from local port {port}"), Duration::from_secs(10), || {
        sensor.findings_of(me).ok()?.into_iter().find(|f| f["src"]["port"] == port)
    })
}

#[test]
fn hand_written_first_bytes_get_their_verdicts() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::tls("e2e-first-bytes"))?;
    let sensor = Sensor::start(&[])?;
    let before = sensor.metrics()?;

    let garbage = send_first(b"GET / HTTP/1.1\r\nHost: db\r\n\r\n")?;
    let http2 = send_first(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")?;
    let hello = send_first(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03])?;
    let gss = send_first(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])?;
    drop(pg);

    let f = finding_from_port(&sensor, garbage)?;
    assert_eq!((&f["verdict"], &f["reason"]), (&"unknown".into(), &"not_pgwire".into()));
    assert_eq!(f["process"]["pid"], std::process::id());
    let f = finding_from_port(&sensor, http2)?;
    assert_eq!((&f["verdict"], &f["severity"]), (&"rpc_plaintext".into(), &"high".into()));

    let after = sensor.metrics()?;
    let delta = |v: &str| after.sessions(v, "client") - before.sessions(v, "client");
    assert_eq!(delta("unknown"), 1.0);
    assert_eq!(delta("rpc_plaintext"), 1.0);
    assert_eq!(delta("tls_direct"), 1.0, "the ClientHello is counted as direct TLS");
    assert_eq!(delta("gssenc"), 1.0);
    // Encrypted starts are counted but never written as findings.
    let me = std::process::id();
    let mine = sensor.findings_of(me)?;
    for port in [hello, gss] {
        assert!(!mine.iter().any(|f| f["src"]["port"] == port), "{mine:#?}");
    }
    Ok(())
}
