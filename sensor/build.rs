//! Builds the kernel programs (`sensor-ebpf`) for bpfel-unknown-none with the pinned nightly
//! named in `ebpf-toolchain` (scripts/bootstrap.sh installs it) and bpf-linker, and leaves
//! the object in OUT_DIR for `include_bytes_aligned!`.
//! Set AYA_BUILD_SKIP=1 for metadata-only work (clippy on a machine without bpf-linker).
//! Also names the source revision (`SENSOR_REVISION`: `build_info{revision}`, `--version`).
use std::process::Command;

use anyhow::Context as _;
// Declared only so cargo rebuilds the agent when the kernel crate changes.
use sensor_ebpf as _;

fn main() -> anyhow::Result<()> {
    println!("cargo:rustc-env=SENSOR_REVISION={}", revision());
    let pin_file = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf-toolchain");
    println!("cargo:rerun-if-changed={pin_file}");
    let pins = std::fs::read_to_string(pin_file).with_context(|| format!("reading {pin_file}"))?;
    let toolchain = pins
        .lines()
        .find_map(|line| line.trim().strip_prefix("EBPF_TOOLCHAIN="))
        .with_context(|| format!("{pin_file} names no EBPF_TOOLCHAIN"))?;
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sensor-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "sensor-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::Custom(toolchain),
    )
}

/// The commit the agent is built from: `PGWIRE_SENSOR_REVISION` when set (a build from a
/// source archive, a packager's own id), else git's short hash, else `unknown`. Rebuilt
/// when HEAD moves, so a binary never reports the commit before the last one.
fn revision() -> String {
    println!("cargo:rerun-if-env-changed=PGWIRE_SENSOR_REVISION");
    if let Ok(given) = std::env::var("PGWIRE_SENSOR_REVISION") {
        return given;
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|text| text.trim().to_owned())
    };
    // HEAD, and where the branch it names is stored (a commit moves that, not HEAD). Only
    // files that exist: cargo reruns a build script every time for a missing one.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    // Where a packed branch's next commit writes its loose ref.
    watched.push(git(&["rev-parse", "--git-path", "refs/heads"]));
    for path in watched.into_iter().flatten() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}
