#!/usr/bin/env bash
# Install what the scale-out demos need, once: the .venv-scale virtual environment (Ray,
# PySpark, aiohttp, PyYAML, kubernetes-validate: examples/scale/requirements.txt), and from
# Debian a JDK for Spark and HAProxy for the load-balancer simulation (root only; otherwise
# it says what is missing). Builds target/release/trident when it is not there.
#   examples/scale/setup.sh [python|java|haproxy|trident ...]   (default: all)
set -euo pipefail
. "$(dirname "$0")/env.sh"

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(trident python java haproxy)

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null; then
        echo "setup: $1 is missing: install the Debian package(s) ${*:2}" >&2
        return 1
    fi
    echo "setup: apt-get install ${*:2}" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${@:2}"; } > "$SCALE_DIR/apt.log" 2>&1 \
        || { tail -20 "$SCALE_DIR/apt.log" >&2; return 1; }
}

mkdir -p "$SCALE_DIR"
for part in "${parts[@]}"; do
    case "$part" in
    trident)
        if [ ! -x "$TRIDENT_BIN" ]; then
            echo "setup: building $TRIDENT_BIN" >&2
            (cd "$ROOT" && "$ROOT/scripts/setup-libtorch.sh" && cargo build --release --bin trident)
        fi
        ;;
    python)
        req="$ROOT/examples/scale/requirements.txt"
        stamp="$SCALE_VENV/.requirements.txt"
        if [ ! -x "$SCALE_PY" ] || ! cmp -s "$req" "$stamp"; then
            [ -x "$SCALE_PY" ] || python3 -m venv "$SCALE_VENV"
            echo "setup: pip install -r examples/scale/requirements.txt into $SCALE_VENV" >&2
            "$SCALE_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
            cp "$req" "$stamp"
        fi
        ;;
    java)
        command -v java > /dev/null || apt_install java openjdk-17-jre-headless
        ;;
    haproxy)
        command -v haproxy > /dev/null || apt_install haproxy haproxy
        ;;
    *)
        echo "setup: unknown part $part (trident, python, java, haproxy)" >&2
        exit 2
        ;;
    esac
done
