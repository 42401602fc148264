#!/usr/bin/env bash
# Downloads Debian's generic x86_64 kernel package (what linux-image-amd64 depends on; on Ubuntu,
# linux-image-generic) into a cache
# and prints the directory it was unpacked into (boot/vmlinuz-*, lib/modules/*).
# scripts/kvm-in-qemu.sh boots it under QEMU; the Linux test tier boots its bzImage in a microVM.
#   scripts/debian-kernel.sh            prints e.g. ~/.cache/kindling-kvmq/linux-image-6.1.0-56-amd64
#   scripts/debian-kernel.sh --vmlinuz  prints the bzImage's path instead
# Environment: KVMQ_CACHE (default ~/.cache/kindling-kvmq), KVMQ_KERNEL_PKG (default: the newest
# package already in the cache, else the one linux-image-amd64 depends on).
set -euo pipefail
die() { echo "debian-kernel: $*" >&2; exit 1; }

cache=${KVMQ_CACHE:-${HOME:-/root}/.cache/kindling-kvmq}
mkdir -p "$cache"
pkg=${KVMQ_KERNEL_PKG:-}
if [ -z "$pkg" ]; then
  pkg=$(ls -d "$cache"/linux-image-* 2>/dev/null | sed -n 's|.*/||p' | sort -V | tail -1 || true)
  for meta in linux-image-amd64 linux-image-generic; do
    [ -n "$pkg" ] || pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  done
  [ -n "$pkg" ] || die "cannot determine the kernel package (apt-cache depends linux-image-amd64)"
fi
dir=$cache/$pkg
if [ ! -f "$dir/.done" ]; then
  echo "debian-kernel: downloading $pkg" >&2
  rm -rf "$dir" "$cache/dl"; mkdir -p "$cache/dl"
  (cd "$cache/dl" && apt-get download -q "$pkg" >&2 2>/dev/null || apt-get download "$pkg" >&2) || die "apt-get download $pkg failed"
  dpkg-deb -x "$cache"/dl/*.deb "$dir" || die "dpkg-deb -x failed"
  rm -rf "$cache/dl"; touch "$dir/.done"
fi
if [ "${1:-}" = "--vmlinuz" ]; then
  ls "$dir"/boot/vmlinuz-* | head -1
else
  echo "$dir"
fi
