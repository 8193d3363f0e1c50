#!/usr/bin/env bash
# Builds Revo and starts it in embedded mode (SQLite in ./revo-data, in-process bus) on
# http://127.0.0.1:8080. Extra arguments go to `revo serve` (e.g. --listen 0.0.0.0:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/revo/target}"
cargo build --release --bin revo
exec "$CARGO_TARGET_DIR/release/revo" serve "$@"
