//! vm-test's real-systemd guest: the Debian package installed, run, crashed, rotated,
//! upgraded, stopped and purged under systemd as PID 1.
//!
//! The root filesystem is Debian 12 (`debootstrap --variant=minbase` from the Debian
//! registry, with systemd, logrotate, psql and bpftool), made once and kept as a cpio
//! archive in target/vm/systemd/. Each run appends a second archive with the test's own
//! files (the two .debs, the xtask binary that runs the checks and the pgwire server, a
//! unit that starts them) and boots the concatenation as the initramfs: the kernel unpacks
//! both into its tmpfs root and runs /init, a link to systemd. No disk image, no loop
//! devices, no network. The checks are vm/systemd_guest.rs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::bail;

use super::{boot, systemd_guest, Accel};
use crate::{arch::Arch, package, status};

/// What debootstrap installs besides minbase: systemd as init, what the package's scripts
/// and the checks call, and a real libpq client.
const PACKAGES: &str =
    "systemd,systemd-sysv,dbus,init-system-helpers,logrotate,procps,bpftool,postgresql-client-15";
const MIRROR: &str = "http://deb.debian.org/debian";
/// The root filesystem unpacked, and the package caches, in RAM.
const MEMORY_MIB: u32 = 2048;

/// The guest's result: its VMSYSTEMD line, if it printed one.
pub struct SystemdOutcome {
    pub line: Option<String>,
    pub seconds: f64,
}

impl SystemdOutcome {
    pub fn passed(&self) -> bool {
        self.line.as_deref().is_some_and(|line| {
            systemd_guest::TESTS.iter().all(|test| line.contains(&format!(" {test}=ok")))
        })
    }

    /// A markdown table of the tests, for target/vm/results.md and docs/kernels.md.
    pub fn table(&self) -> String {
        let line = self.line.as_deref().unwrap_or("");
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(&format!("{key}=")))
                .unwrap_or("missing")
                .to_string()
        };
        let mut out = String::from("| kernel | systemd |");
        let mut rule = String::from("|---|---|");
        let mut row = format!("| {} | {} |", field("kernel"), field("systemd"));
        for test in systemd_guest::TESTS {
            out.push_str(&format!(" {test} |"));
            rule.push_str("---|");
            row.push_str(&format!(" {} |", field(test)));
        }
        out.push_str(" boot + test |\n");
        rule.push_str("---|\n");
        row.push_str(&format!(" {:.1} s |\n", self.seconds));
        out + &rule + &row
    }
}

/// Build (or reuse) the root filesystem, add the test's files, boot, and read the result.
pub fn run(
    root: &Path,
    work: &Path,
    vmlinuz: &Path,
    accel: Accel,
) -> anyhow::Result<SystemdOutcome> {
    let dir = work.join("systemd");
    std::fs::create_dir_all(&dir)?;
    let rootfs = rootfs_archive(&dir)?;
    let overlay = overlay_archive(root, &dir)?;
    let initrd = dir.join("initrd.cpio");
    // Concatenated cpio archives are one initramfs to the kernel; streamed, not read
    // whole (the root filesystem's archive is ~260 MB).
    let mut joined = std::fs::File::create(&initrd)?;
    for part in [&rootfs, &overlay] {
        std::io::copy(&mut std::fs::File::open(part)?, &mut joined)?;
    }
    let started = std::time::Instant::now();
    // systemd as init; quiet kernel, the guest's own output on the console.
    let console =
        boot(Arch::X86_64, vmlinuz, &initrd, accel, "systemd.show_status=false", MEMORY_MIB)?;
    std::fs::write(work.join("console-systemd.log"), &console)?;
    let line = console.lines().find(|l| l.starts_with("VMSYSTEMD ")).map(str::to_string);
    Ok(SystemdOutcome { line, seconds: started.elapsed().as_secs_f64() })
}

