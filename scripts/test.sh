#!/usr/bin/env bash
# Sets Kindling up if needed, then runs the default test tier: the API docs build, the unit tests,
# and the freestanding-guest tests on KVM.
#
# Where /dev/kvm cannot be opened, the KVM tests are first reported as skipped, then run again inside
# a QEMU guest that emulates a KVM-capable CPU (scripts/kvm-in-qemu.sh: slow, but real KVM); set
# KINDLING_KVM_IN_QEMU=0 to skip that.
#
#   scripts/test.sh            default tier
#   scripts/test.sh --linux    also the slow Linux tier afterwards (test/linux; needs a vmlinux, see
#                              test/linux/common.ts, or KINDLING_TEST_KERNEL; boots Debian's generic
#                              bzImage too, which scripts/debian-kernel.sh downloads unless
#                              KINDLING_TEST_BZIMAGE is set)
#
# Where the Linux tier runs:
#   ordinary KVM                  natively
#   no /dev/kvm                   in QEMU's nested KVM, one QEMU machine per test file
#   KVM that emulates guests      test/linux/boot.test.ts natively (its user-space checks are skipped
#   ("PVM", /sys/module/kvm_pvm)  there: user space cannot run), then every file in QEMU as above, where
#                                 Linux boots in seconds rather than minutes (KINDLING_KVM_IN_QEMU=0:
#                                 every file natively instead, the bzImage test skipped)
# The wall time of each tier is printed at the end, also when a step failed.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- wall time per tier --------------------------------------------------------------------------
declare -A TIER_SECS=()
TIERS=("setup" "fast tier" "native Linux" "Linux in QEMU")
TIER= TIER_T0=0
# Steps run between tier_begin and tier_end (not inside a function called in a condition, which
# would switch off `set -e` for them). A tier interrupted by a failure still counts its time.
tier_begin() { TIER=$1; TIER_T0=$(date +%s); }
tier_end() {
  [ -n "$TIER" ] || return 0
  TIER_SECS[$TIER]=$(( ${TIER_SECS[$TIER]:-0} + $(date +%s) - TIER_T0 ))
  TIER=
}
print_times() {
  local t s
  tier_end
  echo "[test] wall time per tier:" >&2
  for t in "${TIERS[@]}"; do
    if [ -n "${TIER_SECS[$t]+x}" ]; then
      s=${TIER_SECS[$t]}
      printf '[test]   %-14s %3dm%02ds\n' "$t" $((s / 60)) $((s % 60)) >&2
    else
      printf '[test]   %-14s   not run\n' "$t" >&2
    fi
  done
}
trap print_times EXIT

tier_begin "setup"
bash scripts/setup.sh
tier_end

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

# One Linux-tier test file (or all of them) on this host's KVM.
linux_native() {
  npx jest --ci --config jest.linux.config.js --runInBand "$@"
}

# One Linux-tier test file in its own QEMU machine: a machine that livelocks then costs one file's retry.
linux_in_qemu() {
  # Linux boots in about a minute at most on QEMU's nested KVM: a VM still running after 5 is stuck.
  local -x KINDLING_LINUX_TIMEOUT_MS="${KINDLING_LINUX_TIMEOUT_MS:-300000}"
  in_qemu npx jest --ci --config jest.linux.config.js --runInBand "$1"
}

kvm_ok=$(node -e "process.stdout.write(require('kindling').isKvmAvailable().ok ? '1' : '0')")
qemu_ok=0
[ "${KINDLING_KVM_IN_QEMU:-1}" != 0 ] && [ "$(id -u)" -eq 0 ] && qemu_ok=1
# A KVM that executes guests instruction by instruction (README, "Hosts whose KVM emulates guests").
emulated=0
[ "$kvm_ok" = 1 ] && [ -d /sys/module/kvm_pvm ] && emulated=1
use_qemu=0

tier_begin "fast tier"
# The API docs must build without a warning (typedoc.json treats warnings as errors).
npx typedoc --emit none --logLevel Warn
npx jest --ci
if [ "$kvm_ok" != 1 ] && [ "$qemu_ok" = 1 ]; then
  echo "[test] /dev/kvm is not usable here: running the KVM tests inside QEMU (scripts/kvm-in-qemu.sh)" >&2
  use_qemu=1
  # The jailed-mode file (Node children started a hundred times: ~12 minutes under QEMU's
  # emulation) gets a machine of its own and a longer bound.
  in_qemu npx jest --ci test/kvm --testPathIgnorePatterns 'test/kvm/jail\.test\.ts'
  KVMQ_TIMEOUT="${KVMQ_JAIL_TIMEOUT:-1800}" in_qemu npx jest --ci test/kvm/jail.test.ts
fi
tier_end

if [ "${1:-}" = "--linux" ]; then
  if [ -z "${KINDLING_TEST_BZIMAGE:-}" ]; then
    KINDLING_TEST_BZIMAGE=$(bash scripts/debian-kernel.sh --vmlinuz) || {
      echo "[test] could not get a distribution kernel: the bzImage test will be skipped" >&2
      KINDLING_TEST_BZIMAGE=
    }
  fi
  export KINDLING_TEST_BZIMAGE
  if [ "$use_qemu" = 1 ]; then
    tier_begin "Linux in QEMU"
    for f in test/linux/*.test.ts; do linux_in_qemu "$f"; done
    tier_end
  elif [ "$emulated" = 1 ] && [ "$qemu_ok" = 1 ]; then
    echo "[test] this host's KVM emulates guests (PVM): test/linux/boot.test.ts runs natively (minutes per boot, user-space checks skipped), then the whole Linux tier in QEMU's nested KVM" >&2
    tier_begin "native Linux"
    # A boot takes 3-4 minutes here and up to 11 on a machine busy with other work: a VM still
    # running after 15 is stuck.
    KINDLING_LINUX_TIMEOUT_MS="${KINDLING_LINUX_TIMEOUT_MS:-900000}" linux_native test/linux/boot.test.ts
    tier_end
    tier_begin "Linux in QEMU"
    for f in test/linux/*.test.ts; do linux_in_qemu "$f"; done
    tier_end
  else
    tier_begin "native Linux"
    linux_native
    tier_end
  fi
fi
