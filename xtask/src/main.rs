//! Developer tasks: `cargo xtask <task>`; `cargo xtask --help` and `cargo xtask <task> --help`
//! describe each task and its options.
//!
//! - `setup [--test-deps]`: idempotent bootstrap of a fresh machine (scripts/bootstrap.sh).
//! - `run [SENSOR ARGS...]`: setup, release build, then `sensor run` with those arguments.
//! - `test`: setup with test dependencies, fmt and clippy checks, build, then every test
//!   (as root: the end-to-end tests load and attach real eBPF programs), then a smoke run
//!   of the benchmark.
//! - `bench [--smoke] [--pairs N] [--seconds S] [--threads N] [--flood SESSIONS]
//!   [--latency-rate PER_SECOND] [--sensor PATH] [--capture-peer]`: the sensor's cost,
//!   attached versus detached, and optionally against a packet capture (see bench/mod.rs).
//! - `alert-rules [--runbook-base-url BASE] [--up-selector MATCHERS]`:
//!   deploy/prometheus/alerts.yml with another runbook base and `up` selector, on stdout.
//! - `dist [--arch x86_64|aarch64]`: the static (musl) release binaries,
//!   target/dist/pgwire-sensor-<arch> for x86_64 and aarch64 (or the one given), and the
//!   Kubernetes manifests as one file (target/dist/pgwire-sensor-kubernetes.yaml).
//! - `package [--arch x86_64|aarch64]`: `dist`, then the Debian package and the OCI image
//!   of each binary (see package.rs).
//! - `docs`: regenerate the documentation's examples (docs/examples/) from a real run, and
//!   the markdown blocks that embed them (as root; see docs/examples/README.md).
//! - `vm-test [--accel tcg|kvm] [--systemd]`: boot Debian's kernels (x86_64 5.10, 6.1, 6.12;
//!   aarch64 6.1) under QEMU and run the kernel-side tests of the sensor in each (see
//!   vm/mod.rs); `vm-guest` (hidden) is its part inside the VM. With `--systemd`, the Debian
//!   package under a real systemd instead (vm/systemd.rs; `vm-systemd-guest` inside).
mod alert_rules;
mod arch;
mod bench;
mod kubernetes;
mod package;
mod vm;

