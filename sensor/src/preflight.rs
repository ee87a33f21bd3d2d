//! `sensor check`: each requirement, ok or missing, with how to fix it. `sensor run` uses
//! the same checks and stops at the first missing one before touching the kernel.

use std::{fs, process::ExitCode};

use aya::{maps::MapType, programs::ProgramType};

use crate::{
    cgroup::{self, AttachAt},
    config::{FindingsTarget, RunConfig, TlsVerification},
    error::Failure,
};

/// Oldest kernel the sensor supports: the oldest one `cargo xtask vm-test` boots and passes
/// every kernel-side test on (Debian 11's 5.10; also tested: 6.1, 6.12 and the build hosts'
/// 6.18).
pub const MIN_KERNEL: (u32, u32) = (5, 10);

/// Below this nothing can work: BPF ring buffer (5.8), cgroup bpf_link (5.7). Kernels from
/// here up to MIN_KERNEL run only with --allow-untested-kernel.
pub const MIN_KERNEL_UNTESTED: (u32, u32) = (5, 8);

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// false: the check could not be run (`detail` says why); never dropped silently.
    pub ran: bool,
    pub detail: String,
    /// How to fix it, when missing.
    pub fix: &'static str,
}

impl Check {
    fn new(name: &'static str, ok: bool, detail: String, fix: &'static str) -> Check {
        Check { name, ok, ran: true, detail, fix }
    }

    fn not_run(name: &'static str, why: String, fix: &'static str) -> Check {
        Check { name, ok: false, ran: false, detail: why, fix }
    }

    /// Missing, but `run` works without it (with less).
    fn optional(&self) -> bool {
        matches!(self.name, "kernel BTF" | "CAP_SYS_PTRACE" | "CAP_SYS_ADMIN")
    }

    pub fn status(&self) -> Status {
        match (self.ran, self.ok, self.optional()) {
            (false, _, _) => Status::NotRun,
            (true, true, _) => Status::Ok,
            (true, false, true) => Status::Optional,
            (true, false, false) => Status::Missing,
        }
    }
}

/// A check's outcome, as `sensor check` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Required and missing: `run` stops.
    Missing,
    /// Missing, and `run` goes on with less.
    Optional,
    /// Could not be checked (e.g. without the privileges to probe): `run` may still fail.
    NotRun,
}

/// How `sensor check` prints its report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One aligned line per check, with the fix under each one that is not ok.
    #[default]
    Text,
    /// One JSON object: `ok` and every check's name, status, detail and fix.
    Json,
}

/// Every check `run` makes with these settings, in order. With `outputs`, also the
/// metrics address and the findings target, which `run` opens itself (and whose errors it
/// reports as they happen).
pub fn run_checks(config: &RunConfig, outputs: bool) -> Vec<Check> {
    let mut checks = vec![kernel_version(config.allow_untested_kernel)];
    let caps = capabilities();
    let privileged = caps.iter().all(|c| c.ok);
    checks.extend(caps);
    let attach_at = cgroup::attach_point(config.cgroup.as_deref());
    let mounts_own = matches!(attach_at, Ok(AttachAt::OwnMount));
    let scope = cgroup_scope(&attach_at);
    checks.push(cgroup_v2(attach_at));
    checks.push(scope);
    // Probing needs the privileges; without them the probes would only repeat that.
    if privileged {
        checks.push(program_support());
        checks.push(ring_buffer_support());
    } else {
        for name in ["BPF program types", "BPF ring buffer"] {
            checks.push(Check::not_run(
                name,
                "not probed: loading a test program needs the capabilities above".into(),
                "run `sensor check` with the privileges `run` will have",
            ));
        }
    }
    checks.push(ptrace_capability());
    checks.push(sys_admin_capability(config.tls_verification, mounts_own));
    checks.push(btf());
    if outputs {
        checks.push(metrics_address(config.metrics_addr));
        checks.extend(config.findings.iter().map(findings_target));
    }
    checks
}

