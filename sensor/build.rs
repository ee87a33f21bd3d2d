//! Builds the kernel programs (`sensor-ebpf`) for bpfel-unknown-none with the pinned nightly
//! and bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! Set AYA_BUILD_SKIP=1 for metadata-only work (clippy on a machine without bpf-linker).
fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sensor-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "sensor-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
