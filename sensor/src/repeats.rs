//! One line per misconfigured app, not one per session, and never a session uncounted.
//!
//! Sessions with the same identity (verdict, severity, role, the process's identity, the
//! destination, the database user and database; the host is the sensor's own) are one
//! problem. The first session of an identity is written at once, in full. Further sessions
//! of it within the repeat window are counted; when the window closes, one summary line
//! says how many (`sessions`), when (`repeats.first_seen`, `repeats.last_seen`) and a few
//! sample client ports and pids. A window that closes with nothing counted forgets the
//! identity. Every line's `sessions` adds up to the sessions seen: a SIEM sums them.
//!
//! Windows run on the sessions' own times, so `sensor analyze` aggregates a capture the way
//! the live sensor aggregates the traffic. The table is bounded: when it is full, the
//! identity whose window opened first is closed early (its summary written, counted as an
//! eviction), so memory stays bounded and nothing counted is lost.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use sensor_common::verdict::{Role, Severity, Verdict};

use crate::finding::{new_id, Finding, Repeats};

/// Identities followed at once at most.
pub const MAX_IDENTITIES: usize = 4096;
/// Sample client ports and pids kept per summary line.
pub const SAMPLES: usize = 5;

/// What makes two sessions the same problem.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Identity {
    verdict: Verdict,
    severity: Severity,
    role: Role,
    /// exe (or comm when procfs had nothing), redacted command line, and where it runs
    /// (container, pod, systemd unit): two services on one host stay apart.
    process: Option<(String, Option<String>, Option<String>)>,
    dst: (IpAddr, u16),
    user: Option<String>,
    database: Option<String>,
}

/// A finding's identity borrowed from it, to look a window up without copying strings.
/// Field for field as `Identity`, so both hash alike (`String` and `&str` hash as `str`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct IdentityRef<'a> {
    verdict: Verdict,
    severity: Severity,
    role: Role,
    process: Option<(&'a str, Option<&'a str>, Option<&'a str>)>,
    dst: (IpAddr, u16),
    user: Option<&'a str>,
    database: Option<&'a str>,
}

impl<'a> IdentityRef<'a> {
    fn of(f: &'a Finding) -> IdentityRef<'a> {
        IdentityRef {
            verdict: f.verdict,
            severity: f.severity,
            role: f.role,
            process: f.process.as_ref().map(|p| {
                let place = p.container_id.as_deref().or(p.pod_uid.as_deref());
                let place = place.or(p.systemd_unit.as_deref());
                (p.exe.as_deref().unwrap_or(&p.comm), p.cmdline.as_deref(), place)
            }),
            dst: (f.dst.ip, f.dst.port),
            user: f.startup.as_ref().and_then(|s| s.user.as_deref()),
            database: f.startup.as_ref().and_then(|s| s.database.as_deref()),
        }
    }

    fn to_owned(&self) -> Identity {
        let owned = |s: Option<&str>| s.map(str::to_string);
        Identity {
            verdict: self.verdict,
            severity: self.severity,
            role: self.role,
            process: self
                .process
                .map(|(exe, cmdline, place)| (exe.to_string(), owned(cmdline), owned(place))),
            dst: self.dst,
            user: owned(self.user),
            database: owned(self.database),
        }
    }
}

impl hashbrown::Equivalent<Identity> for IdentityRef<'_> {
    fn equivalent(&self, key: &Identity) -> bool {
        fn s(o: &Option<String>) -> Option<&str> {
            o.as_deref()
        }
        self.verdict == key.verdict
            && self.severity == key.severity
            && self.role == key.role
            && self.process
                == key
                    .process
                    .as_ref()
                    .map(|(exe, cmdline, place)| (exe.as_str(), s(cmdline), s(place)))
            && self.dst == key.dst
            && self.user == s(&key.user)
            && self.database == s(&key.database)
    }
}

impl Identity {
    fn of(f: &Finding) -> Identity {
        IdentityRef::of(f).to_owned()
    }
}

