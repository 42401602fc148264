#!/usr/bin/env bash
# kvm-in-qemu.sh — run a host command inside a QEMU guest that has a working /dev/kvm.
#
# What it is for: development machines that have no usable /dev/kvm (containers,
# cloud VMs without nested virtualisation). It boots a Debian kernel under QEMU
# *TCG* (pure software emulation, `-cpu max`, which emulates AMD SVM incl. nested
# paging), loads kvm + kvm-amd inside the guest, mounts the host's / over 9p and
# chroots into it, so the command sees the same files, binaries (node, gcc, ...)
# and working directory as on the host (except /proc, /sys, /dev and by default
# /tmp, which are the guest's own), with a real (if slow) KVM behind /dev/kvm.
# Everything is emulated: expect ~8 s boot and code running 10-50x slower than native.
#
# It is NOT used on real KVM hosts (CI / machines with /dev/kvm run the tests directly).
#
# Usage:  scripts/kvm-in-qemu.sh [-C DIR] [--] COMMAND [ARGS...]
#   Runs COMMAND in DIR (default: current directory) inside the guest, as root,
#   with the caller's exported environment, stdin=/dev/null. Guest stdout/stderr
#   are streamed to this script's stdout/stderr; the exit status is propagated
#   (125 = guest failed before reporting a status).
# Environment:
#   KVMQ_CACHE   cache dir for kernel + initramfs (default ~/.cache/kindling-kvmq)
#   KVMQ_MEM     guest RAM in MiB (default 4096)
#   KVMQ_SMP     guest vCPUs (default 1; >1 is faster but occasionally livelocks)
#   KVMQ_TIMEOUT kill the guest after N seconds (default 0 = no limit)
#   KVMQ_KERNEL_PKG  Debian kernel package (default: what linux-image-amd64 depends on)
#   KVMQ_HOST_TMP=1  see the host's /tmp (default: fresh tmpfs on /tmp, because
#                    AF_UNIX sockets cannot be created on the 9p mount; implied
#                    when DIR is under /tmp)
#   KVMQ_APPEND      extra guest kernel command line arguments
#   KVMQ_KVM_AMD_PARAMS  kvm_amd module parameters inside the guest (e.g. vgif=0)
#   KVMQ_VERBOSE=1   print boot timing, keep kernel messages in the console log
#   KVMQ_IDLE_TIMEOUT=N  kill the guest (exit 125) when for N seconds it printed nothing and
#                    KVMQ_IDLE_FILE (if set, a file on the shared filesystem that the command
#                    rewrites while it makes progress) did not change: QEMU's software SVM can
#                    livelock, and a stuck run then costs minutes instead of KVMQ_TIMEOUT
#   KVMQ_MONITOR=PATH  QEMU's human monitor on a unix socket at PATH (to inspect a stuck guest:
#                    `socat - UNIX-CONNECT:PATH`, then `info registers`)
# Requirements: Debian/Ubuntu-like host with apt (installs qemu-system-x86 and
# busybox-static if missing), run as root (9p passthrough needs it).
set -euo pipefail

die() { echo "kvm-in-qemu: $*" >&2; exit 125; }

WORKDIR=$PWD
while [ $# -gt 0 ]; do
  case "$1" in
    -C) WORKDIR=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || die "usage: $0 [-C DIR] [--] COMMAND [ARGS...]"
WORKDIR=$(cd "$WORKDIR" && pwd -P)
[ "$(id -u)" = 0 ] || die "must run as root (9p passthrough of / needs it)"

CACHE=${KVMQ_CACHE:-${HOME:-/root}/.cache/kindling-kvmq}
MEM=${KVMQ_MEM:-4096}
# 1 vCPU by default: with 2 vCPUs (multi-threaded TCG) ~1 boot in 10 livelocked
# (both vCPUs stuck right after `sti` in finish_task_switch, RCU stalls) once
# nested KVM had been used; 0 of 22+ boots with 1 vCPU did.
SMP=${KVMQ_SMP:-1}
TIMEOUT=${KVMQ_TIMEOUT:-0}
mkdir -p "$CACHE"

# --- host packages -----------------------------------------------------------
if ! command -v qemu-system-x86_64 >/dev/null || [ ! -x /bin/busybox ]; then
  echo "kvm-in-qemu: installing qemu-system-x86 busybox-static" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-system-x86 busybox-static >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-system-x86 busybox-static >&2; } \
    || die "apt-get install failed"
fi
/bin/busybox --list | grep -x cpio >/dev/null || die "/bin/busybox lacks cpio (need busybox-static)"

