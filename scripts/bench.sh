#!/usr/bin/env bash
# `npm run bench [-- --quick]`: kmsd's benchmark (../shared/BENCHMARKS.md). Installs SoftHSM2 if
# missing, builds kmsd and FerretDB, then runs dist/bench/run.js, which starts its own throwaway
# tokens, FerretDB and daemons, prints one table and writes bench/results/latest.json.
# Options: --quick (smoke run of seconds), --profile (CPU profile of the encrypt load),
# --fresh-seed (rebuild the cached 10,000-key cold-start data set), --only=phase,…, --seconds=N.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_test_stack
cd "$ROOT"
mkdir -p bench/results tmp/bench
exec node dist/bench/run.js "$@"
