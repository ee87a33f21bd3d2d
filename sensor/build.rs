//! Builds the kernel programs (`sensor-ebpf`) for bpfel-unknown-none with the pinned nightly
//! named in `ebpf-toolchain` (scripts/bootstrap.sh installs it) and bpf-linker, and leaves
//! the object in OUT_DIR for `include_bytes_aligned!`.
//! Set AYA_BUILD_SKIP=1 for metadata-only work (clippy on a machine without bpf-linker).
use anyhow::Context as _;
// Declared only so cargo rebuilds the agent when the kernel crate changes.
use sensor_ebpf as _;

fn main() -> anyhow::Result<()> {
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
