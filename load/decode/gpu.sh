#!/usr/bin/env bash
# One-shot GPU benchmark: the default model on the CUDA execution provider (ONNX Runtime 1.31.1,
# GPU build, CUDA 13 and cuDNN 9 from PyPI's nvidia packages): single-stream greedy decoding,
# Revo beside Python onnxruntime-gpu on the same ONNX file, then aggregate throughput at 1, 4, 8
# and 16 concurrent requests (load/decode/concurrency.sh). REVO_MODEL_GPU=require, so a CUDA
# provider that does not load fails the run instead of silently measuring the CPU.
#
#   load/decode/gpu.sh                       # a machine with cargo and PyPI
#   load/decode/gpu.sh --download DIR        # elsewhere: put the wheels and the model in DIR ...
#   WHEELS=DIR REVO=path/to/revo load/decode/gpu.sh   # ... then run offline on the GPU machine
#
# Usage: [WHEELS=DIR] [REVO=BIN] [MODEL=GGUF] load/decode/gpu.sh [MAX_TOKENS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
PKGS=("onnxruntime-gpu[cuda,cudnn]==1.31.1" "nvidia-cublas~=13.0" "tokenizers==0.23.3" numpy)
if [ "${1:-}" = "--download" ]; then
  DIR="${2:?--download DIR}"
  mkdir -p "$DIR"
  python3 -m pip download -q -d "$DIR" "${PKGS[@]}"
  cp "$(./scripts/fetch-model.sh)" "$DIR/"
  echo "wheels and model in $DIR; copy it to the GPU machine and run WHEELS=$DIR $0" >&2
  exit 0
fi
MAX="${1:-128}"
ROUNDS="${2:-3}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/revo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
  echo "no NVIDIA GPU here (nvidia-smi failed)" >&2; exit 1; }
if [ -z "${REVO:-}" ]; then
  cargo build --release -p revo >&2
  REVO="$CARGO_TARGET_DIR/release/revo"
fi
if [ -n "${WHEELS:-}" ]; then
  MODEL="${MODEL:-$(ls "$WHEELS"/*.gguf | head -1)}"
else
  MODEL="${MODEL:-$(./scripts/fetch-model.sh)}"
fi
VENV="$CACHE/venv-gpu"
PY="$VENV/bin/python"
if ! "$PY" -c 'import onnxruntime, tokenizers, numpy' 2>/dev/null; then
  python3 -m venv "$VENV"
  if [ -n "${WHEELS:-}" ]; then
    "$VENV/bin/pip" install -q --no-index --find-links "$WHEELS" "${PKGS[@]}"
  else
    "$VENV/bin/pip" install -q "${PKGS[@]}"
  fi
fi
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The CUDA provider finds CUDA, cuBLAS and cuDNN through the loader path.
LD_LIBRARY_PATH="$(find "$SITE/nvidia" -type d -name lib 2>/dev/null | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
export REVO_ORT_DYLIB="$SITE/onnxruntime/capi/libonnxruntime.so.1.31.1"
export REVO_MODEL_DEVICE=cuda REVO_MODEL_GPU=require
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
PROMPT="Once upon a time"
REVO_DATA_DIR="$DATA" REVO_LOG=warn "$REVO" models import "$MODEL" --name bench >/dev/null

revo_run() {
  REVO_DATA_DIR="$DATA" REVO_LOG=warn "$REVO" generate --model bench --max-tokens "$MAX" "$PROMPT" 2>&1 >/dev/null | tail -1
}
py_run() {
  echo "python onnxruntime-gpu (ttft ms, tokens/s): $("$PY" load/decode/decode.py "$DATA/models/bench" 2 "$MAX" "$PROMPT" cuda)"
}

echo "== single stream, greedy, up to $MAX tokens, $ROUNDS rounds"
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  echo "  revo: $(revo_run)"
  echo "  $(py_run)"
done
echo
echo "== concurrent requests"
REVO="$REVO" MODEL="$MODEL" ./load/decode/concurrency.sh 64 2 "$ROUNDS" 16
