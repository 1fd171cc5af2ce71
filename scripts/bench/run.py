"""Run the benchmark: every workload on Trident, transformers, CTranslate2 (float32, int8),
for the encoder workloads ONNX Runtime (float32, int8), and for the Llama workloads llama.cpp
(GGUF F16, Q8_0), alternating systems run by run, and write this machine's section of
BENCHMARKS.md.

    make bench            # or: .venv-fixtures/bin/python scripts/bench/run.py [--runs 5] [--only ner,classify]
                          #     [--systems trident,ort-int8] [--out FILE] [--base FILE]

The Llama workloads (issue 12: smollm2-360m-*, tinyllama-1.1b-*) run only when --only names
them (`--only llama` all eight, `--only smollm2-360m` one model's four); they make their
checkpoints on demand (make_models.py --llama) and need llama.cpp for their llamacpp-* systems:
scripts/bench/setup_llamacpp.sh. Rendering replaces this machine's whole section with the
workloads of the run: to add them to a section, render from the logs of both runs
(`--from-log OLD.log ... NEW.log`).

`--smoke` runs each system once with 8 instead of 128 new tokens (BENCH_SCALE=16; the bench
binary scales every workload, peers.py the Llama ones) and checks the Llama workloads' work
done, writing nothing: a check that everything runs, not a measurement.

Each measurement is a fresh process (load time and peak RSS are per process); timings are
medians over --runs runs. Nothing else should run on the machine meanwhile.

The run first prints a `machine {json}` line (CPU, flags, cores, threads, measured matmul rate
and memory bandwidth, versions) and a `bounds {json}` line, then one line per measurement
(`WORKLOAD SYSTEM RUN {json}`), then `accuracy {json}` lines. Everything it prints is also
written to scripts/bench/results/<date>-<machine tag>.log.

BENCHMARKS.md has one section per machine (marked `<!-- machine: TAG -->`). Rendering replaces
the section of the machine the results come from and keeps the others as they are in --base
(default BENCHMARKS.md). Re-render from logs, later files replacing the runs of a workload and
system that earlier files have:

    run.py --from-log scripts/bench/results/A.log [B.log ...] [--machine-json '{...}'] [--out FILE]

--machine-json gives (or overrides) the facts of the machine for logs without a machine line.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / ".bench"
PY = sys.executable
OUTPUTS = BENCH / "outputs"  # the first run's results, for the accuracy table
RESULTS = ROOT / "scripts/bench/results"

from llama_shapes import GPT2_WEIGHTS_PER_TOKEN, LLAMA, prefill_flops_per_token, weights_per_token

SYSTEMS = ["trident", "trident-bf16", "trident-int8", "transformers", "ct2-float32", "ct2-int8"]
ENCODER_SYSTEMS = SYSTEMS + ["ort-float32", "ort-int8"]
LLAMA_SYSTEMS = SYSTEMS + ["llamacpp-f16", "llamacpp-q8_0"]
ALL_SYSTEMS = ENCODER_SYSTEMS + ["llamacpp-f16", "llamacpp-q8_0"]
# The Llama workloads of issue 12, per model: kind -> (inputs, batch, new tokens).
LLAMA_KINDS = {"prefill512": ("llama-prompt512", 1, 1), "greedy-b1": ("llama-prompt32", 1, 128),
               "greedy-b8": ("llama-prompt32", 8, 128), "topp-b1": ("llama-prompt32", 1, 128)}
LLAMA_WORKLOADS = {f"{m}-{k}": (m, k) for m in LLAMA for k in LLAMA_KINDS}
# The decoding workloads bound by memory bandwidth: workload -> (weights a step reads, batch).
DECODING = {**{w: (weights_per_token(LLAMA[m]), LLAMA_KINDS[k][1]) for w, (m, k) in LLAMA_WORKLOADS.items()
               if LLAMA_KINDS[k][2] > 1},
            "gpt2-greedy-b1": (GPT2_WEIGHTS_PER_TOKEN, 1), "gpt2-greedy-b8": (GPT2_WEIGHTS_PER_TOKEN, 8),
            "gpt2-topp-b1": (GPT2_WEIGHTS_PER_TOKEN, 1)}
# workload -> (model directory under .bench/models, inputs file, systems)
WORKLOADS = {
    "ner": ("bert-base-ner", "ner", ENCODER_SYSTEMS),
    "classify": ("bert-6x768-cls", "classify", ENCODER_SYSTEMS),
    "embed": ("all-MiniLM-L6-v2", "embed", ENCODER_SYSTEMS),
    "t5-greedy": ("t5-small", "t5", SYSTEMS),
    "t5-beam4": ("t5-small", "t5", SYSTEMS),
    "gpt2-greedy-b1": ("gpt2", "gpt2", SYSTEMS),
    "gpt2-greedy-b8": ("gpt2", "gpt2", SYSTEMS),
    "gpt2-topp-b1": ("gpt2", "gpt2", SYSTEMS),
    "marian-greedy": ("opus-mt-fr-en", "marian", SYSTEMS),
    "marian-beam4": ("opus-mt-fr-en", "marian", SYSTEMS),
    "bart-beam4": ("distilbart-cnn-12-6", "bart", SYSTEMS),
    **{w: (m, LLAMA_KINDS[k][0], LLAMA_SYSTEMS) for w, (m, k) in LLAMA_WORKLOADS.items()},
}
ENCODERS = ("ner", "classify", "embed")
# Workloads whose peers (transformers, CTranslate2) also keep their generated ids, compared with
# Trident's f32 ids in the accuracy table.
SEQ2SEQ = ("marian-greedy", "marian-beam4", "bart-beam4")
DESCRIPTION = {
    "ner": "NER, bert-base (9 labels), 64 paragraphs of 120–200 tokens, batch 8",
    "classify": "classification, 6×768 BERT, 256 sentences, batch 32",
    "embed": "embeddings, all-MiniLM-L6-v2 (real), 256 sentences, batch 32",
    "t5-greedy": "T5-small, 8 inputs of ~400 tokens, exactly 64 new tokens, greedy",
    "t5-beam4": "T5-small, 8 inputs of ~400 tokens, exactly 64 new tokens, beam 4",
    "gpt2-greedy-b1": "GPT-2 124M, 32-token prompt, 128 new tokens, greedy, batch 1",
    "gpt2-greedy-b8": "GPT-2 124M, 32-token prompt, 128 new tokens, greedy, batch 8",
    "gpt2-topp-b1": "GPT-2 124M, 32-token prompt, 128 new tokens, top-p 0.9 sampling, batch 1",
    "marian-greedy": "Marian (opus-mt-fr-en size: 6+6 layers, d 512, vocab 58101; SentencePiece files, no "
                     "tokenizer.json), 64 French-like sentences of 15–40 tokens in one batch, exactly 32 new "
                     "tokens, greedy",
    "marian-beam4": "Marian as above, 64 sentences in one batch, exactly 32 new tokens, beam 4",
    "bart-beam4": "BART (distilbart-cnn-12-6 size: 12+6 layers, d 1024, vocab 50264), 8 articles of 580–620 "
                  "tokens in one batch, exactly 64 new tokens (min = max, so every system does the same work), "
                  "beam 4 with distilbart-cnn's no_repeat_ngram_size 3 and length_penalty 2.0",
}
LLAMA_NAMES = {"smollm2-360m": "SmolLM2-360M-shaped Llama (362M; 32 layers, d 960, 15 heads / 5 KV heads, "
                               "ffn 2560, vocab 49152, tied head; random bf16 weights)",
               "tinyllama-1.1b": "TinyLlama-1.1B-shaped Llama (1.10B; 22 layers, d 2048, 32 heads / 4 KV heads, "
                                 "ffn 5632, vocab 32000, untied head; random bf16 weights)"}
for _w, (_m, _k) in LLAMA_WORKLOADS.items():
    DESCRIPTION[_w] = LLAMA_NAMES[_m] + ", " + {
        "prefill512": "prefill: one 512-token prompt (BOS included), 1 new token; unit: prompt tokens",
        "greedy-b1": "32-token prompt (BOS included), exactly 128 new tokens, greedy, batch 1",
        "greedy-b8": "32-token prompt (BOS included), exactly 128 new tokens, greedy, batch 8",
        "topp-b1": "32-token prompt (BOS included), exactly 128 new tokens, top-p 0.9 sampling (top-k off, "
                   "temperature 1), batch 1"}[_k]
# Bytes a system reads per weight of a projection (int8: one per weight, plus a scale per row;
# llama.cpp Q8_0: a 2-byte scale per block of 32).
BYTES_PER_WEIGHT = {"trident": 4, "transformers": 4, "ct2-float32": 4, "trident-bf16": 2, "llamacpp-f16": 2,
                    "trident-int8": 1, "ct2-int8": 1, "llamacpp-q8_0": 34 / 32}
F32_SYSTEMS = ("trident", "transformers", "ct2-float32")
# Systems whose first run keeps its results, compared with Trident's f32 results: the system
# and the dtype its row in the accuracy table names.
COMPARED = {
    "trident-bf16": ("trident", "bf16"),
    "trident-int8": ("trident", "int8"),
    "ort-float32": ("ort-float32", "f32"),
    "ort-int8": ("ort-int8", "int8"),
    "ct2-int8": ("ct2-int8", "int8"),
    "transformers": ("transformers", "f32"),  # SEQ2SEQ workloads only
    "ct2-float32": ("ct2-float32", "f32"),  # SEQ2SEQ workloads only
}
KEEPS_OUTPUTS = {"trident", *COMPARED}
END_MARK = "<!-- end of machine sections -->"
MACHINE_MARK = re.compile(r"^<!-- machine: (\S+) -->$", re.M)


def keeps_outputs(system, workload):
    """Whether `system`'s first run on `workload` writes its results (peers: the encoder and the
    SEQ2SEQ workloads)."""
    # (The Llama workloads keep none: random weights mostly generate ids their 1,006-id tokenizer
    # lacks, which decode to nothing, so their texts say nothing about agreement.)
    return (system in KEEPS_OUTPUTS and workload not in LLAMA_WORKLOADS
            and (system.startswith("trident") or workload in ENCODERS + SEQ2SEQ))


def trident_bench_binary():
    out = subprocess.run(["cargo", "bench", "--bench", "workloads", "--no-run", "--message-format", "json"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "workloads" and msg.get("executable"):
            return msg["executable"]
    raise SystemExit("could not find the workloads bench binary")


def peer_cmd(system, workload, model, inputs):
    return [PY, str(ROOT / "scripts/bench/peers.py"), "--system", system, "--workload", workload,
            "--model", str(model), "--inputs", str(inputs)]


def measure(system, workload, model, inputs, threads, binary, keep_outputs=False, extra_env=None):
    output = OUTPUTS / f"{workload}-{system}.json"
    keep = keep_outputs and keeps_outputs(system, workload)
    if keep:
        OUTPUTS.mkdir(parents=True, exist_ok=True)
        output.unlink(missing_ok=True)  # no stale results if this run fails
    if system.startswith("trident"):
        dtype = system.split("-", 1)[1] if "-" in system else "f32"
        cmd = [binary, workload, str(model), str(inputs), dtype]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if keep:
            env["TRIDENT_BENCH_OUTPUT"] = str(output)
    else:
        cmd = peer_cmd(system, workload, model, inputs) + ["--threads", str(threads)]
        if keep:
            cmd += ["--output", str(output)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    env.update(extra_env or {})
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The machine.


ARM_IMPLEMENTERS = {"0x41": "ARM", "0x42": "Broadcom", "0x43": "Cavium", "0x46": "Fujitsu", "0x48": "HiSilicon",
                    "0x4e": "NVIDIA", "0x51": "Qualcomm", "0x61": "Apple", "0xc0": "Ampere"}


def cpuinfo():
    """vendor, model name, family, model, flags of the first CPU in /proc/cpuinfo (x86: the
    avx*, amx*, fma, f16c flags; ARM: the whole Features line)."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key and key not in info:
                info[key] = value
            if not line.strip() and info.get("processor") is not None and len(info) > 3:
                break
    except OSError:
        pass
    vendor = info.get("vendor_id") or ARM_IMPLEMENTERS.get(info.get("CPU implementer", "").lower(),
                                                            info.get("CPU implementer", "unknown"))
    name = info.get("model name") or info.get("Model Name") or lscpu_model_name() or platform.processor() or "unknown"
    if "flags" in info:
        flags = [f for f in info["flags"].split() if f.startswith(("avx", "amx", "fma", "f16c"))]
    else:
        flags = info.get("Features", "").split()
    return {
        "vendor": vendor,
        "model_name": name,
        "family": info.get("cpu family") or info.get("CPU architecture"),
        "model": info.get("model") or info.get("CPU part"),
        "flags": flags,
    }


