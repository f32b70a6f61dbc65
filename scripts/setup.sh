#!/usr/bin/env bash
# Installs everything hafw needs to build, run and test on a fresh Debian 12 machine.
# Idempotent: each step checks first, so a second run takes about a second.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian packages: LLVM 22 for bpf-linker, bpftool to read pinned maps, and what the tests and the lab use.
DEBS=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev bpftool iproute2 nftables tcpdump iperf3 hping3
      iputils-ping conntrack keepalived conntrackd procps psmisc kmod ethtool util-linux)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# The BPF target is built from source with -Z build-std, which needs rust-src on nightly.
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
else
  log "nightly rust-src present"
fi

# bpf-linker must be linked against the same LLVM major as rustc (22 here); its default feature wants llvm-23.
if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version 2>/dev/null | grep -q '0.13.0'; then
  log "building bpf-linker 0.13.0 for LLVM 22 (about 80 s)"
  # llvm-sys reads LLVM_SYS_221_PREFIX; bpf-linker's own build script reads LLVM_PREFIX to find libLLVM.
  LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 LLVM_PREFIX=/usr/lib/llvm-22 PATH="/usr/lib/llvm-22/bin:$PATH" \
    cargo install --locked bpf-linker --version 0.13.0 \
    --no-default-features --features llvm-22
else
  log "bpf-linker present"
fi

# bpffs for pinned maps.
if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
  log "mounting bpffs on /sys/fs/bpf"
  $SUDO mount -t bpf bpf /sys/fs/bpf
fi
log "done"
