# Shared by the load scripts: wrk installed from Debian's packages if missing, and `measure`
# (wrk's summary as `requests/s p50 p99`, latencies in microseconds). Needs SECS set.

if ! command -v wrk >/dev/null; then
  echo "installing wrk from Debian's packages" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi

# wrk's summary as: requests/s p50 p99 (latencies in microseconds). $1: connections.
measure() {
  local out conns=$1 threads=2
  shift
  [ "$conns" -lt 2 ] && threads=1
  out=$(wrk -t"$threads" -c"$conns" -d"${SECS}s" --latency "$@")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses:" >&2; echo "$out" >&2; exit 1; fi
  python3 - "$out" <<'PY' || { echo "$out" >&2; exit 1; }
import re, sys
out = sys.argv[1]
def us(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    if not m:
        sys.exit(f"cannot read latency {v!r}")
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[m.group(2)]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = us(re.search(r"^\s*50%[ \t]+(\S+)", out, re.M).group(1))
p99 = us(re.search(r"^\s*99%[ \t]+(\S+)", out, re.M).group(1))
print(f"{rps:.0f} {p50:.0f} {p99:.0f}")
PY
}
