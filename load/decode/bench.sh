#!/usr/bin/env bash
# The local model engine: import time and peak memory for the default model, then single-stream
# greedy decoding with 1 and 2 threads, Revo (`revo generate`) beside Python onnxruntime 1.31.1
# running the same ONNX file in the same run, ROUNDS times interleaved (medians reported).
# Usage: [WEIGHTS=f32|f16|keep] load/decode/bench.sh [MAX_TOKENS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
MAX="${1:-128}"
ROUNDS="${2:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/revo/target}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/revo"
# REVO and MODEL may name a prebuilt binary and a GGUF (machines without cargo or network).
if [ -z "${REVO:-}" ]; then
  cargo build --release -p revo >&2
  REVO="$CARGO_TARGET_DIR/release/revo"
fi
MODEL="${MODEL:-$(./scripts/fetch-model.sh)}"
[ -n "${REVO_ORT_DYLIB:-}" ] || ./scripts/fetch-ort.sh >/dev/null
PY="$CACHE/venv-bench/bin/python"
if ! "$PY" -c 'import onnxruntime, tokenizers' 2>/dev/null; then
  python3 -m venv "$CACHE/venv-bench"
  "$CACHE/venv-bench/bin/pip" install -q onnxruntime==1.31.1 tokenizers==0.23.3 numpy >&2
fi
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
PROMPT="Once upon a time"

/usr/bin/time -f "%e %M" -o "$DATA/import.time" \
  env REVO_DATA_DIR="$DATA" REVO_LOG=warn "$REVO" models import "$MODEL" --name bench --weights "${WEIGHTS:-f32}" >/dev/null 2>&1
read -r IMPORT_S IMPORT_KB <"$DATA/import.time"
echo "import (--weights ${WEIGHTS:-f32}): ${IMPORT_S} s, peak RSS $((IMPORT_KB / 1024)) MiB, $(du -sh "$DATA/models/bench" | cut -f1) on disk"

revo_run() {
  REVO_DATA_DIR="$DATA" REVO_LOG=warn "$REVO" generate --model bench --threads "$1" \
    --max-tokens "$MAX" "$PROMPT" 2>&1 >/dev/null | tail -1 |
    sed -E 's/.*first token ([0-9.]+) ms, decode ([0-9.]+) tokens.*/\1 \2/'
}

py_run() {
  "$PY" load/decode/decode.py "$DATA/models/bench" "$1" "$MAX" "$PROMPT"
}

declare -A R
for round in $(seq "$ROUNDS"); do
  for t in 1 2; do
    R[revo$t]+="$(revo_run $t)"$'\n'
    R[py$t]+="$(py_run $t)"$'\n'
  done
  echo "round $round done" >&2
done
echo
echo "greedy decode of \"$PROMPT\", up to $MAX tokens, $ROUNDS rounds (medians; each round: ttft ms, tokens/s)"
printf '%-8s %-24s %12s %14s\n' threads engine "ttft ms" "decode tok/s"
for t in 1 2; do
  for e in revo py; do
    label=$([ $e = revo ] && echo "revo (Rust, ort)" || echo "python onnxruntime")
    python3 - "$t" "$label" "${R[$e$t]}" <<'PY'
import statistics, sys
t, label, text = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [list(map(float, l.split())) for l in text.strip().splitlines()]
med = [statistics.median(c) for c in zip(*rows)]
print(f"{t:<8} {label:<24} {med[0]:>12.1f} {med[1]:>14.1f}   ({'; '.join(' '.join(str(v) for v in r) for r in rows)})")
PY
  done
done
