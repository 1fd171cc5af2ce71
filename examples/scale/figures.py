#!/usr/bin/env python3
"""Summarise the figures of a scale-demo run (one JSON object per line) as Markdown.

    figures.py .scale/figures.jsonl

Per configuration: the runs, the median wall time and articles/s; the CPU time per article
(user + system of every process of the job: for the engines, every process of the local
cluster, read from /proc for its network namespace) and its ratio to the bare CLI's, which
does not depend on what else the machine runs; the *worker-time* per article (wall time x
workers) and its ratio; and the 1-minute load average during the runs (the machine is
shared: wall times are noisy).
"""

import json
import statistics
import sys
from collections import OrderedDict


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else ".scale/figures.jsonl"
    runs: "OrderedDict[str, list]" = OrderedDict()
    checks = []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line:
            continue
        r = json.loads(line)
        if "check" in r:
            checks.append(r)
        else:
            runs.setdefault(r["label"], []).append(r)

    base = cpu_base = None
    if "bare-cli" in runs:
        base = statistics.median(r["seconds"] / r["articles"] for r in runs["bare-cli"])
        cpus = [r["cpu_ms_per_article"] for r in runs["bare-cli"] if "cpu_ms_per_article" in r]
        cpu_base = statistics.median(cpus) if cpus else None

    print("| configuration | runs | articles | median s | articles/s | CPU ms per article | vs bare CLI (CPU) "
          "| worker-ms per article (wall) | vs bare CLI (wall) | load 1-min |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, rs in runs.items():
        s = statistics.median(r["seconds"] for r in rs)
        n = rs[0]["articles"]
        w = rs[0].get("workers", 1)
        per = s / n * 1e3
        worker = per * w
        loads = [r["load1"] for r in rs]
        vs = f"{worker / (base * 1e3):.2f}x" if base else "-"
        # A killed process's CPU can leave the namespace's count with it (a process outside
        # reaps it, or its orphans): no CPU figure for runs with a kill.
        # Ray's workers and the servers under them, and PySpark's Python workers, exit or are
        # orphaned before the count and are reaped outside the namespace: their CPU would be
        # missing. Only the bare CLI and Spark's pipe (every process reaped by a live JVM)
        # are counted whole.
        cpus = [r["cpu_ms_per_article"] for r in rs
                if r.get("cpu_ms_per_article") is not None and not r.get("killed")
                and (r.get("job") == "cli" or r.get("mode") == "pipe")]
        cpu = statistics.median(cpus) if cpus else None
        cpu_txt = f"{cpu:.2f}" if cpu is not None else "-"
        cpu_vs = f"{cpu / cpu_base:.2f}x" if cpu is not None and cpu_base else "-"
        extra = ""
        if any(r.get("killed") for r in rs):
            k = rs[0]["killed"] or {}
            extra = f" (killed {k.get('what')} at {k.get('at_s')} s)"
        if "session_s" in rs[0]:
            extra += f" (+{statistics.median(r['session_s'] for r in rs):.0f} s session start)"
        print(f"| {label}{extra} | {len(rs)} | {n} | {s:.1f} | {n / s:.1f} | {cpu_txt} | {cpu_vs} | {worker:.2f} "
              f"| {vs} | {min(loads):.1f}-{max(loads):.1f} |")
    if checks:
        ok = sum(1 for c in checks if c["ok"])
        bad = [c["check"] for c in checks if not c["ok"]]
        print(f"\nchecks (exactly one result per input id, results equal to the bare CLI's): "
              f"{ok} of {len(checks)} passed" + (f"; FAILED: {', '.join(bad)}" if bad else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