def lscpu_model_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.strip().startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return None


def machine_tag(m):
    """A short name for the machine, for its section marker and its log files: the model name's
    words, family and model numbers when known, cores. E.g. intel-xeon-f6m143-2c."""
    name = re.sub(r"\((R|TM|tm|r)\)|\b(Processor|CPU|Core\(TM\))\b|@.*$", " ", m.get("model_name") or "")
    words = re.findall(r"[a-z0-9]+", name.lower())[:4]
    vendor = {"genuineintel": "intel", "authenticamd": "amd"}.get((m.get("vendor") or "").lower(),
                                                                    (m.get("vendor") or "cpu").lower())
    if not words or words[0] != vendor:
        words.insert(0, re.sub(r"[^a-z0-9]+", "", vendor) or "cpu")
    if m.get("family") and m.get("model"):
        words.append(f"f{m['family']}m{m['model']}".replace("0x", ""))
    if m.get("cores"):
        words.append(f"{m['cores']}c")
    return "-".join(words)


def versions():
    import torch
    import transformers

    def version(module):
        try:
            return __import__(module).__version__
        except ImportError:
            return "not installed"

    trident = open(ROOT / "Cargo.toml").read().split('version = "')[1].split('"')[0]
    return {"trident": trident, "tch": "0.26", "libtorch": torch.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "ctranslate2": version("ctranslate2"),
            "onnxruntime": version("onnxruntime"), "llama_cpp": version("llama_cpp"),
            "python": platform.python_version()}


