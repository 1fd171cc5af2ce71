#!/usr/bin/env bash
# A Spark standalone cluster on 127.0.0.1: one master and two workers (1 core each).
#   examples/spark/cluster.sh start
#   examples/spark/cluster.sh status
#   examples/spark/cluster.sh stop     # by the daemons' pid files: only these processes
# Spark comes from the pyspark wheel in .venv-scale (its jars and bin/spark-class); Java 17
# from Debian (openjdk-17-jre-headless). Each worker has its own work dir, ports and pid.
set -euo pipefail
. "$(dirname "$0")/../scale/env.sh"

export SPARK_HOME="${SPARK_HOME:-$($SCALE_PY -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}"
export SPARK_LOCAL_IP=127.0.0.1 SPARK_MASTER_HOST=127.0.0.1
export SPARK_PID_DIR="$SCALE_DIR/spark/pids" SPARK_LOG_DIR="$SCALE_DIR/spark/logs"
export SPARK_DAEMON_MEMORY="${SPARK_DAEMON_MEMORY:-256m}"
MASTER_PORT="${SPARK_MASTER_PORT:-7078}"
MASTER_URL="spark://127.0.0.1:$MASTER_PORT"
DAEMON="$SPARK_HOME/sbin/spark-daemon.sh"
MASTER=org.apache.spark.deploy.master.Master
WORKER=org.apache.spark.deploy.worker.Worker

case "${1:-}" in
start)
    command -v java > /dev/null || { echo "spark: java not found (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
    mkdir -p "$SPARK_PID_DIR" "$SPARK_LOG_DIR"
    netns_up
    in_netns "$DAEMON" start "$MASTER" 1 --host 127.0.0.1 --port "$MASTER_PORT" --webui-port 18080 > /dev/null
    for i in 1 2; do
        mkdir -p "$SCALE_DIR/spark/work$i"
        in_netns "$DAEMON" start "$WORKER" "$i" --host 127.0.0.1 --port $((17080 + i)) \
            --webui-port $((18080 + i)) --cores 1 --memory 1g \
            --work-dir "$SCALE_DIR/spark/work$i" "$MASTER_URL" > /dev/null
    done
    # Ready when the master's log has registered both workers.
    for _ in $(seq 90); do
        n=$(grep -c "Registering worker" "$SPARK_LOG_DIR"/*Master*.out 2> /dev/null || true)
        [ "${n:-0}" -ge 2 ] && { echo "spark: master $MASTER_URL with 2 workers"; exit 0; }
        sleep 1
    done
    echo "spark: the workers did not register; logs in $SPARK_LOG_DIR" >&2
    exit 1
    ;;
status)
    for f in "$SPARK_PID_DIR"/*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f")
        if kill -0 "$pid" 2> /dev/null; then echo "$(basename "$f"): $pid running"; else echo "$(basename "$f"): $pid gone"; fi
    done
    ;;
stop)
    for i in 1 2; do in_netns "$DAEMON" stop "$WORKER" "$i" > /dev/null 2>&1 || true; done
    in_netns "$DAEMON" stop "$MASTER" 1 > /dev/null 2>&1 || true
    # Executors whose worker was killed (the demo kills one) end by themselves; wait for them.
    for _ in $(seq 20); do
        pgrep -f "CoarseGrainedExecutorBackend.*spark://CoarseGrainedScheduler@127.0.0.1" > /dev/null || break
        sleep 0.5
    done
    netns_down
    echo "spark: stopped"
    ;;
*)
    echo "usage: $0 start|status|stop" >&2
    exit 2
    ;;
esac
