//! `cargo xtask vm-test [--accel tcg|kvm]`: the sensor on other kernels and architectures.
//! Debian's own cloud kernel packages (x86_64: Debian 11's 5.10, Debian 12's 6.1 and 6.12;
//! aarch64: Debian 12's 6.1, under `qemu-system-aarch64`) boot under QEMU, each with an
//! initramfs of its architecture holding Debian's static busybox, the released static
//! sensor (`cargo xtask dist`) and a static xtask that runs the kernel-side tests
//! (`xtask vm-guest`, guest.rs). Packages come through apt lists of vm-test's own. Prints a
//! kernel-by-test matrix and writes it to target/vm/results.md; fails if any kernel fails
//! any test.
//!
//! The accelerator defaults to TCG (software emulation): on this project's build machines
//! KVM is nested and every CPU model tried (`max`, `qemu64`, `kvm64`, `host,pmu=off`, `max`
//! without BMI2/AVX) ends in "emulation failure" in the kernel's decompressor. Pass
//! `--accel kvm` where KVM works; guests of another architecture always run under TCG.

pub mod guest;
mod systemd;
pub mod systemd_guest;

use std::{
    fmt::Write as _,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::arch::{Arch, QemuMachine};

/// One guest: Debian's newest kernel of a series for one architecture.
struct Kernel {
    /// The series, as the matrix and the console logs name it.
    label: &'static str,
    arch: Arch,
    /// The meta package whose dependency is that newest kernel package.
    meta: &'static str,
    release: Release,
}

/// Every guest vm-test boots. The oldest series is the sensor's minimum kernel
/// (`preflight::MIN_KERNEL`). One aarch64 guest: under TCG on an x86_64 machine it takes
/// about as long as all the x86_64 ones, and what differs between architectures (the
/// programs' build, pt_regs for the uprobes, the static binary) does not vary by series.
const KERNELS: [Kernel; 4] = [
    Kernel {
        label: "5.10",
        arch: Arch::X86_64,
        meta: "linux-image-cloud-amd64",
        release: Release::Bullseye,
    },
    Kernel {
        label: "6.1",
        arch: Arch::X86_64,
        meta: "linux-image-cloud-amd64",
        release: Release::Bookworm,
    },
    Kernel {
        label: "6.12",
        arch: Arch::X86_64,
        meta: "linux-image-6.12-cloud-amd64",
        release: Release::Bookworm,
    },
    Kernel {
        label: "6.1",
        arch: Arch::Aarch64,
        meta: "linux-image-cloud-arm64",
        release: Release::Bookworm,
    },
];

/// The Debian release a package comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    /// Debian 11: its 5.10 kernel.
    Bullseye,
    /// Debian 12: 6.1, 6.12 and the guests' busybox.
    Bookworm,
}

impl Release {
    fn codename(self) -> &'static str {
        match self {
            Release::Bullseye => "bullseye",
            Release::Bookworm => "bookworm",
        }
    }
}

/// Debian packages of one release and architecture, through apt package lists of
/// vm-test's own under target/vm/apt/<release>-<arch>: nothing system-wide is changed (no
/// `dpkg --add-architecture`), and the machine's own sources do not matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AptSource {
    release: Release,
    arch: Arch,
}

impl AptSource {
    fn dir(self, work: &Path) -> PathBuf {
        work.join("apt").join(format!("{}-{}", self.release.codename(), self.arch.debian()))
    }

    /// The source list: the release and its security updates, this architecture only.
    fn sources(self) -> String {
        let (codename, arch) = (self.release.codename(), self.arch.debian());
        let entry = |url: &str, suite: &str| {
            format!(
                "deb [arch={arch} signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 {url} {suite} main\n"
            )
        };
        entry("http://deb.debian.org/debian", codename)
            + &entry("http://deb.debian.org/debian", &format!("{codename}-updates"))
            + &entry("http://deb.debian.org/debian-security", &format!("{codename}-security"))
    }

    /// apt options that select this source's package lists, for this architecture.
    fn apt_options(self, work: &Path) -> anyhow::Result<Vec<String>> {
        let apt = self.dir(work);
        let lists = apt.join("lists");
        std::fs::create_dir_all(lists.join("partial"))?;
        std::fs::create_dir_all(apt.join("cache/archives/partial"))?;
        std::fs::create_dir_all(apt.join("parts"))?;
        let list = apt.join("sources.list");
        std::fs::write(&list, self.sources())?;
        let opts = [
            format!("Dir::Etc::SourceList={}", list.display()),
            format!("Dir::Etc::SourceParts={}", apt.join("parts").display()),
            format!("Dir::State::Lists={}", lists.display()),
            format!("Dir::Cache={}", apt.join("cache").display()),
            // Packages named without `:arch` are this architecture's.
            format!("APT::Architecture={}", self.arch.debian()),
            format!("APT::Architectures={}", self.arch.debian()),
        ];
        Ok(opts.iter().flat_map(|o| ["-o".to_string(), o.clone()]).collect())
    }

