#!/usr/bin/env python3
"""The bare CLI on the job's input: `trident ner` then `trident classify`, one process each.

    bare_cli.py --input articles.jsonl --ner-out ref-ner.jsonl --sentiment-out ref-sentiment.jsonl

Prints one JSON line of figures: wall seconds, CPU seconds (user + system of the two
processes: what the articles cost in core-seconds, whatever else the machine is doing), and
the tokens each task saw (from the CLI's summary line), so costs can be given per article and
per token. Its outputs are the reference every job's results are compared with.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True)
    p.add_argument("--ner-out", required=True)
    p.add_argument("--sentiment-out", required=True)
    p.add_argument("--trident", default=os.environ.get("TRIDENT_BIN", "trident"))
    p.add_argument("--ner-model", default=os.environ.get("TRIDENT_NER_MODEL"))
    p.add_argument("--sentiment-model", default=os.environ.get("TRIDENT_SENTIMENT_MODEL"))
    p.add_argument("--threads", type=int, default=int(os.environ.get("TRIDENT_THREADS", "1")))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--label", default="bare-cli")
    a = p.parse_args()

    n = sum(1 for line in open(a.input, encoding="utf-8") if line.strip())
    fig = {"job": "cli", "label": a.label, "mode": "cli", "workers": 1, "threads": a.threads,
           "articles": n, "rows": n}
    t0 = time.monotonic()
    before = last = resource.getrusage(resource.RUSAGE_CHILDREN)
    for task, model, out in (("ner", a.ner_model, a.ner_out), ("classify", a.sentiment_model, a.sentiment_out)):
        r = subprocess.run([a.trident, "--threads", str(a.threads), task, "--model", model,
                            "--batch-size", str(a.batch_size), "--format", "jsonl",
                            "--input", a.input, "--output", out],
                           stderr=subprocess.PIPE, text=True)
        if r.returncode not in (0, 1):
            print(r.stderr, file=sys.stderr)
            return r.returncode
        m = re.search(r"(\d+) texts, (\d+) tokens", r.stderr)
        fig[f"{task}_tokens"] = int(m.group(2)) if m else None
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        fig[f"{task}_cpu_s"] = round((now.ru_utime + now.ru_stime) - (last.ru_utime + last.ru_stime), 2)
        last = now
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = time.monotonic() - t0
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    fig.update({"seconds": round(seconds, 2), "cpu_s": round(cpu, 2),
                "articles_per_s": round(n / seconds, 1),
                "cpu_ms_per_article": round(cpu / n * 1e3, 2),
                "load1": float(open("/proc/loadavg").read().split()[0])})
    print(json.dumps(fig), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
