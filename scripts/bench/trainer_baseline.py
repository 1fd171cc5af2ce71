"""Issue 14's fine-tuning comparison: the same fine-tuning as `make models` (scripts/make_models.py)
done with transformers' Trainer, and the same `trident train` command measured for its peak RSS.

    .venv-fixtures/bin/python scripts/bench/trainer_baseline.py [--task ner,sentiment] [--system trainer,trident]
                                                                 [--log scripts/bench/results/DATE-training.log]

Same as make_models.py, by construction:
- data: its own functions (`fetch`, `split3`, `wnut_sentences`, `tweets`, SEED), so the train / dev /
  test splits are the ones `trident train` saw (train and dev are checked against the files it
  wrote under .cache/trident-data when they exist); the sentiment training set is the first
  `--sentiment-train` (4000) of the shuffled training split;
- base: weights/all-MiniLM-L6-v2, with a new head whose labels are in the order of Trident's output
  config.json `id2label` (read from weights/minilm-wnut16-ner and weights/minilm-tweet-sentiment
  when they exist; otherwise Trident's rule: sorted class labels, or `O` then `B-`/`I-` of each
  sorted entity type);
- hyper-parameters: those of make_models.make() (epochs 3 / 1, lr 5e-5, batch 16 / 32,
  max_length 64, warm-up 10 % of the steps rounded up, weight decay 0.01, seed 42); Trainer's
  defaults for the rest, which Trident copies (AdamW, linear schedule, gradient clipping at 1.0,
  dropout from the config);
- tokenization: truncation to 64 tokens; NER as transformers' token-classification example
  (words as `is_split_into_words`, the label on each word's first sub-token, -100 elsewhere);
- the best epoch: evaluated on dev after every epoch, `load_best_model_at_end` on the score that
  decides in Trident (crates/core/src/train/trainer.rs `EvalScores::primary`): the overall entity
  F1 (seqeval's default mode) for NER, macro-F1 for classification;
- test scores: as score_ner / score_sentiment compute them (NER: the words joined by spaces, each
  word tagged with its first sub-token's prediction, entities by make_models.entities; sentiment:
  accuracy and macro-F1);
- threads: torch.set_num_threads(2), as make_models' `--threads 2`.

Measured (each task in its own process, so that its peak RSS is its own):
- `train_seconds`: wall time from loading the model to the end of training, evaluation after each
  epoch and checkpoint saves included — what make_models' `train_seconds` measures around
  `trident train`; `examples_per_second` = train examples × epochs / train_seconds; the Trainer's
  own `train_runtime` is recorded too;
- `peak_rss_mb`: ru_maxrss of the process when training ends (before test scoring);
- `load`: /proc/loadavg before and after (this is a 2-core machine shared with other jobs).

`--system trident` runs make_models' exact `trident train` command for the task under
/usr/bin/time -v into a temporary output directory (removed after), for its peak RSS and a wall
time taken in the same conditions as the Trainer run.

`cpu_seconds` (user + system of the training, from getrusage / time -v) is recorded beside the
wall times, as they are less affected by other jobs.

`--score --task sentiment` (or ner) only scores Trident's model in weights/ on the test split, as
make_models does (for sentiment it reads `trident classify`'s `{label, score}` result; make_models'
score_sentiment indexes it as a list and fails).

Each result is one JSON line appended to the log.
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import make_models as mm  # noqa: E402

BASE = ROOT / "weights" / "all-MiniLM-L6-v2"
OUT = {"ner": ROOT / "weights" / "minilm-wnut16-ner", "sentiment": ROOT / "weights" / "minilm-tweet-sentiment"}
THREADS = 2
MAX_LENGTH = 64


def hyper(task, args):
    """make_models.make()'s hyper-parameters."""
    if task == "ner":
        return {"epochs": args.ner_epochs, "learning_rate": 5e-5, "batch_size": 16, "max_length": MAX_LENGTH,
                "warmup_ratio": 0.1, "weight_decay": 0.01, "seed": mm.SEED}
    return {"epochs": args.sentiment_epochs, "learning_rate": 5e-5, "batch_size": 32, "max_length": MAX_LENGTH,
            "warmup_ratio": 0.1, "weight_decay": 0.01, "seed": mm.SEED}


