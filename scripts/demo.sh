#!/usr/bin/env bash
# Sets Kindling up if needed, then boots a microVM and shows its serial console.
#   scripts/demo.sh                  the small demo guest the project builds (no download)
#   scripts/demo.sh --linux [PATH]   a Linux kernel, vmlinux or bzImage, with a busybox initramfs; without
#                                    PATH, kernel/out/vmlinux (built by scripts/build-kernel.sh the first
#                                    time, about 10 minutes) or else ../shared/guest/vmlinux
# Where /dev/kvm cannot be opened (and we are root), the demo runs inside a QEMU guest that provides
# KVM (scripts/kvm-in-qemu.sh; slow, emulated); KINDLING_KVM_IN_QEMU=0 turns that off.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--linux" ] && { [ $# -lt 2 ] || [[ "$2" == --* ]]; } \
   && [ ! -f kernel/out/vmlinux ] && [ ! -f ../shared/guest/vmlinux ]; then
  echo "[demo] no Linux kernel yet: building one (scripts/build-kernel.sh)" >&2
  bash scripts/build-kernel.sh
fi
kvm_ok=$(node -e "process.stdout.write(require('kindling').isKvmAvailable().ok ? '1' : '0')")
if [ "$kvm_ok" != 1 ] && [ "${KINDLING_KVM_IN_QEMU:-1}" != 0 ] && [ "$(id -u)" -eq 0 ]; then
  echo "[demo] /dev/kvm is not usable here: running the demo inside QEMU (scripts/kvm-in-qemu.sh)" >&2
  exec bash scripts/kvm-in-qemu.sh -- node examples/boot.js "$@"
fi
exec node examples/boot.js "$@"