    /// Bring this source's package lists up to date.
    fn update(self, work: &Path) -> anyhow::Result<()> {
        crate::status(Command::new("apt-get").args(self.apt_options(work)?).args(["-q", "update"]))
    }
}

/// The kernel whose guest also runs the cgroup v1 host test: the newest, where an attach
/// takes a second under TCG (minutes on 5.10). The code it proves (mounting cgroup2) does
/// not depend on the kernel series.
const CGROUP_V1_ON: &str = "6.12";

/// The systemd guest boots Debian 12's own kernel (x86_64).
const SYSTEMD_KERNEL: &str = "6.1";

/// The busybox guests' memory.
const GUEST_MEMORY_MIB: u32 = 1024;

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

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
    arch: Arch,
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
    /// QEMU's machine and CPU arguments for this accelerator on `machine`.
    fn qemu_args(self, machine: &QemuMachine) -> [String; 4] {
        let (accel, cpu) = match self {
            Accel::Tcg => ("tcg", machine.tcg_cpu),
            Accel::Kvm => ("kvm", "host"),
        };
        ["-machine".into(), format!("{},accel={accel}", machine.machine), "-cpu".into(), cpu.into()]
    }
}

pub fn run(root: &Path, accel: Accel) -> anyhow::Result<()> {
    if accel == Accel::Kvm {
        anyhow::ensure!(Path::new("/dev/kvm").exists(), "/dev/kvm missing: use --accel tcg");
    }
    let work = root.join("target/vm");
    std::fs::create_dir_all(work.join("debs"))?;
    let mut updated = Vec::new();
    let mut initramfs = Vec::new();
    let mut outcomes = Vec::new();
    for kernel in KERNELS {
        let arch = kernel.arch;
        let source = AptSource { release: kernel.release, arch };
        // The guest's busybox comes from Debian 12 of the same architecture.
        let busybox_source = AptSource { release: Release::Bookworm, arch };
        for s in [source, busybox_source] {
            if !updated.contains(&s) {
                s.update(&work)?;
                updated.push(s);
            }
        }
        if !initramfs.iter().any(|(a, _)| *a == arch) {
            let apt = busybox_source.apt_options(&work)?;
            let userland = Userland {
                busybox: fetch_busybox(&work, &apt, arch)?,
                libpq_client: fetch_libpq_client(&work, &apt, arch)?,
            };
            initramfs.push((arch, build_initramfs(root, &work, arch, &userland)?));
        }
        let initramfs = &initramfs.iter().find(|(a, _)| *a == arch).expect("built above").1;
        let apt = source.apt_options(&work)?;
        let package = newest_kernel(&apt, kernel.meta)?;
        let vmlinuz = fetch_kernel(&work, &apt, &package)?;
        let cgroup_v1 = kernel.label == CGROUP_V1_ON && arch == Arch::X86_64;
        let append = if cgroup_v1 { guest::CGROUP_V1_FLAG } else { "" };
        let name = format!("{}-{}", kernel.label, arch.name());
        let started = Instant::now();
        // KVM runs only guests of the machine's own architecture.
        let accel = if arch == Arch::host() { accel } else { Accel::Tcg };
        let mut console = boot(arch, &vmlinuz, initramfs, accel, append, GUEST_MEMORY_MIB)?;
        if guest_never_ran(&console) {
            // The emulator, not the sensor: seen once under TCG, the static busybox
            // segfaulted before /init had mounted anything. One more boot; both consoles
            // are kept.
            eprintln!("xtask: {name}: the guest's /init failed before the test; booting again");
            std::fs::write(work.join(format!("console-{name}-failed-boot.log")), &console)?;
            console = boot(arch, &vmlinuz, initramfs, accel, append, GUEST_MEMORY_MIB)?;
        }
        std::fs::write(work.join(format!("console-{name}.log")), &console)?;
        let line = console.lines().find(|l| l.starts_with("VMTEST ")).map(str::to_string);
        let seconds = started.elapsed().as_secs_f64();
        outcomes.push(Outcome { label: kernel.label, arch, package, line, seconds, cgroup_v1 });
    }
    let table = matrix(&outcomes);
    print!("{table}");
    std::fs::write(work.join("results.md"), &table)?;
    if let Some(failed) = outcomes.iter().find(|o| !o.passed()) {
        let name = format!("{}-{}", failed.label, failed.arch.name());
        bail!("kernel {name} failed; its console is in target/vm/console-{name}.log");
    }
    Ok(())
}

