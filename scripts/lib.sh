#!/usr/bin/env bash
# Shared helpers for kmsd's scripts: idempotent installs, the FerretDB build, token creation.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOFTHSM_LIB="${SOFTHSM_LIB:-/usr/lib/softhsm/libsofthsm2.so}"
FERRETDB_BIN="$ROOT/.cache/ferretdb-kmsd"

log() { printf '[kmsd] %s\n' "$*" >&2; }

# apt-get install of Debian packages; the package lists are refreshed once per script run.
APT_UPDATED=""
apt_install() {
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ -z "$APT_UPDATED" ]; then $sudo apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# SoftHSM2 + OpenSC (pkcs11-tool) from Debian, only when missing.
ensure_softhsm() {
  if [ -e "$SOFTHSM_LIB" ] && command -v softhsm2-util >/dev/null && command -v pkcs11-tool >/dev/null; then return; fi
  log "installing softhsm2 and opensc from Debian (apt-get; usually about 1 minute)"
  apt_install softhsm2 opensc
}

# PostgreSQL 15 from Debian (cluster-mode store tests), only when missing. The test helper
# (test/helpers/postgres.ts) runs initdb/pg_ctl as the postgres user; no service is started.
PG_BINDIR="${PG_BINDIR:-/usr/lib/postgresql/15/bin}"
ensure_postgres() {
  if [ -x "$PG_BINDIR/initdb" ] && [ -x "$PG_BINDIR/pg_ctl" ] && id postgres >/dev/null 2>&1; then return; fi
  log "installing postgresql-15 from Debian (apt-get; usually under a minute)"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  # no cluster of its own: the tests make throwaway clusters
  $sudo mkdir -p /etc/postgresql-common/createcluster.conf.d
  echo 'create_main_cluster = false' | $sudo tee /etc/postgresql-common/createcluster.conf.d/kmsd.conf >/dev/null 2>&1 || true
  apt_install postgresql-15
}

# p11-kit (the `p11-kit server` command) and p11-kit-modules (p11-kit-client.so) from Debian,
# only when missing: the tests serve a SoftHSM2 token over a Unix socket with them (a network token).
ensure_p11kit() {
  if command -v p11-kit >/dev/null && [ -n "$(p11kit_client_module)" ]; then return; fi
  log "installing p11-kit and p11-kit-modules from Debian (apt-get; a few seconds)"
  apt_install p11-kit p11-kit-modules
}

# Path of p11-kit-client.so (empty when not installed).
p11kit_client_module() {
  dpkg -L p11-kit-modules 2>/dev/null | grep '/p11-kit-client\.so$' | head -1 || true
}

# node_modules (with the native builds of pkcs11js and sqlite3) and the compiled dist/.
ensure_node() {
  cd "$ROOT"
  if [ ! -f node_modules/pkcs11js/build/Release/pkcs11.node ] || [ ! -f node_modules/sqlite3/build/Release/node_sqlite3.node ] \
     || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    log "installing npm dependencies (npm ci with native builds of pkcs11js and sqlite3; usually about 1 minute)"
    npm ci --no-audit --no-fund --loglevel=error
  fi
  log "compiling TypeScript (usually 10-30 seconds)"
  npx tsc -p tsconfig.json
}

# FerretDB 1.24 (SQLite backend) embedded in a tiny Go main; built once, cached in .cache/.
# Rebuilt only when its sources change (a hash stamp, not file dates: a fresh clone's files are all new).
ensure_ferretdb() {
  local stamp
  stamp=$(cat "$ROOT/scripts/ferretdb/main.go" "$ROOT/scripts/ferretdb/go.mod" "$ROOT/scripts/ferretdb/go.sum" | sha256sum | cut -d' ' -f1)
  if [ -x "$FERRETDB_BIN" ] && [ "$(cat "$FERRETDB_BIN.sha256" 2>/dev/null)" = "$stamp" ]; then return; fi
  log "building FerretDB 1.24 (embedded, SQLite backend) from the Go module proxy (first run only; usually 1-2 minutes)"
  mkdir -p "$ROOT/.cache"
  # built beside and moved into place: a running server keeps its file, a shared cache never sees half a binary
  (cd "$ROOT/scripts/ferretdb" && go build -o "$FERRETDB_BIN.$$" .)
  mv -f "$FERRETDB_BIN.$$" "$FERRETDB_BIN"
  echo "$stamp" > "$FERRETDB_BIN.sha256"
}

# Writes a softhsm2.conf for a token directory and initialises one token in it.
# usage: init_token DIR LABEL PIN  (prints the conf path)
init_token() {
  local dir="$1" label="$2" pin="$3"
  mkdir -p "$dir/tokens"
  local conf="$dir/softhsm2.conf"
  # always rewritten: it holds an absolute path, and the checkout may have moved
  sed "s#@TOKENDIR@#$dir/tokens#" "$ROOT/hsm/softhsm2.conf.template" > "$conf"
  if ! SOFTHSM2_CONF="$conf" softhsm2-util --show-slots 2>/dev/null | grep -q "Label:\s*$label\s*$"; then
    SOFTHSM2_CONF="$conf" softhsm2-util --init-token --free --label "$label" --so-pin "so-$pin" --pin "$pin" >/dev/null
  fi
  echo "$conf"
}

# The AWS CLI (v1, from PyPI) in a venv under tmp/, for the AWS KMS API tests; only when missing.
AWSCLI_VENV="$ROOT/tmp/awscli-venv"
ensure_awscli() {
  if [ -x "$AWSCLI_VENV/bin/aws" ]; then return; fi
  log "installing the AWS CLI (pip install awscli) into tmp/awscli-venv"
  mkdir -p "$ROOT/tmp"
  python3 -m venv "$AWSCLI_VENV"
  "$AWSCLI_VENV/bin/pip" install --quiet --disable-pip-version-check awscli
}

# Everything the tests and the bench start for real: SoftHSM2, the compiled daemon, and a
# MongoDB-compatible server (mongod when on PATH, else the FerretDB build).
ensure_test_stack() {
  ensure_softhsm
  ensure_postgres
  ensure_p11kit
  ensure_node
  if command -v mongod >/dev/null && [ -z "${MONGODB_URI:-}" ]; then export KMSD_TEST_MONGOD="$(command -v mongod)"; fi
  ensure_ferretdb
  ensure_awscli
}
