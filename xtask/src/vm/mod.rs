//! `cargo xtask vm-test [--accel tcg|kvm]`: the sensor on other kernels. Debian's own kernel
//! packages (apt `linux-image-*-cloud-amd64`: Debian 11's 5.10 through an apt source list of
//! its own, Debian 12's 6.1 and 6.12) boot under QEMU, with an initramfs holding busybox, the
//! static release sensor and a static xtask that runs the kernel-side tests
//! (`xtask vm-guest`, guest.rs). Prints a kernel-by-test matrix and writes it to
//! target/vm/results.md; fails if any kernel fails any test.
//!
//! The accelerator defaults to TCG (software emulation): on this project's build machines
//! KVM is nested and every CPU model tried (`max`, `qemu64`, `kvm64`, `host,pmu=off`, `max`
//! without BMI2/AVX) ends in "emulation failure" in the kernel's decompressor. Pass
//! `--accel kvm` where KVM works.

pub mod guest;

use std::{
    fmt::Write as _,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// (label, Debian meta package naming the newest kernel of that series, where it comes
/// from). The oldest one is the sensor's minimum kernel (`preflight::MIN_KERNEL`).
const KERNELS: [(&str, &str, Suite); 3] = [
    ("5.10", "linux-image-cloud-amd64", Suite::Bullseye),
    ("6.1", "linux-image-cloud-amd64", Suite::System),
    ("6.12", "linux-image-6.12-cloud-amd64", Suite::System),
];

/// Where a kernel package is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Suite {
    /// The machine's own apt sources (Debian 12, bookworm).
    System,
    /// Debian 11 (bullseye and bullseye-security), through an apt source list of vm-test's
    /// own under target/vm/apt: nothing system-wide is changed.
    Bullseye,
}

const BULLSEYE_SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
";

impl Suite {
    /// apt options that select this suite's package lists (none for the system's).
    fn apt_options(self, work: &Path) -> anyhow::Result<Vec<String>> {
        match self {
            Suite::System => Ok(Vec::new()),
            Suite::Bullseye => {
                let apt = work.join("apt");
                let lists = apt.join("lists");
                std::fs::create_dir_all(lists.join("partial"))?;
                std::fs::create_dir_all(apt.join("cache/archives/partial"))?;
                std::fs::create_dir_all(apt.join("parts"))?;
                let list = apt.join("bullseye.list");
                std::fs::write(&list, BULLSEYE_SOURCES)?;
                let opts = [
                    format!("Dir::Etc::SourceList={}", list.display()),
                    format!("Dir::Etc::SourceParts={}", apt.join("parts").display()),
                    format!("Dir::State::Lists={}", lists.display()),
                    format!("Dir::Cache={}", apt.join("cache").display()),
                ];
                Ok(opts.iter().flat_map(|o| ["-o".to_string(), o.clone()]).collect())
            }
        }
    }

    /// Bring this suite's package lists up to date (the system's are the machine's own
    /// business: `apt-get update` is run by the bootstrap script).
    fn update(self, work: &Path) -> anyhow::Result<()> {
        if self == Suite::System {
            return Ok(());
        }
        crate::status(Command::new("apt-get").args(self.apt_options(work)?).args(["-q", "update"]))
    }
}

/// The kernel whose guest also runs the cgroup v1 host test: the newest, where an attach
/// takes a second under TCG (minutes on 5.10). The code it proves (mounting cgroup2) does
/// not depend on the kernel series.
const CGROUP_V1_ON: &str = "6.12";

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
const MUSL: &str = "x86_64-unknown-linux-musl";

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmp /tmp
ip link set lo up
echo "VMTEST-START"
/xtask vm-guest
echo o > /proc/sysrq-trigger
sleep 10
"#;

struct Outcome {
    label: &'static str,
    package: String,
    line: Option<String>,
    seconds: f64,
    /// The guest was asked to run the cgroup v1 test too.
    cgroup_v1: bool,
}

impl Outcome {
    fn field(&self, key: &str) -> &str {
        self.line
            .as_deref()
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')))
            .unwrap_or("no result")
    }

    /// Every test ok, the cgroup v1 one only where it was asked for (`-` elsewhere).
    fn passed(&self) -> bool {
        guest::TESTS.iter().all(|k| match self.field(k) {
            "ok" => true,
            "-" => *k == guest::CGROUP_V1_TEST && !self.cgroup_v1,
            _ => false,
        })
    }
}

