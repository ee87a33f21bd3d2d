//! `xtask vm-guest`: the kernel-side tests inside a test VM (see vm/mod.rs), as root in an
//! initramfs with /proc, /sys, cgroup2 and loopback set up by /init. It runs `sensor check`,
//! starts the sensor and makes one session of each kind the hooks decide, against the
//! bench's own pgwire servers on 26257, has Debian's psql (libpq and OpenSSL, in the
//! initramfs) open TLS sessions with and without verification, then floods a 4 KiB ring
//! buffer. It prints one
//! `VMTEST` line the host parses: `VMTEST kernel=<release>` followed by `<test>=<ok|fail>`
//! for each of [`TESTS`], and `caps_after_attach=<CapPrm>` (which capabilities the sensor
//! kept once attached: CAP_BPF stays where the kernel refuses map reads without it).

use sensor_common::verdict::{Verdict, Verification};
use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::bench::{
    loadgen::{self, Session},
    sensor_proc::{Sample, SensorProc},
    server,
};

const SENSOR: &str = "/sensor";
/// Debian 12's psql, with libpq, OpenSSL and their libraries unpacked into the initramfs
/// (vm/mod.rs): a real libpq client whose OpenSSL the sensor's uprobes must read.
pub const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";
/// A CA certificate for `sslmode=verify-full` (libpq reads it before the handshake; the
/// test server never completes one, so it need not have signed anything).
pub const CA_FILE: &str = "/tls/ca.pem";
/// Answers an SSLRequest with `N`: plaintext, downgraded and refused sessions.
const PLAIN_SERVER: &str = "127.0.0.1:26257";
const TLS_SERVER: &str = "127.0.0.2:26257";
/// Asks for the password in clear.
const PASSWORD_SERVER: &str = "127.0.0.3:26257";
const IPV6_SERVER: &str = "[::1]:26257";
/// Emulated CPUs verify the programs many times slower than the host.
const ATTACH_WITHIN: Duration = Duration::from_secs(240);
/// Sessions sent into a 4 KiB ring buffer while the agent is stopped: far more than the
/// ring holds (a session event is ~700 bytes).
const FLOOD_SESSIONS: u64 = 200;
/// CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF: what the agent may
/// keep after attaching (docs/deployment.md); a root process starts with ~41 more.
const MAY_KEEP: u64 = (1 << 12) | (1 << 19) | (1 << 21) | (1 << 38) | (1 << 39);

/// On the kernel command line of the guests that also run `cgroup_v1_host` (it needs a
/// second attach, which takes minutes on older kernels under TCG).
pub const CGROUP_V1_FLAG: &str = "vmtest.cgroup_v1=1";

/// Run only where the host asks for it with [`CGROUP_V1_FLAG`]; `-` elsewhere.
pub const CGROUP_V1_TEST: &str = "cgroup_v1_host";

/// Every test the guest runs, in the order of the VMTEST line and the host's matrix.
pub const TESTS: [&str; 13] = [
    "check",
    "attach",
    "plaintext",
    "downgraded",
    "refused",
    "cleartext_password",
    "ipv6",
    "opened_before_start",
    "tls_count",
    "tls_verification",
    "ring_overflow_exact",
    "privileges_dropped",
    CGROUP_V1_TEST,
];

/// A test's result as the VMTEST and VMSYSTEMD lines write it.
pub fn word(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "fail"
    }
}

