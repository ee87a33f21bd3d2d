use proptest::prelude::*;

use super::*;
use crate::finding::Finding;

const WINDOW: Duration = Duration::from_secs(60);

fn at(secs: u64) -> SystemTime {
    Finding::example_time(secs)
}

/// A session of app `app` (its exe) at `secs`, from client port `port`, pid `pid`.
fn session(app: &str, secs: u64, port: u16, pid: u32) -> Finding {
    let mut f = Finding::example_of(app, secs);
    f.src.port = port;
    f.process.as_mut().unwrap().pid = pid;
    f
}

fn sessions(lines: &[Finding]) -> u64 {
    lines.iter().map(|f| f.sessions).sum()
}

#[test]
fn the_first_session_is_written_and_the_rest_are_one_summary() {
    let mut r = Repeater::new(WINDOW);
    let first = r.observe(session("flask", 0, 40000, 7));
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].sessions, &first[0].repeats), (1, &None));
    for i in 1..300u64 {
        assert!(r.observe(session("flask", i / 10, 40000 + i as u16, 7 + i as u32)).is_empty());
    }
    assert!(r.due(at(59)).is_empty(), "the window is still open");
    let summary = r.due(at(60));
    assert_eq!(summary.len(), 1);
    let s = &summary[0];
    assert_eq!(s.sessions, 299);
    let repeats = s.repeats.as_ref().unwrap();
    assert_eq!((repeats.first_seen, repeats.last_seen, s.ts), (at(0), at(29), at(29)));
    assert_eq!(repeats.sample_src_ports, vec![40001, 40002, 40003, 40004, 40005]);
    assert_eq!(repeats.sample_pids.len(), SAMPLES);
    assert_eq!(s.socket_cookie, None, "a summary is about many sockets");
    assert_ne!(s.id, first[0].id);
    // The problem goes on: the next sessions are counted in a new window, not written.
    assert!(r.observe(session("flask", 70, 41000, 9)).is_empty());
    assert_eq!(r.flush().iter().map(|f| f.sessions).collect::<Vec<_>>(), vec![1]);
    // A window that closes with nothing counted forgets the identity: the next session is
    // written in full again.
    assert!(r.due(at(200)).is_empty());
    assert!(r.is_empty());
    assert_eq!(r.observe(session("flask", 201, 42000, 9)).len(), 1);
}

#[test]
fn two_apps_are_two_identities() {
    let mut r = Repeater::new(WINDOW);
    assert_eq!(r.observe(session("flask", 0, 1, 1)).len(), 1);
    assert_eq!(r.observe(session("billing", 0, 2, 2)).len(), 1);
    assert!(r.observe(session("flask", 1, 3, 1)).is_empty());
    let mut other_db = session("flask", 1, 4, 1);
    other_db.startup.as_mut().unwrap().database = Some("other".into());
    assert_eq!(r.observe(other_db).len(), 1, "another database is another identity");
    let mut critical = session("flask", 1, 5, 1);
    critical.severity = Severity::Critical;
    assert_eq!(r.observe(critical).len(), 1, "a password in clear is another identity");
    assert_eq!(r.len(), 4);
}

#[test]
fn a_full_table_closes_the_oldest_window_early_and_loses_nothing() {
    let mut r = Repeater::with_capacity(WINDOW, 2);
    r.observe(session("a", 0, 1, 1));
    r.observe(session("a", 1, 2, 1));
    r.observe(session("b", 2, 3, 2));
    let lines = r.observe(session("c", 3, 4, 3));
    assert_eq!(r.evicted, 1);
    assert_eq!(lines.iter().map(|f| f.sessions).collect::<Vec<_>>(), vec![1, 1]);
    assert!(lines[0].repeats.is_some(), "a's summary first, then c's full line");
    assert_eq!(r.len(), 2);
}

proptest! {
    /// Whatever the identities, times and table size: the lines' `sessions` add up to the
    /// sessions seen once everything is flushed.
    #[test]
    fn every_session_is_counted_exactly_once(
        events in prop::collection::vec((0u8..6, 0u64..600), 1..400),
        capacity in 1usize..8,
        tick_every in 1usize..50,
    ) {
        let mut r = Repeater::with_capacity(WINDOW, capacity);
        let mut lines = Vec::new();
        let mut sorted = events.clone();
        sorted.sort_by_key(|(_, t)| *t);
        for (i, (app, secs)) in sorted.iter().enumerate() {
            lines.extend(r.observe(session(&format!("app{app}"), *secs, 1, 1)));
            if i % tick_every == 0 {
                lines.extend(r.due(at(*secs)));
            }
        }
        lines.extend(r.flush());
        prop_assert_eq!(sessions(&lines), events.len() as u64);
        prop_assert!(r.len() <= capacity);
    }
}

#[test]
fn a_borrowed_identity_finds_the_window_of_its_owned_copy() {
    use std::hash::BuildHasher;
    let mut f = session("flask", 0, 40000, 7);
    let p = f.process.as_mut().unwrap();
    (p.cmdline, p.pod_uid) = (Some("flask run".into()), Some("pod-1".into()));
    f.startup.as_mut().unwrap().database = None;
    let hasher = hashbrown::DefaultHashBuilder::default();
    let borrowed = IdentityRef::of(&f);
    let owned = Identity::of(&f);
    assert_eq!(hasher.hash_one(&borrowed), hasher.hash_one(&owned));
    assert!(hashbrown::Equivalent::equivalent(&borrowed, &owned));
    let other = session("gunicorn", 0, 40000, 7);
    assert!(!hashbrown::Equivalent::equivalent(&IdentityRef::of(&other), &owned));
}