/// `vm-test --systemd`: the Debian package under a real systemd (vm/systemd.rs), on the
/// kernel of the Debian release whose root filesystem it boots. Not in CI (about 6 minutes
/// under TCG, plus 2 for the root filesystem's first debootstrap); its last result is in
/// docs/kernels.md.
pub fn run_systemd(root: &Path, accel: Accel) -> anyhow::Result<()> {
    if accel == Accel::Kvm {
        anyhow::ensure!(Path::new("/dev/kvm").exists(), "/dev/kvm missing: use --accel tcg");
    }
    let work = root.join("target/vm");
    std::fs::create_dir_all(work.join("debs"))?;
    let kernel = KERNELS
        .iter()
        .find(|k| k.label == SYSTEMD_KERNEL && k.arch == Arch::X86_64)
        .context("no x86_64 kernel of the systemd guest's release in KERNELS")?;
    let source = AptSource { release: kernel.release, arch: kernel.arch };
    source.update(&work)?;
    let apt = source.apt_options(&work)?;
    let vmlinuz = fetch_kernel(&work, &apt, &newest_kernel(&apt, kernel.meta)?)?;
    // The binary the package holds, and the guest's checks, built as for the busybox guests.
    crate::dist(&[kernel.arch])?;
    let mut build = crate::cargo();
    kernel.arch.configure_build(&mut build);
    crate::status(build.args(["--package", "xtask"]))?;
    let outcome = systemd::run(root, &work, &vmlinuz, accel)?;
    let table = outcome.table();
    print!("{table}");
    std::fs::write(work.join("results-systemd.md"), &table)?;
    if !outcome.passed() {
        bail!(
            "the systemd guest failed; its console is in {}",
            systemd::console_path(&work).display()
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
    let mut t = String::from("| kernel | arch | package |");
    for test in guest::TESTS {
        let _ = write!(t, " {test} |");
    }
    t.push_str(" CapPrm after attach | boot + test |\n|---|---|---|");
    t.push_str(&"---|".repeat(guest::TESTS.len() + 2));
    t.push('\n');
    for o in outcomes {
        let _ = write!(t, "| {} | {} | {} |", o.field("kernel"), o.arch.name(), o.package);
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
    let deb = downloaded_deb(work, apt, package, "")?;
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

/// `package`'s .deb in target/vm/debs (its file name ending in `suffix`, e.g. the
/// architecture's `_arm64.deb`), downloaded with `apt` options unless already there.
fn downloaded_deb(
    work: &Path,
    apt: &[String],
    package: &str,
    suffix: &str,
) -> anyhow::Result<PathBuf> {
    let debs = work.join("debs");
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(&debs).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&format!("{package}_")) && n.ends_with(suffix)
            })
        })
    };
    if find().is_none() {
        crate::status(
            Command::new("apt-get").current_dir(&debs).args(apt).args(["download", package]),
        )?;
    }
    find().with_context(|| format!("apt-get download {package} left no .deb"))
}

/// Debian 12's static busybox for `arch` (downloaded once), for the guest's shell.
fn fetch_busybox(work: &Path, apt: &[String], arch: Arch) -> anyhow::Result<PathBuf> {
    let dir = work.join("busybox").join(arch.debian());
    let busybox = dir.join("bin/busybox");
    if busybox.exists() {
        return Ok(busybox);
    }
    let deb = downloaded_deb(work, apt, "busybox-static", &format!("_{}.deb", arch.debian()))?;
    std::fs::create_dir_all(&dir)?;
    crate::status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    anyhow::ensure!(busybox.exists(), "{} has no /bin/busybox", deb.display());
    Ok(busybox)
}

/// What of Debian 12 a guest of one architecture runs besides the sensor and xtask.
struct Userland {
    /// The static busybox: the guest's shell and tools.
    busybox: PathBuf,
    /// A tree with psql, libpq, OpenSSL and every library they load.
    libpq_client: PathBuf,
}

/// The packages whose libraries psql loads (apt resolves what they depend on).
const LIBPQ_CLIENT_LIBRARIES: [&str; 2] = ["libpq5", "libreadline8"];

