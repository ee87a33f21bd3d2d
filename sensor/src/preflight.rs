//! `sensor check`: each requirement, ok or missing, with how to fix it. `sensor run` uses
//! the same checks and stops at the first missing one before touching the kernel.

use std::{fs, process::ExitCode};

use aya::{maps::MapType, programs::ProgramType};

use crate::{cgroup, error::Failure};

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
    pub detail: String,
    /// How to fix it, when missing.
    pub fix: &'static str,
}

pub fn run_checks(allow_untested_kernel: bool) -> Vec<Check> {
    let mut checks = vec![kernel_version(allow_untested_kernel)];
    let caps = capabilities();
    let privileged = caps.iter().all(|c| c.ok);
    checks.extend(caps);
    checks.push(cgroup_v2());
    // Probing needs the privileges; without them the probes would only repeat that.
    if privileged {
        checks.push(program_support());
        checks.push(ring_buffer_support());
    }
    checks.push(ptrace_capability());
    checks.push(sys_admin_capability());
    checks.push(btf());
    checks
}

/// Checks whose failure does not stop `run`.
fn optional(check: &Check) -> bool {
    matches!(check.name, "kernel BTF" | "CAP_SYS_PTRACE" | "CAP_SYS_ADMIN")
}

/// Print every check; exit 0 when all pass, 1 otherwise.
pub fn print_report(allow_untested_kernel: bool) -> ExitCode {
    let checks = run_checks(allow_untested_kernel);
    for check in &checks {
        if check.ok {
            println!("ok       {:<22} {}", check.name, check.detail);
        } else if optional(check) {
            println!("optional {:<22} {}\n         fix: {}", check.name, check.detail, check.fix);
        } else {
            println!("MISSING  {:<22} {}\n         fix: {}", check.name, check.detail, check.fix);
        }
    }
    if checks.iter().all(|c| c.ok || optional(c)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// For `run`: the first missing requirement as an error.
pub fn require_all(allow_untested_kernel: bool) -> Result<(), Failure> {
    match run_checks(allow_untested_kernel).into_iter().find(|c| !c.ok && !optional(c)) {
        None => Ok(()),
        Some(c) => Err(Failure::runtime(anyhow::anyhow!(
            "{}: {}. Fix: {} (`sensor check` lists every requirement)",
            c.name,
            c.detail,
            c.fix
        ))),
    }
}

fn kernel_version(allow_untested: bool) -> Check {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let version = parse_release(release);
    Check {
        name: "kernel version",
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
            Check {
                name,
                ok,
                detail: format!("{} ({why})", if ok { "effective" } else { "missing" }),
                fix: "run as root, or grant it: systemd AmbientCapabilities=CAP_BPF CAP_PERFMON \
                      CAP_NET_ADMIN (deploy/systemd), setpriv --ambient-caps +bpf,+perfmon,+net_admin, \
                      or the DaemonSet's capabilities.add (deploy/kubernetes)",
            }
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
/// CAP_SYS_ADMIN; without it every TLS session's verification is `unknown`.
fn sys_admin_capability() -> Check {
    optional_capability(
        "CAP_SYS_ADMIN",
        CAP_SYS_ADMIN,
        "uprobes on clients' OpenSSL: whether TLS clients verify the server",
        "optional; grant CAP_SYS_ADMIN for TLS verification, or run with --tls-verification off",
    )
}

fn optional_capability(name: &'static str, cap: u32, why: &str, fix: &'static str) -> Check {
    let ok = effective_caps() & (1u64 << cap) != 0;
    Check {
        name,
        ok,
        detail: format!("{} (optional: {why})", if ok { "effective" } else { "missing" }),
        fix,
    }
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

fn cgroup_v2() -> Check {
    match cgroup::find_cgroup2_root() {
        Ok(path) => Check {
            name: "cgroup v2",
            ok: true,
            detail: format!("mounted at {}", path.display()),
            fix: "",
        },
        Err(err) => Check {
            name: "cgroup v2",
            ok: false,
            detail: format!("{err:#}"),
            fix: "mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup/unified) or pass --cgroup",
        },
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
    Check {
        name: "BPF program types",
        ok: missing.is_empty(),
        detail: if missing.is_empty() {
            "cgroup_skb, cgroup_sock_addr load".to_string()
        } else {
            missing.join("; ")
        },
        fix: "use a kernel built with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF",
    }
}

fn ring_buffer_support() -> Check {
    let (ok, detail) = match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(true) => (true, "BPF ring buffer available".to_string()),
        Ok(false) => (false, "BPF ring buffer not supported".to_string()),
        Err(err) => (false, format!("probe failed: {err}")),
    };
    Check { name: "BPF ring buffer", ok, detail, fix: "run on Linux 5.8 or newer" }
}

fn btf() -> Check {
    let ok = fs::metadata("/sys/kernel/btf/vmlinux").is_ok();
    Check {
        name: "kernel BTF",
        ok,
        detail: if ok { "/sys/kernel/btf/vmlinux present" } else { "no /sys/kernel/btf/vmlinux" }
            .to_string(),
        fix: "optional today; a kernel with CONFIG_DEBUG_INFO_BTF=y is recommended",
    }
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
