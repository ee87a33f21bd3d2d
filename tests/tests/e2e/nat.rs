//! Issue 14: attribution that survives NAT on the client's host, and per-socket state that
//! nothing evicts. Real psql, real PostgreSQL, real nftables DNAT rules in the output path
//! (what kube-proxy installs for a Service).

use std::{
    io::Write,
    net::{SocketAddrV4, TcpStream},
    thread,
    time::Duration,
};

use tests::{
    clients::psql_at,
    nft,
    pg::{PgOptions, PgServer, DB_PORT},
    raw::{connect_nodelay, first_reply, startup_message},
    sensor::Sensor,
    serial,
    util::wait_for,
};

const VERDICTS: [&str; 3] = ["plaintext", "unknown", "tls"];

/// psql to `dialled`, which a DNAT rule sends to the database: one plaintext finding with
/// the process, its authentication, `dst` the database as reached and `dialled` what psql
/// asked for; counted under the database's port.
fn psql_through_dnat(name: &'static str, dialled: SocketAddrV4) -> anyhow::Result<()> {
    let pg = PgServer::start(PgOptions::tls(name))?;
    let reached = SocketAddrV4::new([127, 0, 0, 1].into(), DB_PORT);
    let _rule = nft::dnat_output(dialled, reached)?;
    let sensor = Sensor::start(&[])?;
    let before = sensor.metrics()?;
    // Well after start: the session must never be called opened before it.
    thread::sleep(Duration::from_millis(500));

    let run = psql_at(
        &dialled.ip().to_string(),
        dialled.port(),
        "sslmode=disable gssencmode=disable",
        "postgres",
        "postgres",
        None,
    )?
    .expect_success()?;
    assert_eq!(run.stdout, "f", "the server says the session is plaintext");

    let found = sensor.wait_findings_of(run.pid, 1)?;
    let f = &found[0];
    assert_eq!(f["verdict"], "plaintext", "{f:#}");
    assert_eq!(f["process"]["comm"], "psql", "{f:#}");
    assert_eq!(f["process"]["pid"], run.pid);
    assert!(f.get("opened_before_start").is_none(), "opened after start: {f:#}");
    assert_eq!(f["auth"]["method"], "trust", "the server's answers are matched by socket: {f:#}");
    assert_eq!(f["dst"]["ip"], "127.0.0.1");
    assert_eq!(f["dst"]["port"], DB_PORT);
    assert_eq!(f["dialled"]["ip"], dialled.ip().to_string());
    assert_eq!(f["dialled"]["port"], dialled.port());
    assert_eq!(f["src"]["ip"], "127.0.0.1");

    let after = sensor.metrics()?;
    for verdict in VERDICTS {
        let delta = after.sessions(verdict, "client") - before.sessions(verdict, "client");
        assert_eq!(delta, f64::from(verdict == "plaintext"), "{verdict}");
    }
    let port = DB_PORT.to_string();
    let by_port = |s: &tests::metrics::Samples| {
        s.sum(
            "pgwire_sensor_sessions_total",
            &[("verdict", "plaintext"), ("role", "client"), ("port", port.as_str())],
        )
    };
    assert_eq!(by_port(&after) - by_port(&before), 1.0, "counted under the database's port");
    let delta = |name: &str| after.get(name) - before.get(name);
    if dialled.port() == DB_PORT {
        // The port dialled is watched: followed from connect(), as without NAT.
        assert_eq!(delta("pgwire_sensor_kernel_connections_nat_total"), 0.0);
    } else {
        // Followed from its SYN, the process from its connect() on the same CPU.
        assert_eq!(delta("pgwire_sensor_kernel_connections_nat_total"), 1.0);
        assert_eq!(delta("pgwire_sensor_kernel_nat_process_unknown_total"), 0.0);
    }
    drop(pg);
    Ok(())
}

#[test]
fn a_dnat_rule_rewriting_the_port_keeps_process_auth_and_start() -> anyhow::Result<()> {
    let _serial = serial();
    // A Service whose port (36257) differs from its targetPort (26257).
    psql_through_dnat("nat-port", SocketAddrV4::new([127, 0, 0, 1].into(), 36257))
}

#[test]
fn a_service_like_dnat_of_the_address_names_both_ends() -> anyhow::Result<()> {
    let _serial = serial();
    // A ClusterIP Service: another address, the same port.
    psql_through_dnat("nat-address", SocketAddrV4::new([127, 0, 0, 77].into(), DB_PORT))
}

