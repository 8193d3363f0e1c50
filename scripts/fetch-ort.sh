#!/usr/bin/env bash
# Fetches the ONNX Runtime library (libonnxruntime.so.1.31.1, CPU) from the PyPI package
# onnxruntime 1.31.1 (the linux x86_64 wheel), verifies its checksum, and prints its path.
# Cached under ~/.cache/revo/ort; Revo loads it at run time (ort's load-dynamic).
set -euo pipefail
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/revo/ort"
NAME=libonnxruntime.so.1.31.1
SHA256=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3
OUT="$CACHE/$NAME"
mkdir -p "$CACHE"

verify() { echo "$SHA256  $1" | sha256sum --check --status; }

if [ -f "$OUT" ] && verify "$OUT"; then
  echo "$OUT"
  exit 0
fi
echo "fetching $NAME from the PyPI package onnxruntime 1.31.1" >&2
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# One fixed wheel (its library is what the checksum pins), whatever Python runs this script.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 -d "$TMP" onnxruntime==1.31.1 >&2
python3 - "$TMP"/onnxruntime-1.31.1-*.whl "$TMP/$NAME" "$NAME" <<'PY'
import shutil, sys, zipfile
wheel, dest, name = sys.argv[1], sys.argv[2], sys.argv[3]
with zipfile.ZipFile(wheel) as z, z.open(f"onnxruntime/capi/{name}") as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
if ! verify "$TMP/$NAME"; then
  echo "checksum mismatch for $NAME (expected sha256 $SHA256)" >&2
  exit 1
fi
chmod 0755 "$TMP/$NAME"
mv "$TMP/$NAME" "$OUT"
echo "$OUT"
