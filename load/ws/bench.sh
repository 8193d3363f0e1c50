#!/usr/bin/env bash
# Real-time benchmarks (docs/benchmarks.md, "WebSocket"): idle connections' memory on one edge,
# one room's fan-out to many subscribers on one edge and across two, and recovery of missed
# events. Release builds; two cluster-mode edges on a scratch Postgres database and a scratch
# NATS prefix; the clients (`revo-load ws-*`) share the machine's cores with the edges.
# Usage: load/ws/bench.sh [IDLE_CONNECTIONS] [SUBSCRIBERS] [MISSED_EVENTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
IDLE="${1:-20000}"
SUBS="${2:-1000}"
MISSED="${3:-10000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/revo/target}"
PROFILE="${PROFILE:-release}"
if [ "$PROFILE" = release ]; then cargo build --release -p revo -p revo-load >&2; else cargo build -p revo -p revo-load >&2; fi
REVO="$CARGO_TARGET_DIR/$PROFILE/revo"
LOAD="$CARGO_TARGET_DIR/$PROFILE/revo-load"
# Each socket is a file descriptor on both ends; these machines cap a process at 20,000 (hard
# limit), so the idle clients are two processes and the edge holds at most ~19,900 sockets.
ulimit -n "$(ulimit -Hn)"

DB="revo_wsbench_$$"
PREFIX="wsb$$"
PG="postgres://postgres@127.0.0.1:5432"
psql "$PG/postgres" -qc "CREATE DATABASE $DB" >/dev/null
PIDS=()
DATA_DIR=$(mktemp -d)
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
  rm -rf "$DATA_DIR"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PW="bench-admin-password"
start_edge() {
  local port=$1
  REVO_DATABASE_URL="$PG/$DB" REVO_NATS_URL=nats://127.0.0.1:4222 REVO_NATS_PREFIX="$PREFIX" \
    REVO_JWT_KEYS="bench:0123456789abcdef0123456789abcdef" REVO_ADMIN_PASSWORD="$PW" REVO_LOG=warn \
    REVO_RATE_LIMIT_ADMIN=1000000000 \
    "$REVO" serve --listen "127.0.0.1:$port" >/dev/null 2>>"/tmp/wsbench-$port.log" &
  PIDS+=($!)
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && return; sleep 0.1; done
  echo "edge on $port did not start" >&2; exit 1
}
PA=$(free_port); start_edge "$PA"; PID_A=${PIDS[-1]}
PB=$(free_port); start_edge "$PB"
A="http://127.0.0.1:$PA"; B="http://127.0.0.1:$PB"
json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }
TOKEN=$(curl -sf "$A/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$PW\"}" | json "['access_token']")
ME=$(curl -sf "$A/users/me" -H "authorization: Bearer $TOKEN" | json "['user']['id']")
room() {
  curl -sf "$A/rooms" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"name\":\"$1\"}" | json "['id']"
}
COMMON=(--token "$TOKEN" --user "$ME")
echo "## WebSocket benchmarks ($(nproc) cores, $PROFILE build, $(date -u +%F))"
echo
"$LOAD" ws-fanout --url "$A" "${COMMON[@]}" --room "$(room fan1)" --subscribers "$SUBS" --messages 200 --rate 20
echo
"$LOAD" ws-fanout --url "$A" --subscribers-url "$B" "${COMMON[@]}" --room "$(room fan2)" --subscribers "$SUBS" --messages 200 --rate 20
echo
"$LOAD" ws-recovery --url "$A" "${COMMON[@]}" --room "$(room rec)" --events "$MISSED" --rounds 3
echo
# Two client processes (each may hold at most 20,000 descriptors), the first holding its half
# open while the second opens the rest and reports the edge's growth over both.
HALF=$((IDLE / 2))
"$LOAD" ws-idle --url "$A" "${COMMON[@]}" --connections "$HALF" --pid "$PID_A" --hold 600 \
  >/dev/null 2>"$DATA_DIR/idle1.err" &
IDLE1=$!
PIDS+=("$IDLE1")
for _ in $(seq 600); do
  BASE_KB=$(sed -n 's/^rss_before_kb=//p' "$DATA_DIR/idle1.err")
  [ -n "$BASE_KB" ] && break
  sleep 0.1
done
# Wait for the first half to be open (the edge's connection gauge).
for _ in $(seq 1200); do
  n=$(curl -sf "$A/metrics" | sed -n 's/^revo_ws_connections //p')
  [ "${n:-0}" -ge "$HALF" ] && break
  sleep 0.5
done
"$LOAD" ws-idle --url "$A" "${COMMON[@]}" --connections "$((IDLE - HALF))" --others "$HALF" \
  --pid "$PID_A" --baseline-kb "$BASE_KB" 2>/dev/null
