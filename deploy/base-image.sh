#!/usr/bin/env bash
# Makes a Debian bookworm base image without a registry: `debootstrap --variant=minbase` from
# Debian's mirror, then `podman import` (about 40 s, once; later calls find the image). Prints
# its name, for `--build-arg BASE=...`.
# Usage: deploy/base-image.sh [NAME]   (default localhost/revo-base:bookworm)
set -euo pipefail
NAME="${1:-localhost/revo-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$(cd "$(dirname "$0")" && pwd)/podman/containers.conf}"
if podman image exists "$NAME"; then echo "$NAME"; exit 0; fi
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
echo "debootstrap --variant=minbase bookworm from $MIRROR" >&2
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >/dev/null
# A base image keeps no package cache or lists; images install what they need.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | podman import -q --change 'CMD ["/bin/bash"]' - "$NAME" >/dev/null
echo "$NAME"