def this_machine(threads):
    flops, bw = bounds(threads)
    m = cpuinfo()
    m.update(cores=os.cpu_count(), threads=threads, flops=flops, bandwidth=bw,
             bandwidth_buffer_mb=bandwidth_buffer_bytes() >> 20, last_level_cache_mb=(last_level_cache_bytes() or 0) >> 20,
             date=datetime.date.today().isoformat(), versions=versions())
    m["tag"] = machine_tag(m)
    return m


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
    return flops, bandwidth(threads, seconds=1.0)


def last_level_cache_bytes():
    """The largest CPU cache's size in bytes (the last level: L3 on x86), from sysfs; None when
    the kernel does not say."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        m = re.fullmatch(r"(\d+)([KMG]?)", text)
        if m:
            sizes.append(int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)])
    return max(sizes, default=None)


def bandwidth_buffer_bytes():
    """How much the bandwidth measurement reads: 256 MB, or four times the last-level cache
    where that is larger. A buffer that fits in the cache measures the cache: on the Intel Xeon
    family 6 model 207 (a 300 MB L3) sums over 32–128 MB read at 44–55 GB/s, over 256 MB at
    27–34 (partly from the cache), over 512 MB–2 GB at 23–29, which is what a model of more
    than the cache's size can be read at (2026-12-05)."""
    return max(256 << 20, 4 * (last_level_cache_bytes() or 0))


