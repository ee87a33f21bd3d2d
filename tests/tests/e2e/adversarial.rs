//! Issue 3, adversarial TCP: hand-written clients against the real server and the real
//! attached sensor. Never a false `plaintext`, one verdict per connection, exact counts.

use std::{
    io::Write,
    net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpStream},
    thread,
    time::Duration,
};

use sensor_common::{pgwire::classify_bytes, tracker::Tracker};
use serde_json::Value;
use tests::{
    pg::{PgOptions, PgServer, DB_PORT},
    raw::{
        connect_nodelay, fast_open_send, first_reply, send_in_pieces, startup_message,
        FastOpenSysctl,
    },
    sensor::Sensor,
    serial,
    util::wait_for,
};

fn v4() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], DB_PORT))
}

fn dual_stack_server(name: &'static str) -> anyhow::Result<PgServer> {
    let mut opts = PgOptions::tls(name);
    opts.listen = vec!["127.0.0.1".into(), "::1".into()];
    PgServer::start(opts)
}

/// The one finding whose client port is `port` (waits for it).
fn finding_of_port(sensor: &Sensor, port: u16) -> anyhow::Result<Value> {
    wait_for(&format!("a finding from client port {port}"), Duration::from_secs(10), || {
        sensor.findings().ok()?.into_iter().find(|f| f["src"]["port"] == port)
    })
    .with_context_findings(sensor)
}

trait WithFindings<T> {
    fn with_context_findings(self, sensor: &Sensor) -> anyhow::Result<T>;
}
impl<T> WithFindings<T> for anyhow::Result<T> {
    fn with_context_findings(self, sensor: &Sensor) -> anyhow::Result<T> {
        self.map_err(|e| {
            e.context(format!("findings: {:?}\n{}", sensor.findings(), sensor.stderr()))
        })
    }
}

/// A StartupMessage for user and database `postgres` from `application_name`.
fn startup_from(application_name: &str) -> Vec<u8> {
    startup_message(&[
        ("user", "postgres"),
        ("database", "postgres"),
        ("application_name", application_name),
    ])
}

/// Two connections opened before the sensor starts: `idle` has sent nothing yet (its socket
/// can prove byte 0 later), `busy` is mid-session (its later bytes must never look like a
/// session start).
struct OpenedBeforeStart {
    idle: TcpStream,
    idle_port: u16,
    busy: TcpStream,
    busy_port: u16,
}

impl OpenedBeforeStart {
    fn open(msg: &[u8]) -> anyhow::Result<Self> {
        let idle = connect_nodelay(v4())?;
        let idle_port = idle.local_addr()?.port();
        let mut busy = connect_nodelay(v4())?;
        let busy_port = busy.local_addr()?.port();
        busy.write_all(msg)?;
        assert_eq!(first_reply(&mut busy), Some(b'R'));
        Ok(OpenedBeforeStart { idle, idle_port, busy, busy_port })
    }
}

fn findings_of_port(sensor: &Sensor, port: u16) -> Vec<Value> {
    sensor.findings().unwrap().into_iter().filter(|f| f["src"]["port"] == port).collect()
}

#[test]
fn a_startup_split_into_one_byte_segments_is_reassembled() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = dual_stack_server("adv-split")?;
    let sensor = Sensor::start(&[])?;
    let before = sensor.metrics()?;

    let msg = startup_from("split-by-one");
    let mut s = connect_nodelay(v4())?;
    let port = s.local_addr()?.port();
    send_in_pieces(&mut s, &msg, 1)?;
    assert_eq!(first_reply(&mut s), Some(b'R'), "the server got the whole startup");
    drop(s);

    let f = finding_of_port(&sensor, port)?;
    assert_eq!(f["verdict"], "plaintext");
    assert_eq!(f["startup"]["user"], "postgres");
    assert_eq!(f["startup"]["application_name"], "split-by-one");
    assert!(f["startup"].get("truncated").is_none());
    let after = sensor.metrics()?;
    assert_eq!(after.sessions("plaintext", "client") - before.sessions("plaintext", "client"), 1.0);
    drop(pg);
    Ok(())
}

