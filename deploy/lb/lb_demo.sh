#!/usr/bin/env bash
# `make lb-demo`: the Kubernetes topology simulated on 127.0.0.1 - three `trident serve`
# behind HAProxy with health checks and retries, a bounded client load, one server killed
# (SIGKILL) and restarted mid-run; then the throughput and p99 with 1 and 3 instances.
#
#   deploy/lb/lb_demo.sh
#
# Environment: LB_REPEAT (3) benchmark runs per configuration (medians), LB_DURATION (15 s per
# benchmark run), LB_CONCURRENCY (16 clients), TRIDENT_* as in examples/scale/env.sh.
# Exits non-zero when the kill run loses a request or the counters do not add up.
set -euo pipefail
. "$(dirname "$0")/../../examples/scale/env.sh"

REPEAT="${LB_REPEAT:-3}"
DURATION="${LB_DURATION:-15}"
CONC="${LB_CONCURRENCY:-16}"
"$ROOT/examples/scale/setup.sh" trident python haproxy
scale_articles
OUT="$SCALE_DIR/lb-figures.jsonl"
: > "$OUT"
SIM=("$SCALE_PY" "$ROOT/deploy/lb/lb_sim.py" --articles "$ARTICLES" --concurrency "$CONC" --json-out "$OUT")
failed=0

echo "== the failure run: 3 instances, s2 killed (SIGKILL) at 35% of 20 s and restarted 2 s later"
"${SIM[@]}" --instances 3 --duration 20 --kill 2 --signal KILL --label lb-3x-kill | grep -v '^{"job"' || failed=1
echo "== the same with SIGTERM (what Kubernetes sends: the instance drains)"
"${SIM[@]}" --instances 3 --duration 20 --kill 2 --signal TERM --label lb-3x-term | grep -v '^{"job"' || failed=1

echo "== benchmark: $CONC clients for $DURATION s, 1 and 3 instances (1 libtorch thread each), $REPEAT runs each"
for _ in $(seq "$REPEAT"); do
    for n in 1 3; do
        "${SIM[@]}" --instances "$n" --duration "$DURATION" --label "lb-${n}x" | grep '^load:' || failed=1
    done
done

"$SCALE_PY" - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r)
print("\n| configuration | runs | requests | failed | req/s | p50 ms | p99 ms | HAProxy retries | counters = sent | load 1-min |")
print("|---|---|---|---|---|---|---|---|---|---|")
for label, rs in by.items():
    med = lambda k: statistics.median(r[k] for r in rs)
    loads = [r["load1"] for r in rs]
    print(f"| {label} | {len(rs)} | {int(med('sent'))} | {sum(r['failed'] for r in rs)} | {med('req_per_s'):.1f} "
          f"| {med('p50_ms'):.1f} | {med('p99_ms'):.1f} | {sum(r['haproxy_retries'] for r in rs)} "
          f"| {'yes' if all(r['counted_200'] == r['sent'] for r in rs) else 'NO'} | {min(loads):.1f}-{max(loads):.1f} |")
EOF
if [ "$failed" != 0 ]; then
    echo "lb-demo: FAILED (see above)" >&2
    exit 1
fi
echo "lb-demo: no request failed and the counters added up"
