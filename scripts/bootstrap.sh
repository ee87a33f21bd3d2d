#!/usr/bin/env bash
# Idempotent set-up of everything the sensor needs to build on a fresh machine of this kind:
#   - the pinned nightly named in ebpf-toolchain (a frozen copy of the preinstalled one,
#     with rust-src for build-std on bpfel-unknown-none),
#   - bpf-linker 0.13.0 linked against that nightly's own libLLVM 22 (no apt LLVM needed),
#   - the musl targets, musl-gcc and Debian's aarch64 cross gcc for the static release
#     binaries (cargo xtask dist: x86_64 and aarch64).
# Pass --test-deps to also install what the test suite drives (PostgreSQL 15, openssl,
# Prometheus, systemd-analyze, cargo-fuzz...), --vm-deps for `cargo xtask vm-test` (QEMU for
# x86_64 and aarch64, cpio; the guests' kernels and busybox come through apt lists of its own),
# --package-deps for `cargo xtask package` (cargo-deb, buildah for the OCI image); the test
# suite checks the packages, so --test-deps includes it.
# Each step checks first and does nothing when already done, so running it twice is cheap.
set -euo pipefail

log() { printf 'bootstrap: %s\n' "$*" >&2; }

want_test_deps=0
want_vm_deps=0
want_package_deps=0
for arg in "$@"; do
  case "$arg" in
    --test-deps) want_test_deps=1; want_package_deps=1 ;;
    --vm-deps) want_vm_deps=1 ;;
    --package-deps) want_package_deps=1 ;;
    *) log "unknown argument: $arg (expected --test-deps, --vm-deps or --package-deps)"; exit 2 ;;
  esac
done

# Install the Debian packages given that are not installed yet.
apt_ensure() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

start=$(date +%s)
export PATH="$HOME/.cargo/bin:$PATH"

# The pinned nightly (ebpf-toolchain names it): a frozen copy of an installed nightly with
# exactly that rustc commit, so `rustup update` cannot change what builds the kernel programs.
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../ebpf-toolchain
. "$root/ebpf-toolchain"
BPF_LINKER_VERSION=0.13.0
CARGO_DEB_VERSION=3.6.2
frozen="$HOME/.local/share/pgwire-sensor/toolchains/$EBPF_TOOLCHAIN"

rustc_commit() { rustc +"$1" -vV 2>/dev/null | sed -n 's/^commit-hash: //p'; }

if [ "$(rustc_commit "$EBPF_TOOLCHAIN")" != "$EBPF_RUSTC_COMMIT" ]; then
  source_tc=""
  for tc in $(rustup toolchain list | cut -d' ' -f1); do
    if [ "$(rustc_commit "$tc")" = "$EBPF_RUSTC_COMMIT" ]; then source_tc=$tc; break; fi
  done
  if [ -z "$source_tc" ]; then
    log "no installed toolchain has rustc commit $EBPF_RUSTC_COMMIT (ebpf-toolchain)."
    log "install that nightly (rustup toolchain install nightly-<its date + 1 day>), or move"
    log "ebpf-toolchain to an installed nightly whose LLVM major bpf-linker supports."
    exit 1
  fi
  # build-std for bpfel-unknown-none needs the standard library's source.
  if ! rustup component list --toolchain "$source_tc" --installed | grep -q '^rust-src'; then
    log "adding rust-src to $source_tc"
    rustup component add rust-src --toolchain "$source_tc"
  fi
  log "freezing $source_tc as $EBPF_TOOLCHAIN (hard links, no extra disk)"
  rm -rf "$frozen" && mkdir -p "$(dirname "$frozen")"
  src_sysroot=$(rustc +"$source_tc" --print sysroot)
  # Hard links need one filesystem; elsewhere a real copy (about 1 GiB) does the same.
  cp -al "$src_sysroot" "$frozen" 2>/dev/null || { rm -rf "$frozen"; cp -a "$src_sysroot" "$frozen"; }
  rustup toolchain uninstall "$EBPF_TOOLCHAIN" >/dev/null 2>&1 || true
  rustup toolchain link "$EBPF_TOOLCHAIN" "$frozen"
fi

# bpf-linker must match the pinned nightly's LLVM: it is built against, and finds through its
# rpath, that toolchain's own libLLVM. A stamp says what it was built for, so moving the pin
# rebuilds it.
sysroot=$(rustc +"$EBPF_TOOLCHAIN" --print sysroot)
libllvm=$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n1 || true)
if [ -z "$libllvm" ]; then
  log "no libLLVM.so.* in $sysroot/lib: this nightly cannot host bpf-linker"; exit 1
