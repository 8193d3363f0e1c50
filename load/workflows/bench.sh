#!/usr/bin/env bash
# Workflow benchmarks (docs/benchmarks.md, "Workflows"): step overhead and takeover time.
#
# Cluster-mode edges (release builds) on a scratch Postgres database and NATS prefix, with
# an instant OpenAI-compatible stub (`revo-load stub`) as the catalogue's only model.
# - Step overhead: `revo-load workflow-steps` against edge A alone: a workflow of 10 template
#   steps and one of 10 generate steps, one run at a time and many at once, beside the same 10
#   model calls made directly through `POST /ai/generate`.
# - Takeover: a run waiting on a long sleep is started on edge A, A is killed with SIGKILL, and
#   the time until edge B has claimed the run is measured (ROUNDS times; A restarts between).
# Everything shares this machine's cores, Postgres and NATS.
# Usage: load/workflows/bench.sh [RUNS] [CONCURRENCY] [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${1:-30}"
CONC="${2:-32}"
SECS="${3:-10}"
ROUNDS="${4:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/revo/target}"
cargo build --release -p revo -p revo-load >&2
REVO="$CARGO_TARGET_DIR/release/revo"
LOAD="$CARGO_TARGET_DIR/release/revo-load"

DB="revo_wfbench_$$"
PREFIX="wfb$$"
PG="postgres://postgres@127.0.0.1:5432"
psql "$PG/postgres" -qc "CREATE DATABASE $DB" >/dev/null
DATA=$(mktemp -d)
PIDS=()
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT
"$LOAD" stub > "$DATA/stub.addr" &
PIDS+=($!)
for _ in $(seq 50); do [ -s "$DATA/stub.addr" ] && break; sleep 0.1; done
cat > "$DATA/revo.toml" <<TOML
[[models.catalog]]
name = "stub"
provider = "openai-compatible"
model = "stub"
base_url = "http://$(cat "$DATA/stub.addr")/v1"
priority = 1
TOML
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PW="bench-admin-password"
start_edge() {
  local port=$1
  REVO_DATABASE_URL="$PG/$DB" REVO_NATS_URL=nats://127.0.0.1:4222 REVO_NATS_PREFIX="$PREFIX" \
    REVO_JWT_KEYS="bench:0123456789abcdef0123456789abcdef" REVO_ADMIN_PASSWORD="$PW" REVO_LOG=warn \
    REVO_RATE_LIMIT_ADMIN=1000000000 REVO_CONFIG="$DATA/revo.toml" \
    "$REVO" serve --listen "127.0.0.1:$port" >/dev/null 2>>"$DATA/edge-$port.log" &
  PIDS+=($!)
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && return; sleep 0.1; done
  echo "edge on $port did not start" >&2; cat "$DATA/edge-$port.log" >&2; exit 1
}
PA=$(free_port); start_edge "$PA"; PID_A=${PIDS[-1]}
A="http://127.0.0.1:$PA"
json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }
TOKEN=$(curl -sf "$A/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$PW\"}" | json "['access_token']")

echo "## Workflow benchmarks ($(nproc) cores, release build, $(date -u +%F))"
echo
"$LOAD" workflow-steps --url "$A" --token "$TOKEN" --model stub --runs "$RUNS" \
  --concurrency "$CONC" --seconds "$SECS"
echo

# The second edge joins for the takeover rounds (step overhead is one edge's).
PB=$(free_port); start_edge "$PB"; B="http://127.0.0.1:$PB"
echo "### Takeover after SIGKILL of the owning node ($ROUNDS rounds)"
echo
WF=$(curl -sf "$A/workflows" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"name":"nap","steps":[{"id":"z","type":"sleep","seconds":3600}]}' | json "['id']")
for round in $(seq "$ROUNDS"); do
  RUN=$(curl -sf "$A/workflows/$WF/execute" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d '{}' | json "['id']")
  OWNER=$(curl -sf "$B/runs/$RUN" -H "authorization: Bearer $TOKEN" | json "['node']")
  # Let A announce itself for a while, as a long-running node would have.
  sleep 2
  kill -9 "$PID_A"
  T0=$(date +%s.%N)
  while :; do
    NODE=$(curl -sf "$B/runs/$RUN" -H "authorization: Bearer $TOKEN" | json "['node']")
    [ "$NODE" != "$OWNER" ] && break
    sleep 0.02
  done
  T1=$(date +%s.%N)
  echo "- round $round: claimed by the other node $(python3 -c "print(f'{$T1-$T0:.2f}')") s after the kill"
  PA=$(free_port); start_edge "$PA"; PID_A=${PIDS[-1]}; A="http://127.0.0.1:$PA"
done
