//! Finding latency: from the client's send of its StartupMessage to the finding line the
//! agent writes for that session. The agent writes findings to a pipe the bench reads; a
//! finding is matched to its session by the client's source port (first unmatched send on
//! that port, since ports are reused across a run).

use std::{
    collections::{HashMap, VecDeque},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use super::loadgen::startup_message;

/// A send older than this without its finding is given up on.
const STALE: Duration = Duration::from_secs(2);

pub struct Latency {
    pub sent: u64,
    pub matched: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The agent's CPU per 1,000 sessions at this steady rate (set by the caller, which
    /// owns the sensor process): at a low rate each session pays for its own wakeup.
    pub cpu_ms_per_1000: Option<f64>,
}

/// The client's port in a client-role finding line: `"src":{"ip":"...","port":N}`.
fn client_port(line: &str) -> Option<u16> {
    let src = &line[line.find("\"src\":")?..];
    let port = &src[src.find("\"port\":")? + 7..];
    port[..port.find(|c: char| !c.is_ascii_digit())?].parse().ok()
}

/// Plaintext sessions at `rate` per second for `duration`, one at a time, each timed from
/// its StartupMessage send to its finding line.
pub fn measure(
    addr: SocketAddr,
    rate: f64,
    duration: Duration,
    findings: &mpsc::Receiver<(Instant, String)>,
) -> Latency {
    let startup = startup_message();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut sends: HashMap<u16, VecDeque<Instant>> = HashMap::new();
    let mut sent = 0u64;
    let mut latencies = Vec::new();
    let mut collect = |sends: &mut HashMap<u16, VecDeque<Instant>>, wait: Duration| {
        while let Ok((at, line)) = findings.recv_timeout(wait) {
            let Some(port) = client_port(&line) else { continue };
            if let Some(sent_at) = sends.get_mut(&port).and_then(VecDeque::pop_front) {
                latencies.push(at.duration_since(sent_at).as_secs_f64() * 1000.0);
            }
        }
    };
    while started.elapsed() < duration {
        let due = started + interval * sent as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        if one_timed_session(addr, &startup, &mut sends).is_some() {
            sent += 1;
        }
        collect(&mut sends, Duration::ZERO);
    }
    collect(&mut sends, Duration::from_secs(2));
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        latencies[((latencies.len() - 1) as f64 * p).round() as usize]
    };
    Latency {
        sent,
        matched: latencies.len() as u64,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        cpu_ms_per_1000: None,
    }
}

fn one_timed_session(
    addr: SocketAddr,
    startup: &[u8],
    sends: &mut HashMap<u16, VecDeque<Instant>>,
) -> Option<()> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_nodelay(true).ok()?;
    let port = s.local_addr().ok()?.port();
    let at = Instant::now();
    s.write_all(startup).ok()?;
    let mut reply = [0u8; 9];
    s.read_exact(&mut reply).ok()?;
    // Only sessions that completed are counted as sent and waited for. A port's earlier
    // send whose finding never came is dropped, so a later session on the port is not
    // matched against it.
    let queue = sends.entry(port).or_default();
    queue.retain(|t| at.duration_since(*t) < STALE);
    queue.push_back(at);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::client_port;

    #[test]
    fn finds_the_client_port() {
        let line = r#"{"ts":"x","verdict":"plaintext","src":{"ip":"127.0.0.1","port":41234},"dst":{"ip":"127.0.0.1","port":26257}}"#;
        assert_eq!(client_port(line), Some(41234));
        assert_eq!(client_port("{}"), None);
    }
}
