#!/bin/sh
# License-refresh load on loopback: SQLite and PostgreSQL, release build, wrk.
# Usage: benches/server-load/run.sh [duration, default 20s] [connections, default 32]
# Needs: wrk (apt-get install -y wrk); for PostgreSQL, /usr/lib/postgresql/*/bin.
set -eu
DUR=${1:-20s}
CONN=${2:-32}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/krisp-server
command -v wrk >/dev/null || { echo "wrk not installed (apt-get install -y wrk)"; exit 1; }
(cd "$ROOT" && cargo build --release -p krisp-server >/dev/null)
WORK=$(mktemp -d /tmp/krisp-load.XXXXXX)
PIDS=""
cleanup() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  if [ -f "$WORK/pg/data/postmaster.pid" ]; then
    kill -INT "$(head -1 "$WORK/pg/data/postmaster.pid")" 2>/dev/null || true
    sleep 1
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }

# run_one LABEL DATABASE_URL
run_one() {
  label=$1; url=$2
  port=$(free_port)
  NO_COLOR=1 RUST_LOG=warn "$BIN" --listen "127.0.0.1:$port" --database-url "$url" \
    --signing-key "$WORK/keys-$label.txt" --requests-per-sec-per-ip 0 \
    >"$WORK/server-$label.log" 2>&1 &
  spid=$!; PIDS="$PIDS $spid"
  base="http://127.0.0.1:$port"
  for _ in $(seq 1 50); do curl -sf "$base/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  email="load-$label@example.com"
  curl -sf -X POST "$base/v1/auth/email" -H 'content-type: application/json' -d "{\"email\":\"$email\"}" >/dev/null
  code=$(grep -o 'sign-in code for [^ ]* is [0-9]\{6\}' "$WORK/server-$label.log" | tail -1 | awk '{print $NF}')
  token=$(curl -sf -X POST "$base/v1/auth/verify" -H 'content-type: application/json' \
    -d "{\"email\":\"$email\",\"code\":\"$code\"}" | json_field access_token)
  curl -sf -X POST "$base/v1/devices" -H 'content-type: application/json' -H "authorization: Bearer $token" \
    -d '{"device_id":"load-device","name":"load","os":"linux"}' >/dev/null
  # Warm-up, then the measured run.
  KRISP_TOKEN=$token KRISP_DEVICE=load-device wrk -t2 -c"$CONN" -d3s -s "$HERE/license.lua" "$base/v1/license" >/dev/null
  echo "== $label: wrk -t2 -c$CONN -d$DUR POST /v1/license"
  KRISP_TOKEN=$token KRISP_DEVICE=load-device wrk -t2 -c"$CONN" -d"$DUR" --latency -s "$HERE/license.lua" "$base/v1/license" \
    | tee "$WORK/wrk-$label.txt" | grep -E "RESULT|Latency|Requests/sec|99%"
  kill "$spid"; wait "$spid" 2>/dev/null || true
}

run_one sqlite "sqlite://$WORK/load.db"

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort | tail -1 || true)
if [ -n "$PGBIN" ] && [ -x "$PGBIN/postgres" ]; then
  mkdir -p "$WORK/pg"
  AS=""
  if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$WORK/pg"; chmod 755 "$WORK"; AS="runuser -u postgres --"; fi
  $AS "$PGBIN/initdb" -D "$WORK/pg/data" -A trust -U postgres --no-sync -E UTF8 --no-locale >/dev/null
  pgport=$(free_port)
  # Durable settings (fsync on): the figure is what production would see on this disk.
  $AS "$PGBIN/postgres" -D "$WORK/pg/data" -p "$pgport" -k "$WORK/pg" -c listen_addresses=127.0.0.1 \
    >"$WORK/pg/log" 2>&1 &
  for _ in $(seq 1 100); do $AS "$PGBIN/pg_isready" -h 127.0.0.1 -p "$pgport" -q && break; sleep 0.1; done
  $AS "$PGBIN/createdb" -h 127.0.0.1 -p "$pgport" -U postgres krisp_load
  run_one postgres "postgres://postgres@127.0.0.1:$pgport/krisp_load"
else
  echo "!!! PostgreSQL binaries not found: skipped the PostgreSQL run"
fi
