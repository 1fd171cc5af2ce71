"""Run the benchmark: every workload on Trident, transformers and CTranslate2 (float32, int8),
alternating systems run by run, and write BENCHMARKS.md.

    make bench            # or: .venv-fixtures/bin/python scripts/bench/run.py [--runs 5] [--only ner,classify]

Each measurement is a fresh process (load time and peak RSS are per process); timings are
medians over --runs runs. Nothing else should run on the machine meanwhile.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / ".bench"
PY = sys.executable
OUTPUTS = BENCH / "outputs"  # the first run's results of each Trident dtype, for accuracy

SYSTEMS = ["trident", "trident-bf16", "trident-int8", "transformers", "ct2-float32", "ct2-int8"]
# workload -> (model directory under .bench/models, inputs file, systems)
WORKLOADS = {
    "ner": ("bert-base-ner", "ner", SYSTEMS),
    "classify": ("bert-6x768-cls", "classify", SYSTEMS),
    "embed": ("all-MiniLM-L6-v2", "embed", SYSTEMS),
    "t5-greedy": ("t5-small", "t5", SYSTEMS),
    "t5-beam4": ("t5-small", "t5", SYSTEMS),
    "gpt2-greedy-b1": ("gpt2", "gpt2", SYSTEMS),
    "gpt2-greedy-b8": ("gpt2", "gpt2", SYSTEMS),
    "gpt2-topp-b1": ("gpt2", "gpt2", SYSTEMS),
}
DESCRIPTION = {
    "ner": "NER, bert-base (9 labels), 64 paragraphs of 120–200 tokens, batch 8",
    "classify": "classification, 6×768 BERT, 256 sentences, batch 32",
    "embed": "embeddings, all-MiniLM-L6-v2 (real), 256 sentences, batch 32",
    "t5-greedy": "T5-small, 8 inputs of ~400 tokens, exactly 64 new tokens, greedy",
    "t5-beam4": "T5-small, 8 inputs of ~400 tokens, exactly 64 new tokens, beam 4",
    "gpt2-greedy-b1": "GPT-2 124M, 32-token prompt, 128 new tokens, greedy, batch 1",
    "gpt2-greedy-b8": "GPT-2 124M, 32-token prompt, 128 new tokens, greedy, batch 8",
    "gpt2-topp-b1": "GPT-2 124M, 32-token prompt, 128 new tokens, top-p 0.9 sampling, batch 1",
}


def trident_bench_binary():
    out = subprocess.run(["cargo", "bench", "--bench", "workloads", "--no-run", "--message-format", "json"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "workloads" and msg.get("executable"):
            return msg["executable"]
    raise SystemExit("could not find the workloads bench binary")


def measure(system, workload, model, inputs, threads, binary, keep_outputs=False):
    if system.startswith("trident"):
        dtype = system.split("-", 1)[1] if "-" in system else "f32"
        cmd = [binary, workload, str(model), str(inputs), dtype]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if keep_outputs:
            OUTPUTS.mkdir(parents=True, exist_ok=True)
            env["TRIDENT_BENCH_OUTPUT"] = str(OUTPUTS / f"{workload}-{system}.json")
    else:
        cmd = [PY, str(ROOT / "scripts/bench/peers.py"), "--system", system, "--workload", workload,
               "--model", str(model), "--inputs", str(inputs), "--threads", str(threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine():
    cpu = "unknown"
    flags = []
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma"))]
    except OSError:
        pass
    return cpu, flags


def bounds(threads):
    """Measured matmul FLOP/s and memory bandwidth, for the physical bound of each workload."""
    import torch
    torch.set_num_threads(threads)
    a = torch.randn(2048, 2048)
    for _ in range(3):
        a @ a
    t = time.perf_counter()
    n = 10
    for _ in range(n):
        a @ a
    flops = n * 2 * 2048 ** 3 / (time.perf_counter() - t)
    # Memory bandwidth: reading a 256 MB float32 matrix on every thread (a sum), median of 24.
    # (A plain `v @ w` runs on one thread here and reads at about half this rate.)
    w = torch.randn(8192, 8192)
    times = []
    for _ in range(25):
        t = time.perf_counter()
        w.sum()
        times.append(time.perf_counter() - t)
    return flops, w.numel() * 4 / statistics.median(times[1:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--systems", default="")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--from-log", help="re-render BENCHMARKS.md from the lines a previous run printed")
    a = ap.parse_args()
    if a.from_log:
        results, measured = {}, None
        for line in open(a.from_log):
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[0] in WORKLOADS and parts[3].startswith("{"):
                results.setdefault(parts[0], {}).setdefault(parts[1], []).append(json.loads(parts[3]))
            elif line.startswith("bounds {"):
                measured = json.loads(line.split(" ", 1)[1])
        # The bounds the run recorded, else measured now.
        flops, bw = (measured["flops"], measured["bandwidth"]) if measured else bounds(a.threads)
        write(a, results, flops, bw)
        return
    only = [w for w in a.only.split(",") if w] or list(WORKLOADS)
    keep = [s for s in a.systems.split(",") if s]
    subprocess.run([PY, str(ROOT / "scripts/bench/make_models.py"), "--out", str(BENCH)], check=True)
    binary = trident_bench_binary()
    results = {}
    for w in only:
        model_name, inputs_name, systems = WORKLOADS[w]
        systems = [s for s in systems if not keep or s in keep]
        model, inputs = BENCH / "models" / model_name, BENCH / "inputs" / f"{inputs_name}.json"
        for s in systems:
            if s.startswith("ct2"):
                subprocess.run([PY, str(ROOT / "scripts/bench/peers.py"), "--prepare", "--system", s, "--workload", w,
                                "--model", str(model), "--inputs", str(inputs)], check=False, capture_output=True)
        for r in range(a.runs):
            # Alternate the order run by run so that drift affects every system alike.
            order = systems if r % 2 == 0 else list(reversed(systems))
            for s in order:
                m = measure(s, w, model, inputs, a.threads, binary, keep_outputs=r == 0)
                results.setdefault(w, {}).setdefault(s, []).append(m)
                print(w, s, r, json.dumps(m), flush=True)  # the format --from-log reads
    flops, bw = bounds(a.threads)
    print("bounds", json.dumps({"flops": flops, "bandwidth": bw}), flush=True)  # read by --from-log
    write(a, results, flops, bw)


def accuracy(workload, dtype):
    """What `dtype` changes in Trident's results against f32 on the same workload, from the
    outputs the first run kept: a short description, or None when either is missing."""
    try:
        ref = json.loads((OUTPUTS / f"{workload}-trident.json").read_text())
        got = json.loads((OUTPUTS / f"{workload}-trident-{dtype}.json").read_text())
    except (OSError, ValueError):
        return None
    if workload == "ner":
        # Entity agreement: F1 of the dtype's entities against f32's (same group and span).
        key = lambda out: {(i, e["entity_group"], e["start"], e["end"]) for i, ents in enumerate(out) for e in ents}
        a, b = key(ref), key(got)
        if not a and not b:
            return "no entities either way"
        f1 = 2 * len(a & b) / (len(a) + len(b))
        dscore = max((abs(x["score"] - y["score"]) for ra, rb in zip(ref, got) for x in ra for y in rb
                      if (x["entity_group"], x["start"], x["end"]) == (y["entity_group"], y["start"], y["end"])), default=0)
        return f"entity F1 {f1:.3f} vs f32 ({len(a)} entities); max score difference {dscore:.1e}"
    if workload == "classify":
        top = lambda c: c[0] if isinstance(c, list) else c
        same = sum(top(x)["label"] == top(y)["label"] for x, y in zip(ref, got))
        dscore = max(abs(top(x)["score"] - top(y)["score"]) for x, y in zip(ref, got))
        return f"same label {same}/{len(ref)}; max probability difference {dscore:.1e}"
    if workload == "embed":
        import math
        def cos(u, v):
            return sum(p * q for p, q in zip(u, v)) / math.sqrt(sum(p * p for p in u) * sum(q * q for q in v))
        c = [cos(x["embedding"], y["embedding"]) for x, y in zip(ref, got)]
        return f"cosine to f32: min {min(c):.5f}, mean {sum(c) / len(c):.5f}"
    # Generation: token agreement, position by position, over f32's tokens (T5's ids as
    # generated; GPT-2's continuations re-tokenized, the prompt included in both).
    if workload.startswith("t5"):
        seqs = lambda out: out["token_ids"]
    else:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(BENCH / "models" / WORKLOADS[workload][0] / "tokenizer.json"))
        seqs = lambda out: [tok.encode(s[0]["generated_text"], add_special_tokens=False).ids for s in out]
    agree = total = identical = prefix = 0
    for ix, iy in zip(seqs(ref), seqs(got)):
        agree += sum(p == q for p, q in zip(ix, iy))
        total += len(ix)
        identical += ix == iy
        same = next((k for k, (p, q) in enumerate(zip(ix, iy)) if p != q), min(len(ix), len(iy)))
        prefix += same / max(len(ix), 1)
    n = len(seqs(ref))
    return (f"token agreement {agree / max(total, 1):.3f} (position by position); tokens before "
            f"the first difference {prefix / n:.2f} of the output on average; identical outputs "
            f"{identical}/{n}")


def median(ms, key):
    vals = [m[key] for m in ms if key in m]
    return statistics.median(vals) if vals else None


def write(a, results, flops, bw):
    import torch
    import transformers
    try:
        import ctranslate2
        ct2v = ctranslate2.__version__
    except ImportError:
        ct2v = "not installed"
    cpu, flags = machine()
    version = open(ROOT / "Cargo.toml").read().split('version = "')[1].split('"')[0]
    lines = [
        "# Benchmarks", "",
        f"Measured {datetime.date.today().isoformat()} on {cpu} ({os.cpu_count()} cores; "
        f"flags: {' '.join(flags)}), {a.threads} threads for every system, {a.runs} runs per system, "
        "alternating; medians. Each run is a fresh process: load time and peak RSS are per process.", "",
        f"Versions: Trident {version} "
        f"(tch 0.26, libtorch {torch.__version__}), transformers {transformers.__version__} on torch "
        f"{torch.__version__}, CTranslate2 {ct2v}, Python {platform.python_version()}.", "",
        "Reproduce: `make bench` (creates the random full-size checkpoints under .bench/, then runs "
        "`scripts/bench/run.py`); the raw lines of this run are in `scripts/bench/results/`, and "
        "`run.py --from-log FILE` renders this page from them.", "",
        f"Measured bounds on this machine: f32 matmul {flops / 1e9:.0f} GFLOP/s; memory bandwidth "
        f"(reading 256 MB on {a.threads} threads) {bw / 1e9:.1f} GB/s.", "",
        "| workload | system | throughput | unit/s | ms per unit | load s | peak RSS MB | vs transformers | vs CT2 f32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w, systems in results.items():
        base = {}
        for s, ms in systems.items():
            run, units = median(ms, "run_s"), median(ms, "units")
            base[s] = units / run if run else None
        for s, ms in systems.items():
            run, units, load, rss = median(ms, "run_s"), median(ms, "units"), median(ms, "load_s"), median(ms, "peak_rss_kb")
            if run is None:
                err = next((m["error"] for m in ms if "error" in m), "failed")
                lines.append(f"| {w} | {s} | failed: {err} | | | | | | |")
                continue
            unit = next(m["unit"] for m in ms if "unit" in m)
            tput = units / run
            rel = lambda other: f"{tput / base[other]:.2f}×" if base.get(other) else "–"
            lines.append(f"| {w} | {s} | {tput:.1f} | {unit}/s | {1000 / tput:.2f} | {load:.2f} | {rss / 1024:.0f} | "
                         f"{rel('transformers')} | {rel('ct2-float32')} |")
    lines += ["", "Workloads:", ""] + [f"- `{w}`: {DESCRIPTION[w]}" for w in results]
    acc = [(w, d, accuracy(w, d)) for w in results for d in ("bf16", "int8")]
    acc = [row for row in acc if row[2]]
    if acc:
        lines += ["", "## What bf16 and int8 cost in accuracy", "",
                  "Trident's own results in bf16 / int8 against its f32 results (which match "
                  "transformers), same inputs, from the first run of each:", "",
                  "| workload | dtype | difference from f32 |", "|---|---|---|"]
        lines += [f"| {w} | {d} | {text} |" for w, d, text in acc]
    analysis = ROOT / "scripts/bench/analysis.md"
    if analysis.exists():
        lines += ["", analysis.read_text().rstrip()]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