#[test]
fn oversized_truncated_and_garbage_starts_are_never_a_false_plaintext() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = dual_stack_server("adv-garbage")?;
    let sensor = Sensor::start(&[])?;
    let before = sensor.metrics()?;

    // A startup header claiming 20000 bytes: PostgreSQL's limit is 10000.
    let mut oversized = 20000u32.to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0, 3, 0, 0]);
    oversized.extend_from_slice(b"user\0x\0\0");
    let mut s = connect_nodelay(v4())?;
    let oversized_port = s.local_addr()?.port();
    s.write_all(&oversized)?;
    drop(s);

    // A startup that claims 200 bytes but stops after 30, then hangs up.
    let mut truncated = startup_message(&[("user", "trunc"), ("database", "d")]);
    truncated[0..4].copy_from_slice(&200u32.to_be_bytes());
    truncated.truncate(30);
    let mut s = connect_nodelay(v4())?;
    let truncated_port = s.local_addr()?.port();
    s.write_all(&truncated)?;
    thread::sleep(Duration::from_millis(50));
    drop(s);

    // Seeded garbage: the kernel must say what the shared classifier says, never plaintext.
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut garbage = Vec::new();
    for i in 0..24 {
        let len = 1 + (i * 7) % 48;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect();
        let mut s = connect_nodelay(v4())?;
        let port = s.local_addr()?.port();
        s.write_all(&bytes)?;
        thread::sleep(Duration::from_millis(20));
        drop(s);
        garbage.push((port, bytes));
    }
    thread::sleep(Duration::from_millis(300));

    let f = finding_of_port(&sensor, oversized_port)?;
    assert_eq!((&f["verdict"], &f["reason"]), (&"unknown".into(), &"not_pgwire".into()));
    let f = finding_of_port(&sensor, truncated_port)?;
    assert_eq!(f["verdict"], "plaintext", "its header is a startup: a plaintext attempt");
    assert_eq!(f["startup"]["truncated"], true);

    let mut expected_unknown = 1.0; // the oversized one
    for (port, bytes) in &garbage {
        // What the shared tracker decides for these bytes followed by the close.
        let mut tracker = Tracker::NEW;
        tracker.client_message(classify_bytes(bytes));
        tracker.closed(true);
        let expected = tracker.verdict().expect("bytes then a close get a verdict").name();
        assert_ne!(
            expected, "plaintext",
            "seeded garbage happens to be a startup; pick a new seed"
        );
        let found = findings_of_port(&sensor, *port);
        if ["tls", "tls_direct", "gssenc"].contains(&expected) {
            assert!(found.is_empty(), "{bytes:?}: {found:?}");
        } else {
            assert_eq!(found.len(), 1, "{bytes:?}: {found:?}");
            assert_eq!(found[0]["verdict"], expected, "{bytes:?}");
            expected_unknown += (expected == "unknown") as u8 as f64;
        }
    }
    let after = sensor.metrics()?;
    let delta = |v: &str| after.sessions(v, "client") - before.sessions(v, "client");
    assert_eq!(delta("plaintext"), 1.0, "only the truncated startup");
    assert_eq!(delta("unknown"), expected_unknown);
    drop(pg);
    Ok(())
}

#[test]
fn ipv6_and_v4_mapped_sessions_are_attributed() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = dual_stack_server("adv-ipv6")?;
    let sensor = Sensor::start(&[])?;
    let msg = startup_message(&[("user", "postgres")]);

    let mut six = TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, DB_PORT)))?;
    six.set_read_timeout(Some(Duration::from_secs(5)))?;
    let six_port = six.local_addr()?.port();
    six.write_all(&msg)?;
    assert_eq!(first_reply(&mut six), Some(b'R'));

    // An AF_INET6 socket connecting to ::ffff:127.0.0.1: IPv4 on the wire.
    let mapped_addr = SocketAddrV6::new(Ipv4Mapped::of([127, 0, 0, 1]), DB_PORT, 0, 0);
    let mut mapped = TcpStream::connect(mapped_addr)?;
    mapped.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mapped_port = mapped.local_addr()?.port();
    mapped.write_all(&msg)?;
    assert_eq!(first_reply(&mut mapped), Some(b'R'));

    let me = std::process::id();
    let f = finding_of_port(&sensor, six_port)?;
    assert_eq!(
        (&f["verdict"], &f["dst"]["ip"], &f["src"]["ip"]),
        (&"plaintext".into(), &"::1".into(), &"::1".into())
    );
    assert_eq!(f["process"]["pid"], me);
    let f = finding_of_port(&sensor, mapped_port)?;
    assert_eq!((&f["verdict"], &f["dst"]["ip"]), (&"plaintext".into(), &"127.0.0.1".into()));
    assert_eq!(f["process"]["pid"], me, "the connect6 hook attributed the v4-mapped socket");
    drop(pg);
    Ok(())
}