def splits(task, args, cache):
    """make_models' train / dev / test of `task`; train and dev checked against the files it wrote."""
    raw = mm.fetch(task, cache)
    if task == "ner":
        train, dev, test = mm.split3(mm.wnut_sentences(raw), 200, 400)
        for name, part in (("train", train), ("dev", dev), ("test", test)):
            f = cache / "ner" / f"{name}.conll"
            if f.exists():
                assert mm.wnut_sentences(f.read_bytes()) == part, f"{f} differs from make_models' {name} split"
    else:
        train, dev, test = mm.split3(mm.tweets(raw), 500, 2000)
        train = train[:args.sentiment_train]
        for name, part in (("train", train), ("dev", dev)):
            f = cache / "sentiment" / f"{name}.jsonl"
            if f.exists():
                rows = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
                assert [(r["text"], r["label"]) for r in rows] == part, f"{f} differs from make_models' {name} split"
    return train, dev, test


def label_names(task, train):
    """Trident's label order: its output config.json's id2label, or its rule."""
    config = OUT[task] / "config.json"
    if config.exists():
        id2label = json.loads(config.read_text())["id2label"]
        return [id2label[str(i)] for i in range(len(id2label))], str(config.relative_to(ROOT))
    if task == "sentiment":
        return sorted({l for _, l in train}), "rule (sorted labels)"
    types = sorted({t.partition("-")[2] for s in train for _, t in s if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in "BI"], "rule (O, then B-/I- of sorted types)"


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def loadavg():
    return Path("/proc/loadavg").read_text().split()[:3]


def macro_f1(gold, pred, labels):
    f1s = []
    for l in labels:
        tp = sum(g == l and p == l for g, p in zip(gold, pred))
        fp = sum(g != l and p == l for g, p in zip(gold, pred))
        fn = sum(g == l and p != l for g, p in zip(gold, pred))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s)


def run_trainer(task, args, cache):
    import numpy as np
    import torch
    import transformers
    from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer,
                              DataCollatorForTokenClassification, DataCollatorWithPadding, Trainer, TrainingArguments)

    torch.set_num_threads(THREADS)
    hp = hyper(task, args)
    train, dev, test = splits(task, args, cache)
    labels, label_source = label_names(task, train)
    label2id = {l: i for i, l in enumerate(labels)}
    load_before = loadavg()
    workdir = Path(tempfile.mkdtemp(prefix=f"trainer-{task}-"))

    start, cpu_start = time.time(), cpu_seconds()
    transformers.set_seed(hp["seed"])
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    auto = AutoModelForTokenClassification if task == "ner" else AutoModelForSequenceClassification
    model = auto.from_pretrained(BASE, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)

    if task == "ner":
        def encode(sentences):
            enc = tokenizer([[w for w, _ in s] for s in sentences], is_split_into_words=True, truncation=True,
                            max_length=hp["max_length"])
            rows = []
            for i, s in enumerate(sentences):
                ids, previous = [], None
                for w in enc.word_ids(i):
                    ids.append(-100 if w is None or w == previous else label2id[s[w][1]])
                    previous = w
                rows.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                             "labels": ids})
            return rows

        collator = DataCollatorForTokenClassification(tokenizer)

        def compute_metrics(p):
            logits, gold = p
            best = np.argmax(logits, axis=-1)
            gold_all, pred_all = set(), set()
            for i, (g_row, p_row) in enumerate(zip(gold, best)):
                keep = g_row != -100
                gold_all |= {(i, *e) for e in mm.entities([labels[x] for x in g_row[keep]])}
                pred_all |= {(i, *e) for e in mm.entities([labels[x] for x in p_row[keep]])}
            precision, recall, f1 = mm.prf(gold_all, pred_all)
            return {"precision": precision, "recall": recall, "f1": f1}

        best_metric = "f1"
    else:
        def encode(rows):
            enc = tokenizer([t for t, _ in rows], truncation=True, max_length=hp["max_length"])
            return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                     "labels": label2id[l]} for i, (_, l) in enumerate(rows)]

        collator = DataCollatorWithPadding(tokenizer)

        def compute_metrics(p):
            logits, gold = p
            best = np.argmax(logits, axis=-1)
            return {"accuracy": float((best == gold).mean()),
                    "macro_f1": macro_f1(list(gold), list(best), range(len(labels)))}

        best_metric = "macro_f1"

    train_rows, dev_rows = encode(train), encode(dev)
    training_args = TrainingArguments(
        output_dir=str(workdir), num_train_epochs=hp["epochs"], learning_rate=hp["learning_rate"],
        per_device_train_batch_size=hp["batch_size"], per_device_eval_batch_size=hp["batch_size"],
        warmup_steps=hp["warmup_ratio"],  # < 1: a ratio, ceil(total × ratio) steps as Trident
        weight_decay=hp["weight_decay"], seed=hp["seed"], eval_strategy="epoch", save_strategy="epoch",
        load_best_model_at_end=True, metric_for_best_model=best_metric, greater_is_better=True,
        save_total_limit=1, logging_strategy="epoch", report_to="none", use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_rows, eval_dataset=dev_rows,
                      data_collator=collator, compute_metrics=compute_metrics)
    out = trainer.train()
    seconds, cpu = time.time() - start, cpu_seconds() - cpu_start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load_after = loadavg()
    history = [{k: v for k, v in h.items() if k.startswith("eval_") or k in ("epoch", "loss")}
               for h in trainer.state.log_history if "eval_loss" in h or "loss" in h]

    model = trainer.model.eval()
    with torch.inference_mode():
        if task == "ner":
            scores = score_ner(model, tokenizer, labels, test)
        else:
            scores = score_sentiment(model, tokenizer, labels, test)
    shutil.rmtree(workdir, ignore_errors=True)
    return {"system": "transformers-trainer", "task": task,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "threads": THREADS, "hyper_parameters": hp, "labels": labels, "label_source": label_source,
            "data": {"train": len(train), "dev": len(dev), "test": len(test)},
            "train_seconds": round(seconds, 1),
            "examples_per_second": round(len(train) * hp["epochs"] / seconds, 1),
            "cpu_seconds": round(cpu, 1), "trainer_train_runtime": round(out.metrics["train_runtime"], 1),
            "best_checkpoint": trainer.state.best_model_checkpoint and Path(trainer.state.best_model_checkpoint).name,
            "best_metric": {best_metric: trainer.state.best_metric}, "history": history,
            "peak_rss_mb": round(peak_rss_mb, 1), "load_before": load_before, "load_after": load_after,
            "test": scores}


