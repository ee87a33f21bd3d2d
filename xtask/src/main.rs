//! Developer tasks: `cargo xtask <task>`.
//!
//! - `setup [--test-deps]`: idempotent bootstrap of a fresh machine (scripts/bootstrap.sh).
//! - `run [SENSOR ARGS...]`: setup, release build, then `sensor run` with those arguments.
//! - `test`: setup with test dependencies, fmt and clippy checks, build, then every test
//!   (as root: the end-to-end tests load and attach real eBPF programs), then a smoke run
//!   of the benchmark.
//! - `bench [--smoke] [--pairs N] [--seconds S] [--threads N] [--flood N]`: the sensor's
//!   cost, attached versus detached (see bench/mod.rs).
//! - `dist`: the release binary, static (musl), as target/dist/pgwire-sensor.
//! - `docs`: regenerate the documentation's examples (docs/examples/) from a real run, and
//!   the markdown blocks that embed them (as root; see docs/examples/README.md).
//! - `vm-test`: boot Debian's 6.1 and 6.12 kernels under QEMU/KVM and run a smoke test of
//!   the sensor in each (see vm/mod.rs); `vm-guest` is its part inside the VM.
mod bench;
mod vm;

use std::{
    env,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{bail, Context};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match task {
        "setup" => setup(rest.iter().any(|a| a == "--test-deps")),
        "run" => run_sensor(rest),
        "test" => test(),
        "bench" => bench_cmd(rest),
        "dist" => dist().map(|_| ()),
        "docs" => docs(),
        "vm-test" => vm_test(rest),
        "vm-guest" => vm::guest::run(),
        "help" | "--help" | "-h" => {
            println!(
                "usage: cargo xtask <setup [--test-deps] | run [ARGS...] | test | \
                 bench [--smoke] | dist | vm-test>"
            );
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("xtask: unknown task {other:?}; try `cargo xtask help`");
            return ExitCode::from(2);
        }
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
    let args = sensor_args(args);
    setup(false)?;
    status(cargo().args(["build", "--release", "--package", "sensor"]))?;
    let binary = root_dir().join("target/release/sensor");
    // Replace this process: signals (Ctrl-C, SIGTERM) then reach the sensor directly.
    let err = Command::new(&binary).arg("run").args(args).exec();
    Err(err).with_context(|| format!("cannot exec {}", binary.display()))
}

/// `cargo xtask run -- ARGS` and `cargo xtask run ARGS` both mean ARGS for the sensor (the
/// cargo alias already ends in `--`, so a user's own `--` arrives here).
fn sensor_args(args: &[String]) -> &[String] {
    args.strip_prefix(&["--".to_string()]).unwrap_or(args)
}

fn test() -> anyhow::Result<()> {
    if effective_uid() != 0 {
        bail!("the end-to-end tests load eBPF programs and start PostgreSQL: run as root");
    }
    setup(true)?;
    status(cargo().args(["fmt", "--all", "--", "--check"]))?;
    status(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The kernel crate only builds for the BPF target, with the pinned nightly (through
    // rustup: $CARGO is the stable cargo itself and ignores `+nightly`).
    status(
        Command::new("rustup")
            .current_dir(root_dir().join("sensor-ebpf"))
            .args(["run", "nightly", "cargo", "clippy", "--release"])
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
    status(
        Command::new("amtool")
            .args(["check-config"])
            .arg(deploy.join("alertmanager/alertmanager.yml")),
    )?;
    status(cargo().args(["build", "--package", "sensor"]))?;
    // The static release binary: the packaging tests check it runs with no libraries.
    dist()?;
    // Default members only: the kernel crate cannot build for the host.
    status(cargo().args(["test", "--", "--nocapture"]))?;
    // The benchmark must keep running; no targets are asserted in this short form.
    bench_cmd(&["--smoke".to_string()])?;
    // Debian's 6.1 and 6.12 kernels: check, attach and classify in each.
    vm_test(&[])?;
    fuzz_smoke()
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECONDS: u32 = 30;

/// Every fuzz target for a short fixed budget, from the corpus kept in the repo. New
/// inputs go to target/fuzz-corpus, so CI leaves the checkout as it found it; a crash fails
/// the run and leaves its input in the fuzz crate's artifacts/ directory.
fn fuzz_smoke() -> anyhow::Result<()> {
    for (crate_dir, target) in [("sensor-common/fuzz", "session_start"), ("sensor/fuzz", "capture")]
    {
        let dir = root_dir().join(crate_dir);
        let scratch = root_dir().join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        status(
            Command::new("rustup")
                .current_dir(&dir)
                .args(["run", "nightly", "cargo", "fuzz", "run", target])
                .arg(&scratch)
                .arg(dir.join("corpus").join(target))
                .arg("--")
                .arg(format!("-max_total_time={FUZZ_SECONDS}")),
        )?;
    }
    Ok(())
}

fn bench_cmd(args: &[String]) -> anyhow::Result<()> {
    if effective_uid() != 0 {
        bail!("the benchmark attaches eBPF programs: run as root");
    }
    let opts = bench::Options::parse(args, &root_dir())?;
    setup(false)?;
    status(cargo().args(["build", "--release", "--package", "sensor"]))?;
    bench::run(&root_dir(), opts)
}

/// The release binary, statically linked against musl so it runs on any x86_64 Linux
/// whatever its libc (the kernel programs are embedded in it): target/dist/pgwire-sensor.
fn dist() -> anyhow::Result<PathBuf> {
    setup(false)?;
    status(
        cargo()
            .args(["build", "--release", "--package", "sensor"])
            .args(["--target", "x86_64-unknown-linux-musl"]),
    )?;
    let built = root_dir().join("target/x86_64-unknown-linux-musl/release/sensor");
    let dist = root_dir().join("target/dist");
    std::fs::create_dir_all(&dist)?;
    let out = dist.join("pgwire-sensor");
    std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    status(Command::new("strip").arg(&out))?;
    let sum = Command::new("sha256sum").current_dir(&dist).arg("pgwire-sensor").output()?;
    std::fs::write(dist.join("pgwire-sensor.sha256"), &sum.stdout)?;
    eprintln!("xtask: {}", out.display());
    Ok(out)
}

/// The examples under docs/examples/ and every generated block embedding them, rewritten
/// from a real run by the `docs_examples` end-to-end test (which otherwise only checks them).
fn docs() -> anyhow::Result<()> {
    if effective_uid() != 0 {
        bail!("the examples come from real sessions seen by the attached sensor: run as root");
    }
    setup(true)?;
    status(cargo().args(["build", "--package", "sensor"]))?;
    status(
        cargo()
            .args(["test", "--package", "tests", "--", "docs_examples", "--nocapture"])
            .env("PGWIRE_UPDATE_DOCS", "1"),
    )
}

fn vm_test(args: &[String]) -> anyhow::Result<()> {
    let accel = vm::Accel::parse(args)?;
    if effective_uid() != 0 {
        bail!("the VM test builds an initramfs with device nodes: run as root");
    }
    status(Command::new("bash").arg(root_dir().join("scripts/bootstrap.sh")).arg("--vm-deps"))?;
    vm::run(&root_dir(), accel)
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
    use super::sensor_args;

    #[test]
    fn a_leading_double_dash_is_not_passed_to_the_sensor() {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let with = owned(&["--", "--ports", "5432"]);
        let without = owned(&["--ports", "5432"]);
        assert_eq!(sensor_args(&with), &without[..]);
        assert_eq!(sensor_args(&without), &without[..]);
        assert!(sensor_args(&[]).is_empty());
    }
}