/// Debian 12 with systemd, as a cpio archive; debootstrapped once (a stamp names the
/// package list it was made with).
fn rootfs_archive(dir: &Path) -> anyhow::Result<PathBuf> {
    let archive = dir.join("rootfs.cpio");
    let stamp = dir.join("rootfs.packages");
    if archive.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == PACKAGES) {
        return Ok(archive);
    }
    let tree = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&tree);
    eprintln!("xtask: debootstrap Debian 12 with systemd into {} (once)", tree.display());
    status(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={PACKAGES}"), "bookworm"])
            .arg(&tree)
            .arg(MIRROR),
    )?;
    // No login prompt on the console (the test unit writes there); an empty machine id,
    // made at boot; no package caches in the archive.
    status(Command::new("systemctl").arg(format!("--root={}", tree.display())).args([
        "mask",
        "serial-getty@ttyS0.service",
        "getty@tty1.service",
    ]))?;
    std::fs::write(tree.join("etc/machine-id"), "")?;
    std::fs::write(tree.join("etc/hostname"), "pgwire-vmtest\n")?;
    let _ = std::fs::remove_dir_all(tree.join("var/cache/apt/archives"));
    cpio(&tree, &archive)?;
    std::fs::write(&stamp, PACKAGES)?;
    let _ = std::fs::remove_dir_all(&tree);
    Ok(archive)
}

/// The run's own files: /init (systemd), the packages, the checks and the unit that runs
/// them once the system is up.
fn overlay_archive(root: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let tree = dir.join("overlay");
    let _ = std::fs::remove_dir_all(&tree);
    let vmtest = tree.join("vmtest");
    let wants = tree.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&vmtest)?;
    std::fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink("/lib/systemd/systemd", tree.join("init"))?;
    let arch = Arch::X86_64;
    let first = package::deb(root, arch, package::DEB_REVISION)?;
    let upgrade = package::deb(root, arch, "2")?;
    std::fs::copy(&first, tree.join(systemd_guest::DEB_FIRST.trim_start_matches('/')))?;
    std::fs::copy(&upgrade, tree.join(systemd_guest::DEB_UPGRADE.trim_start_matches('/')))?;
    // The upgrade package stays out of target/dist: only the release revision ships.
    std::fs::remove_file(&upgrade)?;
    std::fs::copy(arch.built(root, "xtask"), vmtest.join("xtask"))?;
    let unit = "[Unit]\n\
                Description=pgwire-sensor package test under systemd\n\
                After=basic.target\n\
                [Service]\n\
                Type=oneshot\n\
                ExecStart=/vmtest/xtask vm-systemd-guest\n\
                StandardOutput=tty\n\
                StandardError=tty\n\
                TTYPath=/dev/ttyS0\n";
    let unit_path = tree.join("etc/systemd/system/pgwire-vmtest.service");
    std::fs::write(&unit_path, unit)?;
    std::os::unix::fs::symlink("../pgwire-vmtest.service", wants.join("pgwire-vmtest.service"))?;
    let archive = dir.join("overlay.cpio");
    cpio(&tree, &archive)?;
    Ok(archive)
}

/// `tree` as a newc cpio archive (what the kernel unpacks as an initramfs).
fn cpio(tree: &Path, archive: &Path) -> anyhow::Result<()> {
    let script = format!("find . | cpio --quiet -o -H newc > '{}'", archive.display());
    let ok = Command::new("sh").args(["-c", &script]).current_dir(tree).status()?.success();
    if !ok {
        bail!("cpio of {} failed", tree.display());
    }
    Ok(())
}

/// Where a failed run's console is.
pub fn console_path(work: &Path) -> PathBuf {
    work.join("console-systemd.log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_line_with_every_test_ok_passes() {
        let all: String = systemd_guest::TESTS.iter().map(|t| format!(" {t}=ok")).collect();
        let ok = SystemdOutcome {
            line: Some(format!("VMSYSTEMD kernel=6.1 systemd=252{all}")),
            seconds: 1.0,
        };
        assert!(ok.passed());
        assert_eq!(ok.table().lines().count(), 3);
        let failed = all.replacen("upgrade=ok", "upgrade=fail", 1);
        let failed =
            SystemdOutcome { line: Some(format!("VMSYSTEMD kernel=6.1{failed}")), seconds: 1.0 };
        assert!(!failed.passed());
        assert!(!SystemdOutcome { line: None, seconds: 1.0 }.passed());
    }
}
