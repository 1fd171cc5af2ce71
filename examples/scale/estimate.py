#!/usr/bin/env python3
"""Paper estimates from measured per-core costs: 10 million articles in an hour, and a
service at 1,000 requests/s.

    estimate.py --real .scale/real/figures.jsonl --tiny .scale/figures.jsonl \
                --lb .scale/lb-figures.jsonl [--tokens-per-article 900]

Inputs (all measured here, CPU time so that a busy machine does not distort them):
- --real: a scale-demo run on full-size checkpoints (bert-base NER, a 6-layer 768-wide
  classifier): the bare CLI's CPU seconds and tokens per task give the core-ms per token of
  NER and of sentiment; the engines' CPU per article against the bare CLI's gives their
  overhead.
- --tiny: the same on the fixture models: the engine's fixed cost per article (CPU of the
  whole local Spark cluster minus the bare CLI's) when the model costs almost nothing.
- --lb: lb_sim.py on the fixtures: the server's CPU per request around the model, and
  HAProxy's.

Prints Markdown. bf16 speed-ups are BENCHMARKS.md's (Intel Xeon, AMX): NER 2.92x, classify
2.62x against f32.
"""

import argparse
import json
import statistics

BF16 = {"ner": 4396.0 / 1507.2, "classify": 293.7 / 112.2}


def rows(path):
    out = []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line:
            r = json.loads(line)
            if "check" not in r:
                out.append(r)
    return out


