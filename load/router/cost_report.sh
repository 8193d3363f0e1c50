#!/usr/bin/env bash
# The cost report: a fixed mixed workload through the router, with the default local model
# (SmolLM2-135M, in process) as the free tier and a GPT-4o-priced cloud tier (`revo-load stub
# --bill-by-size`: an OpenAI-compatible stub that bills a prompt token per 4 bytes of request,
# at gpt-4o's list prices). Greedy decoding, so the workload and its figures are fixed: a rerun
# gives the same table. Classes:
#   short     questions sent with model "auto": the router's own choice
#   long      prompts past the local model's 8,192-token window: only the cloud can take them
#   forced    force_local: true
#   capped    the cloud model named, with cost_limit $0.0005 (the router caps max_tokens)
#   cascade   route "cascade" at the default bar (0.5), and at 0.3: local answers below the
#             bar escalate to the cloud
# Prints a markdown table: requests, share served locally, escalations, spend, the same
# tokens priced all-cloud (each answer's tokens at gpt-4o's prices), and savings; then the
# ledger's own totals (GET /ai/metrics) and `revo replay cost`, which must agree with it.
# Usage: load/router/cost_report.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/revo/target}"
# Costs and shares do not depend on speed: the dev build serves.
cargo build -p revo -p revo-load >&2
REVO="$CARGO_TARGET_DIR/debug/revo"
LOAD="$CARGO_TARGET_DIR/debug/revo-load"
GGUF=$(./scripts/fetch-model.sh)
./scripts/fetch-ort.sh >/dev/null

DATA=$(mktemp -d)
"$LOAD" stub --bill-by-size > "$DATA/stub.addr" &
STUB=$!
SERVER=
trap 'kill $STUB $SERVER 2>/dev/null; wait 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 50); do [ -s "$DATA/stub.addr" ] && break; sleep 0.1; done
cat > "$DATA/revo.toml" <<TOML
[[models.catalog]]
name = "smollm2"
provider = "local"
priority = 1
context_window = 8192
max_output_tokens = 256

[[models.catalog]]
name = "gpt-4o"
provider = "openai"
model = "gpt-4o"
base_url = "http://$(cat "$DATA/stub.addr")/v1"
api_key_env = "COST_REPORT_STUB_KEY"
priority = 2
context_window = 128000
input_usd_per_mtok = "2.50"
cached_input_usd_per_mtok = "1.25"
output_usd_per_mtok = "10.00"
TOML
export REVO_DATA_DIR="$DATA" REVO_CONFIG="$DATA/revo.toml" COST_REPORT_STUB_KEY="sk-stub"
"$REVO" models import "$GGUF" --name smollm2 >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PW="cost-report-admin-password"
REVO_ADMIN_PASSWORD="$PW" REVO_LOG=warn REVO_RATE_LIMIT_ADMIN=1000000000 \
  "$REVO" serve --listen "127.0.0.1:$PORT" >/dev/null 2>"$DATA/serve.log" &
SERVER=$!
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.2; done

python3 - "http://127.0.0.1:$PORT" "$PW" <<'PY'
import json, sys, urllib.request
from decimal import Decimal

base, pw = sys.argv[1], sys.argv[2]

def call(path, body=None, token=None):
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST")
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)

token = call("/auth/login", {"username": "admin", "password": pw})["access_token"]
IN, OUT = Decimal("2.50"), Decimal("10.00")  # gpt-4o, $ per million tokens

questions = [
    "What is the capital of France?", "How many days are in a week?", "What colour is the sky?",
    "Name a fruit that is yellow.", "What is two plus two?", "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?", "Translate 'hello' into French.",
    "What is the largest planet?", "How many legs does a spider have?",
    "Give me a synonym for happy.", "What language is spoken in Brazil?",
    "What is the opposite of cold?", "Name a primary colour.", "What do bees make?",
    "What is the freezing point of water in Celsius?", "How many continents are there?",
    "What is the chemical symbol for gold?", "Which animal says moo?", "What is 10 divided by 2?",
]
chat = lambda q: [{"role": "user", "content": q}]
long_text = ("The quarterly report covers revenue, costs, hiring and the product roadmap in detail. " * 450)
classes = {
    "short": [{"messages": chat(q)} for q in questions],
    "long": [{"messages": chat(long_text + f"\nSummarise section {i}.")} for i in range(6)],
    "forced": [{"force_local": True, "messages": chat(q)} for q in questions[:10]],
    "capped": [{"model_preference": "gpt-4o", "fallback_allowed": False, "cost_limit": "0.0005",
                "messages": chat(q)} for q in questions[:10]],
    "cascade (bar 0.5)": [{"route": "cascade", "messages": chat(q)} for q in questions],
    "cascade (bar 0.3)": [{"route": "cascade", "confidence_threshold": 0.3, "messages": chat(q)}
                          for q in questions],
}
tot = dict(n=0, local=0, esc=0, spend=Decimal(0), cloud=Decimal(0))
most_capped = Decimal(0)
confidences = []
print("| class | requests | served locally | escalated | spend (USD) | all-cloud (USD) | savings (USD) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, bodies in classes.items():
    n = local = esc = cut = 0
    spend = cloud = Decimal(0)
    for b in bodies:
        r = call("/ai/generate", dict(b, max_tokens=48, temperature=0), token)
        u = r["usage"]
        n += 1
        local += r["served_locally"]
        esc += sum(a["outcome"] == "escalated" for a in r["attempts"])
        cut += sum(a.get("error") == "truncated" for a in r["attempts"])
        if name == "cascade (bar 0.5)":
            confidences.append(r["attempts"][0]["confidence"])
        cost = Decimal(r["cost_usd"])
        spend += cost
        if name == "capped":
            most_capped = max(most_capped, cost)
        # The same tokens at the cloud's prices: this request with no local tier.
        cloud += (Decimal(u["input_tokens"] + u["cache_read_tokens"] + u["cache_write_tokens"]) * IN
                  + Decimal(u["output_tokens"]) * OUT) / 1_000_000
    tot["n"] += n; tot["local"] += local; tot["esc"] += esc; tot["spend"] += spend; tot["cloud"] += cloud
    why = f" ({esc-cut} unsure, {cut} cut short)" if esc else ""
    print(f"| {name} | {n} | {local} ({100*local/n:.0f}%) | {esc}{why} | {spend:f} | {cloud:f} | {cloud-spend:f} |")
print(f"| **all** | {tot['n']} | {tot['local']} ({100*tot['local']/tot['n']:.0f}%) | {tot['esc']} | {tot['spend']:f} | {tot['cloud']:f} | {tot['cloud']-tot['spend']:f} |")
cs = sorted(c for c in confidences if c is not None)
print(f"\nlocal confidence on the cascade questions: min {cs[0]:.2f}, median {cs[len(cs)//2]:.2f}, max {cs[-1]:.2f}; "
      f"dearest capped request: ${most_capped} (limit $0.0005)")
# The ledger follows the log: wait until it holds every request above.
import time
for _ in range(100):
    led = call("/ai/metrics", token=token)
    if led["total"]["requests"] == tot["n"]:
        break
    time.sleep(0.1)
print(f"ledger (GET /ai/metrics): spend ${led['total']['cost_usd']}, "
      f"{100*led['local_request_share']:.1f}% of requests local, "
      f"savings against {led['savings']['reference_model']}: ${led['savings']['savings_usd']}, "
      f"escalated attempts {led['total']['escalated_attempts']}")
PY
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
echo
"$REVO" replay cost --by model
