#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/fuzz_targets: the GGUF reader and the MessagePack event
# codec) for a bounded time with libFuzzer, from the committed seed corpus. A crash, a panic,
# a leak past the RSS limit or a hang past the timeout fails the run and leaves the input under
# fuzz/artifacts/. Needs a nightly toolchain (rustup's `nightly`); installs cargo-fuzz into
# ~/.cache/revo/tools. FUZZ_SECS (default 30) is the time per target.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/revo"
SECS="${FUZZ_SECS:-30}"
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  say "fuzzing NOT RUN: no nightly toolchain (rustup toolchain install nightly)"
  exit 0
fi
export PATH="$CACHE/tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz into $CACHE/tools"
  cargo install cargo-fuzz --locked --root "$CACHE/tools" --quiet
fi

for target in gguf codec; do
  corpus="$CACHE/fuzz-corpus/$target"
  mkdir -p "$corpus"
  say "fuzz $target for ${SECS}s"
  # The committed seeds first (read-only), new finds kept in the cache for the next run.
  cargo +nightly fuzz run --fuzz-dir fuzz --target-dir "$CACHE/fuzz-target" "$target" \
    "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$SECS" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 2>&1 \
    | grep -E '^(#[0-9]+ *DONE|stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|.*panicked|.*ERROR)' || true
  if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    echo "fuzz target $target failed: see fuzz/artifacts/$target" >&2
    exit 1
  fi
done
