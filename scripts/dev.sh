#!/usr/bin/env bash
# Starts kmsd with a dev SoftHSM2 token (hsm/tokens/) and a local MongoDB-compatible server,
# installing what is missing first. Idempotent: re-running reuses the token, data and admin token.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_softhsm
ensure_node
PORT="${KMSD_PORT:-8200}"
MONGO_PORT="${KMSD_MONGO_PORT:-27017}"
export KMSD_PIN_NL_01="${KMSD_PIN_NL_01:-1234}"
conf=$(init_token "$ROOT/hsm" kmsd-nl-01 "$KMSD_PIN_NL_01")
export SOFTHSM2_CONF="$conf"
mongo_uri=$(bash "$ROOT/scripts/mongo-dev.sh" "$ROOT/data/mongo" "$MONGO_PORT")
mkdir -p "$ROOT/data"
tokfile="$ROOT/data/admin.token"
[ -f "$tokfile" ] || node -e "process.stdout.write(require('crypto').randomBytes(24).toString('base64url'))" > "$tokfile"
admin_token=$(cat "$tokfile")
admin_sha=$(printf '%s' "$admin_token" | sha256sum | cut -d' ' -f1)
cat > "$ROOT/config/dev.yaml" <<YAML
# written by scripts/dev.sh
listen: { host: 127.0.0.1, port: $PORT }
dataDir: ../data/kmsd
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
workers: ${KMSD_WORKERS:-1}
YAML
cat >&2 <<MSG

kmsd dev stack: token hsm/tokens (label kmsd-nl-01), MongoDB-compatible store $mongo_uri
API: http://127.0.0.1:$PORT   admin token: $admin_token
Try:
  curl -s -H "Authorization: Bearer $admin_token" -H "X-Organisation-Identity: org-demo" \\
       -H "Content-Type: application/json" -d '{"name":"app-key","keyType":"aes256-gcm96"}' \\
       http://127.0.0.1:$PORT/v1/kms/nl-01/keys
  curl -s -H "Authorization: Bearer $admin_token" -H "X-Organisation-Identity: org-demo" \\
       -H "Content-Type: application/json" -d '{"plaintext":"aGVsbG8="}' \\
       http://127.0.0.1:$PORT/v1/kms/nl-01/keys/app-key/encrypt
  curl -s http://127.0.0.1:$PORT/readyz

MSG
exec node "$ROOT/dist/src/bin/kmsd.js" --config "$ROOT/config/dev.yaml"
