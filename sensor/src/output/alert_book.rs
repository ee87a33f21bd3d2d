//! One Alertmanager alert per identity (the app, the destination, the database user and
//! database, the verdict and severity), not one per session: a burst of ten thousand
//! sessions from one misconfigured app is one alert whose annotations carry the running
//! count and the last time.
//!
//! An identity's alert is pushed at once, pushed again while its sessions go on (at most
//! every `REPUSH_EVERY`, with the new count), and pushed resolved when none came for
//! `RESOLVE_AFTER`. Its `endsAt` always lies `RESOLVE_AFTER` past the last session, so a
//! sensor that stops resolves nothing it should not, and Alertmanager resolves on its own
//! what the sensor can no longer say is over.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use super::alertmanager::{alert_for, Alert, AlertSource, Tally};
use crate::{finding::Finding, repeats::fingerprint};

/// How often an identity's alert is pushed again while its sessions go on, at most.
pub const REPUSH_EVERY: Duration = Duration::from_secs(5);
/// An identity's alert resolves when none of its sessions came for this long.
pub const RESOLVE_AFTER: Duration = Duration::from_secs(300);
/// Identities with an open alert at most; past it the quietest is forgotten (its alert
/// resolves in Alertmanager at its `endsAt`).
pub const MAX_OPEN: usize = 4096;

struct Open {
    latest: Finding,
    tally: Tally,
    /// When it was last pushed, and whether something changed since.
    pushed: SystemTime,
    changed: bool,
}

/// The open alerts, by identity.
pub struct AlertBook {
    source: AlertSource,
    open: HashMap<String, Open>,
}

impl AlertBook {
    pub fn new(source: AlertSource) -> AlertBook {
        AlertBook { source, open: HashMap::new() }
    }

    /// A session's finding (`sessions` of them for a summary line is never passed here:
    /// every session comes one by one). The alert to push now, if any.
    pub fn observe(&mut self, finding: &Finding, now: SystemTime) -> Option<Alert> {
        let identity = fingerprint(finding);
        if let Some(open) = self.open.get_mut(&identity) {
            open.tally.sessions += 1;
            open.tally.last_seen = open.tally.last_seen.max(finding.ts);
            open.tally.ends_at = open.tally.last_seen + RESOLVE_AFTER;
            open.latest = finding.clone();
            open.changed = true;
            if now.duration_since(open.pushed).unwrap_or_default() < REPUSH_EVERY {
                return None;
            }
            open.pushed = now;
            open.changed = false;
            return Some(alert_for(&open.latest, &open.tally, &self.source));
        }
        if self.open.len() >= MAX_OPEN {
            self.forget_quietest();
        }
        let tally = Tally {
            identity: identity.clone(),
            sessions: 1,
            first_seen: finding.ts,
            last_seen: finding.ts,
            ends_at: finding.ts + RESOLVE_AFTER,
        };
        let alert = alert_for(finding, &tally, &self.source);
        self.open
            .insert(identity, Open { latest: finding.clone(), tally, pushed: now, changed: false });
        Some(alert)
    }

    /// What to push at `now`: updates held back by `REPUSH_EVERY`, and alerts resolved
    /// because their identity went quiet (then forgotten).
    pub fn tick(&mut self, now: SystemTime) -> Vec<Alert> {
        let mut out = Vec::new();
        let source = &self.source;
        self.open.retain(|_, open| {
            if now.duration_since(open.tally.last_seen).unwrap_or_default() >= RESOLVE_AFTER {
                open.tally.ends_at = now;
                out.push(alert_for(&open.latest, &open.tally, source));
                return false;
            }
            if open.changed && now.duration_since(open.pushed).unwrap_or_default() >= REPUSH_EVERY {
                open.pushed = now;
                open.changed = false;
                out.push(alert_for(&open.latest, &open.tally, source));
            }
            true
        });
        out
    }

    /// Identities with an open alert.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    fn forget_quietest(&mut self) {
        let quietest =
            self.open.iter().min_by_key(|(_, o)| o.tally.last_seen).map(|(k, _)| k.clone());
        if let Some(key) = quietest {
            self.open.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(instance: &str) -> AlertBook {
        AlertBook::new(AlertSource {
            instance: instance.into(),
            generator_url: "http://x/".into(),
            runbook_base: "file:///runbooks".into(),
        })
    }

    fn at(secs: u64) -> SystemTime {
        Finding::example_time(secs)
    }

    fn session(app: &str, secs: u64) -> Finding {
        Finding::example_of(app, secs)
    }

    #[test]
    fn ten_thousand_sessions_of_one_app_are_one_alert_with_a_running_count() {
        let mut book = book("node-1");
        let mut pushed = Vec::new();
        // 10,000 sessions over 100 s.
        for i in 0..10_000u64 {
            let now = at(i / 100);
            pushed.extend(book.observe(&session("flask", i / 100), now));
            pushed.extend(book.tick(now));
        }
        assert_eq!(book.len(), 1);
        let identities: std::collections::HashSet<_> =
            pushed.iter().map(|a| a.labels["identity"].clone()).collect();
        assert_eq!(identities.len(), 1, "one alert");
        assert!(pushed.len() <= 100 / 5 + 2, "pushed at most every 5 s: {}", pushed.len());
        // The last sessions were held back (pushed less than 5 s before): the next tick
        // pushes them.
        let held_back = book.tick(at(100));
        assert_eq!(held_back.len(), 1);
        let last = &held_back[0];
        assert_eq!(last.annotations["sessions"], "10000");
        assert_eq!(last.labels["severity"], "warning");
        assert_eq!(last.labels["sensor_severity"], "high");
        assert_eq!(last.labels["instance"], "node-1");
        assert_eq!(last.starts_at, crate::finding::format_ts(at(0)));
        assert_eq!(last.ends_at, crate::finding::format_ts(at(99) + RESOLVE_AFTER));

        // Quiet for RESOLVE_AFTER: pushed once more, resolved, and forgotten.
        let resolved = book.tick(at(99) + RESOLVE_AFTER);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].ends_at, crate::finding::format_ts(at(99) + RESOLVE_AFTER));
        assert!(resolved[0].annotations["sessions"].parse::<u64>().unwrap() == 10_000);
        assert!(book.is_empty());
    }

    #[test]
    fn two_apps_are_two_alerts_and_a_held_back_update_is_pushed_by_the_tick() {
        let mut book = book("h");
        let a = book.observe(&session("flask", 0), at(0)).unwrap();
        let b = book.observe(&session("billing", 0), at(0)).unwrap();
        assert_ne!(a.labels["identity"], b.labels["identity"]);
        assert!(book.observe(&session("flask", 1), at(1)).is_none(), "held back");
        assert!(book.tick(at(4)).is_empty());
        let update = book.tick(at(5));
        assert_eq!(update.len(), 1);
        assert_eq!(update[0].annotations["sessions"], "2");
        assert!(book.tick(at(10)).is_empty(), "nothing new: nothing pushed");
    }
}
