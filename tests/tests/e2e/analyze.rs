//! `sensor analyze --pcap` against ground truth: tcpdump records real sessions of every
//! verdict while the live sensor watches them; the offline verdicts, findings and counts
//! must equal the live ones.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    thread,
    time::Duration,
};

use serde_json::Value;
use tests::{
    capture::Tcpdump,
    clients::psql_at,
    mitm::{gss_acceptor, Mitm, TlsMitm},
    pg::{PgOptions, PgServer},
    raw::{connect_nodelay, SSL_REQUEST},
    sensor::{sensor_binary, Sensor},
    serial,
    util::scratch_dir,
};

const VERDICTS: [&str; 10] = [
    "tls",
    "tls_rejected",
    "tls_direct",
    "gssenc",
    "plaintext",
    "downgraded",
    "refused",
    "cancel",
    "rpc_plaintext",
    "unknown",
];

fn raw_session(addr: SocketAddr, bytes: &[u8], read_answer: bool) -> anyhow::Result<u16> {
    let mut s = connect_nodelay(addr)?;
    let port = s.local_addr()?.port();
    s.write_all(bytes)?;
    if read_answer {
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
    }
    thread::sleep(Duration::from_millis(30));
    Ok(port)
}

#[test]
fn analyze_of_a_recorded_capture_agrees_with_the_live_sensor() -> anyhow::Result<()> {
    let _serial = serial();
    let tls_server = PgServer::start(PgOptions::tls("analyze-tls"))?;
    let mut plain_opts = PgOptions::no_tls("analyze-plain");
    plain_opts.listen = vec!["127.0.0.3".into()];
    plain_opts.hba = vec![
        "local all all trust".into(),
        "host all clear_user 127.0.0.1/32 password".into(),
        "host all all 127.0.0.1/32 trust".into(),
    ];
    let plain_server = PgServer::start(plain_opts)?;
    plain_server.admin_sql("CREATE ROLE clear_user LOGIN PASSWORD 'analyze-pw-55'")?;
    let upstream = format!("{}:{}", tls_server.host, tls_server.port).parse()?;
    let mitm = Mitm::start("127.0.0.2:26257", upstream)?;
    let gss = gss_acceptor("127.0.0.4:26257")?;
    let tls_mitm = TlsMitm::start("127.0.0.5:26257", upstream)?;
    let ca = tls_server.certs.as_ref().unwrap().ca_cert.display().to_string();
    let tls_addr: SocketAddr = upstream;

    let dir = scratch_dir("analyze");
    let tcpdump = Tcpdump::start(&dir, "tcp port 26257")?;
    let sensor = Sensor::start(&[])?;
    let before = sensor.metrics()?;

    let no_gss = "gssencmode=disable";
    psql_at(
        "127.0.0.1",
        26257,
        &format!("sslmode=disable {no_gss}"),
        "postgres",
        "postgres",
        None,
    )?
    .expect_success()?;
    // Verifying: `tls` live and offline alike. (An unverifying client is `tls_unverified`
    // live; a capture cannot show verification, so offline it is `tls`: not compared here.)
    psql_at(
        "127.0.0.1",
        26257,
        &format!("sslmode=verify-full sslrootcert={ca} {no_gss}"),
        "postgres",
        "postgres",
        None,
    )?
    .expect_success()?;
    // Refusing a forged certificate: the alert is on the wire, so both say `tls_rejected`.
    let rejecting = psql_at(
        "127.0.0.5",
        26257,
        &format!("sslmode=verify-full sslrootcert={ca} {no_gss}"),
        "postgres",
        "postgres",
        None,
    )?;
    assert!(!rejecting.success, "the forged certificate must be refused");
    psql_at("127.0.0.2", 26257, &format!("sslmode=prefer {no_gss}"), "postgres", "postgres", None)?
        .expect_success()?;
    let refused = psql_at(
        "127.0.0.3",
        26257,
        &format!("sslmode=require {no_gss}"),
        "postgres",
        "postgres",
        None,
    )?;
    assert!(!refused.success);
    psql_at(
        "127.0.0.3",
        26257,
        &format!("sslmode=disable {no_gss}"),
        "clear_user",
        "postgres",
        Some("analyze-pw-55"),
    )?
    .expect_success()?;
    let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    cancel.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    raw_session(tls_addr, &cancel, false)?;
    raw_session(tls_addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false)?;
    raw_session(
        tls_addr,
        &[0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03],
        false,
    )?;
    raw_session(tls_addr, b"SSH-2.0-OpenSSH_9.2\r\n", false)?;
    raw_session(gss, &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30], true)?;
    // An SSLRequest the server accepts, then a plaintext startup instead of TLS: unknown.
    let mut odd = TcpStream::connect(tls_addr)?;
    odd.write_all(&SSL_REQUEST)?;
    let mut answer = [0u8; 1];
    odd.read_exact(&mut answer)?;
    odd.write_all(&tests::raw::startup_message(&[("user", "postgres")]))?;
    thread::sleep(Duration::from_millis(50));
    drop(odd);
    thread::sleep(Duration::from_millis(1200)); // auth waits expire, last events land

    let after = sensor.metrics()?;
    let live_counts: BTreeMap<&str, f64> = VERDICTS
        .iter()
        .map(|v| (*v, after.sessions(v, "client") - before.sessions(v, "client")))
        .collect();
    for v in VERDICTS {
        assert!(live_counts[v] >= 1.0, "the live run produced no {v}: {live_counts:?}");
    }
    let live = sensor.findings()?;
    let pcap = tcpdump.stop()?;

    let out = Command::new(sensor_binary()?)
        .args(["analyze", "--findings-every-session", "--pcap"])
        .arg(&pcap)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "analyze failed: {stderr}");
    let offline: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let offline_counts: BTreeMap<&str, f64> = stderr
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(v, _)| VERDICTS.contains(v))
        .map(|(v, n)| (VERDICTS.iter().find(|x| **x == v).copied().unwrap(), n.parse().unwrap()))
        .collect();
    assert_eq!(offline_counts, live_counts, "per-verdict counts, offline vs live");

    // Finding by finding (matched by client port): the same judgement and evidence.
    let key = |f: &Value| f["src"]["port"].as_u64().unwrap();
    assert_eq!(offline.len(), live.len(), "offline {offline:#?}\nlive {live:#?}");
    for f in &live {
        let o = offline
            .iter()
            .find(|o| key(o) == key(f))
            .unwrap_or_else(|| panic!("no offline finding for {f}"));
        // The `tls` object: the alert must agree; verification is `unknown` offline by nature.
        for field in
            ["verdict", "severity", "reason", "dst", "src", "startup", "negotiation", "auth"]
        {
            assert_eq!(o.get(field), f.get(field), "{field} differs for {f}\noffline {o}");
        }
        if f["verdict"] == "tls_rejected" {
            assert_eq!(o["tls"]["alert"], f["tls"]["alert"], "{f}\noffline {o}");
            assert_eq!(o["tls"]["verification"], "unknown", "a capture cannot see it: {o}");
        }
        assert!(o.get("process").is_none(), "a capture knows no processes");
    }
    let critical: Vec<&Value> = offline.iter().filter(|f| f["severity"] == "critical").collect();
    assert_eq!(critical.len(), 1);
    assert_eq!(critical[0]["auth"]["method"], "cleartext");

    // A capture cut off mid-packet: what was read is still reported, then exit 1.
    let bytes = std::fs::read(&pcap)?;
    let cut = dir.join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() * 3 / 4 + 7])?;
    let out = Command::new(sensor_binary()?)
        .args(["analyze", "--findings-every-session", "--pcap"])
        .arg(&cut)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("damaged") && !stderr.contains("panicked"), "{stderr}");
    let salvaged = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(salvaged >= 1, "sessions before the damage are reported: {stderr}");
    eprintln!(
        "offline counts {offline_counts:?}; salvaged {salvaged} findings from the cut capture"
    );
    drop((tls_server, plain_server, mitm, tls_mitm));
    Ok(())
}

#[test]
fn analyze_rejects_what_is_not_a_capture_with_exit_2() -> anyhow::Result<()> {
    let dir = scratch_dir("analyze-bad");
    let not_pcap = dir.join("notes.txt");
    std::fs::write(&not_pcap, "this is not a capture at all")?;
    for (path, needle) in
        [(not_pcap.as_path(), "not a pcap"), (dir.join("missing.pcap").as_path(), "cannot open")]
    {
        let out = Command::new(sensor_binary()?)
            .args(["analyze", "--findings-every-session", "--pcap"])
            .arg(path)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle) && !stderr.contains("panicked"), "{stderr}");
    }
    Ok(())
}
