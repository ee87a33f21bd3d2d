//! Multi-threaded load: short sessions as fast as possible, or one long bulk stream.

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
}

impl Session {
    pub fn name(self) -> &'static str {
        match self {
            Session::Plaintext => "plaintext_startup",
            Session::Downgrade => "ssl_n_startup",
            Session::Tls => "ssl_s_client_hello",
        }
    }

    /// The verdict the sensor must count for it.
    pub fn verdict(self) -> Verdict {
        match self {
            Session::Plaintext => Verdict::Plaintext,
            Session::Downgrade => Verdict::Downgraded,
            Session::Tls => Verdict::Tls,
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