use std::{
    env,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{bail, Context};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Developer tasks for pgwire-sensor.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Option<Task>,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Set up this machine (idempotent).
    ///
    /// Runs scripts/bootstrap.sh: the pinned nightly (ebpf-toolchain) with rust-src,
    /// bpf-linker, the musl target.
    Setup {
        /// Also install what the tests need (PostgreSQL 15, Prometheus, Alertmanager, client
        /// drivers, QEMU, cargo-fuzz, ...).
        #[arg(long)]
        test_deps: bool,
    },
    /// Set up, build, and run the sensor (`sensor run SENSOR ARGS...`).
    ///
    /// Every argument goes to `sensor run`, `--help` included: `cargo xtask run -- --ports
    /// 26257,5432` and `cargo xtask run --ports 26257,5432` are the same.
    #[command(disable_help_flag = true)]
    Run {
        /// Arguments for `sensor run` (`cargo xtask run --help` shows the sensor's own).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "SENSOR ARGS")]
        args: Vec<String>,
    },
    /// Set up with the test dependencies and run every check and test, as root.
    ///
    /// fmt, clippy (host and BPF target), promtool and amtool checks, debug, release and
    /// static builds, every test, a smoke run of the bench, vm-test, and 30 s of each fuzz
    /// target.
    Test,
    /// Measure the sensor's cost, attached versus detached, as root.
    ///
    /// Short sessions and bulk throughput with the sensor detached (A) and attached (B),
    /// the kernel's own cost per program (bpf_stats), the finding latency at a steady rate,
    /// and a flood into a 4 KiB ring buffer. Tables on stdout, JSON in
    /// target/bench/results.json.
    Bench(bench::BenchArgs),
    /// Regenerate the documentation's examples from a real run, as root.
    ///
    /// Runs the `docs_examples` end-to-end test with PGWIRE_UPDATE_DOCS=1: docs/examples/
    /// and every markdown block that embeds them are rewritten (the test suite otherwise
    /// only checks that they match).
    Docs,
    /// Build the static (musl) release binaries, target/dist/pgwire-sensor-<arch>.
    ///
    /// x86_64 and aarch64 (cross-compiled with Debian's gcc-aarch64-linux-gnu), each with
    /// the kernel programs inside, stripped, each with its `.sha256`.
    Dist {
        /// Only this architecture (default: both).
        #[arg(long, value_enum)]
        arch: Option<arch::Arch>,
    },
    /// Build the Debian package and the OCI image of each static binary, in target/dist.
    ///
    /// Runs `dist` first. pgwire-sensor_<version>-1_<amd64|arm64>.deb (cargo-deb) and
    /// pgwire-sensor-image-<arch>.tar (an OCI archive built by buildah from
    /// deploy/container/Containerfile).
    Package {
        /// Only this architecture (default: both).
        #[arg(long, value_enum)]
        arch: Option<arch::Arch>,
    },
    /// Print deploy/prometheus/alerts.yml with another runbook base and `up` selector.
    ///
    /// For a Prometheus whose job for the sensor is not `pgwire-sensor` (the Prometheus
    /// Operator sets it to the Service's name or its jobLabel), or runbooks on your own wiki.
    AlertRules(alert_rules::AlertRulesArgs),
    /// Run the kernel-side tests on Debian's kernels under QEMU, as root.
    ///
    /// x86_64: 5.10 (Debian 11), 6.1 and 6.12; aarch64: 6.1 (TCG on an x86_64 machine).
    VmTest {
        /// QEMU accelerator (TCG by default: nested KVM hangs these kernels at boot).
        #[arg(long, value_enum, default_value_t)]
        accel: vm::Accel,
        /// Instead, the Debian package under a real systemd: a Debian 12 root filesystem
        /// (debootstrap) with systemd as PID 1 installs, runs, crashes, rotates, upgrades,
        /// stops and purges it. Not in CI (about 6 minutes); the last result is in
        /// docs/kernels.md.
        #[arg(long)]
        systemd: bool,
    },
    /// The part of vm-test that runs inside the VM.
    #[command(hide = true)]
    VmGuest,
    /// The part of vm-test that runs inside the systemd VM.
    #[command(hide = true)]
    VmSystemdGuest,
}

/// The top-level help's list of every task with its options, built from the definitions
/// above so that it cannot drift from them.
fn task_synopsis(cmd: &clap::Command) -> String {
    let mut text = String::from("Tasks and their options (`cargo xtask <TASK> --help` for more):");
    for task in cmd.get_subcommands().filter(|t| !t.is_hide_set()) {
        text.push_str("\n  ");
        text.push_str(task.get_name());
        for arg in task.get_arguments().filter(|a| !a.is_hide_set()) {
            let choices = arg.get_possible_values();
            let value = if choices.is_empty() {
                arg.get_value_names().unwrap_or_default().join(" ")
            } else {
                choices.iter().map(|v| v.get_name()).collect::<Vec<_>>().join("|")
            };
            let many =
                if arg.is_positional() && arg.get_num_args().is_some_and(|n| n.max_values() > 1) {
                    "..."
                } else {
                    ""
                };
            match arg.get_long() {
                Some(long) if arg.get_action().takes_values() => {
                    text.push_str(&format!(" [--{long} {value}]"))
                }
                Some(long) => text.push_str(&format!(" [--{long}]")),
                None => text.push_str(&format!(" [{value}{many}]")),
            }
        }
    }
    text
}

/// The command line, its help ending with the synopsis of every task.
fn command() -> clap::Command {
    let command = Cli::command();
    let synopsis = task_synopsis(&command);
    command.after_help(synopsis)
}

