//! A client that refuses the server's certificate and then tries again in plaintext:
//! libpq under `sslmode=prefer` (the default) does exactly that on a new socket, so a man in
//! the middle with a forged certificate gets a plaintext session from every client that
//! verifies but does not insist. The kernel judges the two sessions apart (`tls_rejected`,
//! then `plaintext`); this joins them: the plaintext finding names the rejected session.

use std::{
    collections::VecDeque,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use sensor_common::verdict::Verdict;

use crate::finding::{Finding, RetryOf};

/// How long after a rejection a plaintext session of the same process to the same server
/// counts as its retry (libpq retries at once; a human re-running a command takes longer).
pub const RETRY_WINDOW: Duration = Duration::from_secs(10);
/// Rejections remembered at once (oldest forgotten first).
const REMEMBERED: usize = 256;

struct Rejection {
    pid: u32,
    dst: (IpAddr, u16),
    ts: SystemTime,
    socket_cookie: Option<u64>,
}

#[derive(Default)]
pub struct Retries {
    recent: VecDeque<Rejection>,
}

impl Retries {
    /// Remember `finding` if it is a rejection with a process; link it to the rejection it
    /// retries if it is a plaintext or downgraded session of the same process and server.
    pub fn observe(&mut self, finding: &mut Finding) {
        let Some(pid) = finding.process.as_ref().map(|p| p.pid) else { return };
        let dst = (finding.dst.ip, finding.dst.port);
        match finding.verdict {
            Verdict::TlsRejected => {
                if self.recent.len() == REMEMBERED {
                    self.recent.pop_front();
                }
                self.recent.push_back(Rejection {
                    pid,
                    dst,
                    ts: finding.ts,
                    socket_cookie: finding.socket_cookie,
                });
            }
            Verdict::Plaintext | Verdict::Downgraded => {
                let retried = self.recent.iter().rev().find(|r| {
                    r.pid == pid
                        && r.dst == dst
                        && finding.ts.duration_since(r.ts).is_ok_and(|d| d <= RETRY_WINDOW)
                });
                if let Some(r) = retried {
                    finding.retry_of = Some(RetryOf {
                        verdict: Verdict::TlsRejected,
                        ts: r.ts,
                        socket_cookie: r.socket_cookie,
                    });
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(verdict: Verdict, pid: u32, port: u16, at_ms: u64) -> Finding {
        let mut f = Finding::example();
        f.verdict = verdict;
        f.process.as_mut().unwrap().pid = pid;
        f.dst.port = port;
        f.ts = SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms);
        f.socket_cookie = Some(at_ms);
        f
    }

    #[test]
    fn a_plaintext_retry_of_the_same_process_and_server_names_the_rejection() {
        let mut retries = Retries::default();
        let mut rejected = finding(Verdict::TlsRejected, 7, 26257, 1_000);
        retries.observe(&mut rejected);
        assert!(rejected.retry_of.is_none());
        let mut retry = finding(Verdict::Plaintext, 7, 26257, 1_050);
        retries.observe(&mut retry);
        let link = retry.retry_of.expect("linked");
        assert_eq!((link.verdict, link.socket_cookie), (Verdict::TlsRejected, Some(1_000)));
        // Another process, another server, or too late: not a retry.
        for (pid, port, at) in [(8, 26257, 1_050), (7, 5432, 1_050), (7, 26257, 12_000)] {
            let mut other = finding(Verdict::Plaintext, pid, port, at);
            retries.observe(&mut other);
            assert!(other.retry_of.is_none(), "{pid} {port} {at}");
        }
    }
}
