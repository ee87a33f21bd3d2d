//! The CPU architectures the sensor ships for, and what building and booting for each takes.
//!
//! Release binaries are static (musl) and built on an x86_64 Debian machine: x86_64 with
//! musl-gcc for ring's C and assembly, aarch64 with Debian's cross gcc
//! (gcc-aarch64-linux-gnu) as both C compiler and linker (Rust's musl targets bring their
//! own C library and start files; gcc only links and compiles ring's freestanding C).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A CPU architecture, named as `uname -m` names it (so `pgwire-sensor-$(uname -m)` is the
/// artefact for the machine at hand).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The architecture xtask itself was built for: the build machine's.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// `uname -m`'s name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's name (apt's `[arch=...]`, package file names).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The Rust target of the static binaries.
    pub fn musl_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The released binary for this architecture, as `cargo xtask dist` leaves it.
    pub fn dist_binary(self, root: &Path) -> PathBuf {
        root.join("target/dist").join(format!("pgwire-sensor-{}", self.name()))
    }

    /// Where cargo leaves a static release build of `bin` for this architecture.
    pub fn built(self, root: &Path, bin: &str) -> PathBuf {
        root.join("target").join(self.musl_target()).join("release").join(bin)
    }

    /// `cargo build --release --target <musl>` for this architecture, with the C compiler
    /// (and, across architectures, the linker) the target needs.
    pub fn configure_build(self, cargo: &mut Command) {
        let target = self.musl_target();
        cargo.args(["build", "--release", "--target", target]);
        let env_target = target.replace('-', "_");
        if self == Arch::host() {
            cargo.env(format!("CC_{env_target}"), "musl-gcc");
        } else {
            let gcc = format!("{}-linux-gnu-gcc", self.name());
            cargo.env(format!("CC_{env_target}"), &gcc);
            cargo.env(format!("CARGO_TARGET_{}_LINKER", env_target.to_uppercase()), &gcc);
        }
    }

    /// binutils' `strip` for this architecture's binaries (the build machine's own, or
    /// Debian's cross binutils that come with the cross gcc).
    pub fn strip(self) -> String {
        if self == Arch::host() {
            "strip".into()
        } else {
            format!("{}-linux-gnu-strip", self.name())
        }
    }

    /// The QEMU system emulator and the arguments that pick its machine, CPU and serial
    /// console's name in the guest. aarch64 uses `virt` with a Cortex-A72 (`max` would turn
    /// on pointer authentication, which TCG emulates slowly).
    pub fn qemu(self) -> QemuMachine {
        match self {
            Arch::X86_64 => QemuMachine {
                binary: "qemu-system-x86_64",
                package: "qemu-system-x86",
                machine: "pc",
                tcg_cpu: "max",
                console: "ttyS0",
            },
            Arch::Aarch64 => QemuMachine {
                binary: "qemu-system-aarch64",
                package: "qemu-system-arm",
                machine: "virt",
                tcg_cpu: "cortex-a72",
                console: "ttyAMA0",
            },
        }
    }
}

/// How QEMU emulates one architecture.
#[derive(Clone, Copy, Debug)]
pub struct QemuMachine {
    pub binary: &'static str,
    /// The Debian package that has `binary`.
    pub package: &'static str,
    pub machine: &'static str,
    /// The CPU model under TCG (under KVM it is always `host`).
    pub tcg_cpu: &'static str,
    /// The guest's serial console device.
    pub console: &'static str,
}

#[cfg(test)]
mod tests {
    use super::Arch;

    #[test]
    fn names_follow_uname_debian_and_rust() {
        assert_eq!(Arch::host().name(), std::env::consts::ARCH);
        let root = std::path::Path::new("/r");
        assert_eq!(Arch::Aarch64.dist_binary(root), root.join("target/dist/pgwire-sensor-aarch64"));
        assert_eq!(
            Arch::Aarch64.built(root, "sensor"),
            root.join("target/aarch64-unknown-linux-musl/release/sensor")
        );
        assert_eq!(Arch::Aarch64.debian(), "arm64");
    }

    #[test]
    fn a_cross_build_names_its_compiler_and_linker() {
        let envs = |arch: Arch| {
            let mut cmd = std::process::Command::new("cargo");
            arch.configure_build(&mut cmd);
            cmd.get_envs()
                .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.unwrap().to_string_lossy()))
                .collect::<Vec<_>>()
        };
        let native = envs(Arch::host());
        assert_eq!(native.len(), 1, "{native:?}");
        assert!(native[0].ends_with("=musl-gcc"), "{native:?}");
        let other = if Arch::host() == Arch::X86_64 { Arch::Aarch64 } else { Arch::X86_64 };
        let cross = envs(other);
        assert_eq!(cross.len(), 2, "{cross:?}");
        let gcc = format!("{}-linux-gnu-gcc", other.name());
        assert!(cross.iter().all(|e| e.ends_with(&format!("={gcc}"))), "{cross:?}");
        assert!(cross.iter().any(|e| e.starts_with("CARGO_TARGET_") && e.contains("_LINKER=")));
        assert_eq!(other.strip(), format!("{}-linux-gnu-strip", other.name()));
        assert_eq!(Arch::host().strip(), "strip");
    }
}
