#!/usr/bin/env bash
# Gateway overhead: chat completions through Revo's router to an instant OpenAI-compatible stub
# (`revo-load stub`), against the stub alone, in the same run, at 64 connections (wrk -t2) and 1,
# streamed and not. Revo runs a release build in embedded mode with every request recorded
# (one `generation.attempt` event each, in SQLite through the group committer) and the ledger
# following the log. The overhead is Revo's latency minus the stub's. wrk, Revo and the stub
# share this machine's cores, so every figure is a lower bound for Revo alone.
# At 1 connection (wrk -t1) the overhead is seen without queueing.
# The peer: LiteLLM's proxy (PyPI `litellm[proxy]`, pinned below, installed once into
# ~/.cache/revo/litellm-venv) in front of the same stub, measured in the same rounds; set
# LITELLM=0 to leave it out.
# Usage: load/router/bench.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-10}"
ROUNDS="${2:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/revo/target}"
. load/lib/wrk.sh
cargo build --release -p revo -p revo-load >&2
REVO="$CARGO_TARGET_DIR/release/revo"
LOAD="$CARGO_TARGET_DIR/release/revo-load"

LITELLM="${LITELLM:-1}"
LITELLM_VERSION=1.108.7
LITELLM_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/revo/litellm-venv"
installed=$("$LITELLM_VENV/bin/pip" show litellm 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ "$LITELLM" = 1 ] && [ "$installed" != "$LITELLM_VERSION" ]; then
  echo "installing litellm[proxy]==$LITELLM_VERSION into $LITELLM_VENV" >&2
  python3 -m venv "$LITELLM_VENV"
  "$LITELLM_VENV/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION" >&2
fi

DATA=$(mktemp -d)
"$LOAD" stub > "$DATA/stub.addr" &
STUB=$!
PEER=
trap 'kill $STUB $SERVER $PEER 2>/dev/null; wait 2>/dev/null; rm -rf "$DATA"' EXIT
SERVER=
for _ in $(seq 50); do [ -s "$DATA/stub.addr" ] && break; sleep 0.1; done
STUB_ADDR=$(cat "$DATA/stub.addr")
cat > "$DATA/revo.toml" <<TOML
[[models.catalog]]
name = "stub"
provider = "openai-compatible"
model = "stub"
base_url = "http://$STUB_ADDR/v1"
priority = 1
TOML
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
PW="bench-admin-password"
REVO_DATA_DIR="$DATA" REVO_ADMIN_PASSWORD="$PW" REVO_LOG=warn REVO_CONFIG="$DATA/revo.toml" \
  REVO_RATE_LIMIT_ADMIN=1000000000 \
  "$REVO" serve --listen "127.0.0.1:$PORT" >/dev/null 2>"$DATA/serve.log" &
SERVER=$!
for _ in $(seq 100); do curl -sf "$BASE/health/ready" >/dev/null && break; sleep 0.1; done
json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }
TOKEN=$(curl -sf "$BASE/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$PW\"}" | json "['access_token']")
KEY=$(curl -sf "$BASE/keys" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"name":"bench"}' | json "['api_key']")
# One request through Revo first: it must be served by the stub.
curl -sf "$BASE/v1/chat/completions" -H "authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d '{"model":"stub","messages":[{"role":"user","content":"hi"}]}' | grep -q '"model":"stub"'

if [ "$LITELLM" = 1 ]; then
  PEER_KEY="sk-litellm-bench-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
  PEER_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$DATA/litellm.yaml" <<YAML
model_list:
  - model_name: stub
    litellm_params:
      model: openai/stub
      api_base: http://$STUB_ADDR/v1
      api_key: sk-stub
general_settings:
  master_key: $PEER_KEY
litellm_settings:
  set_verbose: false
