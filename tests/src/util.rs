use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;

static SERIAL: Mutex<()> = Mutex::new(());

/// Run end-to-end tests one at a time (they share ports and a host). A process-wide lock:
/// it holds across modules because all of them are one test binary (tests/tests/e2e).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Poll `check` until it returns `Some`, or fail after `timeout` naming `what`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// A file or directory of this repository, by its path from the repository root.
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

/// A fresh directory for one test's files, readable by the postgres user. The first call
/// of a test run removes the directories of earlier runs (their test process gone): a
/// failed run's files stay for reading until the next run, and a database's 46 MB per test
/// do not pile up in /tmp run after run.
pub fn scratch_dir(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join("pgwire-sensor-tests");
    static PRUNE: std::sync::Once = std::sync::Once::new();
    PRUNE.call_once(|| remove_finished_runs(&root));
    let dir = root.join(format!("{name}-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).expect("creating a scratch dir");
    dir
}

/// Remove the scratch directories (`NAME-PID-N`) whose test process no longer runs.
fn remove_finished_runs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = scratch_owner(&name.to_string_lossy()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The test process that made a scratch directory, from its name (`NAME-PID-N`).
fn scratch_owner(dir_name: &str) -> Option<u32> {
    let mut fields = dir_name.rsplit('-');
    let _n: u64 = fields.next()?.parse().ok()?;
    fields.next()?.parse().ok()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_scratch_directory_names_its_test_process() {
        assert_eq!(super::scratch_owner("e2e-psql-4248-124"), Some(4248));
        assert_eq!(super::scratch_owner("sensor-17-0"), Some(17));
        assert_eq!(super::scratch_owner("not-a-scratch-dir"), None);
        assert_eq!(super::scratch_owner("x"), None);
    }
}
