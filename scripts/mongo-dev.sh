#!/usr/bin/env bash
# Starts a MongoDB-compatible server on 127.0.0.1:PORT for Agenda, unless MONGODB_URI is set:
# `mongod` when it is on PATH, else FerretDB 1.24 (SQLite backend) built by scripts/lib.sh.
# usage: scripts/mongo-dev.sh DATA_DIR PORT   (prints the URI; the server runs in the background,
#        its pid in DATA_DIR/mongo.pid)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
dir="${1:?data dir}"; port="${2:-27017}"
if [ -n "${MONGODB_URI:-}" ]; then echo "$MONGODB_URI"; exit 0; fi
mkdir -p "$dir"
if [ -f "$dir/mongo.pid" ] && kill -0 "$(cat "$dir/mongo.pid")" 2>/dev/null; then
  echo "mongodb://127.0.0.1:$port/kmsd"; exit 0
fi
if command -v mongod >/dev/null; then
  mongod --dbpath "$dir" --bind_ip 127.0.0.1 --port "$port" --fork --logpath "$dir/mongod.log" --pidfilepath "$dir/mongo.pid" >/dev/null
else
  ensure_ferretdb
  nohup "$FERRETDB_BIN" -listen "127.0.0.1:$port" -dir "$dir/ferretdb" >"$dir/ferretdb.log" 2>&1 &
  echo $! > "$dir/mongo.pid"
fi
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "mongodb://127.0.0.1:$port/kmsd"; exit 0; fi
  sleep 0.1
done
log "MongoDB-compatible server did not come up on port $port"; exit 1