def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", required=True)
    p.add_argument("--tiny")
    p.add_argument("--lb", help="lb_sim.py figures on the fixtures (the server's own cost)")
    p.add_argument("--tokens-per-article", type=float, default=900.0,
                   help="a news article of ~700 words in BERT word pieces")
    p.add_argument("--articles", type=float, default=10e6)
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--rps", type=float, default=1000.0)
    p.add_argument("--partition-size", type=int, default=1000, help="articles per partition in production")
    p.add_argument("--run-partitions", type=int, default=24, help="partitions of the measured runs")
    p.add_argument("--utilisation", type=float, default=0.7, help="CPU target (the HPA's)")
    a = p.parse_args()

    real = rows(a.real)
    bare = [r for r in real if r["label"] == "bare-cli"]
    n = bare[0]["articles"]
    ner_ms_tok = med(bare, "ner_cpu_s") / med(bare, "ner_tokens") * 1e3
    cls_ms_art = med(bare, "classify_cpu_s") / n * 1e3
    cls_tok_art = med(bare, "classify_tokens") / n
    cls_ms_tok = cls_ms_art / cls_tok_art
    tok_art = med(bare, "ner_tokens") / n
    bare_cpu_art = med(bare, "cpu_ms_per_article")

    print(f"Measured with full-size checkpoints (random weights, same shapes and speed as the "
          f"real ones), 1 libtorch thread, CPU time: NER {ner_ms_tok:.3f} core-ms per token "
          f"(bert-base, {tok_art:.0f} tokens per test article), sentiment {cls_ms_tok:.3f} core-ms "
          f"per token (6 x 768, {cls_tok_art:.0f} tokens per article); the bare CLI "
          f"{bare_cpu_art:.0f} core-ms per test article in all.\n")

    # Engine overhead: CPU per article of Spark's pipe (the configuration whose CPU is
    # counted whole; see figures.py) against the bare CLI, on the full-size run and on the
    # fixtures (where it is the engine's fixed cost per article).
    def pipe_overhead(rs):
        base = med([r for r in rs if r["label"] == "bare-cli"], "cpu_ms_per_article")
        c = med([r for r in rs if r.get("mode") == "pipe" and not r.get("killed")], "cpu_ms_per_article")
        return (c, c - base) if c is not None and base else (None, None)

    real_pipe, real_extra = pipe_overhead(real)
    tiny_pipe, tiny_extra = pipe_overhead(rows(a.tiny)) if a.tiny else (None, None)

    T = a.tokens_per_article
    per_article = {
        "f32": T * ner_ms_tok + min(T, 512) * cls_ms_tok,
        "bf16": T * ner_ms_tok / BF16["ner"] + min(T, 512) * cls_ms_tok / BF16["classify"],
    }
    rate = a.articles / (a.hours * 3600)
    # Spark's pipe costs per partition (two CLI starts, two model loads, a JVM task), not per
    # article: spread over --partition-size articles.
    if real_extra is not None:
        per_partition = real_extra * n / a.run_partitions
        source = (f"{per_partition / 1e3:.1f} core-s per partition measured on the full-size run "
                  f"({real_extra:+.0f} core-ms per article over {n / a.run_partitions:.0f}-article partitions)")
    elif tiny_extra is not None:
        tn = rows(a.tiny)[0]["articles"]
        per_partition = tiny_extra * tn / a.run_partitions
        source = f"{per_partition / 1e3:.1f} core-s per partition measured on the fixtures"
    else:
        per_partition, source = 0.0, "not measured"
    fixed = per_partition / a.partition_size
    print(f"**{a.articles / 1e6:.0f} million articles in {a.hours:g} hour** = {rate:,.0f} articles/s; "
          f"an article of {T:.0f} tokens (about 700 words): NER over all of it (windows of 512), "
          f"sentiment over its first 512 tokens (classification sees one window). The engine "
          f"(Spark's pipe) costs {source}: {fixed:.1f} core-ms per article in partitions of "
          f"{a.partition_size:,} articles.\n")
    print("| dtype | core-ms per article (model) | + engine | cores for the hour | 32-core machines |")
    print("|---|---|---|---|---|")
    for dtype, ms in per_article.items():
        total = ms + fixed
        cores = rate * total / 1e3
        print(f"| {dtype} | {ms:,.0f} | {fixed:.1f} | {cores:,.0f} | {cores / 32:,.0f} |")
    print()

    if a.lb:
        # The server's own cost per request (HTTP, JSON, queueing, batching) from the fixture
        # run: its CPU per request less what the fixture models cost per input in the bare
        # CLI; then the full-size models' cost per input on top.
        lb = [r for r in rows(a.lb) if r["label"] in ("lb-1x", "lb-3x")]
        srv = med(lb, "server_cpu_ms_per_req")
        hap = med(lb, "haproxy_cpu_ms_per_req")
        tiny_bare = [r for r in rows(a.tiny) if r["label"] == "bare-cli"]
        tn = tiny_bare[0]["articles"]
        tiny_model = (med(tiny_bare, "ner_cpu_s") + med(tiny_bare, "classify_cpu_s")) / tn / 2 * 1e3
        serve_over = max(0.0, srv - tiny_model)
        ner_req = med(bare, "ner_cpu_s") / n * 1e3
        cls_req = med(bare, "classify_cpu_s") / n * 1e3
        print(f"**A service at {a.rps:,.0f} requests/s**, each request one {tok_art:.0f}-token article, "
              f"half to /ner and half to /classify as in lb_sim.py. Measured: {ner_req:.0f} core-ms per "
              f"/ner input and {cls_req:.0f} per /classify input (full-size, bare CLI), "
              f"{serve_over:.1f} core-ms per request for the server around the model (fixture run: "
              f"{srv:.1f} ms per request less {tiny_model:.1f} for the fixture models) and {hap:.2f} in "
              f"HAProxy.\n")
        print("| dtype | core-ms per request | server cores | at {:.0f} % CPU | 2-core pods | HAProxy cores |".format(
            a.utilisation * 100))
        print("|---|---|---|---|---|---|")
        for dtype, nsp, csp in (("f32", 1.0, 1.0), ("bf16", BF16["ner"], BF16["classify"])):
            per = (ner_req / nsp + cls_req / csp) / 2 + serve_over
            cores = a.rps * per / 1e3
            print(f"| {dtype} | {per:,.0f} | {cores:,.0f} | {cores / a.utilisation:,.0f} | "
                  f"{cores / a.utilisation / 2:,.0f} | {a.rps * hap / 1e3:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
