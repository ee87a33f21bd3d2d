#!/usr/bin/env bash
# Idempotent set-up of everything the sensor needs to build on a fresh machine of this kind:
#   - rust-src for the preinstalled nightly (build-std for bpfel-unknown-none),
#   - bpf-linker 0.13.0 linked against nightly's own libLLVM 22 (no apt LLVM needed),
#   - the musl target for the static release binary (cargo xtask dist).
# Pass --test-deps to also install what the test suite drives (PostgreSQL 15, openssl,
# Prometheus, systemd-analyze, cargo-fuzz...), --vm-deps for `cargo xtask vm-test` (QEMU,
# busybox-static, cpio).
# Each step checks first and does nothing when already done, so running it twice is cheap.
set -euo pipefail

log() { printf 'bootstrap: %s\n' "$*" >&2; }

want_test_deps=0
want_vm_deps=0
for arg in "$@"; do
  case "$arg" in
    --test-deps) want_test_deps=1 ;;
    --vm-deps) want_vm_deps=1 ;;
    *) log "unknown argument: $arg (expected --test-deps or --vm-deps)"; exit 2 ;;
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

# bpf-linker must match nightly's LLVM major; never `rustup update` the nightly here.
NIGHTLY=${SENSOR_NIGHTLY:-nightly}
BPF_LINKER_VERSION=0.13.0

if ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to $NIGHTLY"
  rustup component add rust-src --toolchain "$NIGHTLY"
fi

if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  sysroot=$(rustc +"$NIGHTLY" --print sysroot)
  libllvm=$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n1 || true)
  if [ -z "$libllvm" ]; then
    log "no libLLVM.so.* in $sysroot/lib: this nightly cannot host bpf-linker"; exit 1
  fi
  # The prefix must stay on disk: bpf-linker finds libLLVM through its rpath.
  prefix="$HOME/.local/share/sensor-llvm-prefix"
  mkdir -p "$prefix/lib"
  ln -sf "$libllvm" "$prefix/lib/libLLVM.so"
  # The binary asks for libLLVM by its soname (libLLVM.so.22.1-rust-...): link that name too.
  ln -sf "$libllvm" "$prefix/lib/$(basename "$libllvm")"
  log "building bpf-linker $BPF_LINKER_VERSION against $libllvm (a few minutes)"
  LLVM_PREFIX="$prefix" RUSTFLAGS="-C link-arg=-Wl,-rpath,$prefix/lib" \
    cargo install --force --locked "bpf-linker@$BPF_LINKER_VERSION" --no-default-features --features llvm-22
fi

if ! rustup target list --installed | grep -q '^x86_64-unknown-linux-musl$'; then
  log "adding the x86_64-unknown-linux-musl target (static release binary)"
  rustup target add x86_64-unknown-linux-musl
fi

if [ "$want_vm_deps" = 1 ]; then
  apt_ensure qemu-system-x86 busybox-static cpio
fi

if [ "$want_test_deps" = 1 ]; then
  # file, coreutils (chroot), binutils (strip) and systemd (systemd-analyze) check the
  # release binary and the packaging.
  apt_ensure postgresql-15 postgresql-client-15 openssl util-linux procps iproute2 tcpdump \
    nftables krb5-kdc krb5-admin-server krb5-user bpftool prometheus prometheus-alertmanager \
    libpostgresql-jdbc-java file coreutils binutils systemd strace python3
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
fi

log "done in $(( $(date +%s) - start )) s"
