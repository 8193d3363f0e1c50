#!/usr/bin/env bash
# Runs every benchmark scenario of docs/benchmarks.md against the local Postgres and NATS, on a
# release build. Append runs three times (report medians: these machines are noisy).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/revo/target}"
cargo build --release -p revo-load >&2
L="$CARGO_TARGET_DIR/release/revo-load"
for run in 1 2 3; do
  echo "## append, run $run"; "$L" append --seconds 5; echo
done
echo "## append beside a raw INSERT of the same batch size"; "$L" append --backend postgres --concurrency 256 --raw-batch 64 --seconds 5; echo
for run in 1 2 3; do
  echo "## relay, run $run"; "$L" relay --rate 5000 --seconds 10; echo
done
echo "## replay"; "$L" replay --events 1000000
echo "## the edge over HTTP"; ./load/http/bench.sh 10 3; echo
echo "## local models: single stream"; ./load/decode/bench.sh 128 5; WEIGHTS=keep ./load/decode/bench.sh 128 3; echo
echo "## local models: concurrency"; ./load/decode/concurrency.sh 64 2 3 16
WEIGHTS=keep ./load/decode/concurrency.sh 64 2 3 16; MODE=cluster ./load/decode/concurrency.sh 64 2 3 16
echo "## WebSocket: fan-out, recovery, idle connections"; ./load/ws/bench.sh 19000 1000 10000
echo "## a cluster under mixed load (report: docs/benchmarks/cluster/report.md)"; ./load/cluster/bench.sh 120 100 10 1500