fn main() -> ExitCode {
    // Usage errors exit 2 with clap's message; `--help` exits 0.
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|err| err.exit());
    let result = match cli.task {
        None => {
            // A bare `cargo xtask` shows the usage, as before.
            let _ = command().print_help();
            return ExitCode::SUCCESS;
        }
        Some(Task::Setup { test_deps }) => setup(test_deps),
        Some(Task::Run { args }) => run_sensor(&args),
        Some(Task::Test) => test(),
        Some(Task::Bench(args)) => bench_cmd(&args),
        Some(Task::Dist { arch: Some(arch) }) => dist(&[arch]),
        Some(Task::Dist { arch: None }) => dist(&arch::Arch::ALL),
        Some(Task::Package { arch: Some(arch) }) => package(&[arch]),
        Some(Task::Package { arch: None }) => package(&arch::Arch::ALL),
        Some(Task::AlertRules(args)) => alert_rules_cmd(&args),
        Some(Task::Docs) => docs(),
        Some(Task::VmTest { accel, systemd }) => vm_test(accel, systemd),
        Some(Task::VmGuest) => vm::guest::run(),
        Some(Task::VmSystemdGuest) => vm::systemd_guest::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").into()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root_dir());
    cmd
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn setup(test_deps: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(root_dir().join("scripts/bootstrap.sh"));
    if test_deps {
        cmd.arg("--test-deps");
    }
    status(&mut cmd)?;
    eprintln!("xtask: setup took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn run_sensor(args: &[String]) -> anyhow::Result<()> {
    setup(false)?;
    status(cargo().args(["build", "--release", "--package", "sensor"]))?;
    let binary = root_dir().join("target/release/sensor");
    // Replace this process: signals (Ctrl-C, SIGTERM) then reach the sensor directly.
    let err = Command::new(&binary).arg("run").args(args).exec();
    Err(err).with_context(|| format!("cannot exec {}", binary.display()))
}

fn test() -> anyhow::Result<()> {
    if effective_uid() != 0 {
        bail!("the end-to-end tests load eBPF programs and start PostgreSQL: run as root");
    }
    setup(true)?;
    status(cargo().args(["fmt", "--all", "--", "--check"]))?;
    status(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The kernel crate only builds for the BPF target, with the pinned nightly (through
    // rustup: $CARGO is the stable cargo itself and ignores `+toolchain`).
    let nightly = ebpf_toolchain()?;
    status(
        Command::new("rustup")
            .current_dir(root_dir().join("sensor-ebpf"))
            .args(["run", &nightly, "cargo", "clippy", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"]),
    )?;
    // The shipped Prometheus and Alertmanager configuration, checked by their own tools.
    let deploy = root_dir().join("deploy");
    status(Command::new("promtool").current_dir(deploy.join("prometheus")).args([
        "check",
        "config",
        "prometheus.yml",
    ]))?;
    status(Command::new("promtool").current_dir(deploy.join("prometheus")).args([
        "test",
        "rules",
        "alerts_test.yml",
    ]))?;
    // The rules as `cargo xtask alert-rules` writes them for another job name still load.
    let generated = root_dir().join("target/alert-rules-operator.yml");
    let operator = alert_rules::AlertRulesArgs {
        runbook_base_url: "https://runbooks.example.com/pgwire".into(),
        up_selector: r#"job="monitoring/pgwire-sensor",namespace="monitoring""#.into(),
    };
    let rules = std::fs::read_to_string(deploy.join("prometheus/alerts.yml"))?;
    std::fs::write(&generated, alert_rules::render(&rules, &operator)?)?;
    status(Command::new("promtool").args(["check", "rules"]).arg(&generated))?;
    status(
        Command::new("amtool")
            .args(["check-config"])
            .arg(deploy.join("alertmanager/alertmanager.yml")),
    )?;
    status(cargo().args(["build", "--package", "sensor"]))?;
    // The static release binaries, their Debian packages and images: the packaging tests
    // check what they hold, vm-test boots the binaries (and `vm-test --systemd` installs
    // the package under systemd).
    package(&arch::Arch::ALL)?;
    // Default members only: the kernel crate cannot build for the host.
    status(cargo().args(["test", "--", "--nocapture"]))?;
    // The benchmark must keep running; no targets are asserted in this short form.
    bench_cmd(&bench::BenchArgs { smoke: true, ..Default::default() })?;
    // Debian's 5.10, 6.1 and 6.12 on x86_64 and 6.1 on arm64: the kernel-side tests.
    vm_test(vm::Accel::Tcg, false)?;
    fuzz_smoke()
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECONDS: u32 = 30;

/// Every fuzz target for a short fixed budget, from the corpus kept in the repo. New
/// inputs go to target/fuzz-corpus, so CI leaves the checkout as it found it; a crash fails
/// the run and leaves its input in the fuzz crate's artifacts/ directory.
fn fuzz_smoke() -> anyhow::Result<()> {
    let nightly = ebpf_toolchain()?;
    for (crate_dir, target) in [("sensor-common/fuzz", "session_start"), ("sensor/fuzz", "capture")]
    {
        let dir = root_dir().join(crate_dir);
        let scratch = root_dir().join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        status(
            Command::new("rustup")
                .current_dir(&dir)
                .args(["run", &nightly, "cargo", "fuzz", "run", target])
                .arg(&scratch)
                .arg(dir.join("corpus").join(target))
                .arg("--")
                .arg(format!("-max_total_time={FUZZ_SECONDS}")),
        )?;
    }
    Ok(())
}

fn bench_cmd(args: &bench::BenchArgs) -> anyhow::Result<()> {
    if effective_uid() != 0 {
        bail!("the benchmark attaches eBPF programs: run as root");
    }
    let opts = args.options(&root_dir());
    bench::preflight(&opts)?;
    // A binary given with --sensor (an older build, say) is measured as it is; otherwise the
    // one users install (the static musl build the package and the image ship), whose
    // allocator and memory footprint differ from a glibc development build's.
    if args.sensor.is_none() {
        dist(&[arch::Arch::host()])?;
    }
    bench::run(&root_dir(), opts)
}

fn alert_rules_cmd(args: &alert_rules::AlertRulesArgs) -> anyhow::Result<()> {
    let path = root_dir().join("deploy/prometheus/alerts.yml");
    let rules = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    print!("{}", alert_rules::render(&rules, args)?);
    Ok(())
}

/// The release binaries, statically linked against musl so each runs on any Linux of its
/// architecture whatever its libc (the kernel programs are embedded in it):
/// target/dist/pgwire-sensor-<arch>, stripped, each with its `.sha256`.
fn dist(arches: &[arch::Arch]) -> anyhow::Result<()> {
    setup(false)?;
    let root = root_dir();
    let dist = root.join("target/dist");
    std::fs::create_dir_all(&dist)?;
    for &arch in arches {
        let mut build = cargo();
        arch.configure_build(&mut build);
        status(build.args(["--package", "sensor"]))?;
        let built = arch.built(&root, "sensor");
        let out = arch.dist_binary(&root);
        std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
        status(Command::new(arch.strip()).arg(&out))?;
        // Each binary's own sum, written with it: never a list that could mix builds.
        let name = format!("pgwire-sensor-{}", arch.name());
        let sum = Command::new("sha256sum").current_dir(&dist).arg(&name).output()?;
        anyhow::ensure!(sum.status.success(), "sha256sum {name} failed");
        std::fs::write(dist.join(format!("{name}.sha256")), &sum.stdout)?;
        eprintln!("xtask: {}", out.display());
    }
    let bundle = root.join(kubernetes::BUNDLE);
    std::fs::write(&bundle, kubernetes::bundle(&root)?)?;
    eprintln!("xtask: {}", bundle.display());
    Ok(())
}

/// The examples under docs/examples/ and every generated block embedding them, rewritten
/// from a real run by the `docs_examples` end-to-end test (which otherwise only checks them).
fn docs() -> anyhow::Result<()> {
    if effective_uid() != 0 {
        bail!("the examples come from real sessions seen by the attached sensor: run as root");
    }
    setup(true)?;
    status(cargo().args(["build", "--package", "sensor"]))?;
    // The finding schema first: the examples are validated against it.
    status(
        cargo()
            .args(["test", "--package", "sensor", "--lib", "--", "finding_schema"])
            .env("PGWIRE_UPDATE_DOCS", "1"),
    )?;
    status(
        cargo()
            .args(["test", "--package", "tests", "--", "docs_examples", "--nocapture"])
            .env("PGWIRE_UPDATE_DOCS", "1"),
    )
}

fn package(arches: &[arch::Arch]) -> anyhow::Result<()> {
    status(
        Command::new("bash").arg(root_dir().join("scripts/bootstrap.sh")).arg("--package-deps"),
    )?;
    dist(arches)?;
    let root = root_dir();
    for &arch in arches {
        package::deb(&root, arch, package::DEB_REVISION)?;
        package::image(&root, arch)?;
    }
    Ok(())
}

fn vm_test(accel: vm::Accel, systemd: bool) -> anyhow::Result<()> {
    if effective_uid() != 0 {
        bail!("the VM test builds an initramfs with device nodes: run as root");
    }
    status(Command::new("bash").arg(root_dir().join("scripts/bootstrap.sh")).arg("--vm-deps"))?;
    if systemd {
        vm::run_systemd(&root_dir(), accel)
    } else {
        vm::run(&root_dir(), accel)
    }
}

/// The pinned nightly's rustup name, from the one file that names it (ebpf-toolchain).
fn ebpf_toolchain() -> anyhow::Result<String> {
    let path = root_dir().join("ebpf-toolchain");
    let pins =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    pins.lines()
        .find_map(|line| line.trim().strip_prefix("EBPF_TOOLCHAIN="))
        .map(str::to_string)
        .with_context(|| format!("{} names no EBPF_TOOLCHAIN", path.display()))
}

fn effective_uid() -> u32 {
    // Avoids a libc dependency for one call: /proc/self/status has the effective uid.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2)?.parse().ok()
        })
        .unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use clap::{error::ErrorKind, CommandFactory, Parser};

    use super::{bench, vm, Cli, Task};

    fn parse(args: &[&str]) -> Result<Option<Task>, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied())).map(|c| c.task)
    }

    fn sensor_args(args: &[&str]) -> Vec<String> {
        match parse(args) {
            Ok(Some(Task::Run { args })) => args,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        super::command().debug_assert();
    }

    #[test]
    fn the_top_level_help_lists_every_task_with_its_options() {
        let synopsis = super::task_synopsis(&Cli::command());
        let lines: Vec<&str> = synopsis.lines().skip(1).map(str::trim).collect();
        assert_eq!(
            lines,
            [
                "setup [--test-deps]",
                "run [SENSOR ARGS...]",
                "test",
                "bench [--smoke] [--pairs N] [--seconds S] [--threads N] [--flood SESSIONS] \
                 [--latency-rate PER_SECOND] [--sensor PATH] [--capture-peer]",
                "docs",
                "dist [--arch x86_64|aarch64]",
                "package [--arch x86_64|aarch64]",
                "alert-rules [--runbook-base-url BASE] [--up-selector MATCHERS]",
                "vm-test [--accel tcg|kvm] [--systemd]",
            ]
        );
    }

    /// `cargo xtask run -- ARGS` and `cargo xtask run ARGS` both mean ARGS for the sensor
    /// (the cargo alias already ends in `--`, so a user's own `--` arrives here).
    #[test]
    fn a_leading_double_dash_is_not_passed_to_the_sensor() {
        let want = ["--ports", "5432"].map(String::from);
        assert_eq!(sensor_args(&["run", "--", "--ports", "5432"]), want);
        assert_eq!(sensor_args(&["run", "--ports", "5432"]), want);
        assert!(sensor_args(&["run"]).is_empty());
        assert!(sensor_args(&["run", "--"]).is_empty());
    }

    #[test]
    fn run_passes_every_argument_through_help_included() {
        assert_eq!(sensor_args(&["run", "--help"]), ["--help"]);
        assert_eq!(
            sensor_args(&["run", "--config", "s.yaml", "--findings", "-", "-h"]),
            ["--config", "s.yaml", "--findings", "-", "-h"]
        );
    }

    #[test]
    fn bench_defaults_and_smoke() {
        let root = std::path::Path::new("/r");
        let options = |args: &[&str]| match parse(args) {
            Ok(Some(Task::Bench(b))) => b.options(root),
            other => panic!("{args:?}: {other:?}"),
        };
        let defaults = options(&["bench"]);
        assert_eq!(
            defaults,
            bench::Options {
                pairs: 3,
                seconds: 5.0,
                threads: 4,
                flood: 100_000,
                latency_rate: 500.0,
                sensor: root.join(format!("target/dist/pgwire-sensor-{}", std::env::consts::ARCH)),
                capture_peer: false,
                out: root.join("target/bench/results.json"),
            }
        );
        let smoke = options(&["bench", "--smoke"]);
        assert_eq!((smoke.pairs, smoke.seconds, smoke.flood), (1, 1.0, 2_000));
        assert_eq!(smoke, bench::BenchArgs { smoke: true, ..Default::default() }.options(root));
        let given = options(&[
            "bench",
            "--pairs",
            "5",
            "--smoke",
            "--seconds",
            "3",
            "--threads",
            "2",
            "--flood",
            "10",
            "--latency-rate",
            "250",
            "--sensor",
            "/tmp/sensor-before",
            "--capture-peer",
        ]);
        assert_eq!(
            (given.pairs, given.seconds, given.threads, given.flood, given.latency_rate),
            (5, 3.0, 2, 10, 250.0)
        );
        assert_eq!(given.sensor, std::path::Path::new("/tmp/sensor-before"));
        assert!(given.capture_peer);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["bench", "--pairs", "0"][..],
            &["bench", "--threads", "0"],
            &["bench", "--seconds", "-1"],
            &["bench", "--seconds", "nan"],
            &["bench", "--latency-rate", "0"],
            &["bench", "--flood", "many"],
            &["bench", "--frobnicate"],
            &["vm-test", "--accel", "foo"],
            &["setup", "--bogus"],
            &["no-such-task"],
        ] {
            let err = parse(args).expect_err(&format!("{args:?}"));
            assert_ne!(err.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn vm_test_accel() {
        let accel = |args: &[&str]| match parse(args) {
            Ok(Some(Task::VmTest { accel, .. })) => accel,
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(accel(&["vm-test"]), vm::Accel::Tcg);
        assert_eq!(accel(&["vm-test", "--accel", "tcg"]), vm::Accel::Tcg);
        assert_eq!(accel(&["vm-test", "--accel", "kvm"]), vm::Accel::Kvm);
    }

    #[test]
    fn other_tasks() {
        assert!(matches!(parse(&[]), Ok(None)));
        assert!(matches!(parse(&["setup"]), Ok(Some(Task::Setup { test_deps: false }))));
        assert!(matches!(
            parse(&["setup", "--test-deps"]),
            Ok(Some(Task::Setup { test_deps: true }))
        ));
        assert!(matches!(parse(&["test"]), Ok(Some(Task::Test))));
        assert!(matches!(parse(&["dist"]), Ok(Some(Task::Dist { arch: None }))));
        assert!(matches!(
            parse(&["dist", "--arch", "aarch64"]),
            Ok(Some(Task::Dist { arch: Some(super::arch::Arch::Aarch64) }))
        ));
        assert!(matches!(parse(&["vm-guest"]), Ok(Some(Task::VmGuest))));
    }
}
