#!/usr/bin/env bash
# Sets Kindling up if needed, then boots a microVM and shows its serial console.
#   scripts/demo.sh                  the small demo guest the project builds (no download)
#   scripts/demo.sh --linux [PATH]   a Linux kernel (default ../shared/guest/vmlinux), with a busybox initramfs
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node examples/boot.js "$@"