/// Print every check (text or JSON); exit 0 when `run` would start (every check ok or
/// optional), 1 otherwise (a missing requirement, or one that could not be checked).
pub fn print_report(config: &RunConfig, format: Format) -> ExitCode {
    let checks = run_checks(config, true);
    let ready = checks.iter().all(|c| matches!(c.status(), Status::Ok | Status::Optional));
    match format {
        Format::Text => {
            for check in &checks {
                let label = match check.status() {
                    Status::Ok => "ok",
                    Status::Optional => "optional",
                    Status::Missing => "MISSING",
                    Status::NotRun => "NOT RUN",
                };
                println!("{label:<8} {:<22} {}", check.name, check.detail);
                if check.status() != Status::Ok {
                    println!("         fix: {}", check.fix);
                }
            }
        }
        Format::Json => println!("{}", report_json(&checks, ready)),
    }
    if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn report_json(checks: &[Check], ready: bool) -> serde_json::Value {
    let checks: Vec<serde_json::Value> = checks
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "status": c.status(),
                "detail": c.detail,
                "fix": if c.status() == Status::Ok { None } else { Some(c.fix) },
            })
        })
        .collect();
    serde_json::json!({ "ok": ready, "checks": checks })
}

/// For `run`: the first missing requirement as an error.
pub fn require_all(config: &RunConfig) -> Result<(), Failure> {
    let missing = run_checks(config, false).into_iter().find(|c| c.status() == Status::Missing);
    match missing {
        None => Ok(()),
        Some(c) => Err(Failure::runtime(anyhow::anyhow!(
            "{}: {}. Fix: {} (`sensor check` lists every requirement)",
            c.name,
            c.detail,
            c.fix
        ))),
    }
}

/// `run` listens there: taken by another process, it would stop at start.
fn metrics_address(addr: std::net::SocketAddr) -> Check {
    let (ok, detail) = match std::net::TcpListener::bind(addr) {
        Ok(_) => (true, format!("{addr} free")),
        Err(err) => (false, format!("cannot listen on {addr}: {err}")),
    };
    Check::new(
        "metrics address",
        ok,
        detail,
        "stop what listens there (another sensor?) or pick a free --metrics-addr",
    )
}

/// `run` appends findings there (creating the file 0600).
fn findings_target(target: &FindingsTarget) -> Check {
    let FindingsTarget::File(path) = target else {
        return Check::new("findings", true, "stdout".into(), "");
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let writable = |p: &std::path::Path| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok();
        // SAFETY: a valid NUL-terminated path; access(2) only reads it.
        c.is_some_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
    };
    let (ok, detail) = if path.exists() {
        (writable(path), format!("{} (exists)", path.display()))
    } else {
        (writable(&dir), format!("{} (created at start in {})", path.display(), dir.display()))
    };
    Check::new(
        "findings",
        ok,
        if ok { detail } else { format!("cannot write {detail}") },
        "create the directory, make it writable by the sensor's user, or pick another --findings",
    )
}

fn kernel_version(allow_untested: bool) -> Check {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let version = parse_release(release);
    Check {
        name: "kernel version",
        ran: true,
        ok: version.is_some_and(|v| kernel_supported(v, allow_untested)),
        detail: format!(
            "{release} (supported: >= {}.{}, tested with cargo xtask vm-test)",
            MIN_KERNEL.0, MIN_KERNEL.1
        ),
        fix: if version.is_some_and(|v| v >= MIN_KERNEL_UNTESTED) {
            "upgrade the kernel, or pass --allow-untested-kernel to run on this one (5.8 or \
             newer has everything the sensor uses, but this release was never tested)"
        } else {
            "upgrade to Linux 5.10 or newer (the BPF ring buffer and cgroup bpf_link are missing)"
        },
    }
}

