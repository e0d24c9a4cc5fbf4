#!/usr/bin/env bash
# Runs the whole test suite against real components: installs SoftHSM2/OpenSC if missing,
# builds kmsd and FerretDB (unless mongod is on PATH), then mocha. Each suite makes its own
# throwaway tokens and data dirs under tmp/test; one MongoDB-compatible server serves the run.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_test_stack
cd "$ROOT"
rm -f tmp/test-results.json
mkdir -p tmp/test
if [ $# -eq 0 ]; then set -- "dist/test/**/*.test.js"; fi
exec npx mocha "$@"