def bandwidth(threads, seconds=0.5):
    """Memory read bandwidth now (bytes/s): a sum over a float32 buffer of
    `bandwidth_buffer_bytes()` on every thread, repeated for `seconds` (at least 9 times), the
    median less the first. (A plain `v @ w` runs on one thread here and reads at about half this
    rate.) Some machines' bandwidth changes by a factor of two within minutes (a shared host), so
    the decoding workloads take it again around each run. Half a second, not a few sums: the
    2-core Zen 5 VM reads ~93 GB/s most of the time but dips to ~55 GB/s for 0.1–0.6 s now and
    then, and 9 sums (25 ms) landed in a dip often enough to set bounds 40 % low (2026-12-05: 94
    and 53–55 GB/s before and after the same runs; 0.5 s medians 92–94)."""
    import torch
    torch.set_num_threads(threads)
    if getattr(bandwidth, "buffer", None) is None:
        bandwidth.buffer = torch.randn(bandwidth_buffer_bytes() // 4)
    w = bandwidth.buffer
    times = []
    start = time.perf_counter()
    while len(times) < 9 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        w.sum()
        times.append(time.perf_counter() - t)
    return w.numel() * 4 / statistics.median(times[1:])


def measure_with_bandwidth(workload, threads, run):
    """`run()`'s result, with, for a decoding workload (GPT-2's and the Llama models'), the
    bandwidth measured just before and just after it (`bandwidth`: their mean;
    `bandwidth_range`)."""
    if workload not in DECODING:
        return run()
    before = bandwidth(threads)
    result = run()
    after = bandwidth(threads)
    if "error" not in result:
        result.update(bandwidth=(before + after) / 2, bandwidth_range=[before, after])
    return result


# ---------------------------------------------------------------------------------------------
# Running.


class Log:
    """Prints lines and keeps them in a results file."""

    def __init__(self, path):
        self.path = path
        self.file = None
        self.seen = set()

    def __call__(self, *parts):
        line = " ".join(str(p) for p in parts)
        self.seen.add(line)
        print(line, flush=True)
        if self.path:
            if self.file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.file = open(self.path, "a")
            self.file.write(line + "\n")
            self.file.flush()


def log_path(tag):
    date = datetime.date.today().isoformat()
    path = RESULTS / f"{date}-{tag}.log"
    n = 2
    while path.exists():
        path = RESULTS / f"{date}-{tag}-{n}.log"
        n += 1
    return path


def prepare(system, workload, model, inputs, log):
    """Convert the model for a peer once (CTranslate2, ONNX, GGUF), outside the timed runs."""
    if not system.startswith(("ct2", "ort", "llamacpp")):
        return
    out = subprocess.run(peer_cmd(system, workload, model, inputs) + ["--prepare"], capture_output=True, text=True,
                         env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    for line in out.stdout.splitlines():
        if line.startswith(("onnx ", "llamacpp ")) and line not in log.seen:
            log(line)
    if out.returncode != 0:
        log(f"prepare {system} {workload} failed:", (out.stderr.strip().splitlines() or ["?"])[-1][:300])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--systems", default="")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--base", default=str(ROOT / "BENCHMARKS.md"),
                    help="the page whose other machines' sections are kept (default BENCHMARKS.md)")
    ap.add_argument("--from-log", nargs="+", metavar="FILE",
                    help="re-render from the lines previous runs printed (later files replace earlier runs)")
    ap.add_argument("--machine-json", help="the machine's facts (JSON) for --from-log, over the log's machine line")
    ap.add_argument("--no-log-file", action="store_true", help="do not keep the printed lines in scripts/bench/results/")
    ap.add_argument("--smoke", action="store_true",
                    help="each system once with 8 new tokens instead of 128 (BENCH_SCALE=16), checking the work "
                         "done; writes nothing (a check that it runs, not a measurement)")
    a = ap.parse_args()
    if a.from_log:
        return from_log(a)
    # `llama` stands for the eight Llama workloads, `smollm2-360m` / `tinyllama-1.1b` for one model's four.
    aliases = {"llama": list(LLAMA_WORKLOADS), **{m: [w for w, (m_, _) in LLAMA_WORKLOADS.items() if m_ == m]
                                                  for m in LLAMA}}
    # Without --only: every workload but the Llama ones, which are asked for by name (they take
    # long on 2 cores and need llama.cpp; see the top).
    only = ([x for w in a.only.split(",") if w for x in aliases.get(w, [w])]
            or [w for w in WORKLOADS if w not in LLAMA_WORKLOADS])
    keep = [s for s in a.systems.split(",") if s]
    unknown = [w for w in only if w not in WORKLOADS] + [s for s in keep if s not in ALL_SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown workload or system: {', '.join(unknown)}")
    if a.smoke:
        a.runs, a.no_log_file = 1, True
    m = this_machine(a.threads)
    log = Log(None if a.no_log_file else log_path(m["tag"]))
    log("machine", json.dumps(m))  # read by --from-log
    log("bounds", json.dumps({"flops": m["flops"], "bandwidth": m["bandwidth"]}))
    llama = sorted({WORKLOADS[w][0] for w in only if w in LLAMA_WORKLOADS})
    made = subprocess.run([PY, str(ROOT / "scripts/bench/make_models.py"), "--out", str(BENCH)]
                          + (["--llama", ",".join(llama)] if llama else []), check=True, capture_output=True, text=True)
    for line in made.stdout.splitlines():
        log(line)
    plan = {w: [s for s in WORKLOADS[w][2] if not keep or s in keep] for w in only}
    binary = trident_bench_binary() if any(s.startswith("trident") for ss in plan.values() for s in ss) else None
    results = {}
    for w, systems in plan.items():
        model_name, inputs_name, _ = WORKLOADS[w]
        model, inputs = BENCH / "models" / model_name, BENCH / "inputs" / f"{inputs_name}.json"
        for s in systems:
            prepare(s, w, model, inputs, log)
        for r in range(a.runs):
            # Alternate the order run by run so that drift affects every system alike.
            order = systems if r % 2 == 0 else list(reversed(systems))
            for s in order:
                m_ = measure_with_bandwidth(w, a.threads, lambda: measure(
                    s, w, model, inputs, a.threads, binary, keep_outputs=r == 0 and not a.smoke,
                    extra_env={"BENCH_SCALE": "16"} if a.smoke else None))
                results.setdefault(w, {}).setdefault(s, []).append(m_)
                log(w, s, r, json.dumps(m_))  # the format --from-log reads
    if a.smoke:
        return smoke_verdict(results)
    acc = []
    for w, systems in results.items():
        for s in systems:
            if s in COMPARED:
                text = accuracy(w, s)
                if text:
                    acc.append({"workload": w, "system": COMPARED[s][0], "dtype": COMPARED[s][1], "text": text})
                    log("accuracy", json.dumps(acc[-1], ensure_ascii=False))  # read by --from-log
    logs = [str(log.path.relative_to(ROOT))] if log.path else []
    write(a, m, results, acc, logs, runs=a.runs, log=log)


def smoke_verdict(results):
    """--smoke: which workload and system ran, and whether the Llama workloads did the expected
    work (512 prompt tokens; batch × 8 new tokens)."""
    bad = 0
    for w, systems in results.items():
        for s, ms in systems.items():
            m_ = ms[0]
            expect = None
            if w in LLAMA_WORKLOADS:
                _, batch, new = LLAMA_KINDS[LLAMA_WORKLOADS[w][1]]
                expect = 512 if new == 1 else batch * new // 16
            if "error" in m_:
                verdict = f"FAILED: {m_['error']}"
            elif expect is not None and m_.get("units") != expect:
                verdict = f"WRONG WORK: {m_.get('units')} {m_.get('unit')}, expected {expect}"
            else:
                verdict = f"ok ({m_.get('units')} {m_.get('unit')})"
            bad += not verdict.startswith("ok")
            print(f"smoke {w} {s}: {verdict}", flush=True)
    print(f"smoke: {sum(len(ss) for ss in results.values()) - bad} ok, {bad} failed", flush=True)
    return 1 if bad else 0


def from_log(a):
    results, acc, m = {}, {}, {}
    for path in a.from_log:
        file_results = {}
        for line in open(path):
            parts = line.rstrip("\n").split(" ", 3)
            if len(parts) == 4 and parts[0] in WORKLOADS and parts[3].startswith("{"):
                file_results.setdefault(parts[0], {}).setdefault(parts[1], []).append(json.loads(parts[3]))
            elif line.startswith("machine {"):
                m.update(json.loads(line.split(" ", 1)[1]))
            elif line.startswith("bounds {"):
                b = json.loads(line.split(" ", 1)[1])
                m.setdefault("flops", b["flops"])
                m.setdefault("bandwidth", b["bandwidth"])
            elif line.startswith("accuracy {"):
                row = json.loads(line.split(" ", 1)[1])
                acc[(row["workload"], row["system"], row["dtype"])] = row
        for w, systems in file_results.items():
            results.setdefault(w, {}).update(systems)  # later files replace a workload + system
    if a.machine_json:
        m.update(json.loads(a.machine_json))
    if "flops" not in m or "bandwidth" not in m:
        print("no bounds in the logs or --machine-json: measuring them on this machine", file=sys.stderr)
        m["flops"], m["bandwidth"] = bounds(a.threads)
    if "vendor" not in m:
        print("no machine line in the logs or --machine-json: assuming this machine", file=sys.stderr)
        m = {**cpuinfo(), "cores": os.cpu_count(), **m}
    m.setdefault("threads", next((x["threads"] for ss in results.values() for ms in ss.values() for x in ms
                                  if "threads" in x), a.threads))
    m.setdefault("tag", machine_tag(m))
    # Logs made before accuracy lines: computed from this machine's kept outputs, if it is this machine.
    if not acc and m["tag"] == machine_tag({**cpuinfo(), "cores": os.cpu_count()}):
        for w, systems in results.items():
            for s in systems:
                if s in COMPARED and (text := accuracy(w, s)):
                    acc[(w, *COMPARED[s])] = {"workload": w, "system": COMPARED[s][0], "dtype": COMPARED[s][1],
                                              "text": text}
    order = {w: i for i, w in enumerate(WORKLOADS)}
    rows = sorted(acc.values(), key=lambda r: (order.get(r["workload"], 99), list(COMPARED.values()).index(
        (r["system"], r["dtype"])) if (r["system"], r["dtype"]) in COMPARED.values() else 99))
    counts = sorted({len(ms) for ss in results.values() for ms in ss.values()})
    # Logs that replace some workloads' runs leave different counts: say so, not the largest.
    runs = (str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}") if counts else "0"
    logs = [str(Path(p).resolve().relative_to(ROOT)) if Path(p).resolve().is_relative_to(ROOT) else str(Path(p).resolve())
            for p in a.from_log]
    write(a, m, results, rows, logs, runs=runs, log=print)


# ---------------------------------------------------------------------------------------------
# Accuracy.


def accuracy(workload, system):
    """What `system` (a Trident dtype or a peer) changes in the results against Trident's f32
    results on the same workload, from the outputs the first run kept: a short description,
    or None when either is missing."""
    try:
        ref = json.loads((OUTPUTS / f"{workload}-trident.json").read_text())
        got = json.loads((OUTPUTS / f"{workload}-{system}.json").read_text())
    except (OSError, ValueError):
        return None
    if workload == "ner":
        # Entity agreement: F1 of the system's entities against f32's (same group and span).
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
    # Generation: token agreement, position by position, over f32's tokens (T5's, Marian's and
    # BART's ids as generated; GPT-2's continuations re-tokenized, the prompt included in both).
    if workload.startswith("t5") or workload in SEQ2SEQ:
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


# ---------------------------------------------------------------------------------------------
# Rendering.


def median(ms, key):
    vals = [m[key] for m in ms if key in m]
    return statistics.median(vals) if vals else None


HEADER = """# Benchmarks

Speed of Trident's pipelines against transformers (on torch), CTranslate2 and, for the encoder
workloads, ONNX Runtime, on the same checkpoints and inputs. One section per machine: numbers
from different machines are not comparable with each other.

Reproduce: `make bench` (creates the random full-size checkpoints under .bench/, converts them
for CTranslate2 and ONNX Runtime once, then runs `scripts/bench/run.py`). It measures on the
machine it runs on and replaces that machine's section only; its raw lines are kept in
`scripts/bench/results/`, and `run.py --from-log FILE ...` renders a section from them.

Columns: *throughput* is work done per second of the run (`unit/s`: tokens for NER, including
special tokens; sentences for classification and embeddings; new tokens for generation);
*ms per unit* its inverse; *load s* the time from process start to a loaded pipeline; *peak RSS
MB* the process's peak resident memory (MiB); *vs transformers* and *vs CT2 f32* throughput
ratios to those systems on the same machine. Each measurement is a fresh process; every row
is the median of the runs, systems alternating run by run. Systems: `trident` (f32),
`trident-bf16`, `trident-int8`; `transformers` (pipelines / sentence-transformers on torch);
`ct2-float32`, `ct2-int8` (CTranslate2); `ort-float32`, `ort-int8` (ONNX Runtime: the torch
export optimised with onnxruntime's transformer optimizer, int8 by dynamic quantization);
`llamacpp-f16`, `llamacpp-q8_0` (llama.cpp through llama-cpp-python, built from source by
`scripts/bench/setup_llamacpp.sh`; GGUF files made from the same checkpoint by llama.cpp's own
converter, F16, and quantizer, Q8_0; Llama workloads only).

**The Llama workloads** (issue 12; `run.py --only llama`): a SmolLM2-360M-shaped and a
TinyLlama-1.1B-shaped `LlamaForCausalLM` (full size, random weights, saved by transformers in
bf16 as the published checkpoints are; weights/llama-tiny's tokenizer, whose 1,006 ids lie below
both vocabularies). Every system gets the same token ids and does the same work: prefill of one
512-token prompt (1 new token; throughput in prompt tokens/s), and 32-token prompts with exactly
128 new tokens (EOS suppressed: min_new_tokens = max_new_tokens, CTranslate2's min_length,
llama.cpp a −∞ logit bias on EOS), greedy at batch 1 and 8, top-p 0.9 (top-k off, temperature
1) at batch 1. transformers loads the bf16 checkpoint with dtype float32; CTranslate2 converts
it once per quantization; llama.cpp runs through its C API (one `llama_decode` per step for all
rows, `n_threads` = `n_threads_batch` = the benchmark's threads, its default flash-attention
setting and mmap), with its extra weight buffer types (AMX on x86) unless a probe at
preparation finds that they crash on the machine (the `llamacpp … probe` line of the log; each
result line carries `extra_bufts`, and llama.cpp's own prompt and eval times). They do on the
Intel Xeon (AMX) machine with Debian's GCC 12.2: llama.cpp's AMX matrix product dies of SIGSEGV
at its first Q8_0 product, because the compiler dropped the stores that fill its tile
configuration before `ldtilecfg` (the instruction then loads garbage and faults); Q8_0 runs
without AMX there; F16, which that product computes with AVX-512 and no tiles, keeps them.

**Bounds of the decoding workloads** (GPT-2's and the Llama ones). Decoding reads every weight
once per step, so a step takes at least the bytes of the weights over the memory bandwidth.
Weights read per step: every projection of every block (Llama: q, k, v, o, gate, up, down;
GPT-2: the fused q/k/v, the attention output, the two MLP projections) and the output head (the
token table itself when tied), at the system's bytes per weight: 4 (`trident`, `transformers`,
`ct2-float32`), 2 (`trident-bf16`, `llamacpp-f16`), 1 (`trident-int8`, `ct2-int8`), 34/32
(`llamacpp-q8_0`: int8 plus a 2-byte scale per block of 32). GPT-2: 123.5 M weights per step,
494 MB in f32; SmolLM2-360M: 361.8 M, 1,447 MB in f32, 724 in bf16/f16, 362 in int8, 384 in
Q8_0; TinyLlama-1.1B: 1,034.4 M, 4,138 / 2,069 / 1,034 / 1,099 MB. Left out: the norms (and
GPT-2's biases), the one row of the token table a token looks up, int8 scales, and the KV
cache (0.1–0.5 % of the f32 weights at the workloads' 96 positions on average, up to 2.2 % of
the int8 ones). The bound in tokens/s is the memory bandwidth over those bytes. The bandwidth
is measured as for the machine line (sums over an f32 buffer on the benchmark's threads for
half a second, their median; the buffer is 256 MB, or four times the last-level cache where
that is larger, because a buffer the cache holds measures the cache: on the Intel Xeon with a
300 MB L3 a 256 MB one read at 27–34 GB/s where 512 MB–2 GB read at 23–29), again just before
and just after each decoding run. On a
shared host it switches between levels (on the Zen 5 VM about 93 and 55 GB/s, in spells of
0.1 s to seconds), so a run and the measurements beside it can fall in different spells: the
bound uses the highest bandwidth measured around a workload's runs and sets it against the
fastest run (tables written before the eighth pass of 2026-12-05 set each run against the
mean of its own two measurements; logs without them use the machine line's). For Trident the table also sets the
decoding steps alone against the bound: the steps after the first new token (the run less
its prompt's prefill and the first calls that measure the kernels), `decode_s` and
`decode_steps` in the log lines. At batch 8 one step serves 8 tokens, so its bound is 8 times that (compute
may bind first). Prefill is compute-bound: 2 FLOPs per projection weight per prompt token
plus causal attention (2 · 512 · hidden per layer; the head runs for the last position
only), 0.66 GFLOP per token for SmolLM2-360M and 1.98 for TinyLlama-1.1B, over the measured
f32 matmul rate (f32 systems only). `scripts/bench/llama_shapes.py` computes both; the
section's bounds table lists each decoding row and Llama prefill row against its bound."""


def version_line(v):
    if not v:
        return "Versions: not recorded."
    parts = [f"Trident {v.get('trident', '?')} (tch {v.get('tch', '?')}, libtorch {v.get('libtorch', '?')})",
             f"transformers {v.get('transformers', '?')} on torch {v.get('torch', '?')}"]
    parts += [f"{name} {v[key]}" for key, name in (("ctranslate2", "CTranslate2"), ("onnxruntime", "ONNX Runtime"),
                                                   ("llama_cpp", "llama-cpp-python"), ("python", "Python"))
              if v.get(key) and not (key == "llama_cpp" and v[key] == "not installed")]
    return "Versions: " + ", ".join(parts) + "."


def section(m, results, acc, logs, runs):
    """This machine's section of the page, its marker first."""
    cpu = " ".join(x for x in (f"family {m['family']}" if m.get("family") else "",
                               f"model {m['model']}" if m.get("model") else "") if x)
    lines = [
        f"<!-- machine: {m['tag']} -->",
        f"## {m.get('vendor', 'unknown')} / {m.get('model_name', 'unknown')}"
        + (f" (family {m['family']} model {m['model']})" if m.get("family") and m.get("model") else ""), "",
        f"Measured {m.get('date', '?')}: {m.get('cores', '?')} cores"
        + (f" (CPU {cpu})" if cpu else "") + f"; flags: {' '.join(m.get('flags', [])) or 'none recorded'}. "
        f"{m.get('threads', '?')} threads for every system, {runs} runs per system, alternating; medians.", "",
        version_line(m.get("versions")), "",
        f"Measured bounds on this machine: f32 matmul {m['flops'] / 1e9:.0f} GFLOP/s; memory bandwidth "
        f"(reading {m.get('bandwidth_buffer_mb', 256)} MB on {m.get('threads', '?')} threads"
        + (f"; last-level cache {m['last_level_cache_mb']} MB" if m.get("last_level_cache_mb") else "")
        + f") {m['bandwidth'] / 1e9:.1f} GB/s.", "",
    ]
    if logs:
        lines += ["Raw lines: " + ", ".join(f"`{p}`" for p in logs) + ".", ""]
    lines += [
        "| workload | system | throughput | unit/s | ms per unit | load s | peak RSS MB | vs transformers | vs CT2 f32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rank = lambda s: ALL_SYSTEMS.index(s) if s in ALL_SYSTEMS else len(ALL_SYSTEMS)
    results = {w: {s: results[w][s] for s in sorted(results[w], key=rank)}
               for w in sorted(results, key=lambda w: list(WORKLOADS).index(w))}
    for w, systems in results.items():
        base = {}
        for s, ms in systems.items():
            run, units = median(ms, "run_s"), median(ms, "units")
            base[s] = units / run if run else None
        for s, ms in systems.items():
            run, units, load, rss = median(ms, "run_s"), median(ms, "units"), median(ms, "load_s"), median(ms, "peak_rss_kb")
            if run is None:
                err = next((m_["error"] for m_ in ms if "error" in m_), "failed").replace("|", "/")
                lines.append(f"| {w} | {s} | failed: {err} | | | | | | |")
                continue
            unit = next(m_["unit"] for m_ in ms if "unit" in m_)
            tput = units / run
            rel = lambda other: f"{tput / base[other]:.2f}×" if base.get(other) else "–"
            lines.append(f"| {w} | {s} | {tput:.1f} | {unit}/s | {1000 / tput:.2f} | {load:.2f} | {rss / 1024:.0f} | "
                         f"{rel('transformers')} | {rel('ct2-float32')} |")
    lines += bounds_table(m, results)
    kernels = [(w, ss["trident"][0]["kernels"]) for w, ss in results.items()
               if ss.get("trident") and ss["trident"][0].get("kernels")]
    if kernels:
        lines += ["", "Kernel paths Trident f32 took (first run of each workload):", ""]
        for w, ks in kernels:
            lines += [f"- `{w}`:"] + [f"  - `{k}`" for k in ks]
    lines += ["", "Workloads:", ""] + [f"- `{w}`: {DESCRIPTION[w]}" for w in results]
    if acc:
        lines += ["", "### What bf16 and int8 cost in accuracy", "",
                  "Each system's results against Trident's f32 results (which match transformers), same "
                  "inputs, from the first run of each: Trident in bf16 / int8, and the peers that keep "
                  "their results (ONNX Runtime f32 / int8, CTranslate2 int8: encoder workloads; "
                  "transformers, CTranslate2 f32 / int8: Marian and BART).", "",
                  "| workload | system | dtype | difference from Trident f32 |", "|---|---|---|---|"]
        lines += [f"| {r['workload']} | {r['system']} | {r['dtype']} | {r['text']} |" for r in acc]
    return "\n".join(lines)


def workload_bound(m, workload, system, ms=()):
    """(basis, bound in the workload's unit/s, measured unit/s, measured / bound, decoding
    steps' unit/s or None, theirs / bound or None) of a decoding workload (GPT-2's or a Llama
    model's) or a Llama prefill on a system, from its measurements `ms`: decoding, the weights
    one step reads × bytes per weight over the memory bandwidth, times the batch; prefill (f32
    systems only), the FLOPs per prompt token over the measured f32 matmul rate.

    Where the runs carry the bandwidth measured around them, the bound is the highest of those
    measurements and the measured speed the fastest run's: this machine's bandwidth switches
    between two levels (about 93 and 55 GB/s on the Zen 5 VM) for spells of 0.1 s to seconds,
    so a run and the measurements beside it may fall in different spells, and only the fast
    spell's figures pair up reliably. Else the machine line's bandwidth and the median run.
    The decoding steps' speed (the steps after the first new token: no prefill, no first calls
    that measure kernels) is there for the systems that report it (Trident's
    `decode_s`/`decode_steps`). None where there is no such bound or nothing was measured."""
    done = [x for x in ms if x.get("run_s") and x.get("units")]
    if not done:
        return None
    if workload in LLAMA_WORKLOADS and LLAMA_KINDS[LLAMA_WORKLOADS[workload][1]][2] == 1:
        if system not in F32_SYSTEMS:
            return None
        speed = statistics.median(x["units"] / x["run_s"] for x in done)
        flops = prefill_flops_per_token(LLAMA[LLAMA_WORKLOADS[workload][0]], 512)
        limit = m["flops"] / flops
        return (f"{flops / 1e9:.2f} GFLOP per prompt token at {m['flops'] / 1e9:.0f} GFLOP/s", limit, speed,
                speed / limit, None, None)
    if workload not in DECODING or system not in BYTES_PER_WEIGHT:
        return None
    weights, batch = DECODING[workload]
    nbytes = weights * BYTES_PER_WEIGHT[system]
    per = f", {batch} tokens per step" if batch > 1 else ""
    steps = [x for x in done if x.get("decode_s") and x.get("decode_steps")]
    if all(x.get("bandwidth") for x in done):
        lo = min(min(x.get("bandwidth_range", [x["bandwidth"]])) for x in done)
        bw = max(max(x.get("bandwidth_range", [x["bandwidth"]])) for x in done)
        speed = max(x["units"] / x["run_s"] for x in done)
        basis = (f"{nbytes / 1e6:.0f} MB per step at {bw / 1e9:.1f} GB/s (the highest measured around the "
                 f"runs; lowest {lo / 1e9:.1f}){per}")
        decoding = max((batch * x["decode_steps"] / x["decode_s"] for x in steps), default=None)
    else:
        bw = m["bandwidth"]
        speed = statistics.median(x["units"] / x["run_s"] for x in done)
        basis = f"{nbytes / 1e6:.0f} MB per step at {bw / 1e9:.1f} GB/s{per}"
        decoding = (statistics.median(batch * x["decode_steps"] / x["decode_s"] for x in steps)
                    if steps else None)
    limit = batch * bw / nbytes
    cache_mb = m.get("last_level_cache_mb") or 0
    if nbytes <= cache_mb * (1 << 20):
        # Weights the last-level cache can hold may be read from it, faster than from memory
        # (GPT-2's 124 MB of int8 weights on the Intel Xeon with a 300 MB L3 ran at 102–110 %
        # of the memory bound): the memory bound is then no bound.
        basis += f"; the weights fit in the {cache_mb} MB last-level cache, so this is not a bound"
    return basis, limit, speed, speed / limit, decoding, (decoding / limit if decoding else None)


def bounds_table(m, results):
    """The decoding workloads' and Llama prefills' rows against their physical bounds (see the
    method above)."""
    rows = []
    for w, systems in results.items():
        if w not in LLAMA_WORKLOADS and w not in DECODING:
            continue
        for s, ms in systems.items():
            bound = workload_bound(m, w, s, ms)
            if bound is None:
                continue
            basis, limit, speed, ratio, decoding, decoding_ratio = bound
            steps = f"{decoding:.1f} | {100 * decoding_ratio:.0f} %" if decoding else "– | –"
            rows.append(f"| {w} | {s} | {basis} | {limit:.1f} | {speed:.1f} | {100 * ratio:.0f} % | {steps} |")
    if not rows:
        return []
    return ["", "Decoding and Llama prefill against their bounds (decoding: weight bytes per step over the memory "
                "bandwidth, the highest measured just before and after the runs, against the fastest run, and "
                "for Trident the same for its decoding steps alone, after the first new token; prefill, f32 only: "
                "FLOPs per prompt token over the measured f32 matmul rate, against the median run):", "",
            "| workload | system | bound from | bound unit/s | measured unit/s | measured / bound "
            "| decoding steps unit/s | steps / bound |",
            "|---|---|---|---|---|---|---|---|"] + rows


def sections_of(page):
    """[(tag, text)] of the machine sections of an existing page, in order."""
    end = page.find(END_MARK)
    body = page if end < 0 else page[:end]
    marks = list(MACHINE_MARK.finditer(body))
    return [(mk.group(1), body[mk.start(): marks[i + 1].start() if i + 1 < len(marks) else len(body)].rstrip())
            for i, mk in enumerate(marks)]


def write(a, m, results, acc, logs, runs, log=print):
    try:
        page = Path(a.base).read_text()
    except OSError:
        page = ""
    kept = sections_of(page)
    if page and not kept:
        log(f"note: {a.base} has no machine sections (an older layout); its measurements are not kept")
    mine = section(m, results, acc, logs, runs)
    if any(tag == m["tag"] for tag, _ in kept):
        kept = [(tag, mine if tag == m["tag"] else text) for tag, text in kept]
    else:
        kept.append((m["tag"], mine))
    parts = [HEADER] + [text for _, text in kept] + [END_MARK]
    analysis = ROOT / "scripts/bench/analysis.md"
    if analysis.exists():
        parts.append(analysis.read_text().rstrip())
    Path(a.out).write_text("\n\n".join(parts) + "\n")
    log(f"wrote {a.out} (section {m['tag']}; sections: {', '.join(tag for tag, _ in kept)})")


if __name__ == "__main__":
    sys.exit(main())
