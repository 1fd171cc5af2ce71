#!/usr/bin/env bash
# `make scale-demo`: the batch job on a 2-node Ray cluster and on a Spark standalone cluster
# (master + 2 workers), all on 127.0.0.1, each with a worker killed mid-run and every output
# checked for exactly one result per input id; then teardown and the figures.
#
#   examples/scale/scale_demo.sh [ray|spark|cli ...]     (default: cli ray spark)
#
# Environment: SCALE_REPEAT (3) timed runs per configuration (medians are reported),
# ARTICLE_COUNT (3000), TRIDENT_NER_MODEL / TRIDENT_SENTIMENT_MODEL (the fixtures; a hub id
# or a directory for real models), TRIDENT_THREADS (1). See examples/scale/env.sh.
# Exits non-zero if any check fails. Every process it starts is stopped on the way out.
set -euo pipefail
. "$(dirname "$0")/env.sh"

REPEAT="${SCALE_REPEAT:-3}"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(cli ray spark)
has() { local x; for x in "${parts[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }

"$ROOT/examples/scale/setup.sh" trident python
has spark && "$ROOT/examples/scale/setup.sh" java

RUN_ID="$(date +%Y%m%d-%H%M%S)"
: > "$FIGURES"
failed=0

cleanup() {
    set +e
    "$ROOT/examples/ray/cluster.sh" stop > /dev/null 2>&1
    "$ROOT/examples/spark/cluster.sh" stop > /dev/null 2>&1
    netns_down
    # A pipe killed with its trident (the kill runs) leaves its temporary folder behind.
    rm -rf "${TMPDIR:-/tmp}"/trident-pipe.*
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scale_articles
SHARDS="$SCALE_DIR/articles"
rm -rf "$SHARDS" && mkdir -p "$SHARDS"
split -n l/24 -d -a 3 --additional-suffix=.jsonl "$ARTICLES" "$SHARDS/part-"
echo "== input: $ARTICLE_COUNT articles ($(du -h "$ARTICLES" | cut -f1)), 24 shards; models: $TRIDENT_NER_MODEL, $TRIDENT_SENTIMENT_MODEL"

# The bare CLI on the same input: one process per task, TRIDENT_THREADS threads. Its output is
# also the reference every job's results are compared with.
REF_NER="$SCALE_DIR/ref-ner.jsonl"
REF_SENT="$SCALE_DIR/ref-sentiment.jsonl"
bare_cli() {
    python3 "$ROOT/examples/scale/bare_cli.py" --input "$ARTICLES" --ner-out "$REF_NER" \
        --sentiment-out "$REF_SENT" | tee -a "$FIGURES"
}
echo "== bare CLI (trident ner + trident classify over the file, $TRIDENT_THREADS thread)"
for _ in $(seq "$REPEAT"); do bare_cli; done

check() {
    local out=$1 name=$2
    if python3 "$ROOT/examples/scale/check_ids.py" --input "$ARTICLES" "$out" --require ner,sentiment \
        --reference "ner=$REF_NER" --reference "sentiment=$REF_SENT"; then
        echo "{\"check\": \"$name\", \"ok\": true}" >> "$FIGURES"
    else
        echo "{\"check\": \"$name\", \"ok\": false}" >> "$FIGURES"
        failed=1
    fi
}

# Engine logs go to files; the figures line of each run (its last stdout line) to FIGURES.
run_job() {
    local name=$1; shift
    local log="$SCALE_DIR/logs/$name.log"
    mkdir -p "$SCALE_DIR/logs"
    if in_netns "$SCALE_PY" "$@" > "$log" 2>&1; then
        tail -n 1 "$log" | tee -a "$FIGURES"
    else
        echo "$name failed; the end of $log:" >&2
        tail -n 20 "$log" >&2
        failed=1
        return 1
    fi
}

if has ray; then
    echo "== Ray: 2 nodes on 127.0.0.1"
    "$ROOT/examples/ray/cluster.sh" start
    RAY_OUT="$SCALE_DIR/ray-out"
    ray_job() { run_job "$1" "$ROOT/examples/ray/job.py" --input "$SHARDS" --output "$RAY_OUT" \
        --trident "$TRIDENT_BIN" --label "$1" "${@:2}"; }
    # CLI per batch against one server per actor, same job, same cluster.
    ray_job ray-cli-2w --mode cli --workers 2 && check "$RAY_OUT" ray-cli-2w
    for _ in $(seq "$REPEAT"); do
        ray_job ray-serve-1w --mode serve --workers 1 && check "$RAY_OUT" ray-serve-1w
        ray_job ray-serve-2w --mode serve --workers 2 && check "$RAY_OUT" ray-serve-2w
    done
    echo "-- Ray: one actor killed (SIGKILL) when 40% of the rows are written"
    ray_job ray-kill-actor --mode serve --workers 2 --kill actor && check "$RAY_OUT" ray-kill-actor
    echo "-- Ray: one actor's trident killed (SIGKILL) when 40% of the rows are written"
    ray_job ray-kill-trident --mode serve --workers 2 --kill trident && check "$RAY_OUT" ray-kill-trident
    "$ROOT/examples/ray/cluster.sh" stop
fi

if has spark; then
    echo "== Spark: master + 2 workers on 127.0.0.1"
    "$ROOT/examples/spark/cluster.sh" start
    SPARK_OUT="$SCALE_DIR/spark-out"
    spark_job() { run_job "$1" "$ROOT/examples/spark/job.py" --input "$SHARDS" --output "$SPARK_OUT" \
        --trident "$TRIDENT_BIN" --label "$1" "${@:2}"; }
    spark_job spark-udf-2w --variant udf --workers 2 && check "$SPARK_OUT" spark-udf-2w
    for _ in $(seq "$REPEAT"); do
        spark_job spark-pipe-1w --variant pipe --workers 1 && check "$SPARK_OUT" spark-pipe-1w
        spark_job spark-pipe-2w --variant pipe --workers 2 && check "$SPARK_OUT" spark-pipe-2w
    done
    echo "-- Spark: one executor's trident killed (SIGKILL) when 40% of the tasks are done"
    spark_job spark-kill-trident --variant pipe --workers 2 --kill trident && check "$SPARK_OUT" spark-kill-trident
    echo "-- Spark: a whole worker killed (worker JVM, executor, pipe, trident) when 40% of the tasks are done"
    spark_job spark-kill-worker --variant pipe --workers 2 --kill worker && check "$SPARK_OUT" spark-kill-worker
    "$ROOT/examples/spark/cluster.sh" stop
fi

echo "== figures (run $RUN_ID; medians of $REPEAT runs; 1-minute load average beside each)"
python3 "$ROOT/examples/scale/figures.py" "$FIGURES" | tee "$SCALE_DIR/figures-$RUN_ID.md"
if [ "$failed" != 0 ]; then
    echo "scale-demo: FAILED (see above)" >&2
    exit 1
fi
echo "scale-demo: every job finished with exactly one result per input id"
