"""A/B of two builds of Trident's benchmark binary on the same machine: every workload and
dtype of the benchmark, the two binaries alternating run by run, medians and the ratio new/old.

    .venv-fixtures/bin/python scripts/bench/ab.py OLD_BINARY NEW_BINARY [--runs 3] [--only ner,embed]
        [--dtypes f32,bf16,int8]

The binaries are `workloads` bench executables (`cargo bench --bench workloads --no-run`) of
two commits; the models and inputs are those of `make bench` (scripts/bench/make_models.py,
under .bench/). Each measurement is a fresh process. Nothing else should run meanwhile.
Prints one raw JSON line per run, then a table: throughput of each, ratio new/old (for
generation also of the decoding steps alone, where both binaries report them), and peak RSS
and load time of each.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BENCH, WORKLOADS  # noqa: E402  (the same workloads, models and inputs)


def measure(binary, workload, dtype, threads):
    model, inputs, _ = WORKLOADS[workload]
    cmd = [binary, workload, str(BENCH / "models" / model), str(BENCH / "inputs" / f"{inputs}.json"), dtype]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {out.stderr.strip()[-400:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--dtypes", default="f32,bf16,int8")
    a = ap.parse_args()
    workloads = [w for w in a.only.split(",") if w] or list(WORKLOADS)
    rows = []
    for workload in workloads:
        for dtype in a.dtypes.split(","):
            got = {"old": [], "new": []}
            for run in range(a.runs):
                # Alternate which goes first, so that drift favours neither.
                order = ["old", "new"] if run % 2 == 0 else ["new", "old"]
                for which in order:
                    r = measure(getattr(a, which), workload, dtype, a.threads)
                    print(workload, dtype, which, json.dumps(r), flush=True)
                    got[which].append(r)
            med = {w: statistics.median(x["units"] / x["run_s"] for x in got[w]) for w in got}
            rss = {w: statistics.median(x["peak_rss_kb"] for x in got[w]) / 1024 for w in got}
            load = {w: statistics.median(x["load_s"] for x in got[w]) for w in got}
            unit = got["new"][0]["unit"]
            # Generation: the decoding steps alone too (after the first new token), where both
            # binaries report them.
            steps = None
            if all(x.get("decode_s") for w in got for x in got[w]):
                steps = {w: statistics.median(x["decode_steps"] / x["decode_s"] for x in got[w]) for w in got}
            rows.append((workload, dtype, unit, med, rss, load, steps))
    print()
    print("| workload | dtype | old unit/s | new unit/s | new/old | decoding steps new/old | old RSS MB | new RSS MB "
          "| old load s | new load s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for workload, dtype, unit, med, rss, load, steps in rows:
        ratio = f"{steps['new'] / steps['old']:.2f}×" if steps else "–"
        print(f"| {workload} | {dtype} | {med['old']:.1f} {unit} | {med['new']:.1f} | {med['new'] / med['old']:.2f}× "
              f"| {ratio} | {rss['old']:.0f} | {rss['new']:.0f} | {load['old']:.2f} | {load['new']:.2f} |")


if __name__ == "__main__":
    main()
