//! Developer tasks: `cargo xtask <task>`.
//!
//! - `setup [--test-deps]`: idempotent bootstrap of a fresh machine (scripts/bootstrap.sh).
//! - `run [SENSOR ARGS...]`: setup, release build, then `sensor run` with those arguments.
//! - `test`: setup with test dependencies, fmt and clippy checks, build, then every test
//!   (as root: the end-to-end tests load and attach real eBPF programs), then a smoke run
//!   of the benchmark.
//! - `bench [--smoke] [--pairs N] [--seconds S] [--threads N]`: the sensor's cost, attached
//!   versus detached (see bench/mod.rs).
mod bench;

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
        "help" | "--help" | "-h" => {
            println!(
                "usage: cargo xtask <setup [--test-deps] | run [ARGS...] | test | bench [--smoke]>"
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
    // Default members only: the kernel crate cannot build for the host.
    status(cargo().args(["test", "--", "--nocapture"]))?;
    // The benchmark must keep running; no targets are asserted in this short form.
    bench_cmd(&["--smoke".to_string()])
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
