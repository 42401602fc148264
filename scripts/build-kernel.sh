#!/usr/bin/env bash
# Builds a Linux kernel for Kindling microVMs from Debian's linux-source-6.1 package with the
# configuration kept in kernel/microvm-6.1.config (tinyconfig plus serial console, i8042, virtio-mmio
# with command-line devices, virtio-blk/net/vsock/rng/balloon, ext4, initramfs; no modules, no PCI,
# no ACPI). Writes vmlinux (uncompressed ELF), bzImage and System.map to OUTDIR (default kernel/out).
#   scripts/build-kernel.sh [OUTDIR]
# Takes about 10 minutes on 2 cores. KINDLING_KERNEL_JOBS overrides make's -j.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=$(realpath -m "${1:-kernel/out}")
work=${KINDLING_KERNEL_WORK:-$HOME/.cache/kindling-kernel}
config="$repo/kernel/microvm-6.1.config"
log() { printf '[build-kernel] %s\n' "$*" >&2; }

bash scripts/ensure-packages.sh build-kernel build-essential bc bison flex libelf-dev libssl-dev xz-utils dpkg-dev
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

mkdir -p "$work" "$out"
cd "$work"
if [ ! -f linux-source-6.1/Makefile ]; then
  if ! ls linux-source-6.1_*.deb >/dev/null 2>&1; then
    log "downloading Debian's linux-source-6.1 (about 140 MB)"
    apt-get download linux-source-6.1 >/dev/null 2>&1 || {
      $sudo apt-get update -qq
      apt-get download linux-source-6.1 >/dev/null
    }
  fi
  log "unpacking the kernel source"
  rm -rf linux-source-6.1 usr
  dpkg-deb --fsys-tarfile linux-source-6.1_*.deb | tar -x --wildcards '*/linux-source-6.1.tar.xz'
  tar -xf usr/src/linux-source-6.1.tar.xz
  rm -rf usr
fi

build="$work/build"
mkdir -p "$build"
cp "$config" "$build/.config"
make -C linux-source-6.1 O="$build" olddefconfig >/dev/null
jobs=${KINDLING_KERNEL_JOBS:-$(nproc)}
log "building vmlinux and bzImage with make -j$jobs (about 10 minutes on 2 cores)"
make -C linux-source-6.1 O="$build" -j"$jobs" vmlinux bzImage >"$work/make.log" 2>&1 || {
  tail -n 30 "$work/make.log" >&2
  log "the kernel build failed; the whole log is $work/make.log"
  exit 1
}
cp "$build/vmlinux" "$build/arch/x86/boot/bzImage" "$build/System.map" "$out/"
log "done: $out/vmlinux, $out/bzImage, $out/System.map"