/// Debian 12's psql for `arch` with every shared library it loads (libpq, OpenSSL, GSSAPI,
/// LDAP, readline, glibc and the dynamic loader), downloaded and unpacked once: a tree of
/// only the library directories and psql, to copy into the initramfs.
fn fetch_libpq_client(work: &Path, apt: &[String], arch: Arch) -> anyhow::Result<PathBuf> {
    let tree = work.join("libpq-client").join(arch.debian());
    if tree.join(guest::PSQL.trim_start_matches('/')).exists() {
        return Ok(tree);
    }
    let closure = Command::new("apt-cache")
        .args(apt)
        .args(["depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts"])
        .args(["--no-breaks", "--no-replaces", "--no-enhances"])
        .args(LIBPQ_CLIENT_LIBRARIES)
        .output()?;
    anyhow::ensure!(
        closure.status.success(),
        "apt-cache depends {LIBPQ_CLIENT_LIBRARIES:?} failed"
    );
    // Top-level lines are packages; indented ones their dependencies; `<...>` are virtual.
    let mut packages: Vec<String> = String::from_utf8_lossy(&closure.stdout)
        .lines()
        .filter(|l| !l.starts_with([' ', '<']) && !l.is_empty())
        .map(str::to_string)
        .collect();
    packages.sort();
    packages.dedup();
    // psql itself, without its dependency on the perl wrapper scripts.
    packages.push("postgresql-client-15".into());
    let debs = work.join("debs").join(format!("libpq-client-{}", arch.debian()));
    let staging = work.join("libpq-client").join(format!("{}-staging", arch.debian()));
    let _ = std::fs::remove_dir_all(&debs);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&debs)?;
    std::fs::create_dir_all(&staging)?;
    crate::status(
        Command::new("apt-get").current_dir(&debs).args(apt).arg("download").args(&packages),
    )?;
    for deb in std::fs::read_dir(&debs)?.flatten() {
        crate::status(Command::new("dpkg-deb").arg("-x").arg(deb.path()).arg(&staging))?;
    }
    // Only the library directories (the dynamic loader included) and psql; not the
    // packages' programs, documentation or glibc's character set converters.
    let _ = std::fs::remove_dir_all(&tree);
    let keep = format!(
        "set -e; cd {staging}; for d in lib lib64 usr/lib; do \
           [ -e $d ] && mkdir -p {tree}/$(dirname $d) && cp -a $d {tree}/$d; done; \
         rm -rf {tree}/usr/lib/*/gconv",
        staging = staging.display(),
        tree = tree.display()
    );
    crate::status(Command::new("bash").arg("-c").arg(keep))?;
    std::fs::remove_dir_all(&staging)?;
    anyhow::ensure!(
        tree.join(guest::PSQL.trim_start_matches('/')).exists(),
        "postgresql-client-15 left no {}",
        guest::PSQL
    );
    Ok(tree)
}

/// init, busybox, psql with its libraries, a CA file, and the released static sensor and
/// a static xtask for `arch`, as a newc cpio archive (target/vm/initramfs-<arch>.cpio).
fn build_initramfs(
    root: &Path,
    work: &Path,
    arch: Arch,
    userland: &Userland,
) -> anyhow::Result<PathBuf> {
    // The guest runs the binary users install, as `cargo xtask dist` builds it.
    crate::dist(&[arch])?;
    let mut build = crate::cargo();
    arch.configure_build(&mut build);
    crate::status(build.args(["--package", "xtask"]))?;
    let dir = work.join(format!("initramfs-{}", arch.name()));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["bin", "dev", "proc", "sys", "tmp", "etc", "tls"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    crate::status(Command::new("cp").arg("-a").arg(userland.libpq_client.join(".")).arg(&dir))?;
    std::fs::copy(arch.dist_binary(root), dir.join("sensor"))?;
    std::fs::copy(arch.built(root, "xtask"), dir.join("xtask"))?;
    std::fs::copy(&userland.busybox, dir.join("bin/busybox"))?;
    // libpq asks who the user is (the default user name, ~/.postgresql).
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    crate::status(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
            .args(["-nodes", "-subj", "/CN=pgwire-sensor vm-test CA", "-days", "2"])
            .args(["-keyout", "/dev/null", "-out"])
            .arg(dir.join(guest::CA_FILE.trim_start_matches('/'))),
    )?;
    std::fs::write(dir.join("init"), INIT)?;
    crate::status(Command::new("chmod").arg("0755").arg(dir.join("init")))?;
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    crate::status(Command::new("mknod").arg(dir.join("dev/console")).args(["c", "5", "1"]))?;
    let archive = work.join(format!("initramfs-{}.cpio", arch.name()));
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
fn boot(
    arch: Arch,
    vmlinuz: &Path,
    initramfs: &Path,
    accel: Accel,
    append: &str,
    memory_mib: u32,
) -> anyhow::Result<String> {
    let machine = arch.qemu();
    let mut child = Command::new(machine.binary)
        .args(accel.qemu_args(&machine))
        .args(["-m", &memory_mib.to_string(), "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("console={} panic=-1 rdinit=/init loglevel=4 {append}", machine.console))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!("starting {} (apt package {})", machine.binary, machine.package)
        })?;
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
    use super::{guest, guest_never_ran, matrix, Arch, Outcome};

    fn outcome(line: &str) -> Outcome {
        Outcome {
            label: "5.10",
            arch: Arch::X86_64,
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
        assert!(table.lines().all(|l| columns(l) == guest::TESTS.len() + 6), "{table}");
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
