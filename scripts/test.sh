#!/usr/bin/env bash
# Sets Kindling up if needed, then runs the default test tier: the API docs build, the unit tests,
# and the freestanding-guest tests on KVM.
#
# Where /dev/kvm cannot be opened, the KVM tests are first reported as skipped, then run again inside
# a QEMU guest that emulates a KVM-capable CPU (scripts/kvm-in-qemu.sh: slow, but real KVM); set
# KINDLING_KVM_IN_QEMU=0 to skip that.
#
#   scripts/test.sh            default tier
#   scripts/test.sh --linux    also the slow Linux tier afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# The API docs must build without a warning (typedoc.json treats warnings as errors).
npx typedoc --emit none --logLevel Warn

kvm_ok=$(node -e "process.stdout.write(require('kindling').isKvmAvailable().ok ? '1' : '0')")
in_qemu=0
if [ "$kvm_ok" = 1 ]; then
  npx jest --ci
else
  npx jest --ci
  if [ "${KINDLING_KVM_IN_QEMU:-1}" != 0 ] && [ "$(id -u)" -eq 0 ]; then
    echo "[test] /dev/kvm is not usable here: running the KVM tests inside QEMU (scripts/kvm-in-qemu.sh)" >&2
    in_qemu=1
    KVMQ_TIMEOUT=3000 bash scripts/kvm-in-qemu.sh -- npx jest --ci test/kvm
  fi
fi

if [ "${1:-}" = "--linux" ]; then
  if [ "$in_qemu" = 1 ]; then
    KVMQ_TIMEOUT=5000 bash scripts/kvm-in-qemu.sh -- npx jest --ci --config jest.linux.config.js --runInBand
  else
    npx jest --ci --config jest.linux.config.js --runInBand
  fi
fi