/// A stable fingerprint of a finding's identity: 16 hex digits (FNV-1a, 64 bits), the same
/// across restarts and hosts, for the pushed alert's `identity` label.
pub fn fingerprint(finding: &Finding) -> String {
    let text = format!("{:?}", Identity::of(finding));
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// One identity's open window.
struct Window {
    /// When the window closes.
    closes: SystemTime,
    /// The line the summary is made from: the last session counted.
    last: Finding,
    /// Sessions counted since the window opened (not yet written).
    counted: u64,
    first_seen: SystemTime,
    last_seen: SystemTime,
    ports: Vec<u16>,
    pids: Vec<u32>,
}

impl Window {
    fn open(finding: &Finding, window: Duration) -> Window {
        Window {
            closes: finding.ts + window,
            last: finding.clone(),
            counted: 0,
            first_seen: finding.ts,
            last_seen: finding.ts,
            ports: Vec::new(),
            pids: Vec::new(),
        }
    }

    fn count(&mut self, finding: Finding) {
        if self.counted == 0 {
            self.first_seen = finding.ts;
        }
        self.counted += 1;
        self.last_seen = self.last_seen.max(finding.ts);
        if self.ports.len() < SAMPLES && !self.ports.contains(&finding.src.port) {
            self.ports.push(finding.src.port);
        }
        if let Some(pid) = finding.process.as_ref().map(|p| p.pid) {
            if self.pids.len() < SAMPLES && !self.pids.contains(&pid) {
                self.pids.push(pid);
            }
        }
        self.last = finding;
    }

    /// The summary of what was counted (if anything), and the window reset.
    fn summary(&mut self) -> Option<Finding> {
        if self.counted == 0 {
            return None;
        }
        let mut line = self.last.clone();
        line.id = new_id();
        line.ts = self.last_seen;
        line.sessions = self.counted;
        line.socket_cookie = None;
        line.repeats = Some(Repeats {
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            sample_src_ports: std::mem::take(&mut self.ports),
            sample_pids: std::mem::take(&mut self.pids),
        });
        self.counted = 0;
        Some(line)
    }
}

/// The repeat window's bookkeeping; see the module documentation.
pub struct Repeater {
    window: Duration,
    open: hashbrown::HashMap<Identity, Window>,
    max: usize,
    /// Windows closed early because the table was full.
    pub evicted: u64,
}

impl Repeater {
    pub fn new(window: Duration) -> Repeater {
        Repeater::with_capacity(window, MAX_IDENTITIES)
    }

    pub fn with_capacity(window: Duration, max: usize) -> Repeater {
        Repeater { window, open: hashbrown::HashMap::new(), max: max.max(1), evicted: 0 }
    }

    /// A session's finding: the lines to write now (itself when its identity has no open
    /// window, and an evicted identity's summary when the table was full).
    pub fn observe(&mut self, finding: Finding) -> Vec<Finding> {
        if let Some(window) = self.open.get_mut(&IdentityRef::of(&finding)) {
            window.count(finding);
            return Vec::new();
        }
        let identity = Identity::of(&finding);
        let mut out = Vec::new();
        if self.open.len() >= self.max {
            out.extend(self.evict_oldest());
        }
        self.open.insert(identity, Window::open(&finding, self.window));
        out.push(finding);
        out
    }

    /// Summaries of the windows closed by `now`. A window with sessions counted opens anew
    /// (the problem goes on); one without is forgotten.
    pub fn due(&mut self, now: SystemTime) -> Vec<Finding> {
        let mut out = Vec::new();
        let window = self.window;
        self.open.retain(|_, w| {
            if w.closes > now {
                return true;
            }
            match w.summary() {
                Some(line) => {
                    out.push(line);
                    w.closes = now + window;
                    true
                }
                None => false,
            }
        });
        out.sort_by_key(|f| f.ts);
        out
    }

    /// Every pending summary now (SIGTERM, SIGHUP, the end of a capture); windows stay open.
    pub fn flush(&mut self) -> Vec<Finding> {
        let mut out: Vec<Finding> = self.open.values_mut().filter_map(Window::summary).collect();
        out.sort_by_key(|f| f.ts);
        out
    }

    /// Identities with an open window.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    fn evict_oldest(&mut self) -> Option<Finding> {
        let oldest = self.open.iter().min_by_key(|(_, w)| w.closes).map(|(k, _)| k.clone())?;
        let mut window = self.open.remove(&oldest)?;
        self.evicted += 1;
        window.summary()
    }
}

#[cfg(test)]
mod tests;