struct Ipv4Mapped;
impl Ipv4Mapped {
    fn of(octets: [u8; 4]) -> Ipv6Addr {
        std::net::Ipv4Addr::from(octets).to_ipv6_mapped()
    }
}

#[test]
fn tcp_fast_open_data_in_the_syn_is_classified_once() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = dual_stack_server("adv-tfo")?;
    let _tfo = FastOpenSysctl::client_without_cookie()?;
    let sensor = Sensor::start(&[])?;
    let before = sensor.metrics()?;

    let msg = startup_message(&[("user", "postgres"), ("application_name", "fast-open")]);
    let mut s = fast_open_send(v4(), &msg)?;
    let port = s.local_addr()?.port();
    // The server does not accept data in the SYN: the kernel sends it again after the
    // handshake. The sensor must count the session once.
    assert_eq!(first_reply(&mut s), Some(b'R'));
    drop(s);

    let f = finding_of_port(&sensor, port)?;
    assert_eq!(f["verdict"], "plaintext");
    assert_eq!(f["fast_open"], true);
    assert_eq!(f["startup"]["application_name"], "fast-open");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(findings_of_port(&sensor, port).len(), 1);
    let after = sensor.metrics()?;
    assert_eq!(after.sessions("plaintext", "client") - before.sessions("plaintext", "client"), 1.0);
    drop(pg);
    Ok(())
}

#[test]
fn connections_opened_before_start_are_judged_only_from_a_proven_byte_zero() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = dual_stack_server("adv-before")?;
    let msg = startup_message(&[("user", "postgres"), ("application_name", "early-bird")]);

    // Connected before the sensor, first byte after: the socket proves byte 0. Mid-session
    // before the sensor: its later bytes must never look like a session start.
    let OpenedBeforeStart { mut idle, idle_port, mut busy, busy_port } =
        OpenedBeforeStart::open(&msg)?;

    let sensor = Sensor::start(&[])?;
    let before = sensor.metrics()?;
    idle.write_all(&msg)?;
    assert_eq!(first_reply(&mut idle), Some(b'R'));
    // A simple Query on the busy connection, and a fake "startup" in the middle of it.
    busy.write_all(b"Q\0\0\0\rselect 1\0")?;
    busy.write_all(&msg)?;
    thread::sleep(Duration::from_millis(300));

    let f = finding_of_port(&sensor, idle_port)?;
    assert_eq!(f["verdict"], "plaintext");
    assert_eq!(f["opened_before_start"], true);
    assert!(f.get("process").is_none(), "no connect() was seen: no process is claimed");
    assert_eq!(f["startup"]["application_name"], "early-bird");
    assert!(findings_of_port(&sensor, busy_port).is_empty());
    let after = sensor.metrics()?;
    assert_eq!(after.sessions("plaintext", "client") - before.sessions("plaintext", "client"), 1.0);
    assert_eq!(after.sessions("unknown", "client") - before.sessions("unknown", "client"), 0.0);
    drop(pg);
    Ok(())
}

/// `--kernel-log` says, per connection, why the kernel followed it or not; without the flag
/// the same traffic logs nothing from the kernel.
#[test]
fn kernel_log_says_which_connections_were_adopted_and_which_not() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = dual_stack_server("adv-kernel-log")?;
    let msg = startup_message(&[("user", "postgres"), ("application_name", "kernel-log")]);
    for kernel_log in [true, false] {
        let OpenedBeforeStart { mut idle, idle_port, mut busy, busy_port } =
            OpenedBeforeStart::open(&msg)?;
        let sensor = Sensor::start(if kernel_log { &["--kernel-log"] } else { &[] })?;
        idle.write_all(&msg)?;
        assert_eq!(first_reply(&mut idle), Some(b'R'));
        busy.write_all(b"Q\0\0\0\rselect 1\0")?;
        thread::sleep(Duration::from_millis(500));
        // The kernel's judgement is the same either way.
        assert_eq!(finding_of_port(&sensor, idle_port)?["opened_before_start"], true);
        let log = sensor.stderr();
        let adopted = format!("port {idle_port} -> {}: adopted", pg.port);
        let not_adopted = format!("port {busy_port} -> {}: not adopted", pg.port);
        if kernel_log {
            assert!(log.contains(&adopted), "{adopted:?} missing from:\n{log}");
            assert!(log.contains(&not_adopted), "{not_adopted:?} missing from:\n{log}");
        } else {
            assert!(!log.contains("adopted"), "no kernel log without --kernel-log:\n{log}");
        }
        sensor.stop()?;
    }
    drop(pg);
    Ok(())
}

