#!/usr/bin/env bash
# A two-node Ray cluster on the loopback interface of this machine:
#   examples/ray/cluster.sh start    # head node + a second node joined with `ray start --address`
#   examples/ray/cluster.sh status
#   examples/ray/cluster.sh stop     # `ray stop` (both nodes live on this machine)
# Each node has its own temp dir (its own logs, sockets and object store spill), 2 logical
# CPUs and one "trident" slot, so the job's Trident actors land one per node.
set -euo pipefail
. "$(dirname "$0")/../scale/env.sh"

RAY="$SCALE_VENV/bin/ray"
RAY_PORT="${RAY_PORT:-6390}"
# Short paths: Ray's unix sockets live under the temp dir (107-byte limit).
HEAD_TMP="${RAY_HEAD_TMP:-/tmp/trident-ray-head}"
NODE_TMP="${RAY_NODE_TMP:-/tmp/trident-ray-node2}"
OBJ_MEM="${RAY_OBJECT_STORE_BYTES:-400000000}"
export RAY_USAGE_STATS_ENABLED=0

common=(--node-ip-address 127.0.0.1 --num-cpus 2 --resources '{"trident": 1}'
        --object-store-memory "$OBJ_MEM" --disable-usage-stats)

case "${1:-}" in
start)
    netns_up
    in_netns "$RAY" start --head --port "$RAY_PORT" --temp-dir "$HEAD_TMP" --include-dashboard false \
        --dashboard-agent-listen-port 0 "${common[@]}" > "$SCALE_DIR/ray-head.log" 2>&1 \
        || { cat "$SCALE_DIR/ray-head.log"; exit 1; }
    in_netns "$RAY" start --address "127.0.0.1:$RAY_PORT" --temp-dir "$NODE_TMP" "${common[@]}" \
        > "$SCALE_DIR/ray-node2.log" 2>&1 || { cat "$SCALE_DIR/ray-node2.log"; exit 1; }
    # Wait until the head sees both nodes.
    for _ in $(seq 60); do
        n=$(in_netns "$SCALE_PY" - "$RAY_PORT" <<'EOF' 2>/dev/null || echo 0
import sys, ray
ray.init(address=f"127.0.0.1:{sys.argv[1]}", logging_level="ERROR", log_to_driver=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
EOF
)
        [ "$n" = 2 ] && { echo "ray: 2 nodes up on 127.0.0.1:$RAY_PORT ($HEAD_TMP, $NODE_TMP)"; exit 0; }
        sleep 1
    done
    echo "ray: the second node did not join" >&2
    exit 1
    ;;
status)
    in_netns "$RAY" status --address "127.0.0.1:$RAY_PORT"
    ;;
stop)
    # Both nodes are on this machine; `ray stop` ends every Ray process here.
    in_netns "$RAY" stop > /dev/null 2>&1 || in_netns "$RAY" stop --force > /dev/null 2>&1 || true
    netns_down
    echo "ray: stopped"
    ;;
*)
    echo "usage: $0 start|status|stop" >&2
    exit 2
    ;;
esac
