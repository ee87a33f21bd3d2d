//! Multi-threaded load: short sessions as fast as possible, one long bulk stream, or round
//! trips on persistent connections.

use anyhow::Context;
use sensor_common::verdict::Verdict;
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

/// What each short session sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Session {
    /// A plaintext StartupMessage.
    Plaintext,
    /// SSLRequest, the server says N, then a StartupMessage.
    Downgrade,
    /// SSLRequest, the server says S, then a ClientHello.
    Tls,
    /// SSLRequest, the server says N, and the client gives up (`sslmode=require`).
    Refused,
    /// A plaintext StartupMessage, and a password in clear when the server asks for one
    /// (`server::spawn_password`).
    Password,
}

impl Session {
    pub fn name(self) -> &'static str {
        match self {
            Session::Plaintext => "plaintext_startup",
            Session::Downgrade => "ssl_n_startup",
            Session::Tls => "ssl_s_client_hello",
            Session::Refused => "ssl_n_close",
            Session::Password => "plaintext_cleartext_password",
        }
    }

    /// The verdict the sensor must count for it.
    pub fn verdict(self) -> Verdict {
        match self {
            Session::Plaintext => Verdict::Plaintext,
            Session::Downgrade => Verdict::Downgraded,
            Session::Tls => Verdict::Tls,
            Session::Refused => Verdict::Refused,
            Session::Password => Verdict::Plaintext,
        }
    }
}