def predict(model, tokenizer, texts, batch=64):
    import torch
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], truncation=True, padding=True, return_offsets_mapping=True,
                        return_tensors="pt")
        offsets = enc.pop("offset_mapping")
        best = model(**enc).logits.argmax(-1)
        out.extend(zip(best.tolist(), offsets.tolist(), enc["attention_mask"].tolist()))
    return out


def score_ner(model, tokenizer, labels, test):
    """make_models.score_ner on this model: the words joined by spaces; a word takes the label of
    the token that starts where it starts (its first sub-token)."""
    texts = [" ".join(w for w, _ in s) for s in test]
    gold_all, pred_all = set(), set()
    for i, (sentence, (best, offsets, mask)) in enumerate(zip(test, predict(model, tokenizer, texts))):
        starts, pos = {}, 0
        for j, (w, _) in enumerate(sentence):
            starts[pos] = j
            pos += len(w) + 1
        pred = ["O"] * len(sentence)
        for label, (a, b), m in zip(best, offsets, mask):
            j = starts.get(a) if m and b > a else None  # special tokens and padding have (0, 0)
            if j is not None:
                pred[j] = labels[label]
        gold_all |= {(i, *g) for g in mm.entities([t for _, t in sentence])}
        pred_all |= {(i, *p) for p in mm.entities(pred)}
    p, r, f = mm.prf(gold_all, pred_all)
    types = sorted({g[1] for g in gold_all})
    per_type = {t: dict(zip(("precision", "recall", "f1"),
                            mm.prf({g for g in gold_all if g[1] == t}, {q for q in pred_all if q[1] == t})))
                for t in types}
    return {"entity_precision": p, "entity_recall": r, "entity_f1": f, "per_type": per_type,
            "test_sentences": len(test), "test_entities": len(gold_all)}


def score_sentiment(model, tokenizer, labels, test):
    gold = [l for _, l in test]
    pred = [labels[best] for best, _, _ in predict(model, tokenizer, [t for t, _ in test])]
    return {"accuracy": sum(g == p for g, p in zip(gold, pred)) / len(gold),
            "macro_f1": macro_f1(gold, pred, sorted(set(gold))), "test_texts": len(test)}


def trident_sentiment(binary, model, test):
    """make_models.score_sentiment, reading `trident classify`'s result as it is: one
    {label, score} object per text (score_sentiment indexes it as a list, which fails)."""
    results = mm.trident_lines(binary, ["classify", "--model", model], [{"id": i, "text": t} for i, (t, _) in enumerate(test)])
    gold = [l for _, l in test]
    pred = []
    for i in range(len(test)):
        r = results.get(i) or {"label": None}
        pred.append((r[0] if isinstance(r, list) else r)["label"])
    return {"accuracy": sum(g == p for g, p in zip(gold, pred)) / len(gold),
            "macro_f1": macro_f1(gold, pred, sorted(set(gold))), "test_texts": len(test)}


