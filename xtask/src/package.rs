//! `cargo xtask package`: what fleets install, from the static release binaries of
//! `cargo xtask dist`, for each architecture:
//! - the Debian package (cargo-deb, sensor/Cargo.toml's [package.metadata.deb]):
//!   target/dist/pgwire-sensor_<version>-<revision>_<amd64|arm64>.deb;
//! - the OCI image (buildah, deploy/container/Containerfile: FROM scratch + the binary), as
//!   an OCI archive: target/dist/pgwire-sensor-image-<arch>.tar, tagged
//!   pgwire-sensor:<version>-<arch> in buildah's local storage (`buildah push` it on).

use std::{path::Path, process::Command};

use anyhow::Context;

use crate::{arch::Arch, status};

/// The package revision (Debian's `-1`): bump it for a repackaging of the same version.
pub const DEB_REVISION: &str = "1";

pub fn deb_path(root: &Path, arch: Arch, revision: &str) -> std::path::PathBuf {
    root.join("target/dist").join(format!(
        "pgwire-sensor_{}-{revision}_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch.debian()
    ))
}

pub fn image_path(root: &Path, arch: Arch) -> std::path::PathBuf {
    root.join("target/dist").join(format!("pgwire-sensor-image-{}.tar", arch.name()))
}

/// The .deb of `arch`'s dist binary, with this package revision.
pub fn deb(root: &Path, arch: Arch, revision: &str) -> anyhow::Result<std::path::PathBuf> {
    // cargo-deb takes the binary from target/<triple>/release/ (its `target/release/`
    // asset path, rewritten for --target): the stripped dist binary, under a name cargo
    // itself never writes there.
    let staged = arch.built(root, "pgwire-sensor");
    std::fs::copy(arch.dist_binary(root), &staged)
        .with_context(|| format!("staging {}", staged.display()))?;
    let out = deb_path(root, arch, revision);
    status(
        crate::cargo()
            .args(["deb", "--package", "sensor", "--no-build", "--no-strip"])
            .args(["--target", arch.musl_target(), "--deb-revision", revision, "--output"])
            .arg(&out),
    )?;
    eprintln!("xtask: {}", out.display());
    Ok(out)
}

/// The OCI image of `arch`'s dist binary, built with buildah (no daemon, no container
/// run: a FROM scratch image needs no runtime to build).
pub fn image(root: &Path, arch: Arch) -> anyhow::Result<std::path::PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let tag = format!("localhost/pgwire-sensor:{version}-{}", arch.name());
    let revision = source_revision(root);
    status(
        buildah()
            .args(["build", "--quiet", "--platform", &format!("linux/{}", arch.debian())])
            .arg("--file")
            .arg(root.join("deploy/container/Containerfile"))
            .args(["--build-arg", &format!("ARCH={}", arch.name())])
            .args(["--build-arg", &format!("VERSION={version}")])
            .args(["--build-arg", &format!("REVISION={revision}")])
            // Reproducible: the same binary gives the same image, whenever it is built.
            .args(["--timestamp", "0", "--tag", &tag])
            .arg(root.join("target/dist")),
    )?;
    let out = image_path(root, arch);
    let _ = std::fs::remove_file(&out);
    status(
        buildah().args(["push", "--quiet", &tag]).arg(format!("oci-archive:{}", out.display())),
    )?;
    eprintln!("xtask: {} ({tag})", out.display());
    Ok(out)
}

/// The revision the image is labelled with: the same rule as sensor/build.rs gives the
/// binary's `build_info` (`PGWIRE_SENSOR_REVISION`, else git's short hash, else
/// `unknown`), so the label and the metric never disagree.
fn source_revision(root: &Path) -> String {
    if let Ok(given) = std::env::var("PGWIRE_SENSOR_REVISION") {
        return given;
    }
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|hash| !hash.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// buildah with storage that works on any host: vfs needs neither overlayfs nor fuse.
fn buildah() -> Command {
    let mut command = Command::new("buildah");
    command.args(["--storage-driver", "vfs"]);
    command
}