/// QEMU's accelerator for the test VMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Software emulation: works everywhere, about 10 s per kernel.
    #[default]
    Tcg,
    /// Hardware virtualisation, where /dev/kvm works.
    Kvm,
}

impl Accel {
    fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Tcg => ["-machine", "accel=tcg", "-cpu", "max"],
            Accel::Kvm => ["-machine", "accel=kvm", "-cpu", "host"],
        }
    }
}

pub fn run(root: &Path, accel: Accel) -> anyhow::Result<()> {
    if accel == Accel::Kvm {
        anyhow::ensure!(Path::new("/dev/kvm").exists(), "/dev/kvm missing: use --accel tcg");
    }
    let work = root.join("target/vm");
    std::fs::create_dir_all(work.join("debs"))?;
    let initramfs = build_initramfs(root, &work)?;
    let mut outcomes = Vec::new();
    let mut updated = Vec::new();
    for (label, meta, suite) in KERNELS {
        if !updated.contains(&suite) {
            suite.update(&work)?;
            updated.push(suite);
        }
        let apt = suite.apt_options(&work)?;
        let package = newest_kernel(&apt, meta)?;
        let vmlinuz = fetch_kernel(&work, &apt, &package)?;
        let cgroup_v1 = label == CGROUP_V1_ON;
        let append = if cgroup_v1 { guest::CGROUP_V1_FLAG } else { "" };
        let started = Instant::now();
        let mut console = boot(&vmlinuz, &initramfs, accel, append)?;
        if guest_never_ran(&console) {
            // The emulator, not the sensor: seen once under TCG, the static busybox
            // segfaulted before /init had mounted anything. One more boot; both consoles
            // are kept.
            eprintln!("xtask: {label}: the guest's /init failed before the test; booting again");
            std::fs::write(work.join(format!("console-{label}-failed-boot.log")), &console)?;
            console = boot(&vmlinuz, &initramfs, accel, append)?;
        }
        std::fs::write(work.join(format!("console-{label}.log")), &console)?;
        let line = console.lines().find(|l| l.starts_with("VMTEST ")).map(str::to_string);
        let seconds = started.elapsed().as_secs_f64();
        outcomes.push(Outcome { label, package, line, seconds, cgroup_v1 });
    }
    let table = matrix(&outcomes);
    print!("{table}");
    std::fs::write(work.join("results.md"), &table)?;
    if let Some(failed) = outcomes.iter().find(|o| !o.passed()) {
        bail!(
            "kernel {} failed; its console is in target/vm/console-{}.log",
            failed.label,
            failed.label
        );
    }
    Ok(())
}

/// The guest's own /init failed before the test started (its shell found no `mount`: the
/// busybox applets were never installed), as opposed to a test that ran and failed.
fn guest_never_ran(console: &str) -> bool {
    !console.contains("VMTEST kernel=") && console.contains("mount: not found")
}

fn matrix(outcomes: &[Outcome]) -> String {
    let mut t = String::from("| kernel | package |");
    for test in guest::TESTS {
        let _ = write!(t, " {test} |");
    }
    t.push_str(" CapPrm after attach | boot + test |\n|---|---|");
    t.push_str(&"---|".repeat(guest::TESTS.len() + 2));
    t.push('\n');
    for o in outcomes {
        let _ = write!(t, "| {} | {} |", o.field("kernel"), o.package);
        for test in guest::TESTS {
            let _ = write!(t, " {} |", o.field(test));
        }
        let _ = writeln!(t, " {} | {:.1} s |", o.field("caps_after_attach"), o.seconds);
    }
    t
}

/// The kernel package a Debian meta package points at (`Depends: linux-image-...`).
fn newest_kernel(apt: &[String], meta: &str) -> anyhow::Result<String> {
    let out =
        Command::new("apt-cache").args(apt).args(["depends", "--important", meta]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && *p != meta)
        .map(str::to_string)
        .with_context(|| {
            format!("apt-cache depends {meta}: no linux-image package (apt-get update?)")
        })
}

