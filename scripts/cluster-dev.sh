#!/usr/bin/env bash
# Starts a local kmsd cluster for real: PostgreSQL 15 primary + one synchronous standby (made
# with pg_basebackup -R), one SoftHSM2 token directory shared by every node, the MongoDB-compatible
# server, a `p11-kit server` exporting a second token over a Unix socket (region p11-01, reached by
# every node through p11-kit-client.so: a network HSM stand-in), and 3 kmsd nodes on consecutive
# ports (KMSD_PORT, +1, +2), all on one PostgreSQL store. `npm run cluster` runs it.
# Idempotent: re-running reuses the data under data/cluster/. Ctrl-C (or kill <pid>) stops the
# nodes, the p11-kit server, PostgreSQL and the MongoDB-compatible server it started.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_softhsm
ensure_postgres
ensure_p11kit
ensure_node
PORT="${KMSD_PORT:-8200}"
PG_PRIMARY_PORT="${KMSD_PG_PORT:-5440}"
PG_STANDBY_PORT=$((PG_PRIMARY_PORT + 1))
MONGO_PORT="${KMSD_MONGO_PORT:-27017}"
NODES="${KMSD_NODES:-3}"
DIR="$ROOT/data/cluster"
export KMSD_PIN_NL_01="${KMSD_PIN_NL_01:-1234}"
export KMSD_PIN_P11_01="${KMSD_PIN_P11_01:-1234}"
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
init_token "$DIR/hsm" kmsd-p11 "$KMSD_PIN_P11_01" >/dev/null
P11_MODULE=$(p11kit_client_module)
export P11_KIT_SERVER_ADDRESS="unix:path=$DIR/p11kit.sock"
mongo_pid=""
mongo_was_running=""
if [ -f "$DIR/mongo/mongo.pid" ] && kill -0 "$(cat "$DIR/mongo/mongo.pid")" 2>/dev/null; then mongo_was_running=1; fi
mongo_uri=$(bash "$ROOT/scripts/mongo-dev.sh" "$DIR/mongo" "$MONGO_PORT")
if [ -z "$mongo_was_running" ] && [ -f "$DIR/mongo/mongo.pid" ]; then mongo_pid=$(cat "$DIR/mongo/mongo.pid"); fi
tokfile="$DIR/admin.token"
[ -f "$tokfile" ] || node -e "process.stdout.write(require('crypto').randomBytes(24).toString('base64url'))" > "$tokfile"
admin_token=$(cat "$tokfile")
admin_sha=$(printf '%s' "$admin_token" | sha256sum | cut -d' ' -f1)

pids=()
p11_pid=""
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  # p11-kit server forks one child per client connection: its own process group, ended as one
  [ -n "$p11_pid" ] && kill -- "-$p11_pid" 2>/dev/null || true
  # the MongoDB-compatible server only when this run started it
  if [ -n "$mongo_pid" ]; then kill "$mongo_pid" 2>/dev/null || true; rm -f "$DIR/mongo/mongo.pid"; fi
  as_pg "$PG_BINDIR/pg_ctl" stop -D "$standby" -m fast >/dev/null 2>&1 || true
  as_pg "$PG_BINDIR/pg_ctl" stop -D "$primary" -m fast >/dev/null 2>&1 || true
}
trap stop_all EXIT INT TERM

# the p11-kit server first: a client started before its server sees no slots
rm -f "$DIR/p11kit.sock"
setsid p11-kit server --provider "$SOFTHSM_LIB" -f -n "$DIR/p11kit.sock" "pkcs11:token=kmsd-p11" &
p11_pid=$!
for _ in $(seq 1 100); do [ -S "$DIR/p11kit.sock" ] && break; sleep 0.05; done

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
  - name: p11-01                     # through p11-kit server: ECDSA, RSA, HMAC (no AES-GCM in p11-kit 0.24)
    pkcs11Module: $P11_MODULE
    tokenLabel: kmsd-p11
    pinEnv: KMSD_PIN_P11_01
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

kmsd dev cluster: $NODES nodes on http://127.0.0.1:$PORT..$((PORT + NODES - 1)), region nl-01 on one token
directory shared by every node (data/cluster/hsm), region p11-01 through p11-kit server ($P11_KIT_SERVER_ADDRESS, pid $p11_pid),
PostgreSQL primary :$PG_PRIMARY_PORT + synchronous standby :$PG_STANDBY_PORT ($PG_URI),
MongoDB-compatible $mongo_uri. Admin token: $admin_token
Failover drill: $PG_BINDIR/pg_ctl stop -D $primary -m immediate && $PG_BINDIR/pg_ctl promote -D $standby
(as the postgres user; then rebuild the old primary as a standby or remove data/cluster to start over).
Token connection drill: kill -9 -$p11_pid (p11-01 answers 503 RegionUnavailable on every node), then restart it:
  setsid p11-kit server --provider $SOFTHSM_LIB -f -n $DIR/p11kit.sock pkcs11:token=kmsd-p11 &
Ctrl-C (or kill <pid of npm run cluster>) stops everything this run started.
MSG
wait
