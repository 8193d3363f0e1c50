#!/usr/bin/env bash
# Builds Revo's image with a `revo` binary built outside the image (no registry, no Rust image
# needed): stages the binary, the ONNX Runtime library and the default model's GGUF (fetched,
# checksums verified, by scripts/fetch-ort.sh and scripts/fetch-model.sh) in a build context
# and runs `podman build` (or ENGINE=docker) on deploy/Dockerfile with REVO_BINARY=prebuilt.
# Usage: deploy/build-image.sh REVO_BINARY TARGET TAG [BASE]
#   deploy/build-image.sh ~/.cache/revo/target/release/revo runtime revo:dev
#   deploy/build-image.sh ~/.cache/revo/target/release/revo model revo-model:dev "$(deploy/base-image.sh)"
set -euo pipefail
BIN=${1:?path to a revo binary} TARGET=${2:?runtime or model} TAG=${3:?image tag}
BASE=${4:-docker.io/library/debian:bookworm-slim}
ENGINE="${ENGINE:-podman}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/deploy/podman/containers.conf}"
CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/deploy/dist"
cp "$BIN" "$CTX/deploy/dist/revo"
cp "$("$ROOT/scripts/fetch-ort.sh")" "$CTX/deploy/dist/"
cp "$("$ROOT/scripts/fetch-model.sh")" "$CTX/deploy/dist/"
strip --strip-debug "$CTX/deploy/dist/revo" 2>/dev/null || true
args=(build -f "$ROOT/deploy/Dockerfile" --target "$TARGET" -t "$TAG"
  --build-arg REVO_BINARY=prebuilt --build-arg "BASE=$BASE")
# podman writes OCI images by default, which drop HEALTHCHECK; the Docker format keeps it.
[ "$ENGINE" = podman ] && args+=(--format docker --network host)
"$ENGINE" "${args[@]}" "$CTX" >&2
echo "$TAG"
