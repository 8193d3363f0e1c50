#!/usr/bin/env bash
# The edge under load: GET /health/live, and GET /users/me authenticated with a JWT and with an
# API key, at 64 concurrent connections (wrk), against a release build in embedded mode. Rate
# limiting stays on (budgets far above the offered load), so the authenticated figures include
# authentication, RBAC and rate limiting. Each endpoint runs ROUNDS times, interleaved; the
# summary gives medians. Usage: load/http/bench.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-10}"
ROUNDS="${2:-3}"
CONNS=64
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/revo/target}"
if ! command -v wrk >/dev/null; then
  echo "installing wrk from Debian's packages" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
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

# wrk's summary as: requests/s p50 p99 (latencies in microseconds).
measure() {
  local out
  out=$(wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "$@")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses:" >&2; echo "$out" >&2; exit 1; fi
  python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
def us(v):
    n, unit = float(re.match(r"[\d.]+", v).group()), re.sub(r"[\d.]+", "", v)
    return n * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = us(re.search(r"50%\s+(\S+)", out).group(1))
p99 = us(re.search(r"99%\s+(\S+)", out).group(1))
print(f"{rps:.0f} {p50:.0f} {p99:.0f}")
PY
}

declare -A RESULTS
for round in $(seq "$ROUNDS"); do
  RESULTS[live]+="$(measure "$BASE/health/live")"$'\n'
  RESULTS[jwt]+="$(measure -H "Authorization: Bearer $TOKEN" "$BASE/users/me")"$'\n'
  RESULTS[key]+="$(measure -H "Authorization: Bearer $KEY" "$BASE/users/me")"$'\n'
  echo "round $round done" >&2
done

echo "GET at $CONNS connections, ${SECS}s x $ROUNDS rounds (wrk -t2), $(nproc) cores"
printf '%-28s %10s %10s %10s   %s\n' endpoint "req/s" "p50 us" "p99 us" "(each round: req/s p50 p99)"
for name in live jwt key; do
  case $name in
    live) label="/health/live";;
    jwt) label="/users/me (JWT)";;
    key) label="/users/me (API key)";;
  esac
  python3 - "$label" "${RESULTS[$name]}" <<'PY'
import statistics, sys
label, text = sys.argv[1], sys.argv[2]
rows = [list(map(float, l.split())) for l in text.strip().splitlines()]
med = [statistics.median(c) for c in zip(*rows)]
rounds = "; ".join(" ".join(f"{v:.0f}" for v in r) for r in rows)
print(f"{label:<28} {med[0]:>10.0f} {med[1]:>10.0f} {med[2]:>10.0f}   ({rounds})")
PY
done