#[test]
fn a_full_ring_buffer_loses_evidence_but_never_counts() -> anyhow::Result<()> {
    let _serial = serial();
    let pg = dual_stack_server("adv-overflow")?;
    // One page: a handful of events fit.
    let sensor = Sensor::start(&["--ring-buffer-bytes", "4096"])?;
    let before = sensor.metrics()?;
    let lost_before = before.sum("pgwire_sensor_events_lost_total", &[("kind", "session")]);

    // Freeze the agent so nothing drains while the sessions happen.
    unsafe { libc::kill(sensor.pid() as i32, libc::SIGSTOP) };
    const SESSIONS: usize = 40;
    let msg = startup_message(&[("user", "postgres"), ("application_name", "flood")]);
    let mut ports = Vec::new();
    for _ in 0..SESSIONS {
        let mut s = connect_nodelay(v4())?;
        ports.push(s.local_addr()?.port());
        s.write_all(&msg)?;
        assert_eq!(first_reply(&mut s), Some(b'R'));
    }
    unsafe { libc::kill(sensor.pid() as i32, libc::SIGCONT) };
    thread::sleep(Duration::from_millis(1500)); // findings waiting for auth expire

    let after = sensor.metrics()?;
    let counted = after.sessions("plaintext", "client") - before.sessions("plaintext", "client");
    let lost = after.sum("pgwire_sensor_events_lost_total", &[("kind", "session")]) - lost_before;
    let reported = ports.iter().filter(|p| !findings_of_port(&sensor, **p).is_empty()).count();
    assert_eq!(counted, SESSIONS as f64, "every session counted despite the full ring");
    assert!(lost > 0.0, "the ring must have overflowed for this test to mean anything");
    assert_eq!(reported as f64 + lost, SESSIONS as f64, "each session reported or counted as lost");
    drop(pg);
    Ok(())
}

#[test]
fn retransmitted_segments_are_counted_once_and_reassembled() -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    use tests::netem::{total_retransmits, FlowLoss};
    let _serial = serial();
    let pg = dual_stack_server("adv-loss")?;
    let sensor = Sensor::start(&[])?;
    let before = sensor.metrics()?;
    let msg = startup_from("lossy-link");

    // Retry until the kernel really retransmitted something (loss is random).
    let mut sessions = 0.0;
    let mut retransmitted = false;
    for attempt in 0..6 {
        let socket = std::net::TcpListener::bind("127.0.0.1:0")?; // reserve a port
        let port = socket.local_addr()?.port();
        drop(socket);
        let _loss = FlowLoss::start(port, DB_PORT, 35)?;
        let s = socket2_connect(port)?;
        let mut s = s;
        send_in_pieces(&mut s, &msg, 7)?;
        assert_eq!(first_reply(&mut s), Some(b'R'), "the server got the whole startup");
        let retransmits = total_retransmits(s.as_raw_fd());
        drop(s);
        sessions += 1.0;
        let f = finding_of_port(&sensor, port)?;
        assert_eq!(f["verdict"], "plaintext", "attempt {attempt}");
        thread::sleep(Duration::from_millis(200));
        assert_eq!(findings_of_port(&sensor, port).len(), 1, "one finding per connection");
        eprintln!("attempt {attempt}: {retransmits} retransmissions");
        if retransmits > 0 {
            assert_eq!(f["startup"]["application_name"], "lossy-link", "{f}");
            retransmitted = true;
            break;
        }
    }
    let after = sensor.metrics()?;
    assert_eq!(
        after.sessions("plaintext", "client") - before.sessions("plaintext", "client"),
        sessions
    );
    assert!(retransmitted, "no attempt lost a packet: the test proved nothing");
    drop(pg);
    Ok(())
}

/// Connect from a chosen local port (so the loss filter can match it), Nagle off.
fn socket2_connect(local_port: u16) -> anyhow::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a fresh fd handed to TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        anyhow::ensure!(fd >= 0, "socket failed");
        let s = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        );
        let local = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: local_port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be() },
            sin_zero: [0; 8],
        };
        anyhow::ensure!(
            libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), 16) == 0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        let remote = libc::sockaddr_in { sin_port: DB_PORT.to_be(), ..local };
        anyhow::ensure!(
            libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), 16) == 0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(s)
    }
}
