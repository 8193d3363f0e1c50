#!/usr/bin/env bash
# A Revo cluster on one machine, on loopback: EDGES `revo serve` (3), WORKERS `revo worker`
# (2) for the default model, and HAProxy in front (HTTP and WebSockets), over the machine's
# Postgres and NATS. For the cluster tests (load/tests/cluster.rs) and the load scenarios
# (load/cluster/bench.sh). Every process's pid and log are in DIR.
#
#   deploy/cluster/cluster.sh up DIR          start everything; prints the load balancer's URL
#   deploy/cluster/cluster.sh kill DIR NAME   SIGKILL one process (edge-1, worker-2, lb, ...)
#   deploy/cluster/cluster.sh start DIR NAME  start one process again (after kill or stop)
#   deploy/cluster/cluster.sh restart DIR NAME  SIGTERM, wait for the drain, start, wait ready
#   deploy/cluster/cluster.sh down DIR        SIGTERM everything, wait
#
# Environment for `up` (kept in DIR/env for the other commands):
#   REVO                the binary (default ~/.cache/revo/target/release/revo)
#   REVO_DATABASE_URL   default: database revo_cluster on 127.0.0.1:5432, created if missing
#   REVO_NATS_URL       default nats://127.0.0.1:4222;  REVO_NATS_PREFIX default revocluster
#   LB_PORT             default 8080 (edges on LB_PORT+1..); EDGES, WORKERS
#   REVO_ADMIN_PASSWORD default: generated, in DIR/admin-password
#   REVO_MODEL_THREADS  per worker (default 1)
#   MODEL_WEIGHTS       f32 (default: the reference numerics) or keep (8-bit blocks: ~1.9x faster
#                       decoding on CPU; `revo models import --weights`)
set -euo pipefail
CMD=${1:?up|kill|start|restart|down} DIR=${2:?state directory}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"

wait_http() { # URL SECONDS
  for _ in $(seq $(($2 * 10))); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "$1 did not answer within $2 s" >&2
  return 1
}
alive() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

start_one() { # NAME
  local name=$1 n
  # shellcheck disable=SC1091
  . "$DIR/env"
  case "$name" in
    edge-*)
      n=${name#edge-}
      mkdir -p "$DIR/$name"
      REVO_LISTEN="127.0.0.1:$((LB_PORT + n))" REVO_DATA_DIR="$DIR/$name" \
        nohup "$REVO" serve >>"$DIR/$name.log" 2>&1 &
      echo $! >"$DIR/$name.pid"
      wait_http "http://127.0.0.1:$((LB_PORT + n))/health/ready" 60
      ;;
    worker-*)
      REVO_DATA_DIR="$DIR/models" nohup "$REVO" worker --model smollm2 >>"$DIR/$name.log" 2>&1 &
      echo $! >"$DIR/$name.pid"
      ;;
    lb)
      nohup haproxy -f "$DIR/haproxy.cfg" >>"$DIR/lb.log" 2>&1 &
      echo $! >"$DIR/lb.pid"
      wait_http "http://127.0.0.1:$LB_PORT/health/live" 10
      ;;
    *) echo "unknown process $name" >&2; exit 2 ;;
  esac
}

stop_one() { # NAME SIGNAL
  alive "$1" || return 0
  local pid
  pid=$(cat "$DIR/$1.pid")
  kill "-$2" "$pid" 2>/dev/null || true
  for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "$1 ($pid) did not stop within 60 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

case "$CMD" in
  up)
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    REVO=${REVO:-$HOME/.cache/revo/target/release/revo}
    LB_PORT=${LB_PORT:-8080} EDGES=${EDGES:-3} WORKERS=${WORKERS:-2}
    if [ -z "${REVO_DATABASE_URL:-}" ]; then
      psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='revo_cluster'" \
        | grep -q 1 || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE revo_cluster"
      REVO_DATABASE_URL=postgres://postgres@127.0.0.1:5432/revo_cluster
    fi
    [ -n "${REVO_ADMIN_PASSWORD:-}" ] || REVO_ADMIN_PASSWORD="admin-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
    [ -n "${REVO_JWT_KEYS:-}" ] || REVO_JWT_KEYS="k1:$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    echo "$REVO_ADMIN_PASSWORD" >"$DIR/admin-password"
    # The edges trust the load balancer's X-Forwarded-For (the client's address).
    cat >"$DIR/revo.toml" <<TOML