# --- kernel --------------------------------------------------------------------
KDIR=$(KVMQ_CACHE="$CACHE" bash "$(dirname "$0")/debian-kernel.sh") || die "no kernel"
KPKG=${KDIR##*/}
VMLINUZ=$(ls "$KDIR"/boot/vmlinuz-* | head -1)
KMOD=$(ls -d "$KDIR"/lib/modules/*/kernel | head -1)

# --- initramfs -------------------------------------------------------------------
# Modules wanted; their dependencies are resolved from each .ko's modinfo "depends=".
# tun: TAP tests (test/kvm/net.test.ts, test/linux/devices.test.ts) create TAPs in namespaces.
WANT="virtio_pci 9pnet_virtio 9p kvm_amd tun"
declare -A KOPATH=() SEEN=()
while IFS= read -r f; do n=${f##*/}; n=${n%.ko}; KOPATH[${n//-/_}]=$f; done < <(find "$KMOD" -name '*.ko')
MODS=""
add_mod() {
  local n=${1//-/_} d
  [ -n "${SEEN[$n]:-}" ] && return; SEEN[$n]=1
  [ -n "${KOPATH[$n]:-}" ] || die "module $n not found in $KPKG (built in? then drop it from WANT)"
  for d in $(tr '\0' '\n' < "${KOPATH[$n]}" | sed -n 's/^depends=//p' | tr ',' ' '); do add_mod "$d"; done
  MODS="$MODS $n"
}
for m in $WANT; do add_mod "$m"; done
read -r -d '' INIT <<'EOF' || true
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mod/order); do insmod /mod/$m.ko $(cat /mod/$m.params 2>/dev/null) 2>&1 | grep -v 'File exists'; done
JOB=$(sed -n 's/.*kvmq\.job=\([^ ]*\).*/\1/p' /proc/cmdline)
stty -F /dev/ttyS1 raw -echo; stty -F /dev/ttyS2 raw -echo
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,access=any hostroot /host; then
  echo "kvm-in-qemu(guest): 9p mount of host / failed" >/dev/ttyS2; poweroff -f
fi
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts; mount -t tmpfs shm /host/dev/shm
# cgroup v2 with the controllers a jail limits (as a systemd host has them): jailed-mode tests.
if mount -t cgroup2 cgroup2 /host/sys/fs/cgroup 2>/dev/null; then
  for c in cpu memory pids; do echo "+$c" > /host/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; done
fi
[ -c /host/dev/kvm ] || echo "kvm-in-qemu(guest): no /dev/kvm: $(dmesg | grep -i -E 'kvm|svm' | tail -3)" >/dev/ttyS2
echo "$(cut -d' ' -f1 /proc/uptime)" > /host$JOB/ready
[ -e /host$JOB/hosttmp ] || mount -t tmpfs tmp /host/tmp
# stdout/stderr are guest ttys only if the host's are ttys; otherwise pipes.
O=/dev/ttyS1; E=/dev/ttyS2
if [ ! -e /host$JOB/tty1 ]; then mkfifo /p1; cat /p1 >/dev/ttyS1 & C1=$!; O=/p1; fi
if [ ! -e /host$JOB/tty2 ]; then mkfifo /p2; cat /p2 >/dev/ttyS2 & C2=$!; E=/p2; fi
chroot /host /bin/bash "$JOB/cmd" </dev/null >$O 2>$E
RC=$?
wait $C1 $C2
echo $RC > /host$JOB/rc
sync
umount /host/dev/shm /host/dev/pts /host/dev /host/sys /host/proc /host 2>/dev/null
poweroff -f
EOF
KVM_AMD_PARAMS=${KVMQ_KVM_AMD_PARAMS:-}
SIG=$( { echo "$INIT"; echo "$MODS"; echo "$KPKG"; echo "$KVM_AMD_PARAMS"; } | md5sum | cut -c1-12)
INITRD=$CACHE/initrd-$SIG.gz
if [ ! -f "$INITRD" ]; then
  T=$(mktemp -d "$CACHE/initrd.XXXXXX")
  mkdir -p "$T"/{bin,mod,host,proc,sys,dev}
  cp /bin/busybox "$T/bin/"
  for m in $MODS; do cp "${KOPATH[$m]}" "$T/mod/$m.ko"; echo "$m" >> "$T/mod/order"; done
  echo "$KVM_AMD_PARAMS" > "$T/mod/kvm_amd.params"
  printf '%s\n' "$INIT" > "$T/init"; chmod +x "$T/init"
  (cd "$T" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$INITRD.tmp"
  rm -f "$CACHE"/initrd-*.gz; mv "$INITRD.tmp" "$INITRD"; rm -rf "$T"
fi

# --- job -----------------------------------------------------------------------
JOB=$(mktemp -d "$CACHE/job.XXXXXX")
QPID=
cleanup() { [ -n "$QPID" ] && kill "$QPID" 2>/dev/null; rm -rf "$JOB"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
{
  export -p | grep -v -E '^declare -x (PWD|OLDPWD|SHLVL|_)(=|$)'
  printf 'cd %q || exit 125\n' "$WORKDIR"
  printf 'exec'; printf ' %q' "$@"; printf '\n'
} > "$JOB/cmd"
[ -t 1 ] && touch "$JOB/tty1"
[ -t 2 ] && touch "$JOB/tty2"
case "$WORKDIR/" in /tmp/*) KVMQ_HOST_TMP=1 ;; esac
[ "${KVMQ_HOST_TMP:-0}" = 1 ] && touch "$JOB/hosttmp"

FSMODEL=passthrough
T0=$(date +%s.%N)
# Guest ttyS1/ttyS2 -> fifos -> cat -> our stdout/stderr (shares our fds, so it
# works for ttys, pipes and files alike).
# tee keeps a copy whose modification time tells the idle watchdog when the guest last printed.
mkfifo "$JOB/out.fifo" "$JOB/err.fifo"
tee -a "$JOB/out.log" < "$JOB/out.fifo" & CAT1=$!
tee -a "$JOB/err.log" < "$JOB/err.fifo" >&2 & CAT2=$!
TO=(); [ "$TIMEOUT" -gt 0 ] && TO=(timeout "$TIMEOUT")
# lapic=notscdeadline: with the TSC-deadline timer, this machine often stopped taking its own
# timer interrupts while a nested guest ran (the CPU stayed in the nested guest, the whole machine
# hung: most Linux-tier runs of one session); with the APIC's one-shot timer, none in 8 runs (56 boots).
# Presumably QEMU's software SVM compares the deadline with the nested guest's offset TSC.
MONITOR=none; [ -n "${KVMQ_MONITOR:-}" ] && MONITOR="unix:$KVMQ_MONITOR,server,nowait"
set +e
"${TO[@]}" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m "$MEM" -smp "$SMP" \
  -display none -monitor "$MONITOR" -no-reboot -nodefaults \
  -kernel "$VMLINUZ" -initrd "$INITRD" \
  -append "console=ttyS0 $([ "${KVMQ_VERBOSE:-0}" = 1 ] || echo quiet) panic=-1 mitigations=off lapic=notscdeadline ${KVMQ_APPEND:-} kvmq.job=$JOB" \
  -serial "file:$JOB/console.log" \
  -chardev file,id=out,path="$JOB/out.fifo" -serial chardev:out \
  -chardev file,id=err,path="$JOB/err.fifo" -serial chardev:err \
  -fsdev local,id=hostroot,path=/,security_model=$FSMODEL,multidevs=remap \
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot &
QPID=$!
IDLE=${KVMQ_IDLE_TIMEOUT:-0}
if [ "$IDLE" -gt 0 ]; then
  touch "$JOB/started"
  while kill -0 "$QPID" 2>/dev/null; do
    sleep 5
    last=$(stat -c %Y "$JOB/started" "$JOB/out.log" "$JOB/err.log" ${KVMQ_IDLE_FILE:+"$KVMQ_IDLE_FILE"} 2>/dev/null | sort -n | tail -1)
    if [ $(( $(date +%s) - last )) -gt "$IDLE" ]; then
      echo "kvm-in-qemu: no sign of progress for ${IDLE}s: stopping the guest" >&2
      [ -n "${KVMQ_IDLE_FILE:-}" ] && echo "kvm-in-qemu: last heartbeat: $(head -c 300 "$KVMQ_IDLE_FILE" 2>/dev/null)" >&2
      pkill -P "$QPID" 2>/dev/null || true   # qemu under timeout(1)
      kill "$QPID" 2>/dev/null || true
      break
    fi
  done
fi
wait "$QPID"; QRC=$?; QPID=
[ "$QRC" = 124 ] && [ "$TIMEOUT" -gt 0 ] && echo "kvm-in-qemu: timeout after ${TIMEOUT}s" >&2
# If qemu died before opening the fifos, unblock the readers (no-op otherwise).
for f in out err; do dd if=/dev/null of="$JOB/$f.fifo" oflag=nonblock status=none 2>/dev/null; done
wait "$CAT1" "$CAT2"
set -e
T1=$(date +%s.%N)
if [ "${KVMQ_VERBOSE:-0}" = 1 ]; then
  echo "kvm-in-qemu: guest uptime at command start $(cat "$JOB/ready" 2>/dev/null)s, total wall $(awk "BEGIN{printf \"%.1f\", $T1 - $T0}")s" >&2
fi
if [ -s "$JOB/rc" ]; then
  exit "$(cat "$JOB/rc")"
fi
echo "kvm-in-qemu: guest did not report an exit status (qemu rc $QRC); console tail:" >&2
tail -n 30 "$JOB/console.log" >&2 || true
cp "$JOB/console.log" "$CACHE/last-console.log" 2>/dev/null && echo "kvm-in-qemu: full log: $CACHE/last-console.log" >&2
exit 125
