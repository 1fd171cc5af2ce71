#!/usr/bin/env bash
# Lint deploy/ offline: YAML style (yamllint), the Kubernetes schemas of several versions
# with unknown fields rejected (kubernetes-validate, which carries the schemas: nothing is
# downloaded), Trident's own requirements (deploy/check_manifests.py: probes, resources,
# grace period vs drain, selectors, non-root), and the HAProxy configuration (haproxy -c)
# when HAProxy is installed. The tools come from examples/scale/requirements.txt (.venv-scale);
# without them only check_manifests.py runs (it needs PyYAML) and the rest is reported skipped.
#   deploy/lint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SCALE_VENV:-.venv-scale}"
PY="$VENV/bin/python"
[ -x "$PY" ] || PY=python3
failed=0
MANIFESTS=(deploy/k8s/deployment.yaml deploy/k8s/service.yaml deploy/k8s/hpa.yaml deploy/k8s/pdb.yaml)

if [ -x "$VENV/bin/yamllint" ]; then
    "$VENV/bin/yamllint" -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable, comments: {min-spaces-from-content: 1}}}' \
        deploy/k8s && echo "yamllint: OK" || failed=1
else
    echo "yamllint: skipped (not installed: examples/scale/setup.sh python)"
fi

if [ -x "$VENV/bin/kubernetes-validate" ]; then
    for v in 1.30.0 1.33.0 1.37.0; do
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${MANIFESTS[@]}" \
            && echo "kubernetes-validate --strict (Kubernetes $v): OK" || failed=1
    done
else
    echo "kubernetes-validate: skipped (not installed: examples/scale/setup.sh python)"
fi

"$PY" deploy/check_manifests.py deploy/k8s || failed=1

if command -v haproxy > /dev/null; then
    cfg=$(mktemp)
    sed -e 's/@FRONTEND_PORT@/18100/; s/@STATS_PORT@/18199/' \
        -e 's/@SERVERS@/    server s1 127.0.0.1:18101 check/' deploy/lb/haproxy.cfg.in > "$cfg"
    haproxy -c -q -f "$cfg" && echo "haproxy -c: OK" || failed=1
    rm -f "$cfg"
else
    echo "haproxy -c: skipped (haproxy not installed)"
fi

[ "$failed" = 0 ] && echo "deploy/lint.sh: OK" || { echo "deploy/lint.sh: FAILED" >&2; exit 1; }