/// Whether the sensor runs on kernel `version`.
fn kernel_supported(version: (u32, u32), allow_untested: bool) -> bool {
    version >= MIN_KERNEL || (allow_untested && version >= MIN_KERNEL_UNTESTED)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The capabilities `run` needs, each with why; CAP_SYS_ADMIN stands in for CAP_BPF and
/// CAP_PERFMON (kernels before 5.8 knew only it, and it still implies both).
const REQUIRED_CAPS: [(&str, u32, bool, &str); 3] = [
    ("CAP_BPF", CAP_BPF, true, "create maps and load the programs"),
    ("CAP_PERFMON", CAP_PERFMON, true, "programs that read the socket's TCP state"),
    ("CAP_NET_ADMIN", CAP_NET_ADMIN, false, "attach at the cgroup and ask what is attached"),
];

/// One check per required capability, so `sensor check` names exactly what is missing.
fn capabilities() -> Vec<Check> {
    let effective = effective_caps();
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    REQUIRED_CAPS
        .iter()
        .map(|&(name, cap, sys_admin_will_do, why)| {
            let ok = has(cap) || (sys_admin_will_do && has(CAP_SYS_ADMIN));
            Check::new(
                name,
                ok,
                format!("{} ({why})", if ok { "effective" } else { "missing" }),
                "run as root, or grant it: systemd AmbientCapabilities=CAP_BPF CAP_PERFMON \
                 CAP_NET_ADMIN (deploy/systemd), setpriv --ambient-caps +bpf,+perfmon,+net_admin, \
                 or the DaemonSet's capabilities.add (deploy/kubernetes)",
            )
        })
        .collect()
}

/// Optional: without CAP_SYS_PTRACE the kernel hides other users' (and more privileged
/// processes') executable path and libraries, so findings name the command but not `exe`,
/// and their OpenSSL is not found for TLS verification.
fn ptrace_capability() -> Check {
    optional_capability(
        "CAP_SYS_PTRACE",
        CAP_SYS_PTRACE,
        "the exe path and libraries of other users' processes",
        "optional; grant CAP_SYS_PTRACE for exe paths and TLS libraries of every process",
    )
}

/// Optional: the kernel opens a uprobe (TLS verification from clients' OpenSSL) only with
/// CAP_SYS_ADMIN; without it every TLS session's verification is `unknown`. Not needed at
/// all with `--tls-verification off`.
fn sys_admin_capability(tls: TlsVerification, mounts_own_cgroup2: bool) -> Check {
    if mounts_own_cgroup2 {
        // Reported by the cgroup check, which needs it on a cgroup v1 host.
        let ok = effective_caps() & (1 << CAP_SYS_ADMIN) != 0;
        return Check::new(
            "CAP_SYS_ADMIN",
            ok,
            format!(
                "{} (needed to mount cgroup2 on this cgroup v1 host; also for TLS verification)",
                if ok { "effective" } else { "missing" }
            ),
            "grant CAP_SYS_ADMIN, or mount cgroup2 yourself and pass --cgroup",
        );
    }
    if !tls.enabled() {
        return Check::new(
            "CAP_SYS_ADMIN",
            true,
            "not needed (--tls-verification off: no uprobes)".into(),
            "",
        );
    }
    optional_capability(
        "CAP_SYS_ADMIN",
        CAP_SYS_ADMIN,
        "uprobes on clients' OpenSSL: whether TLS clients verify the server",
        "optional; grant CAP_SYS_ADMIN for TLS verification, or run with --tls-verification off",
    )
}

fn optional_capability(name: &'static str, cap: u32, why: &str, fix: &'static str) -> Check {
    let ok = effective_caps() & (1u64 << cap) != 0;
    Check::new(
        name,
        ok,
        format!("{} (optional: {why})", if ok { "effective" } else { "missing" }),
        fix,
    )
}

/// This process's effective capability set (none if /proc cannot tell).
fn effective_caps() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    parse_cap_eff(&status).unwrap_or(0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// Whether the attach point watches the whole host: inside a container with a private
/// cgroup namespace the cgroup2 root it sees is the container's, and attaching there would
/// silently watch only the container's own processes.
fn cgroup_scope(attach_at: &anyhow::Result<AttachAt>) -> Check {
    const NAME: &str = "cgroup scope";
    const FIX: &str = "run the sensor in the host's cgroup namespace (docker/podman \
        --cgroupns=host), or bind-mount the host's cgroup2 root into the container and pass \
        it with --cgroup (deploy/kubernetes/daemonset.yaml does)";
    let Ok(at) = attach_at else {
        return Check::not_run(
            NAME,
            "no cgroup v2 to attach at".into(),
            "see the cgroup v2 line above",
        );
    };
    let namespace = cgroup::Namespace::own().ok();
    let in_namespace = match namespace {
        Some(cgroup::Namespace::Host) => "the host's cgroup namespace".to_string(),
        Some(cgroup::Namespace::Private(inode)) => {
            format!("a private cgroup namespace (cgroup:[{inode}])")
        }
        None => "a cgroup namespace /proc/self/ns/cgroup does not name".to_string(),
    };
    match cgroup::scope(at, namespace) {
        Ok(cgroup::Scope::WholeHost) => {
            Check::new(NAME, true, format!("every process on the host (from {in_namespace})"), "")
        }
        Ok(cgroup::Scope::GivenSubtree(id)) => Check::new(
            NAME,
            true,
            format!("only processes under --cgroup (cgroup id {id}), as asked"),
            "",
        ),
        Ok(cgroup::Scope::Part(id)) if namespace == Some(cgroup::Namespace::Host) => Check::new(
            NAME,
            false,
            format!(
                "the only cgroup2 mount found is a subtree (cgroup id {id}), not the \
                 hierarchy's root (id {}): only processes under it would be watched",
                cgroup::HOST_ROOT_CGROUP_ID
            ),
            "mount the cgroup2 root (mount -t cgroup2 none /sys/fs/cgroup/unified) or pass \
             it with --cgroup",
        ),
        Ok(cgroup::Scope::Part(id)) => Check::new(
            NAME,
            false,
            format!(
                "this process is in {in_namespace}: the cgroup2 root it sees is a \
                 container's cgroup (id {id}), not the host's (id {}), and only that \
                 container's processes would be watched",
                cgroup::HOST_ROOT_CGROUP_ID
            ),
            FIX,
        ),
        Ok(cgroup::Scope::KnownOnceMounted) => Check::not_run(
            NAME,
            format!(
                "no cgroup2 mounted and this process is in {in_namespace}: whether a cgroup2 \
                 mounted here has the host's root is known only once mounted (run checks it \
                 and refuses a container's)"
            ),
            FIX,
        ),
        Err(err) => Check::not_run(NAME, format!("{err:#}"), FIX),
    }
}

/// Where `run` attaches (`cgroup::attach_point`); a mount of its own needs CAP_SYS_ADMIN.
fn cgroup_v2(attach_at: anyhow::Result<AttachAt>) -> Check {
    let found = attach_at.and_then(|at| match at {
        AttachAt::Given(dir) => Ok(format!("--cgroup {}", dir.display())),
        AttachAt::Root(root) => Ok(format!("mounted at {}", root.display())),
        AttachAt::OwnMount if effective_caps() & (1 << CAP_SYS_ADMIN) == 0 => Err(anyhow::anyhow!(
            "no cgroup v2 filesystem is mounted (a cgroup v1 host); run would mount one of its \
             own, which needs CAP_SYS_ADMIN"
        )),
        AttachAt::OwnMount => Ok(format!(
            "none mounted (a cgroup v1 host): run mounts its own at {} for the attach and \
             unmounts it once attached",
            cgroup::OWN_MOUNT
        )),
    });
    match found {
        Ok(detail) => Check::new("cgroup v2", true, detail, ""),
        Err(err) => Check::new(
            "cgroup v2",
            false,
            format!("{err:#}"),
            "mount cgroup2 and pass --cgroup, or (a cgroup v1 host) grant CAP_SYS_ADMIN so \
             that run mounts one of its own",
        ),
    }
}

fn program_support() -> Check {
    let results = [
        ("cgroup_skb", aya::sys::is_program_supported(ProgramType::CgroupSkb)),
        ("cgroup_sock_addr", aya::sys::is_program_supported(ProgramType::CgroupSockAddr)),
    ];
    let missing: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| match r {
            Ok(true) => None,
            Ok(false) => Some(format!("{name} not supported")),
            Err(err) => Some(format!("{name}: {err}")),
        })
        .collect();
    Check::new(
        "BPF program types",
        missing.is_empty(),
        if missing.is_empty() {
            "cgroup_skb, cgroup_sock_addr load".to_string()
        } else {
            missing.join("; ")
        },
        "use a kernel built with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF",
    )
}

fn ring_buffer_support() -> Check {
    let (ok, detail) = match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(true) => (true, "BPF ring buffer available".to_string()),
        Ok(false) => (false, "BPF ring buffer not supported".to_string()),
        Err(err) => (false, format!("probe failed: {err}")),
    };
    Check::new("BPF ring buffer", ok, detail, "run on Linux 5.8 or newer")
}

fn btf() -> Check {
    let ok = fs::metadata("/sys/kernel/btf/vmlinux").is_ok();
    Check::new(
        "kernel BTF",
        ok,
        if ok { "/sys/kernel/btf/vmlinux present" } else { "no /sys/kernel/btf/vmlinux" }
            .to_string(),
        "optional today; a kernel with CONFIG_DEBUG_INFO_BTF=y is recommended",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert!(parse_release("5.4.0").unwrap() < MIN_KERNEL);
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn old_kernels_are_refused_and_untested_ones_need_asking() {
        assert!(kernel_supported((5, 10), false));
        assert!(kernel_supported((5, 15), false));
        assert!(kernel_supported((6, 18), false));
        assert!(!kernel_supported((5, 8), false), "untested: refused by default");
        assert!(kernel_supported((5, 8), true), "untested but able: allowed when asked");
        assert!(!kernel_supported((5, 4), true), "no ring buffer: never");
        assert!(!kernel_supported((4, 19), true));
    }

    #[test]
    fn cap_eff_parses() {
        let status = "Name:\tsensor\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }
}