/// The packets of a socket whose own ports are not watched are looked at only while a
/// NAT-followed session is open (the kernel counts them until each is decided): a session
/// opened before another NAT'd one came and went must still have its server's answers,
/// whose ports are the pre-NAT ones, followed to its authentication.
#[test]
fn a_nat_session_outlasting_another_is_followed_to_its_auth() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = PgServer::start(PgOptions::tls("nat-overlap"))?;
    let dialled = SocketAddrV4::new([127, 0, 0, 1].into(), 36257);
    let _rule = nft::dnat_output(dialled, SocketAddrV4::new([127, 0, 0, 1].into(), DB_PORT))?;
    let sensor = Sensor::start(&[])?;
    let before = sensor.metrics()?;

    let mut early = connect_nodelay(dialled.into())?;
    let early_port = early.local_addr()?.port();
    // Another NAT'd session opens, authenticates and ends (decided) while `early` waits.
    psql_at(
        "127.0.0.1",
        36257,
        "sslmode=disable gssencmode=disable",
        "postgres",
        "postgres",
        None,
    )?
    .expect_success()?;
    early.write_all(&startup_message(&[("user", "postgres"), ("application_name", "early")]))?;
    assert_eq!(first_reply(&mut early), Some(b'R'));

    let f = wait_for("the early session's finding", Duration::from_secs(10), || {
        sensor.findings().ok()?.into_iter().find(|f| f["src"]["port"] == early_port)
    })?;
    assert_eq!(f["verdict"], "plaintext", "{f:#}");
    assert_eq!(f["process"]["pid"], std::process::id(), "{f:#}");
    assert_eq!(f["auth"]["method"], "trust", "its answers were still looked at: {f:#}");
    let after = sensor.metrics()?;
    let nat = after.get("pgwire_sensor_kernel_connections_nat_total")
        - before.get("pgwire_sensor_kernel_connections_nat_total");
    assert_eq!(nat, 2.0, "both sessions followed from their SYN");
    let decided = |m: &tests::metrics::Samples| m.get("pgwire_sensor_kernel_nat_decided_total");
    assert_eq!(decided(&after) - decided(&before), 2.0, "both decided at their authentication");
    drop(pg);
    Ok(())
}

/// Connections the old connection table (16384 entries, LRU) could not have held: this
/// many stay open, idle, between one socket's connect() and its first byte.
const OTHER_CONNECTIONS: usize = 17_000;

/// Room for the client ends in this process: the soft limit up to the hard one (which
/// only CAP_SYS_RESOURCE may raise; 20000 in the containers CI runs in).
fn raise_open_files(needed: u64) -> anyhow::Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit calls with a valid struct.
    unsafe {
        anyhow::ensure!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0, "getrlimit");
        anyhow::ensure!(
            limit.rlim_max >= needed,
            "{needed} open files needed, the hard limit is {}",
            limit.rlim_max
        );
        limit.rlim_cur = limit.rlim_max;
        anyhow::ensure!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0, "setrlimit");
    }
    Ok(())
}

/// A process that accepts `n` connections on a port of its own and holds them until its
/// stdin closes (the server ends need their own file table).
struct Crowd {
    child: std::process::Child,
    port: u16,
}

impl Crowd {
    fn listen(n: usize) -> anyhow::Result<Crowd> {
        use std::io::BufRead;
        let script = format!(
            "import resource, socket, sys\n\
             hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n\
             resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n\
             s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(4096)\n\
             print(s.getsockname()[1], flush=True)\n\
             held = [s.accept()[0] for _ in range({n})]\n\
             print('held', len(held), flush=True)\n\
             sys.stdin.read()\n"
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line)?;
        let port = line.trim().parse()?;
        Ok(Crowd { child, port })
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_socket_outliving_many_others_keeps_its_state() -> anyhow::Result<()> {
    let _serial = serial();
    raise_open_files(OTHER_CONNECTIONS as u64 + 1024)?;
    let pg = PgServer::start(PgOptions::tls("nat-outlives"))?;
    // A second watched port, where the other connections open and wait.
    let crowd = Crowd::listen(OTHER_CONNECTIONS)?;
    let ports = format!("{DB_PORT},{}", crowd.port);
    let sensor = Sensor::start(&["--ports", &ports])?;
    let before = sensor.metrics()?;

    let mut early = connect_nodelay(SocketAddrV4::new([127, 0, 0, 1].into(), DB_PORT).into())?;
    let early_port = early.local_addr()?.port();
    let crowd_clients = (0..OTHER_CONNECTIONS)
        .map(|_| TcpStream::connect(("127.0.0.1", crowd.port)))
        .collect::<Result<Vec<_>, _>>()?;

    early.write_all(&startup_message(&[("user", "postgres"), ("application_name", "early")]))?;
    assert_eq!(first_reply(&mut early), Some(b'R'));
    let f = wait_for("the early connection's finding", Duration::from_secs(10), || {
        sensor.findings().ok()?.into_iter().find(|f| f["src"]["port"] == early_port)
    })?;
    assert_eq!(f["verdict"], "plaintext");
    assert_eq!(f["startup"]["application_name"], "early");
    assert_eq!(f["process"]["pid"], std::process::id(), "its connect() record survived: {f:#}");
    assert!(f.get("opened_before_start").is_none());

    let after = sensor.metrics()?;
    let tracked = after.get("pgwire_sensor_kernel_connections_tracked_total")
        - before.get("pgwire_sensor_kernel_connections_tracked_total");
    assert_eq!(tracked, (OTHER_CONNECTIONS + 1) as f64);
    assert_eq!(after.get("pgwire_sensor_kernel_connection_track_failures_total"), 0.0);
    drop((crowd_clients, crowd));
    drop(pg);
    Ok(())
}
