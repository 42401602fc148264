#!/usr/bin/env bash
# Sets Kindling up if needed, then runs the default test tier: the API docs build, the unit tests,
# and the freestanding-guest tests on KVM.
#
# Where /dev/kvm cannot be opened, the KVM tests are first reported as skipped, then run again inside
# a QEMU guest that emulates a KVM-capable CPU (scripts/kvm-in-qemu.sh: slow, but real KVM); set
# KINDLING_KVM_IN_QEMU=0 to skip that.
#
#   scripts/test.sh            default tier
#   scripts/test.sh --linux    also the slow Linux tier afterwards (needs ../shared/guest/vmlinux
#                              or KINDLING_TEST_KERNEL; boots Debian's generic bzImage too, which
#                              scripts/debian-kernel.sh downloads unless KINDLING_TEST_BZIMAGE is set)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Runs a command inside the QEMU guest. Exit status 125 means the emulated machine itself stopped
# answering (QEMU's software SVM sometimes livelocks with a nested guest running), not that a test
# failed: retry that. The tests rewrite a heartbeat file every 10 s; when neither it nor the output
# has changed for KVMQ_IDLE_TIMEOUT seconds the machine is stuck and is stopped. Each step takes
# 1-4 minutes there; KVMQ_TIMEOUT (15 minutes by default) bounds the whole of one attempt.
in_qemu() {
  local rc attempt
  mkdir -p .cache
  for attempt in 1 2 3; do
    rc=0
    KINDLING_TEST_HEARTBEAT="$PWD/.cache/kvmq-heartbeat" KVMQ_IDLE_FILE="$PWD/.cache/kvmq-heartbeat" \
      KVMQ_IDLE_TIMEOUT="${KVMQ_IDLE_TIMEOUT:-120}" KVMQ_TIMEOUT="${KVMQ_TIMEOUT:-900}" \
      bash scripts/kvm-in-qemu.sh -- "$@" || rc=$?
    [ "$rc" -eq 125 ] || break
    [ "$attempt" -lt 3 ] && echo "[test] the QEMU guest stopped answering; running that step again" >&2
  done
  return "$rc"
}

# The API docs must build without a warning (typedoc.json treats warnings as errors).
npx typedoc --emit none --logLevel Warn

kvm_ok=$(node -e "process.stdout.write(require('kindling').isKvmAvailable().ok ? '1' : '0')")
use_qemu=0
npx jest --ci
if [ "$kvm_ok" != 1 ] && [ "${KINDLING_KVM_IN_QEMU:-1}" != 0 ] && [ "$(id -u)" -eq 0 ]; then
  echo "[test] /dev/kvm is not usable here: running the KVM tests inside QEMU (scripts/kvm-in-qemu.sh)" >&2
  use_qemu=1
  in_qemu npx jest --ci test/kvm
fi

if [ "${1:-}" = "--linux" ]; then
  if [ -z "${KINDLING_TEST_BZIMAGE:-}" ]; then
    KINDLING_TEST_BZIMAGE=$(bash scripts/debian-kernel.sh --vmlinuz) || {
      echo "[test] could not get a distribution kernel: the bzImage test will be skipped" >&2
      KINDLING_TEST_BZIMAGE=
    }
  fi
  export KINDLING_TEST_BZIMAGE
  if [ "$use_qemu" = 1 ]; then
    # Linux boots in well under a minute on QEMU's nested KVM: a VM still running after 5 is stuck.
    export KINDLING_LINUX_TIMEOUT_MS="${KINDLING_LINUX_TIMEOUT_MS:-300000}"
    # One QEMU machine per test file: a machine that livelocks then costs one file's retry.
    for f in test/linux/*.test.ts; do
      in_qemu npx jest --ci --config jest.linux.config.js --runInBand "$f"
    done
  else
    npx jest --ci --config jest.linux.config.js --runInBand
  fi
fi