def run_trident(task, args, cache):
    """make_models' `trident train` command for `task` under /usr/bin/time -v, into a temp dir."""
    hp = hyper(task, args)
    data = cache / task
    files = ("train.conll", "dev.conll") if task == "ner" else ("train.jsonl", "dev.jsonl")
    for f in files:
        if not (data / f).exists():
            raise SystemExit(f"{data / f} is missing: run scripts/make_models.py --only {task} first")
    out = Path(tempfile.mkdtemp(prefix=f"trident-{task}-")) / "model"
    cmd = ["/usr/bin/time", "-v", args.binary, "--threads", str(THREADS), "train",
           "ner" if task == "ner" else "classify", "--model", BASE, "--train", data / files[0],
           "--eval", data / files[1], "--output", out]
    for k, v in hp.items():
        cmd += ["--" + k.replace("_", "-"), v]
    cmd = [str(c) for c in cmd]
    load_before = loadavg()
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.time() - start
    load_after = loadavg()
    if proc.returncode != 0:
        shutil.rmtree(out.parent, ignore_errors=True)
        raise SystemExit(f"trident train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    _, _, test = splits(task, args, cache)
    scores = mm.score_ner(args.binary, out, test) if task == "ner" else trident_sentiment(args.binary, out, test)
    shutil.rmtree(out.parent, ignore_errors=True)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", proc.stderr).group(1)) for k in ("User", "System"))
    n_train = sum(1 for _ in (data / files[0]).read_text(encoding="utf-8").split("\n\n")) if task == "ner" \
        else sum(1 for line in (data / files[0]).read_text(encoding="utf-8").splitlines() if line.strip())
    record = json.loads((OUT[task] / "training.json").read_text()) if (OUT[task] / "training.json").exists() else None
    return {"system": "trident", "task": task, "command": " ".join(cmd[2:]), "threads": THREADS,
            "hyper_parameters": hp, "data": {"train": n_train},
            "train_seconds": round(seconds, 1), "examples_per_second": round(n_train * hp["epochs"] / seconds, 1),
            "cpu_seconds": round(cpu, 1), "peak_rss_mb": round(rss_kb / 1024, 1), "load_before": load_before, "load_after": load_after,
            "trained": next((l for l in proc.stderr.splitlines() if l.startswith("trained ")), None), "test": scores,
            "training_json": None if record is None else {
                "train_seconds": record["train_seconds"], "examples_per_second": record["examples_per_second"],
                "test": {k: v for k, v in record["test"].items() if k != "per_type"}}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="ner,sentiment")
    ap.add_argument("--system", default="trainer", help="trainer, trident, or both (comma-separated)")
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "trident"))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "trident-data"))
    ap.add_argument("--log", default=str(ROOT / "scripts" / "bench" / "results" / f"{time.strftime('%Y-%m-%d')}-training.log"))
    ap.add_argument("--ner-epochs", type=int, default=3)
    ap.add_argument("--sentiment-epochs", type=int, default=1)
    ap.add_argument("--sentiment-train", type=int, default=4000)
    ap.add_argument("--score", action="store_true",
                    help="only score Trident's model in weights/ on the test split (first task), as make_models does")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # in a child: one task, one system
    args = ap.parse_args()
    cache = Path(args.cache)
    tasks, systems = args.task.split(","), args.system.split(",")
    if args.score:
        task = tasks[0]
        _, _, test = splits(task, args, cache)
        scores = mm.score_ner(args.binary, OUT[task], test) if task == "ner" else trident_sentiment(args.binary, OUT[task], test)
        result = {"system": "trident", "task": task, "model": str(OUT[task].relative_to(ROOT)), "test": scores,
                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with Path(args.log).open("a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
        print(json.dumps(result))
        return
    if args.one:
        result = (run_trainer if systems[0] == "trainer" else run_trident)(tasks[0], args, cache)
        print(json.dumps(result))
        return
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        for system in systems:
            child = [sys.executable, __file__, "--one", "--task", task, "--system", system, "--binary", args.binary,
                     "--cache", args.cache, "--ner-epochs", str(args.ner_epochs),
                     "--sentiment-epochs", str(args.sentiment_epochs), "--sentiment-train", str(args.sentiment_train)]
            print(f"$ {task} · {system}", file=sys.stderr, flush=True)
            proc = subprocess.run(child, stdout=subprocess.PIPE, text=True, check=True)
            line = proc.stdout.strip().splitlines()[-1]
            result = json.loads(line)
            result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with log.open("a", encoding="utf-8") as f:
                f.write(json.dumps(result) + "\n")
            print(json.dumps({k: result[k] for k in ("task", "system", "train_seconds", "examples_per_second",
                                                     "peak_rss_mb", "load_before", "load_after")}
                             | {"test": {k: v for k, v in (result.get("test") or {}).items() if k != "per_type"}}))


if __name__ == "__main__":
    main()
