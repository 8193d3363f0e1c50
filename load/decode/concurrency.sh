#!/usr/bin/env bash
# Aggregate generation throughput of one local model under concurrent requests: `revo serve`
# (embedded mode, release build, the default model) answering POST /v1/completions from 1, 4, 8
# and 16 clients at once, each client sending REQUESTS greedy requests of up to MAX_TOKENS tokens
# back to back. Reports completion tokens per second over the whole scenario, ROUNDS times
# interleaved, medians; the 1-client scenario is the single-stream baseline of the same run.
# MODE=cluster runs the same through Postgres, NATS and one `revo worker` (the NATS hop).
# Usage: [WEIGHTS=f32|f16|keep] [MODE=embedded|cluster] load/decode/concurrency.sh [MAX_TOKENS] [REQUESTS] [ROUNDS] [MAX_BATCH]
set -euo pipefail
cd "$(dirname "$0")/../.."
MAX="${1:-64}"
REQUESTS="${2:-2}"
ROUNDS="${3:-3}"
BATCH="${4:-16}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/revo/target}"
# REVO and MODEL may name a prebuilt binary and a GGUF (machines without cargo or network).
if [ -z "${REVO:-}" ]; then
  cargo build --release -p revo >&2
  REVO="$CARGO_TARGET_DIR/release/revo"
fi
MODEL="${MODEL:-$(./scripts/fetch-model.sh)}"
[ -n "${REVO_ORT_DYLIB:-}" ] || ./scripts/fetch-ort.sh >/dev/null
DATA=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000))
DB="revo_bench_$$"
cleanup() {
  kill ${PID:-} ${WORKER:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$DATA"
  if [ "${MODE:-embedded}" = cluster ]; then
    dropdb -h 127.0.0.1 -U postgres --if-exists "$DB"
    # The run's JetStream stream, with the tests' nats-py (scripts/test.sh installs it).
    "${XDG_CACHE_HOME:-$HOME/.cache}/revo/venv/bin/python" -c "
import asyncio, nats
async def main():
    nc = await nats.connect('nats://127.0.0.1:4222')
    await nc.jetstream().delete_stream('BENCH$$_EVENTS')
    await nc.close()
asyncio.run(main())" 2>/dev/null || echo "left JetStream stream BENCH$$_EVENTS behind" >&2
  fi
}
trap cleanup EXIT
export REVO_DATA_DIR="$DATA" REVO_LOG=warn REVO_ADMIN_PASSWORD=bench-admin-password
export REVO_MODEL_MAX_BATCH="$BATCH" REVO_RATE_LIMIT_ADMIN=0
# MODE=cluster: Postgres and NATS on localhost, the model on one `revo worker` over NATS.
if [ "${MODE:-embedded}" = cluster ]; then
  createdb -h 127.0.0.1 -U postgres "$DB"
  export REVO_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" REVO_NATS_URL=nats://127.0.0.1:4222
  export REVO_NATS_PREFIX="bench$$" REVO_JWT_KEYS="bench:$(head -c 32 /dev/urandom | base64)"
  "$REVO" migrate >/dev/null
fi
"$REVO" models import "$MODEL" --name bench --weights "${WEIGHTS:-f32}" >/dev/null
"$REVO" serve --listen "127.0.0.1:$PORT" >/dev/null 2>"$DATA/serve.log" &
PID=$!
if [ "${MODE:-embedded}" = cluster ]; then
  "$REVO" worker --model bench 2>"$DATA/worker.log" &
  WORKER=$!
fi
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break
  sleep 0.2
done

python3 - "$PORT" "$MAX" "$REQUESTS" "$ROUNDS" "$BATCH" <<'PY'
import http.client, json, statistics, sys, threading, time
port, max_tokens, requests, rounds, batch = (int(a) for a in sys.argv[1:])
PROMPTS = ["Once upon a time", "def fibonacci(n):", "The three primary colors are",
           "In a shocking finding, scientists", "The best way to learn a language is"]

def call(method, path, body, token=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    h = {"Content-Type": "application/json"}
    if token: h["Authorization"] = f"Bearer {token}"
    c.request(method, path, json.dumps(body), h)
    r = c.getresponse(); data = json.loads(r.read()); c.close()
    if r.status != 200: raise SystemExit(f"{path}: {r.status} {data}")
    return data

token = call("POST", "/auth/login", {"username": "admin", "password": "bench-admin-password"})["access_token"]
# Warm up: the model loads on its thread (or worker) at start.
for attempt in range(300):
    try:
        call("POST", "/v1/completions", {"model": "bench", "prompt": "Hi", "max_tokens": 4, "temperature": 0}, token)
        break
    except SystemExit:
        time.sleep(0.2)

def scenario(clients):
    done = [0] * clients
    def client(i):
        for r in range(requests):
            p = PROMPTS[(i + r) % len(PROMPTS)]
            o = call("POST", "/v1/completions", {"model": "bench", "prompt": p, "max_tokens": max_tokens, "temperature": 0}, token)
            done[i] += o["usage"]["completion_tokens"]
    t = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for x in t: x.start()
    for x in t: x.join()
    return sum(done) / (time.perf_counter() - start)

levels = [1, 4, 8, 16]
res = {n: [] for n in levels}
for r in range(rounds):
    for n in levels:
        res[n].append(scenario(n))
    print(f"round {r + 1}: " + ", ".join(f"{n}: {res[n][-1]:.1f}" for n in levels), file=sys.stderr)
base = statistics.median(res[1])
print(f"\nconcurrent greedy requests of up to {max_tokens} tokens, {requests} per client, max_batch {batch}, {rounds} rounds (medians)")
print(f"{'clients':>8} {'tokens/s':>10} {'x single':>9}")
for n in levels:
    m = statistics.median(res[n])
    print(f"{n:>8} {m:>10.1f} {m / base:>9.2f}")
PY