/// Download the package (once) and extract its vmlinuz.
fn fetch_kernel(work: &Path, apt: &[String], package: &str) -> anyhow::Result<PathBuf> {
    let vmlinuz = work.join("kernels").join(package).join("vmlinuz");
    if vmlinuz.exists() {
        return Ok(vmlinuz);
    }
    let debs = work.join("debs");
    let deb = |debs: &Path| -> Option<PathBuf> {
        std::fs::read_dir(debs).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
    };
    if deb(&debs).is_none() {
        crate::status(
            Command::new("apt-get").current_dir(&debs).args(apt).args(["download", package]),
        )?;
    }
    let deb = deb(&debs).context("apt-get download left no .deb")?;
    let tree = work.join("kernels").join(package).join("tree");
    std::fs::create_dir_all(&tree)?;
    crate::status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let boot = std::fs::read_dir(tree.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .context("no /boot/vmlinuz-* in the package")?;
    std::fs::copy(boot, &vmlinuz)?;
    // The modules are not needed: everything the sensor uses is built in.
    std::fs::remove_dir_all(&tree)?;
    Ok(vmlinuz)
}

/// init + busybox + the static sensor and xtask, as a newc cpio archive.
fn build_initramfs(root: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    crate::status(crate::cargo().args(["build", "--release", "--target", MUSL]).args([
        "--package",
        "sensor",
        "--package",
        "xtask",
    ]))?;
    let dir = work.join("initramfs");
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["bin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let release = root.join("target").join(MUSL).join("release");
    std::fs::copy(release.join("sensor"), dir.join("sensor"))?;
    std::fs::copy(release.join("xtask"), dir.join("xtask"))?;
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).context("busybox-static missing")?;
    std::fs::write(dir.join("init"), INIT)?;
    crate::status(Command::new("chmod").arg("0755").arg(dir.join("init")))?;
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    crate::status(Command::new("mknod").arg(dir.join("dev/console")).args(["c", "5", "1"]))?;
    let archive = work.join("initramfs.cpio");
    crate::status(
        Command::new("bash")
            .current_dir(&dir)
            .arg("-c")
            .arg(format!("find . | cpio --quiet -o -H newc > {}", archive.display())),
    )?;
    Ok(archive)
}

/// Boot the kernel with the initramfs, `append` added to its command line; the serial
/// console's text.
fn boot(vmlinuz: &Path, initramfs: &Path, accel: Accel, append: &str) -> anyhow::Result<String> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(accel.qemu_args())
        .args(["-m", "1024", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 rdinit=/init loglevel=4 {append}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (apt package qemu-system-x86)")?;
    let mut stdout = child.stdout.take().context("no qemu stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.wait();
    Ok(reader.join().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::{guest, guest_never_ran, matrix, Outcome};

    fn outcome(line: &str) -> Outcome {
        Outcome {
            label: "5.10",
            package: "p".into(),
            line: Some(line.into()),
            seconds: 1.0,
            cgroup_v1: false,
        }
    }

    #[test]
    fn a_kernel_passes_only_when_every_guest_test_says_ok() {
        let all: String = guest::TESTS.iter().map(|t| format!(" {t}=ok")).collect();
        let passed = outcome(&format!("VMTEST kernel=5.10.0{all} caps_after_attach=0"));
        assert!(passed.passed());
        // The cgroup v1 test: `-` where it was not asked for, a failure where it was.
        let not_asked = all.replace(
            &format!("{}=ok", guest::CGROUP_V1_TEST),
            &format!("{}=-", guest::CGROUP_V1_TEST),
        );
        let mut v1 = outcome(&format!("VMTEST kernel=6.12{not_asked}"));
        assert!(v1.passed());
        v1.cgroup_v1 = true;
        assert!(!v1.passed(), "asked for and not run");
        let one_failed = all.replacen("refused=ok", "refused=fail", 1);
        assert!(!outcome(&format!("VMTEST kernel=5.10.0{one_failed}")).passed());
        let one_missing = all.replacen(" ipv6=ok", "", 1);
        assert!(!outcome(&format!("VMTEST kernel=5.10.0{one_missing}")).passed());
        let table = matrix(&[passed]);
        assert_eq!(table.lines().count(), 3);
        let columns = |l: &str| l.matches('|').count();
        assert!(table.lines().all(|l| columns(l) == guest::TESTS.len() + 5), "{table}");
    }

    #[test]
    fn only_a_guest_whose_init_never_got_going_is_booted_again() {
        let crashed = "Segmentation fault\n/init: line 5: mount: not found\nVMTEST-START\n";
        assert!(guest_never_ran(crashed));
        let failed_test = "VMTEST-START\nVMTEST kernel=6.12 check=ok attach=failed\n";
        assert!(!guest_never_ran(failed_test), "a test that ran and failed is a failure");
        assert!(!guest_never_ran("VMTEST-START\n(timed out)\n"));
    }
}
