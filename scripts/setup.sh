#!/usr/bin/env bash
# Installs everything Kindling needs on a Debian/Ubuntu machine and builds it: Debian packages
# (compiler, cmake, busybox-static and e2fsprogs for the Linux test images), npm packages, the
# native addon and its test build, the TypeScript build and the freestanding test guests. Safe to run again; it only
# does what is missing. Needs Node.js >= 20 with npm already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

if ! command -v node >/dev/null 2>&1; then
  log "Node.js 20 or newer is required (https://nodejs.org or your distribution's nodejs package)."
  exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  log "Node.js $(node --version) is too old; Kindling needs 20 or newer."
  exit 1
fi

bash scripts/ensure-packages.sh setup build-essential cmake python3 busybox-static e2fsprogs

# npm ci also runs the package's install script (the native build) and prepare (the TypeScript build).
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm packages and building (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
else
  npm run --silent build:native
  npm run --silent build:ts
fi
log "building the addon's test build (with its _testing hooks, what jest loads) and the test guests"
npm run --silent build:native:test
npm run --silent build:guests
log "building the guest agent (guest/agent/out/kindling-agent, static)"
npm run --silent build:agent
