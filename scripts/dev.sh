#!/usr/bin/env bash
# Starts kmsd with a dev SoftHSM2 token and a local MongoDB-compatible server, installing what is
# missing first. Idempotent: re-running reuses the token, data and admin token.
#
# Stopping: Ctrl-C, or SIGTERM/SIGHUP to this script's pid (an IDE's stop button, `kill <pid>`,
# `npm run dev` stopped the same way). The script passes the signal to kmsd, waits for it to
# shut down, then stops the MongoDB-compatible server if this run started it.
#
# Environment: KMSD_PORT (8200), KMSD_MONGO_PORT (27017), KMSD_WORKERS (1), KMSD_PIN_NL_01 (1234),
# KMSD_DEV_DIR (data/: token, store, admin token and generated config live under it when set;
# by default hsm/, data/ and config/dev.yaml of the checkout), KMSD_AWS_PORT (unset: no AWS KMS
# API; a port: serve it there with access key AKIAKMSDEXAMPLE00001, its secret in aws.secret).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

kmsd_pid=""
mongo_pid=""
mongo_dir=""
stop_dev_stack() {
  trap - TERM INT HUP EXIT
  if [ -n "$kmsd_pid" ] && kill -0 "$kmsd_pid" 2>/dev/null; then
    log "stopping kmsd (pid $kmsd_pid)"
    kill -TERM "$kmsd_pid" 2>/dev/null || true
    wait "$kmsd_pid" 2>/dev/null || true
  fi
  if [ -n "$mongo_pid" ] && kill -0 "$mongo_pid" 2>/dev/null; then
    log "stopping the MongoDB-compatible server (pid $mongo_pid)"
    kill -TERM "$mongo_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$mongo_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$mongo_pid" 2>/dev/null || true
    rm -f "$mongo_dir/mongo.pid"
  fi
}
# A signal during setup (apt, npm ci, the Go build) or while kmsd runs: stop what was started.
trap 'stop_dev_stack; exit 143' TERM
trap 'stop_dev_stack; exit 130' INT
trap 'stop_dev_stack; exit 129' HUP
trap 'stop_dev_stack' EXIT

log "dev stack: a first run installs SoftHSM2 (apt, usually ~1 min), npm dependencies (npm ci, usually ~1 min)"
log "  and builds FerretDB (Go, usually 1-2 min) — about 3 minutes; later runs start in seconds"
ensure_softhsm
ensure_node
PORT="${KMSD_PORT:-8200}"
MONGO_PORT="${KMSD_MONGO_PORT:-27017}"
if [ -n "${KMSD_DEV_DIR:-}" ]; then
  mkdir -p "$KMSD_DEV_DIR"
  DEV_DIR="$(cd "$KMSD_DEV_DIR" && pwd)"; HSM_DIR="$DEV_DIR/hsm"; CONFIG="$DEV_DIR/dev.yaml"
else
  DEV_DIR="$ROOT/data"; HSM_DIR="$ROOT/hsm"; CONFIG="$ROOT/config/dev.yaml"
fi
export KMSD_PIN_NL_01="${KMSD_PIN_NL_01:-1234}"
conf=$(init_token "$HSM_DIR" kmsd-nl-01 "$KMSD_PIN_NL_01")
export SOFTHSM2_CONF="$conf"

mongo_dir="$DEV_DIR/mongo"
mongo_was_running=""
if [ -z "${MONGODB_URI:-}" ] && [ -f "$mongo_dir/mongo.pid" ] && kill -0 "$(cat "$mongo_dir/mongo.pid")" 2>/dev/null; then mongo_was_running=1; fi
[ -n "${MONGODB_URI:-}" ] || command -v mongod >/dev/null || [ -x "$FERRETDB_BIN" ] || log "MongoDB-compatible server: FerretDB (a first run builds it, usually 1-2 min)"
mongo_uri=$(bash "$ROOT/scripts/mongo-dev.sh" "$mongo_dir" "$MONGO_PORT")
# Only a server this run started is stopped with it.
if [ -z "${MONGODB_URI:-}" ] && [ -z "$mongo_was_running" ] && [ -f "$mongo_dir/mongo.pid" ]; then mongo_pid=$(cat "$mongo_dir/mongo.pid"); fi

mkdir -p "$DEV_DIR"
tokfile="$DEV_DIR/admin.token"
[ -f "$tokfile" ] || node -e "process.stdout.write(require('crypto').randomBytes(24).toString('base64url'))" > "$tokfile"
admin_token=$(cat "$tokfile")
admin_sha=$(printf '%s' "$admin_token" | sha256sum | cut -d' ' -f1)
aws_yaml=""
aws_msg=""
if [ -n "${KMSD_AWS_PORT:-}" ]; then
  awsfile="$DEV_DIR/aws.secret"
  [ -f "$awsfile" ] || node -e "process.stdout.write(require('crypto').randomBytes(30).toString('base64'))" > "$awsfile"
  aws_yaml="aws:
  listen: { host: 127.0.0.1, port: $KMSD_AWS_PORT }
  sigv4Region: us-east-1
  accountId: \"111122223333\"
  credentials:
    - { accessKeyId: AKIAKMSDEXAMPLE00001, secretAccessKeyFile: \"$awsfile\", principal: demo-admin, organisation: org-demo, region: nl-01 }"
  aws_msg="AWS KMS API: http://127.0.0.1:$KMSD_AWS_PORT  access key AKIAKMSDEXAMPLE00001, secret in $awsfile (README, \"AWS KMS API\")
"
fi
mkdir -p "$(dirname "$CONFIG")"
cat > "$CONFIG" <<YAML
# written by scripts/dev.sh
listen: { host: 127.0.0.1, port: $PORT }
dataDir: $DEV_DIR/kmsd
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
    tokenSha256: "$admin_sha"
    organisations: [org-demo]
    roles: [admin]
rotation: { evaluationIntervalSeconds: 60, maxManualRotations: 10 }
testing: { clockControl: true }
workers: ${KMSD_WORKERS:-1}
$aws_yaml
YAML
cat >&2 <<MSG

kmsd dev stack: token $HSM_DIR/tokens (label kmsd-nl-01), MongoDB-compatible store $mongo_uri
API: http://127.0.0.1:$PORT   admin token: $admin_token  (also in $tokfile)
${aws_msg}Try (see the README, "Calling the dev daemon", for the whole walkthrough):
  T=\$(cat $tokfile)
  H=(-H "Authorization: Bearer \$T" -H "X-Organisation-Identity: org-demo" -H "Content-Type: application/json")
  curl -s "\${H[@]}" -d '{"name":"app-key","keyType":"aes256-gcm96"}' http://127.0.0.1:$PORT/v1/kms/nl-01/keys
  curl -s http://127.0.0.1:$PORT/readyz
Stop: Ctrl-C, or kill $$ (stops kmsd and the MongoDB-compatible server this run started).

MSG
# In the background and waited for, so this shell's traps run on a signal and stop kmsd and MongoDB.
node "$ROOT/dist/src/bin/kmsd.js" --config "$CONFIG" &
kmsd_pid=$!
status=0
wait "$kmsd_pid" || status=$?
kmsd_pid=""
exit "$status"
