#!/usr/bin/env bash
# Starts a local kmsd cluster for real: PostgreSQL 15 primary + one synchronous standby (made
# with pg_basebackup -R), one SoftHSM2 token directory shared by every node, the MongoDB-compatible
# server, and 3 kmsd nodes on consecutive ports (KMSD_PORT, +1, +2), all on one PostgreSQL store.
# Idempotent: re-running reuses the data under data/cluster/. Ctrl-C stops the nodes and PostgreSQL.
# (The p11-kit-served second region of issue 17 is not part of this script yet.)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_softhsm
ensure_postgres
ensure_node
PORT="${KMSD_PORT:-8200}"
PG_PRIMARY_PORT="${KMSD_PG_PORT:-5440}"
PG_STANDBY_PORT=$((PG_PRIMARY_PORT + 1))
MONGO_PORT="${KMSD_MONGO_PORT:-27017}"
NODES="${KMSD_NODES:-3}"
DIR="$ROOT/data/cluster"
export KMSD_PIN_NL_01="${KMSD_PIN_NL_01:-1234}"
mkdir -p "$DIR"

# initdb refuses root: PostgreSQL runs as the postgres OS user when we are root.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_dir() { mkdir -p "$1"; chmod 700 "$1"; [ "$(id -u)" = 0 ] && chown postgres:postgres "$1"; return 0; }
pg_start() { # DIR PORT
  as_pg "$PG_BINDIR/pg_ctl" status -D "$1" >/dev/null 2>&1 && return 0
  as_pg "$PG_BINDIR/pg_ctl" start -D "$1" -w -l "$1/server.log" \
    -o "-p $2 -k $1 -c listen_addresses=127.0.0.1" >/dev/null
}

primary="$DIR/pg-primary"
standby="$DIR/pg-standby"
if [ ! -f "$primary/PG_VERSION" ]; then
  log "initialising the PostgreSQL primary in $primary"
  pg_dir "$primary"
  as_pg "$PG_BINDIR/initdb" -D "$primary" -U kmsd --auth=trust --locale=C --encoding=UTF8 >/dev/null
fi
pg_start "$primary" "$PG_PRIMARY_PORT"
as_pg "$PG_BINDIR/psql" -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U kmsd -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'kmsd'" | grep -q 1 \
  || as_pg "$PG_BINDIR/createdb" -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U kmsd kmsd
if [ ! -f "$standby/PG_VERSION" ]; then
  log "making the synchronous standby in $standby (pg_basebackup -R)"
  pg_dir "$standby"
  as_pg "$PG_BINDIR/pg_basebackup" -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U kmsd -D "$standby" -R -X stream --checkpoint=fast
fi
pg_start "$standby" "$PG_STANDBY_PORT"
# only now: with synchronous replication on and no standby, every commit on the primary would wait
as_pg "$PG_BINDIR/psql" -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U kmsd -d postgres -qc "ALTER SYSTEM SET synchronous_standby_names = '*'" -c 'SELECT pg_reload_conf()' >/dev/null
PG_URI="postgresql://kmsd@127.0.0.1:$PG_PRIMARY_PORT,127.0.0.1:$PG_STANDBY_PORT/kmsd?target_session_attrs=read-write"

conf=$(init_token "$DIR/hsm" kmsd-nl-01 "$KMSD_PIN_NL_01")
export SOFTHSM2_CONF="$conf"
mongo_uri=$(bash "$ROOT/scripts/mongo-dev.sh" "$DIR/mongo" "$MONGO_PORT")
tokfile="$DIR/admin.token"
[ -f "$tokfile" ] || node -e "process.stdout.write(require('crypto').randomBytes(24).toString('base64url'))" > "$tokfile"
admin_token=$(cat "$tokfile")
admin_sha=$(printf '%s' "$admin_token" | sha256sum | cut -d' ' -f1)

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$PG_BINDIR/pg_ctl" stop -D "$standby" -m fast >/dev/null 2>&1 || true
  as_pg "$PG_BINDIR/pg_ctl" stop -D "$primary" -m fast >/dev/null 2>&1 || true
}
trap stop_all EXIT INT TERM

for i in $(seq 0 $((NODES - 1))); do
  cat > "$DIR/node-$i.yaml" <<YAML
# written by scripts/cluster-dev.sh
listen: { host: 127.0.0.1, port: $((PORT + i)) }
dataDir: node-$i
store:
  postgres:
    uri: $PG_URI
mongodbUri: $mongo_uri
regions:
  - name: nl-01
    pkcs11Module: $SOFTHSM_LIB
    tokenLabel: kmsd-nl-01
    pinEnv: KMSD_PIN_NL_01
organisations:
  - { identity: org-demo, kmsEnabled: true }
principals:
  - name: demo-admin
    tokenSha256: $admin_sha
    organisations: [org-demo]
    roles: [admin]
rotation: { evaluationIntervalSeconds: 60, maxManualRotations: 10 }
testing: { clockControl: true }
YAML
  (cd "$DIR" && exec node "$ROOT/dist/src/bin/kmsd.js" --config "$DIR/node-$i.yaml") &
  pids+=($!)
done
for i in $(seq 0 $((NODES - 1))); do
  for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$((PORT + i))/readyz" >/dev/null && break; sleep 0.5; done
done
cat >&2 <<MSG

kmsd dev cluster: $NODES nodes on http://127.0.0.1:$PORT..$((PORT + NODES - 1)), one token (data/cluster/hsm),
PostgreSQL primary :$PG_PRIMARY_PORT + synchronous standby :$PG_STANDBY_PORT ($PG_URI),
MongoDB-compatible $mongo_uri. Admin token: $admin_token
Failover drill: $PG_BINDIR/pg_ctl stop -D $primary -m immediate && $PG_BINDIR/pg_ctl promote -D $standby
(as the postgres user; then rebuild the old primary as a standby or remove data/cluster to start over).
Ctrl-C stops everything.
MSG
wait