pub fn run() -> anyhow::Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_string();
    let mut results: Vec<(&str, bool)> = Vec::new();
    let check = Command::new(SENSOR).arg("check").output()?;
    println!("{}", String::from_utf8_lossy(&check.stdout));
    results.push(("check", check.status.success()));

    server::spawn_pgwire(PLAIN_SERVER, server::Answer::No)?;
    server::spawn_pgwire(TLS_SERVER, server::Answer::Yes)?;
    server::spawn_password(PASSWORD_SERVER)?;
    let ipv6 = server::spawn_pgwire(IPV6_SERVER, server::Answer::No);
    if let Err(err) = &ipv6 {
        println!("no IPv6 loopback: {err:#}");
    }
    // Connected before the sensor starts; its StartupMessage goes after the attach.
    let early = TcpStream::connect(PLAIN_SERVER).context("the early connection")?;

    let mut caps_kept = String::from("-");
    // One sensor for every test (an attach takes minutes under TCG on older kernels), with
    // the smallest ring buffer: one session at a time fits, the flood at the end does not.
    let small_ring = ["--ring-buffer-bytes", "4096"];
    match SensorProc::start_piped_within(Path::new(SENSOR), &small_ring, ATTACH_WITHIN) {
        Err(err) => {
            println!("sensor did not attach: {err:#}");
            results.push(("attach", false));
        }
        Ok(mut sensor) => {
            println!("attached after {:.1} s", sensor.attached_after.as_secs_f64());
            // Which paths through the programs this kernel's verifier allowed.
            let attached = sensor.log_line("attached; watching", Duration::from_secs(10));
            println!("sensor: {}", attached.as_deref().unwrap_or("no attach line in its log"));
            caps_kept = capabilities_of(sensor.pid());
            let lines = sensor.finding_lines().context("no findings pipe")?;
            let mut sessions = Sessions { sensor: &sensor, lines: &lines };
            results.extend(sessions.each_kind(early, ipv6.is_ok()));
            results.push(("ring_overflow_exact", ring_overflow(&sensor)));
            let stopped = sensor.stop();
            if let Err(err) = &stopped {
                println!("stop: {err:#}");
            }
            results.push(("attach", stopped.is_ok()));
            let dropped =
                u64::from_str_radix(&caps_kept, 16).is_ok_and(|caps| caps & !MAY_KEEP == 0);
            results.push(("privileges_dropped", dropped));
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline.split_whitespace().any(|w| w == CGROUP_V1_FLAG) {
        results.push((CGROUP_V1_TEST, cgroup_v1_host()));
    }

    let mut line = format!("VMTEST kernel={kernel}");
    for test in TESTS {
        if test == CGROUP_V1_TEST && !results.iter().any(|(name, _)| *name == test) {
            line.push_str(&format!(" {test}=-"));
            continue;
        }
        let ok = results.iter().filter(|(name, _)| *name == test).all(|(_, ok)| *ok)
            && results.iter().any(|(name, _)| *name == test);
        line.push_str(&format!(" {test}={}", word(ok)));
    }
    println!("{line} caps_after_attach={caps_kept}");
    Ok(())
}

/// Sessions into the sensor's 4 KiB ring buffer while the agent is stopped (SIGSTOP), so
/// the ring overflows for certain: the kernel must count every session, and every one must
/// be either reported or counted as lost once the agent runs again.
fn ring_overflow(sensor: &SensorProc) -> bool {
    let signal = |sig: &str| {
        let _ = Command::new("kill").args([sig, &sensor.pid().to_string()]).status();
    };
    let Ok(before) = sensor.sample() else { return false };
    signal("-STOP");
    let addr: SocketAddr = PLAIN_SERVER.parse().expect("literal address");
    let burst =
        loadgen::sessions(addr, Session::Plaintext, 4, Duration::from_secs(120), FLOOD_SESSIONS);
    signal("-CONT");
    // Findings whose auth event was lost are written after --auth-wait (1 s by default).
    std::thread::sleep(Duration::from_millis(2500));
    let Ok(after) = sensor.sample() else { return false };
    let sent = burst.sessions - burst.errors;
    let counted = after.counted(Verdict::Plaintext) - before.counted(Verdict::Plaintext);
    let findings = after.findings - before.findings;
    let lost = after.lost_of("session") - before.lost_of("session");
    println!("ring overflow: sent {sent} counted {counted} findings {findings} lost {lost}");
    burst.errors == 0 && lost > 0 && counted == sent && findings + lost == sent
}

/// A host with cgroup v1 controllers only: the guest's cgroup2 mount is replaced by a v1
/// `cpu` hierarchy. `sensor check` must say it will mount its own; the sensor must attach
/// through a cgroup2 mount of its own at the hierarchy's root (a plaintext session gives
/// its finding) and leave nothing mounted.
fn cgroup_v1_host() -> bool {
    let v1_only = "umount /sys/fs/cgroup && mount -t tmpfs cgroup /sys/fs/cgroup && \
                   mkdir /sys/fs/cgroup/cpu && mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu";
    let switched = Command::new("sh").args(["-c", v1_only]).status().is_ok_and(|s| s.success());
    let mountinfo = || std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let no_cgroup2 = !mountinfo().contains(" - cgroup2 ");
    let check = Command::new(SENSOR).args(["check", "--format", "json"]).output();
    let check_ok = check.is_ok_and(|out| {
        let report = String::from_utf8_lossy(&out.stdout);
        println!("check on a cgroup v1 host: {report}");
        out.status.success() && report.contains("none mounted (a cgroup v1 host)")
    });
    let mut attached_ok = false;
    match SensorProc::start_piped_within(Path::new(SENSOR), &[], ATTACH_WITHIN) {
        Err(err) => println!("cgroup v1 host: sensor did not attach: {err:#}"),
        Ok(mut sensor) => {
            let own_gone = !mountinfo().contains("/run/pgwire-sensor/cgroup2");
            let lines = sensor.finding_lines();
            let addr: SocketAddr = PLAIN_SERVER.parse().expect("literal address");
            let sent = loadgen::sessions(addr, Session::Plaintext, 1, Duration::from_secs(10), 1);
            let found = lines.is_some_and(|lines| {
                let mut sessions = Sessions { sensor: &sensor, lines: &lines };
                sessions.line_with(&["\"verdict\":\"plaintext\""])
            });
            println!(
                "cgroup v1 host: own mount gone after attach {own_gone}, errors {} finding {found}",
                sent.errors
            );
            attached_ok = own_gone && sent.errors == 0 && found && sensor.stop().is_ok();
        }
    }
    let left =
        mountinfo().contains("/run/pgwire-sensor") || Path::new("/run/pgwire-sensor").exists();
    println!(
        "cgroup v1 host: switched {switched} no cgroup2 {no_cgroup2} check {check_ok} left {left}"
    );
    switched && no_cgroup2 && check_ok && attached_ok && !left
}

fn capabilities_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| Some(l.strip_prefix("CapPrm:")?.trim().to_string())))
        .unwrap_or_default()
}

