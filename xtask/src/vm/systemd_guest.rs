//! `xtask vm-systemd-guest`: the Debian package under a real systemd, inside the VM that
//! vm/systemd.rs boots (Debian 12, systemd as PID 1). Run by a unit of its own once the
//! system is up; prints one `VMSYSTEMD` line the host parses (`<test>=<ok|fail>` for each of
//! [`TESTS`]), then powers the VM off.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use super::guest::word;
use crate::bench::server;

/// What the host copies into the VM (vm/systemd.rs).
pub const DEB_FIRST: &str = "/vmtest/pgwire-sensor-first.deb";
/// The same binary packaged with the next Debian revision: an upgrade.
pub const DEB_UPGRADE: &str = "/vmtest/pgwire-sensor-upgrade.deb";
pub const UPGRADE_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-2");

const UNIT: &str = "pgwire-sensor";
const FINDINGS: &str = "/var/log/pgwire-sensor/findings.jsonl";
const METRICS: &str = "127.0.0.1:9477";
/// Asks for the password in clear (the bench's own server): a plaintext session whose
/// password crossed.
const SERVER: &str = "127.0.0.1:26257";
const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";
/// Attaching under TCG takes a while.
const ATTACH_WITHIN: Duration = Duration::from_secs(240);

/// Every test, in the order of the VMSYSTEMD line and of the host's table.
pub const TESTS: [&str; 10] = [
    "install",
    "started",
    "finding",
    "journal",
    "logrotate_reopens",
    "crash_restarted",
    "upgrade",
    "stop_detaches",
    "remove_keeps_evidence",
    "purge_leaves_nothing",
];

pub fn run() -> anyhow::Result<()> {
    let mut results: Vec<(&str, bool)> = Vec::new();
    server::spawn_password(SERVER)?;
    let before = paths_named_pgwire();

    results.push(("install", shell(&format!("dpkg -i {DEB_FIRST}"))));
    let first_pid = wait_active(None);
    results.push(("started", first_pid.is_some()));
    results.push(("finding", session_is_found("app")));
    let journal = output("journalctl", &["-u", UNIT, "--no-pager", "-o", "cat"]);
    println!("journal:\n{journal}");
    results.push(("journal", journal.contains("privileges dropped after attach")));

    // The package's logrotate file: rotate now, then the next session lands in a new file.
    // Another database user: an identity of its own, so a line of its own now rather than
    // a count in the first one's repeat window.
    let rotated = shell("logrotate -f /etc/logrotate.d/pgwire-sensor")
        && Path::new(&format!("{FINDINGS}.1")).exists()
        && session_is_found("app_after_rotation");
    results.push(("logrotate_reopens", rotated));

    // A crash (SIGKILL) is restarted by Restart=always, with a new pid.
    let crashed = first_pid.is_some_and(|pid| {
        shell(&format!("kill -9 {pid}")) && wait_active(Some(pid)).is_some_and(|new| new != pid)
    });
    results.push(("crash_restarted", crashed));

    let running = main_pid();
    let upgraded = shell(&format!("dpkg -i {DEB_UPGRADE}"))
        && output("dpkg-query", &["-W", "-f", "${Version}", UNIT]) == UPGRADE_VERSION
        && wait_active(running).is_some();
    results.push(("upgrade", upgraded));

    let stopped = shell(&format!("systemctl stop {UNIT}"))
        && output("systemctl", &["is-active", UNIT]).trim() == "inactive"
        && !programs_attached();
    results.push(("stop_detaches", stopped));

    // Remove (not purge): the binary and unit go, the settings and the findings (evidence)
    // stay, as Debian policy keeps conffiles and logs.
    let kept = ["/etc/pgwire-sensor/config.yaml", FINDINGS];
    let removed = shell(&format!("dpkg -r {UNIT}"))
        && !Path::new("/usr/bin/pgwire-sensor").exists()
        && kept.iter().all(|path| Path::new(path).exists())
        && !programs_attached();
    results.push(("remove_keeps_evidence", removed));

    let purged = shell(&format!("dpkg -P {UNIT}"));
    let left: Vec<String> =
        paths_named_pgwire().into_iter().filter(|path| !before.contains(path)).collect();
    println!("left after purge: {left:?}");
    results.push(("purge_leaves_nothing", purged && left.is_empty() && !programs_attached()));

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_string();
    let systemd = output("systemctl", &["--version"]);
    let systemd = systemd.split_whitespace().nth(1).unwrap_or("?").to_string();
    let mut line = format!("VMSYSTEMD kernel={kernel} systemd={systemd}");
    for test in TESTS {
        let ok = results.iter().filter(|(name, _)| *name == test).all(|(_, ok)| *ok)
            && results.iter().any(|(name, _)| *name == test);
        line.push_str(&format!(" {test}={}", word(ok)));
    }
    println!("{line}");
    let _ = std::io::stdout().flush();
    let _ = Command::new("systemctl").arg("poweroff").status();
    Ok(())
}

