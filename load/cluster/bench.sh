#!/usr/bin/env bash
# The cluster scenario (docs/benchmarks.md, "A cluster under mixed load"): builds release
# binaries, starts deploy/cluster/cluster.sh (3 edges, 2 workers, HAProxy) on a scratch
# database and subject prefix, and runs `revo-load cluster` through the balancer: USERS users,
# WS_PER_USER WebSockets each, RPM mixed API requests a minute, workflows meanwhile. The report
# (Markdown and SVG plots) goes to OUT (default docs/benchmarks/cluster).
# Usage: load/cluster/bench.sh [DURATION_S] [USERS] [WS_PER_USER] [RPM]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-120} USERS=${2:-100} WS=${3:-10} RPM=${4:-1500}
OUT=${OUT:-docs/benchmarks/cluster}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/revo/target}"
cargo build --release --bin revo -p revo >&2
cargo build --release -p revo-load >&2
DIR=$(mktemp -d)
DB="revo_bench_cluster_$$"
PREFIX="benchcl$$"
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $DB"
cleanup() {
  deploy/cluster/cluster.sh down "$DIR" || true
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
  "${TEST_PYTHON:-$HOME/.cache/revo/venv/bin/python}" - "$PREFIX" <<'PY' || true
import asyncio, sys
async def main():
    import nats
    nc = await nats.connect("nats://127.0.0.1:4222")
    try:
        await nc.jetstream().delete_stream(sys.argv[1].upper() + "_EVENTS")
    except Exception:
        pass
    await nc.close()
asyncio.run(main())
PY
  rm -rf "$DIR"
}
trap cleanup EXIT
# The workers decode with 8-bit weights, as a CPU deployment would (MODEL_WEIGHTS=f32 for the
# reference numerics).
URL=$(MODEL_WEIGHTS="${MODEL_WEIGHTS:-keep}" REVO="$CARGO_TARGET_DIR/release/revo" REVO_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" \
  REVO_NATS_PREFIX="$PREFIX" LB_PORT="${LB_PORT:-18800}" deploy/cluster/cluster.sh up "$DIR")
"$CARGO_TARGET_DIR/release/revo-load" cluster --url "$URL" --admin-password "$(cat "$DIR/admin-password")" \
  --users "$USERS" --ws-per-user "$WS" --duration-s "$DURATION" --requests-per-min "$RPM" \
  --report "$OUT" --title "A cluster under mixed load" \
  --note "$(date -u +%F): 3 edges, 2 model workers (SmolLM2-135M, ${MODEL_WEIGHTS:-keep} weights, 1 thread each), HAProxy, Postgres and NATS on one machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, shared with the load generator." \
  --note "\`load/cluster/bench.sh $DURATION $USERS $WS $RPM\`: $USERS users, $((USERS * WS)) WebSockets (rooms of 10 users, one message a second per room), $RPM mixed API requests a minute (15% local generations of 8 tokens), 30 workflow runs a minute (template + local generate)."
