#!/usr/bin/env bash
# The edge under load: GET /health/live, and GET /users/me authenticated with a JWT and with an
# API key, at 64 concurrent connections (throughput; wrk -t2) and at 1 connection (latency
# without queueing; wrk -t1), against a release build in embedded mode. Rate limiting stays on
# (budgets far above the offered load), so the authenticated figures include authentication,
# RBAC and rate limiting. Each case runs ROUNDS times, interleaved; the summary gives medians.
# wrk and the server share this machine's cores. Usage: load/http/bench.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-10}"
ROUNDS="${2:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/revo/target}"
. load/lib/wrk.sh
cargo build --release -p revo >&2
REVO="$CARGO_TARGET_DIR/release/revo"

DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
PW="bench-admin-password"
REVO_DATA_DIR="$DATA" REVO_ADMIN_PASSWORD="$PW" REVO_LOG=warn \
  REVO_RATE_LIMIT_ADMIN=1000000000 \
  "$REVO" serve --listen "127.0.0.1:$PORT" >/dev/null 2>"$DATA/serve.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do curl -sf "$BASE/health/ready" >/dev/null && break; sleep 0.1; done

json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }
TOKEN=$(curl -sf "$BASE/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$PW\"}" | json "['access_token']")
KEY=$(curl -sf "$BASE/keys" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"name":"bench"}' | json "['api_key']")


declare -A RESULTS
for round in $(seq "$ROUNDS"); do
  for conns in 64 1; do
    RESULTS[live$conns]+="$(measure "$conns" "$BASE/health/live")"$'\n'
    RESULTS[jwt$conns]+="$(measure "$conns" -H "Authorization: Bearer $TOKEN" "$BASE/users/me")"$'\n'
    RESULTS[key$conns]+="$(measure "$conns" -H "Authorization: Bearer $KEY" "$BASE/users/me")"$'\n'
  done
  echo "round $round done" >&2
done

for conns in 64 1; do
  echo
  echo "GET at $conns connection(s), ${SECS}s x $ROUNDS rounds, $(nproc) cores shared with wrk"
  printf '%-28s %10s %10s %10s   %s\n' endpoint "req/s" "p50 us" "p99 us" "(each round: req/s p50 p99)"
  for name in live jwt key; do
    case $name in
      live) label="/health/live";;
      jwt) label="/users/me (JWT)";;
      key) label="/users/me (API key)";;
    esac
    python3 - "$label" "${RESULTS[$name$conns]}" <<'PY'
import statistics, sys
label, text = sys.argv[1], sys.argv[2]
rows = [list(map(float, l.split())) for l in text.strip().splitlines()]
med = [statistics.median(c) for c in zip(*rows)]
rounds = "; ".join(" ".join(f"{v:.0f}" for v in r) for r in rows)
print(f"{label:<28} {med[0]:>10.0f} {med[1]:>10.0f} {med[2]:>10.0f}   ({rounds})")
PY
  done
done
