//! Findings of plaintext sessions wait (briefly, bounded) for their authentication outcome,
//! which the kernel reports in a second event once the server and client have spoken.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

// hashbrown's default hasher (foldhash) rather than std's SipHash: the keys are the
// kernel's socket cookies, not input an attacker chooses, and every plaintext session
// inserts and removes one.
use hashbrown::HashMap;

use sensor_common::tracker::AuthMethod;

use crate::{finding::Finding, session::apply_auth};

/// Most findings held at once; past it the oldest is written without waiting further.
pub const MAX_WAITING: usize = 4096;

pub struct PendingAuth {
    wait: Duration,
    waiting: HashMap<u64, Finding>,
    /// (deadline, cookie) in arrival order; deadlines only grow, so the front expires first.
    deadlines: VecDeque<(Instant, u64)>,
}

impl PendingAuth {
    pub fn new(wait: Duration) -> Self {
        PendingAuth { wait, waiting: HashMap::new(), deadlines: VecDeque::new() }
    }

    /// Hold `finding` until its auth event or its deadline. Returns a finding that must be
    /// written now to keep the bound (the oldest one), if any.
    pub fn hold(&mut self, cookie: u64, finding: Finding, now: Instant) -> Option<Finding> {
        let evicted = if self.waiting.len() >= MAX_WAITING { self.pop_oldest() } else { None };
        self.waiting.insert(cookie, finding);
        self.deadlines.push_back((now + self.wait, cookie));
        evicted
    }

    /// The auth outcome arrived: the completed finding, if it was waiting.
    pub fn resolve(
        &mut self,
        cookie: u64,
        method: AuthMethod,
        password_sent: bool,
    ) -> Option<Finding> {
        let mut finding = self.waiting.remove(&cookie)?;
        apply_auth(&mut finding, method, password_sent);
        Some(finding)
    }

    /// Findings whose wait is over, to be written without an auth outcome.
    pub fn expired(&mut self, now: Instant) -> Vec<Finding> {
        let mut out = Vec::new();
        while let Some(&(deadline, cookie)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(f) = self.waiting.remove(&cookie) {
                out.push(f);
            }
        }
        out
    }

    /// Everything still waiting (at shutdown).
    pub fn drain(&mut self) -> Vec<Finding> {
        self.deadlines.clear();
        self.waiting.drain().map(|(_, f)| f).collect()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    fn pop_oldest(&mut self) -> Option<Finding> {
        while let Some((_, cookie)) = self.deadlines.pop_front() {
            if let Some(f) = self.waiting.remove(&cookie) {
                return Some(f);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::verdict::Severity;

    fn finding(cookie: u64) -> Finding {
        Finding { socket_cookie: Some(cookie), auth: None, ..Finding::example() }
    }

    #[test]
    fn auth_completes_a_waiting_finding_and_cleartext_is_critical() {
        let mut p = PendingAuth::new(Duration::from_secs(1));
        let now = Instant::now();
        assert!(p.hold(7, finding(7), now).is_none());
        let f = p.resolve(7, AuthMethod::Cleartext, true).unwrap();
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.auth.unwrap().method, AuthMethod::Cleartext);
        assert!(p.resolve(7, AuthMethod::Trust, false).is_none(), "resolved only once");
    }

    #[test]
    fn md5_and_unsent_passwords_stay_high() {
        let mut p = PendingAuth::new(Duration::from_secs(1));
        p.hold(1, finding(1), Instant::now());
        p.hold(2, finding(2), Instant::now());
        assert_eq!(p.resolve(1, AuthMethod::Md5, true).unwrap().severity, Severity::High);
        assert_eq!(p.resolve(2, AuthMethod::Cleartext, false).unwrap().severity, Severity::High);
    }

    #[test]
    fn unresolved_findings_expire_in_order() {
        let mut p = PendingAuth::new(Duration::from_millis(100));
        let t0 = Instant::now();
        p.hold(1, finding(1), t0);
        p.hold(2, finding(2), t0 + Duration::from_millis(50));
        assert!(p.expired(t0 + Duration::from_millis(99)).is_empty());
        let first = p.expired(t0 + Duration::from_millis(100));
        assert_eq!(first.iter().map(|f| f.socket_cookie.unwrap()).collect::<Vec<_>>(), vec![1]);
        assert!(first[0].auth.is_none());
        assert_eq!(p.expired(t0 + Duration::from_secs(1)).len(), 1);
        assert!(p.is_empty());
    }

    #[test]
    fn the_wait_is_bounded() {
        let mut p = PendingAuth::new(Duration::from_secs(60));
        let now = Instant::now();
        for cookie in 0..MAX_WAITING as u64 {
            assert!(p.hold(cookie, finding(cookie), now).is_none());
        }
        let evicted = p.hold(u64::MAX, finding(u64::MAX), now).unwrap();
        assert_eq!(evicted.socket_cookie, Some(0), "the oldest goes out first");
        assert_eq!(p.len(), MAX_WAITING);
        assert_eq!(p.drain().len(), MAX_WAITING);
    }
}
