#!/usr/bin/env bash
# Sets Kindling up if needed, then runs the default test tier (unit tests, and the freestanding
# guest tests on KVM; those are skipped, loudly, where /dev/kvm cannot be opened).
#   scripts/test.sh            default tier
#   scripts/test.sh --linux    also the slow Linux tier afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The API docs must build without a warning (typedoc.json treats warnings as errors).
npx typedoc --emit none --logLevel Warn
npx jest --ci
if [ "${1:-}" = "--linux" ]; then
  npx jest --ci --config jest.linux.config.js --runInBand
fi
