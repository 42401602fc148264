#!/usr/bin/env bash
# Installs those of the given Debian packages that are missing (with sudo when not root).
#   scripts/ensure-packages.sh LOG-PREFIX PACKAGE...
set -euo pipefail
prefix=$1; shift
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -gt 0 ] || exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
printf '[%s] installing Debian packages: %s\n' "$prefix" "${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