/// Run a shell command line, its output shown on the console; whether it succeeded.
fn shell(line: &str) -> bool {
    println!("$ {line}");
    let ok = Command::new("sh").args(["-c", line]).status().is_ok_and(|s| s.success());
    if !ok {
        println!("failed: {line}");
    }
    ok
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main_pid() -> Option<u32> {
    output("systemctl", &["show", "-p", "MainPID", "--value", UNIT])
        .parse()
        .ok()
        .filter(|&p| p != 0)
}

/// Wait until the unit runs with a pid other than `not` and its /healthz says attached;
/// that pid.
fn wait_active(not: Option<u32>) -> Option<u32> {
    let deadline = Instant::now() + ATTACH_WITHIN;
    while Instant::now() < deadline {
        if let Some(pid) = main_pid().filter(|&pid| Some(pid) != not) {
            if healthz() {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("{UNIT} not active and attached within {ATTACH_WITHIN:?}");
    let _ = Command::new("systemctl").args(["status", "--no-pager", UNIT]).status();
    None
}

fn healthz() -> bool {
    let Ok(mut stream) = TcpStream::connect(METRICS) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

/// A plaintext psql session as `user` with its password in clear; whether its finding
/// (psql's pid, `plaintext`) appears in the findings file within 30 s.
fn session_is_found(user: &str) -> bool {
    let findings = FINDINGS;
    let child = Command::new(PSQL)
        .args(["-h", "127.0.0.1", "-p", "26257", "-U", user, "-d", "appdb", "-c", "select 1"])
        .env("PGSSLMODE", "disable")
        .env("PGPASSWORD", "not-a-real-secret")
        .env("PGCONNECT_TIMEOUT", "10")
        .spawn();
    let Ok(mut child) = child else {
        println!("cannot run {PSQL}");
        return false;
    };
    let pid = child.id();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(findings).unwrap_or_default();
        for line in text.lines() {
            let Ok(finding) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if finding["process"]["pid"] == pid && finding["verdict"] == "plaintext" {
                println!("finding: {line}");
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("no finding for psql pid {pid} in {findings}");
    false
}

/// Any of the sensor's programs loaded (bpftool lists them by name).
fn programs_attached() -> bool {
    let programs = output("bpftool", &["prog", "show"]);
    let attached = programs.lines().any(|line| line.contains("name sensor_"));
    if attached {
        println!("still loaded:\n{programs}");
    }
    attached
}

/// Every path on the root filesystem whose name mentions the sensor, but the test's own
/// files and dpkg's records of what it installed and removed.
fn paths_named_pgwire() -> Vec<String> {
    let found = output(
        "find",
        &[
            "/", "-xdev", "-path", "/vmtest", "-prune", "-o", "-path", "/proc", "-prune", "-o",
            "-name", "*pgwire*", "-print",
        ],
    );
    found
        .lines()
        .filter(|path| !path.starts_with("/var/lib/dpkg/") && !path.starts_with("/vmtest"))
        .map(str::to_string)
        .collect()
}