fi
prefix="$HOME/.local/share/sensor-llvm-prefix"
want_linker="bpf-linker $BPF_LINKER_VERSION llvm-$EBPF_LLVM_MAJOR $libllvm"
if [ "$(readlink "$prefix/lib/libLLVM.so" 2>/dev/null)" != "$libllvm" ]; then
  # The prefix must stay on disk. The binary asks for libLLVM by its soname
  # (libLLVM.so.22.1-rust-...): link that name too.
  rm -f "$prefix"/lib/libLLVM.so*
  mkdir -p "$prefix/lib"
  ln -sf "$libllvm" "$prefix/lib/libLLVM.so"
  ln -sf "$libllvm" "$prefix/lib/$(basename "$libllvm")"
fi
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION" \
  || [ "$(cat "$prefix/built-for" 2>/dev/null)" != "$want_linker" ]; then
  log "building bpf-linker $BPF_LINKER_VERSION against $libllvm (a few minutes)"
  LLVM_PREFIX="$prefix" RUSTFLAGS="-C link-arg=-Wl,-rpath,$prefix/lib" \
    cargo install --force --locked "bpf-linker@$BPF_LINKER_VERSION" --no-default-features \
    --features "llvm-$EBPF_LLVM_MAJOR"
  echo "$want_linker" > "$prefix/built-for"
fi

for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  if ! rustup target list --installed | grep -q "^$target\$"; then
    log "adding the $target target (static release binary)"
    rustup target add "$target"
  fi
done
# musl-gcc: the static binary's TLS (rustls on ring, for https to Alertmanager) has C and
# assembly that cc builds for the musl target. The aarch64 binary is cross-built: Debian's
# aarch64 gcc compiles ring's C and links (the musl target brings its own C library).
apt_ensure musl-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross

if [ "$want_vm_deps" = 1 ]; then
  # openssl: the guests' CA file; debootstrap: the systemd guest's Debian 12 root; the
  # systemd guest installs the .deb (cargo-deb).
  apt_ensure qemu-system-x86 qemu-system-arm cpio openssl debootstrap
  want_package_deps=1
fi

if [ "$want_package_deps" = 1 ]; then
  # cargo-deb makes the .deb from sensor/Cargo.toml's [package.metadata.deb]; buildah the
  # OCI image (daemonless, no registry needed); dpkg-deb reads packages back in the tests.
  if ! cargo deb --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
    log "installing cargo-deb $CARGO_DEB_VERSION (a few minutes, once)"
    cargo install --locked "cargo-deb@$CARGO_DEB_VERSION"
  fi
  apt_ensure buildah dpkg-dev
fi

if [ "$want_test_deps" = 1 ]; then
  # file, coreutils (chroot), binutils (strip) and systemd (systemd-analyze) check the
  # release binary and the packaging.
  apt_ensure postgresql-15 postgresql-client-15 openssl util-linux procps iproute2 tcpdump tshark \
    nftables krb5-kdc krb5-admin-server krb5-user bpftool prometheus prometheus-alertmanager \
    libpostgresql-jdbc-java file coreutils binutils systemd strace python3 curl
  # Fuzzing in CI (the classifier's and the capture parser's targets).
  if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (a minute or two, once)"
    cargo install --locked cargo-fuzz@0.13.2
  fi
  # Debian's postgresql package starts a cluster on 5432 via its init scripts on some hosts;
  # the tests start their own servers on 127.0.0.x:26257 and need nothing from it.

  # The client-matrix drivers: Python ones in a venv of the project's, node-postgres under
  # tests/clients/node. Each install is skipped when its inputs have not changed.
  clients="$(cd "$(dirname "$0")/.." && pwd)/tests/clients"
  venv="$clients/.venv"
  stamp="$venv/.requirements.sha"
  want=$(sha256sum "$clients/requirements.txt" | cut -d' ' -f1)
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing Python drivers into $venv"
    command -v python3 >/dev/null || { log "python3 is missing"; exit 1; }
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$clients/requirements.txt"
    echo "$want" > "$stamp"
  fi
  if [ ! -d "$clients/node/node_modules/pg" ]; then
    log "installing node-postgres into $clients/node"
    (cd "$clients/node" && npm ci --no-audit --no-fund --silent)
  fi
  # The Prometheus Operator's CRD schemas (kubernetes-models), for the manifests' check.
  crd_validate="$(dirname "$clients")/tools/crd-validate"
  if [ ! -d "$crd_validate/node_modules/@kubernetes-models/prometheus-operator" ]; then
    log "installing the CRD validator into $crd_validate"
    (cd "$crd_validate" && npm ci --no-audit --no-fund --silent)
  fi
fi

log "done in $(( $(date +%s) - start )) s"