YAML
  # Its defaults: one worker process, no database (so no spend logs); it refuses to start
  # without a master key, which clients then present.
  "$LITELLM_VENV/bin/litellm" --config "$DATA/litellm.yaml" --host 127.0.0.1 --port "$PEER_PORT" \
    >"$DATA/litellm.log" 2>&1 &
  PEER=$!
  PEER_BASE="http://127.0.0.1:$PEER_PORT"
  for _ in $(seq 600); do curl -sf "$PEER_BASE/health/liveliness" >/dev/null && break; sleep 0.2; done
  curl -sf "$PEER_BASE/v1/chat/completions" -H 'content-type: application/json' -H "authorization: Bearer $PEER_KEY" \
    -d '{"model":"stub","messages":[{"role":"user","content":"hi"}]}' | grep -q 'Paris' \
    || { echo "LiteLLM did not serve:" >&2; tail -20 "$DATA/litellm.log" >&2; exit 1; }
fi

for stream in false true; do
  cat > "$DATA/peer-$stream.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer ${PEER_KEY:-}"
wrk.body = '{"model":"stub","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16,"stream":$stream}'
LUA
  cat > "$DATA/post-$stream.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
wrk.body = '{"model":"stub","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16,"stream":$stream}'
LUA
done


declare -A R
for round in $(seq "$ROUNDS"); do
  for conns in 64 1; do
    for stream in false true; do
      R[stub$stream$conns]+="$(measure "$conns" -s "$DATA/post-$stream.lua" "http://$STUB_ADDR/v1/chat/completions")"$'\n'
      R[revo$stream$conns]+="$(measure "$conns" -s "$DATA/post-$stream.lua" "$BASE/v1/chat/completions")"$'\n'
      if [ "$LITELLM" = 1 ]; then
        R[peer$stream$conns]+="$(measure "$conns" -s "$DATA/peer-$stream.lua" "$PEER_BASE/v1/chat/completions")"$'\n'
      fi
    done
  done
  echo "round $round done" >&2
done
EVENTS=$(curl -sf "$BASE/ai/metrics" -H "authorization: Bearer $TOKEN" | json "['total']['requests']")

for conns in 64 1; do
echo
echo "POST /v1/chat/completions at $conns connection(s), ${SECS}s x $ROUNDS rounds (medians), $(nproc) cores shared by wrk, Revo and the stub"
python3 - "${R[stubfalse$conns]}" "${R[revofalse$conns]}" "${R[stubtrue$conns]}" "${R[revotrue$conns]}" \
  "${R[peerfalse$conns]:-}" "${R[peertrue$conns]:-}" <<'PY'
import statistics as st, sys
def med(block):
    rows = [list(map(float, l.split())) for l in block.strip().splitlines()]
    return [st.median(c) for c in zip(*rows)], rows
print(f"{'case':<26} {'req/s':>9} {'p50 us':>8} {'p99 us':>8}   rounds (req/s p50 p99)")
labels = ["stub alone", "through Revo", "stub alone, streamed", "through Revo, streamed",
          "through LiteLLM", "through LiteLLM, streamed"]
meds = []
for label, block in zip(labels, sys.argv[1:]):
    if not block.strip():
        continue
    m, rows = med(block)
    meds.append(m)
    rounds = "; ".join(" ".join(f"{v:.0f}" for v in r) for r in rows)
    print(f"{label:<26} {m[0]:>9.0f} {m[1]:>8.0f} {m[2]:>8.0f}   {rounds}")
pairs = [("Revo, not streamed", meds[0], meds[1]), ("Revo, streamed", meds[2], meds[3])]
if len(meds) == 6:
    pairs += [("LiteLLM, not streamed", meds[0], meds[4]), ("LiteLLM, streamed", meds[2], meds[5])]
for name, s, r in pairs:
    print(f"overhead, {name}: p50 +{r[1]-s[1]:.0f} us, p99 +{r[2]-s[2]:.0f} us")
PY
done
echo "requests recorded in the ledger: $EVENTS"