/// One session of each kind against an attached sensor, each checked by its kernel count
/// and its finding line.
struct Sessions<'a> {
    sensor: &'a SensorProc,
    lines: &'a Receiver<(Instant, String)>,
}

impl Sessions<'_> {
    fn each_kind(&mut self, early: TcpStream, ipv6: bool) -> Vec<(&'static str, bool)> {
        let mut results = vec![
            (
                "plaintext",
                self.one(PLAIN_SERVER, Session::Plaintext, &["\"verdict\":\"plaintext\""]),
            ),
            (
                "downgraded",
                self.one(PLAIN_SERVER, Session::Downgrade, &["\"verdict\":\"downgraded\""]),
            ),
            ("refused", self.one(PLAIN_SERVER, Session::Refused, &["\"verdict\":\"refused\""])),
            (
                "cleartext_password",
                self.one(
                    PASSWORD_SERVER,
                    Session::Password,
                    &["\"password_sent\":true", "\"severity\":\"critical\""],
                ),
            ),
            ("tls_count", self.one(TLS_SERVER, Session::Tls, &[])),
        ];
        let v6 = ipv6 && self.one(IPV6_SERVER, Session::Plaintext, &["\"ip\":\"::1\""]);
        results.push(("ipv6", v6));
        results.push(("opened_before_start", self.early(early)));
        let unverified = self.libpq_tls(
            "sslmode=require",
            Verification::Unverified,
            Some(Verdict::TlsUnverified),
        );
        // A verified session is only counted (no finding).
        let verified = self.libpq_tls(
            &format!("sslmode=verify-full sslrootcert={CA_FILE}"),
            Verification::VerifiedChain,
            None,
        );
        results.push(("tls_verification", unverified && verified));
        results
    }

    /// psql (libpq, OpenSSL) with `settings` against the TLS server, which answers `S` and
    /// closes after the ClientHello (psql then fails: what matters is how its OpenSSL was
    /// set up before the handshake): one session counted under `verification`, and, when
    /// `finding` names a verdict, its finding, tied to psql's pid, says that verdict and
    /// `verification`.
    fn libpq_tls(
        &mut self,
        settings: &str,
        verification: Verification,
        finding: Option<Verdict>,
    ) -> bool {
        let before = self.sample();
        let (host, port) = TLS_SERVER.split_once(':').expect("literal address");
        let conninfo = format!(
            "host={host} port={port} user=bench dbname=bench connect_timeout=10 \
             gssencmode=disable {settings}"
        );
        let child = Command::new(PSQL)
            .arg(&conninfo)
            .args(["-X", "-c", "select 1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(child) = child.map_err(|err| println!("psql: {err}")) else { return false };
        let pid = child.id();
        let stderr = child.wait_with_output().map(|o| o.stderr).unwrap_or_default();
        let line = match finding {
            Some(verdict) => self.line_with(&[
                &format!("\"verdict\":\"{verdict}\""),
                &format!("\"verification\":\"{verification}\""),
                &format!("\"pid\":{pid},"),
            ]),
            // No finding at all for psql (a tls_unverified one would be the worst error).
            None => !self.line_within(&[&format!("\"pid\":{pid},")], Duration::from_secs(1)),
        };
        std::thread::sleep(Duration::from_millis(300));
        // Counted once, and under no other verification (a verifying client called
        // unverified would be the worst error).
        let moved: Vec<(Verification, u64)> = match (before, self.sample()) {
            (Some(b), Some(a)) => Verification::ALL
                .iter()
                .map(|&v| (v, a.tls_counted(v) - b.tls_counted(v)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            _ => Vec::new(),
        };
        println!(
            "psql {settings}: counted {moved:?} finding {line} (psql said: {})",
            String::from_utf8_lossy(&stderr).trim()
        );
        moved == [(verification, 1)] && line
    }

    /// One session of `kind` to `addr`: counted once under its verdict, and (when
    /// `finding` names anything) a finding line containing all of `finding`.
    fn one(&mut self, addr: &str, kind: Session, finding: &[&str]) -> bool {
        let before = self.sample();
        let addr: SocketAddr = addr.parse().expect("literal address");
        let sent = loadgen::sessions(addr, kind, 1, Duration::from_secs(10), 1);
        let line_ok = finding.is_empty() || self.line_with(finding);
        std::thread::sleep(Duration::from_millis(300));
        let counted = match (before, self.sample()) {
            (Some(b), Some(a)) => a.counted(kind.verdict()) - b.counted(kind.verdict()),
            _ => 0,
        };
        println!("{}: errors {} counted {counted} finding {line_ok}", kind.name(), sent.errors);
        sent.errors == 0 && counted == 1 && line_ok
    }

    /// The connection opened before the sensor started sends its StartupMessage now: a
    /// plaintext finding that says so.
    fn early(&mut self, mut early: TcpStream) -> bool {
        let sent = early.write_all(&loadgen::startup_message()).is_ok();
        let line = self.line_with(&["\"opened_before_start\":true", "\"verdict\":\"plaintext\""]);
        println!("opened before start: sent {sent} finding {line}");
        sent && line
    }

    fn sample(&self) -> Option<Sample> {
        self.sensor.sample().map_err(|err| println!("metrics: {err:#}")).ok()
    }

    /// Wait (up to 5 s) for a finding line containing every one of `parts`.
    fn line_with(&mut self, parts: &[&str]) -> bool {
        self.line_within(parts, Duration::from_secs(5))
    }

    /// Wait up to `within` for a finding line containing every one of `parts`.
    fn line_within(&mut self, parts: &[&str], within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok((_, line)) = self.lines.recv_timeout(left) else { return false };
            if parts.iter().all(|p| line.contains(p)) {
                println!("finding: {line}");
                return true;
            }
        }
        false
    }
}
