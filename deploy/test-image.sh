#!/usr/bin/env bash
# The image smoke test (run by tests/deploy.rs; needs podman and runc, which scripts/test.sh
# installs): builds the model image from a `revo` built outside it, on a debootstrap base, then
# as an operator would run it: non-root, read-only root filesystem, no capabilities, data on a
# volume. Imports the default model into the volume, starts `revo serve`, waits for the image's
# HEALTHCHECK, logs in, generates with the local model, and stops it within the grace period.
# Usage: deploy/test-image.sh REVO_BINARY
set -euo pipefail
BIN=${1:?path to a revo binary}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CONTAINERS_CONF="$ROOT/deploy/podman/containers.conf"
ID="revo-test-$$"
TAG="localhost/$ID:latest"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PASSWORD="smoke-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
BASE=$("$ROOT/deploy/base-image.sh")
# The build's images (its stages' too) go at the end; the base image stays for the next run.
BEFORE=$(podman images -qa --no-trunc | sort -u)
cleanup() {
  podman rm -f -t 0 "$ID" >/dev/null 2>&1 || true
  podman volume rm -f "$ID" >/dev/null 2>&1 || true
  podman rmi -f "$TAG" >/dev/null 2>&1 || true
  comm -13 <(echo "$BEFORE") <(podman images -qa --no-trunc | sort -u) \
    | xargs -r podman rmi -f >/dev/null 2>&1 || true
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; podman logs --tail 30 "$ID" >&2 2>/dev/null || true; exit 1; }

"$ROOT/deploy/build-image.sh" "$BIN" model "$TAG" "$BASE" >/dev/null
podman image inspect "$TAG" --format '{{.Config.User}} {{json .Config.Healthcheck.Test}}' \
  | grep -x '10001:10001 \["CMD","revo","healthcheck"\]' >/dev/null || fail "image user or HEALTHCHECK"

RUN=(--read-only --cap-drop ALL --security-opt no-new-privileges --network host
  -v "$ID:/var/lib/revo/data" -e "REVO_LISTEN=127.0.0.1:$PORT" -e "REVO_ADMIN_PASSWORD=$PASSWORD")
podman volume create "$ID" >/dev/null
podman run --rm "${RUN[@]}" "$TAG" models import /opt/revo/seed/smollm2.gguf --name smollm2 \
  --if-missing >/dev/null || fail "model import"
# Rerunnable: a second import finds the model and succeeds without importing.
podman run --rm "${RUN[@]}" "$TAG" models import /opt/revo/seed/smollm2.gguf --name smollm2 \
  --if-missing | grep "^already imported" >/dev/null || fail "second import is not a no-op"

# No systemd here to time the checks: they are run by hand below (`podman healthcheck run`).
podman run -d --name "$ID" --health-interval disable "${RUN[@]}" "$TAG" >/dev/null
healthy=""
for _ in $(seq 120); do
  if podman healthcheck run "$ID" >/dev/null 2>&1; then healthy=1; break; fi
  sleep 0.5
done
[ -n "$healthy" ] || fail "the HEALTHCHECK never passed"
[ "$(podman exec "$ID" id -u)" = 10001 ] || fail "not running as uid 10001"
if podman exec "$ID" sh -c 'echo x > /usr/local/bin/x' 2>/dev/null; then fail "root fs writable"; fi

token=$(curl -sf "127.0.0.1:$PORT/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$PASSWORD\"}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])') || fail "login"
reply=$(curl -sf "127.0.0.1:$PORT/ai/generate" -H "authorization: Bearer $token" \
  -H 'content-type: application/json' \
  -d '{"prompt":"What is the capital of France?","max_tokens":12,"temperature":0}') \
  || fail "generate"
python3 - "$reply" <<'PY' || fail "generation: $reply"
import json, sys
r = json.loads(sys.argv[1])
assert r["served_locally"] is True and r["provider"] == "local", r
assert r["usage"]["output_tokens"] > 0 and r["text"].strip(), r
PY

start=$(date +%s.%N)
podman stop -t 30 "$ID" >/dev/null 2>&1
took=$(python3 -c "print(round($(date +%s.%N) - $start, 2))")
code=$(podman inspect "$ID" --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
python3 -c "import sys; sys.exit(0 if $took < 30 else 1)" || fail "stop took ${took}s"
echo "image ok: healthy, non-root, read-only, local generation, stopped in ${took}s (exit 0)"