pub fn startup_message() -> Vec<u8> {
    sensor_common::test_util::startup_message(&[
        ("user", "bench"),
        ("database", "bench"),
        ("application_name", "loadgen"),
    ])
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// PasswordMessage `p` with the password "bench" (a test value, in clear by design).
const PASSWORD_MESSAGE: [u8; 11] = [b'p', 0, 0, 0, 10, b'b', b'e', b'n', b'c', b'h', 0];
const CLIENT_HELLO: [u8; 11] = [0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03];

fn one_session(addr: SocketAddr, kind: Session, startup: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut byte = [0u8; 1];
    match kind {
        Session::Plaintext => s.write_all(startup)?,
        Session::Downgrade => {
            s.write_all(&SSL_REQUEST)?;
            s.read_exact(&mut byte)?;
            s.write_all(startup)?;
        }
        Session::Tls => {
            s.write_all(&SSL_REQUEST)?;
            s.read_exact(&mut byte)?;
            s.write_all(&CLIENT_HELLO)?;
            return Ok(());
        }
        Session::Refused => {
            s.write_all(&SSL_REQUEST)?;
            return s.read_exact(&mut byte);
        }
        Session::Password => {
            s.write_all(startup)?;
            let mut ask = [0u8; 9];
            s.read_exact(&mut ask)?;
            s.write_all(&PASSWORD_MESSAGE)?;
        }
    }
    let mut reply = [0u8; 9];
    s.read_exact(&mut reply)?;
    Ok(())
}

pub struct Burst {
    pub sessions: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Burst {
    pub fn per_second(&self) -> f64 {
        self.sessions as f64 / self.elapsed.as_secs_f64()
    }
}

/// `threads` clients opening sessions back to back until `duration` or `limit` sessions.
pub fn sessions(
    addr: SocketAddr,
    kind: Session,
    threads: usize,
    duration: Duration,
    limit: u64,
) -> Burst {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (done, errors, stop) = (done.clone(), errors.clone(), stop.clone());
            thread::spawn(move || {
                let startup = startup_message();
                while !stop.load(Ordering::Relaxed) {
                    if done.fetch_add(1, Ordering::Relaxed) >= limit {
                        done.fetch_sub(1, Ordering::Relaxed);
                        break;
                    }
                    if one_session(addr, kind, &startup).is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    while started.elapsed() < duration && workers.iter().any(|w| !w.is_finished()) {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    Burst {
        sessions: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    }
}

/// One connection writing 64 KiB blocks for `duration`: bytes per second.
pub fn bulk(addr: SocketAddr, duration: Duration) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(addr)?;
    let block = vec![0x42u8; 64 * 1024];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        s.write_all(&block)?;
        sent += block.len() as u64;
    }
    Ok(sent as f64 / started.elapsed().as_secs_f64())
}

/// Bytes of each request and each response in the round-trip workloads.
pub const ECHO_BLOCK: usize = 64;

/// Round trips before the measured ones, not counted: the connections and the caches
/// settle, and every run (detached or attached) has the same shape.
const WARM_UP: Duration = Duration::from_millis(200);

/// `threads` persistent connections to an echo server, each writing [`ECHO_BLOCK`] bytes
/// and reading them back in a loop: round trips per second over `duration`, after
/// [`WARM_UP`]. With `startup`, each connection first sends a plaintext StartupMessage and
/// reads the AuthenticationOk, so on a watched port the sensor has decided its verdict
/// before the loop. The connections open here, inside the run: opened after an attach, they
/// are sessions the sensor judges, not ones it found already open.
pub fn round_trips(
    addr: SocketAddr,
    startup: bool,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let connections = (0..threads)
        .map(|_| echo_connection(addr, startup))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("connecting to the echo server {addr}"))?;
    let measure_from = Instant::now() + WARM_UP;
    let until = measure_from + duration;
    let workers: Vec<_> = connections
        .into_iter()
        .map(|s| thread::spawn(move || echo_loop(s, measure_from, until)))
        .collect();
    let mut total = 0;
    for w in workers {
        total += w
            .join()
            .map_err(|_| anyhow::anyhow!("a round-trip thread panicked"))?
            .with_context(|| format!("round trips to {addr}"))?;
    }
    Ok(total as f64 / duration.as_secs_f64())
}

fn echo_connection(addr: SocketAddr, startup: bool) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    // A stuck server fails the run instead of hanging it.
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    if startup {
        s.write_all(&startup_message())?;
        let mut auth_ok = [0u8; 9];
        s.read_exact(&mut auth_ok)?;
        if auth_ok[0] != b'R' {
            return Err(std::io::Error::other("the echo server did not answer AuthenticationOk"));
        }
    }
    Ok(s)
}

/// Round trips completed between `measure_from` and `until`.
fn echo_loop(mut s: TcpStream, measure_from: Instant, until: Instant) -> std::io::Result<u64> {
    let request = [0x42u8; ECHO_BLOCK];
    let mut response = [0u8; ECHO_BLOCK];
    let mut counted = 0;
    loop {
        s.write_all(&request)?;
        s.read_exact(&mut response)?;
        let now = Instant::now();
        if now >= until {
            return Ok(counted);
        }
        if now >= measure_from {
            counted += 1;
        }
    }
}

/// `threads` clients calling connect() at once until `duration`, to a port on 127.0.0.7
/// where nothing listens: the connect() hook's cost on connections that are not watched
/// (it runs before the SYN leaves; the kernel's RST ends each attempt at once). Nothing
/// to accept: a listener's acceptor, starved of CPU by the clients, let its queue fill
/// and the SYNs it dropped stalled connects for a second each (a run made 131 to 10,000
/// connects), and each accepted connection left a port in TIME_WAIT. Returns the
/// connects made.
pub fn connects(threads: usize, duration: Duration) -> anyhow::Result<u64> {
    // A port nothing listens on: one the kernel just gave a listener, closed again.
    let addr = std::net::TcpListener::bind("127.0.0.7:0")?.local_addr()?;
    let made = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let made = made.clone();
            thread::spawn(move || {
                while started.elapsed() < duration {
                    // Refused is the expected end; anything else did not reach the hook.
                    let reached = match TcpStream::connect(addr) {
                        Ok(_) => true,
                        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
                    };
                    if reached {
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(made.load(Ordering::Relaxed))
}