[http]
trust_forwarded = true
trusted_proxies = ["127.0.0.1/32"]
TOML
    cat >"$DIR/env" <<ENV
REVO='$REVO'
LB_PORT=$LB_PORT
EDGES=$EDGES
WORKERS=$WORKERS
export REVO_DATABASE_URL='$REVO_DATABASE_URL'
export REVO_NATS_URL='${REVO_NATS_URL:-nats://127.0.0.1:4222}'
export REVO_NATS_PREFIX='${REVO_NATS_PREFIX:-revocluster}'
export REVO_JWT_KEYS='$REVO_JWT_KEYS'
export REVO_ADMIN_PASSWORD='$REVO_ADMIN_PASSWORD'
export REVO_CONFIG='$DIR/revo.toml'
export REVO_DATABASE_MAX_CONNECTIONS=${REVO_DATABASE_MAX_CONNECTIONS:-8}
export REVO_MODEL_THREADS=${REVO_MODEL_THREADS:-1}
export REVO_LOG=${REVO_LOG:-warn}
ENV
    chmod 600 "$DIR/env" "$DIR/admin-password"
    # shellcheck disable=SC1091
    . "$DIR/env"
    "$REVO" migrate >"$DIR/migrate.log" 2>&1
    mkdir -p "$DIR/models"
    REVO_DATA_DIR="$DIR/models" "$REVO" models import "$("$ROOT/scripts/fetch-model.sh")" \
      --name smollm2 --weights "${MODEL_WEIGHTS:-f32}" --if-missing >"$DIR/import.log" 2>&1
    {
      echo "global"
      # Two descriptors a connection, under the machine's hard limit of 20,000.
      echo "    maxconn 9000"
      echo "defaults"
      echo "    mode http"
      echo "    timeout connect 2s"
      echo "    timeout client 60s"
      echo "    timeout server 660s"
      echo "    timeout tunnel 1h"
      echo "    option forwardfor"
      # A new connection per request: an edge that stops refuses it, and the request goes to
      # another edge (redispatch) instead of failing on a reused connection.
      echo "    option http-server-close"
      echo "    option redispatch 1"
      echo "    retries 3"
      echo "    retry-on conn-failure empty-response"
      echo "frontend revo"
      echo "    bind 127.0.0.1:$LB_PORT"
      echo "    default_backend edges"
      echo "backend edges"
      echo "    balance leastconn"
      echo "    option httpchk GET /health/ready"
      echo "    http-check expect status 200"
      echo "    default-server check inter 500ms fall 2 rise 2 init-addr none"
      for n in $(seq "$EDGES"); do echo "    server edge-$n 127.0.0.1:$((LB_PORT + n))"; done
    } >"$DIR/haproxy.cfg"
    for n in $(seq "$WORKERS"); do start_one "worker-$n"; done
    # The edges start side by side (a plain `wait` would wait for the workers too).
    starting=()
    for n in $(seq "$EDGES"); do start_one "edge-$n" & starting+=($!); done
    for p in "${starting[@]}"; do wait "$p"; done
    start_one lb
    # Ready once every edge sees a worker of the model.
    for _ in $(seq 600); do
      curl -s "http://127.0.0.1:$((LB_PORT + 1))/metrics" | grep -q "^revo_model_workers{model=\"smollm2\"} $WORKERS" && break
      sleep 0.1
    done
    echo "http://127.0.0.1:$LB_PORT"
    ;;
  kill) stop_one "${3:?process}" KILL ;;
  start) start_one "${3:?process}" ;;
  restart) stop_one "${3:?process}" TERM; start_one "$3" ;;
  down)
    [ -f "$DIR/env" ] || exit 0
    for f in "$DIR"/*.pid; do [ -e "$f" ] && stop_one "$(basename "$f" .pid)" TERM & done
    wait
    ;;
  *) echo "unknown command $CMD" >&2; exit 2 ;;
esac
