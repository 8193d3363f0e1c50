#!/usr/bin/env bash
# Validates the Kubernetes manifests (run by tests/deploy.rs):
#   1. `kubectl kustomize` renders the base and the production overlay (the overlay with
#      secrets.env.example standing in for the real secrets.env);
#   2. every core resource passes kubernetes-validate --strict (PyPI; it ships the API schemas)
#      for the oldest Kubernetes we support;
#   3. every custom resource passes its CRD's schema (test/validate-crs.mjs);
#   4. the PrometheusRule carries the same alerts as deploy/prometheus/alerts.yml.
# Needs kubectl, Node.js with npm, and a Python with kubernetes-validate and PyYAML
# (PYTHON, default: the test venv that scripts/test.sh makes).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/revo"
PYTHON="${PYTHON:-${TEST_PYTHON:-$CACHE/venv/bin/python}}"
K8S_VERSION="${K8S_VERSION:-1.30.0}"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

cp -r "$HERE/base" "$HERE/overlays" "$OUT/"
cp "$OUT/overlays/production/secrets.env.example" "$OUT/overlays/production/secrets.env"
kubectl kustomize "$OUT/base" > "$OUT/base.yaml"
kubectl kustomize "$OUT/overlays/production" > "$OUT/production.yaml"

for f in base production; do
  log="$OUT/$f.log"
  if ! "$PYTHON" -m kubernetes_validate --strict -k "$K8S_VERSION" "$OUT/$f.yaml" >"$log" 2>&1; then
    grep -v '^INFO' "$log" >&2
    echo "FAIL: $f does not pass kubernetes-validate" >&2
    exit 1
  fi
  echo "$f: $(grep -c '^INFO.*passed' "$log") core resources valid"
done

# The CRD validators: npm packages installed once under the cache (ES modules resolve
# packages next to the script, so it runs from there).
NODE_DIR="$CACHE/k8s-validate"
mkdir -p "$NODE_DIR"
if ! cmp -s "$HERE/test/package.json" "$NODE_DIR/package.json" \
  || [ ! -d "$NODE_DIR/node_modules/@kubernetes-models/keda" ]; then
  cp "$HERE/test/package.json" "$NODE_DIR/package.json"
  (cd "$NODE_DIR" && npm install --no-audit --no-fund --silent >&2)
fi
cp "$HERE/test/validate-crs.mjs" "$NODE_DIR/"
for f in base production; do
  node "$NODE_DIR/validate-crs.mjs" < "$OUT/$f.yaml" | tail -1 | sed "s/^/$f: /"
done

"$PYTHON" - "$OUT/production.yaml" "$HERE/../prometheus/alerts.yml" <<'PY'
import sys, yaml
rule = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "PrometheusRule")
alerts = yaml.safe_load(open(sys.argv[2]))
if rule["spec"]["groups"] != alerts["groups"]:
    sys.exit("FAIL: the PrometheusRule and deploy/prometheus/alerts.yml differ")
print(f"alerts: {sum(len(g['rules']) for g in alerts['groups'])} rules, the same in both")
PY
