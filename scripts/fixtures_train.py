#!/usr/bin/env python3
"""The fine-tuning reference, weights/train/reference.json: N optimizer steps of PyTorch on the tiny fixtures.

For each of two tasks, sequence classification on weights/bert-tiny-sentiment with weights/train/sentiment.csv and
token classification on weights/bert-tiny-ner with weights/train/ner.conll (both data files are committed, a few
dozen lines each, and read here with Python's csv module and a plain CoNLL reader), it records:

* `examples`: the first EXAMPLES examples of the file, tokenized as transformers' examples do it (run_glue:
  `tokenizer(text, truncation=True, max_length=MAX_LENGTH)`; run_ner: `tokenizer(words, is_split_into_words=True,
  truncation=True, max_length=MAX_LENGTH)` with the label on each word's first sub-token and -100 on the other
  sub-tokens and on special tokens): `input_ids`, `token_type_ids` and `labels` per example, unpadded;
* `batches`: the example indices of each of the STEPS batches (consecutive, BATCH_SIZE each), padded on the right
  (the tokenizer's pad, labels with -100) as DataCollatorWithPadding / DataCollatorForTokenClassification pad them;
* `steps[]`: for each optimizer step the batch's loss (`model(**batch, labels=...).loss`, transformers'
  CrossEntropyLoss), the learning rate the step used and the gradients' global norm before clipping;
* `parameters{name}`: for every parameter after the last step its sum, its first 8 values (flattened), the position
  (flat index) of its largest change over the run with the value there, that change, and whether it decays.

The training step is transformers' Trainer's with its defaults spelled out: `torch.optim.AdamW` over two groups
(weight decay WEIGHT_DECAY on `Trainer.get_decay_parameter_names`, 0 on biases and LayerNorm weights), betas
(0.9, 0.999), eps 1e-8, `get_linear_schedule_with_warmup` with ceil(STEPS * WARMUP_RATIO) warm-up steps out of
STEPS, `clip_grad_norm_(model.parameters(), 1.0)`, then `optimizer.step()`, `scheduler.step()`,
`optimizer.zero_grad()`.  Dropout is off (`model.eval()`: every dropout, attention's included, is the identity;
gradients flow as in training).  The same steps in float64 must agree with float32 to well within the 1e-4 the
Rust test allows (checked, with the largest difference recorded as `float64_max_difference`), and the weights must
move by far more than that (`min_largest_change`).

One kind of parameter is the exception, marked `rounding_noise: true`: the attention key biases.  Their gradient is
exactly zero in exact arithmetic (a bias added to every key shifts all of a query's scores by the same amount, which
softmax ignores), so what they receive is rounding noise, and AdamW, which divides each update by the gradient's
running magnitude, turns that noise into steps of up to the learning rate.  float32 and float64 (or any two
implementations) then move them differently (here by up to ~1e-3), while the model's outputs cannot see them.  The
test checks only that they stay within the summed learning rates of where they started.

Nothing here uses Trident code.  Deterministic: CPU, float32, one thread; a rerun writes byte-identical files.
Run through scripts/fixtures.sh, or directly:

    .venv-fixtures/bin/python scripts/fixtures_train.py [--out weights/train/reference.json] [--data weights/train]
        [--weights weights]

It runs after make_fixtures.py (it reads the bert-tiny-sentiment and bert-tiny-ner fixtures).
"""

import argparse
import copy
import csv
import json
import math
import os
import sys
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    Trainer,
    get_linear_schedule_with_warmup,
)

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
STEPS = 5
BATCH_SIZE = 4
EXAMPLES = STEPS * BATCH_SIZE
MAX_LENGTH = 20  # some examples are longer: truncation is part of the check
LEARNING_RATE = 5e-3
WARMUP_RATIO = 0.3  # ceil(5 * 0.3) = 2 warm-up steps: learning rates 0, lr/2, lr, 2lr/3, lr/3
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
TOLERANCE = 1e-4  # what the Rust test allows
ROUNDING_NOISE = ("attention.self.key.bias",)  # parameters whose true gradient is zero (see above)

TASKS = [
    {
        "name": "classify",
        "model": "bert-tiny-sentiment",
        "data": "sentiment.csv",
        "class": AutoModelForSequenceClassification,
    },
    {
        "name": "ner",
        "model": "bert-tiny-ner",
        "data": "ner.conll",
        "class": AutoModelForTokenClassification,
    },
]


# --------------------------------------------------------------------------------------------------------------
# Deterministic JSON (sorted keys, floats with 9 significant digits, which round-trips float32)
# --------------------------------------------------------------------------------------------------------------


def rnd(x):
    v = float(format(float(x), ".9g"))
    return 0.0 if v == 0 else v


def plain(o):
    if isinstance(o, dict):
        return {str(k): plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [plain(v) for v in o]
    if isinstance(o, torch.Tensor):
        return plain(o.tolist())
    if isinstance(o, bool):
        return o
    if isinstance(o, int):
        return o
    if isinstance(o, float):
        return rnd(o)
    return o


def dump(o, ind=0):
    pad = " " * ind
    if isinstance(o, dict):
        if not o:
            return "{}"
        items = [f"{pad} {json.dumps(k)}: {dump(o[k], ind + 1)}" for k in sorted(o)]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(o, list) and any(isinstance(v, (dict, list)) for v in o):
        return "[\n" + ",\n".join(f"{pad} {dump(v, ind + 1)}" for v in o) + "\n" + pad + "]"
    return json.dumps(o, ensure_ascii=False, allow_nan=False)


def write_json(path, obj):
    text = dump(plain(obj)) + "\n"
    json.loads(text)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# Data, read and tokenized as transformers' examples do
# --------------------------------------------------------------------------------------------------------------


def read_csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


def read_conll(path):
    sentences, words, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if words:
                    sentences.append((words, tags))
                words, tags = [], []
                continue
            words.append(fields[0])
            tags.append(fields[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def classification_examples(tok, path, label2id):
    out = []
    for text, label in read_csv(path)[:EXAMPLES]:
        enc = tok(text, truncation=True, max_length=MAX_LENGTH)
        out.append(
            {
                "input_ids": enc["input_ids"],
                "token_type_ids": enc["token_type_ids"],
                "labels": [label2id[label]],
            }
        )
    return out


def ner_examples(tok, path, label2id):
    out = []
    for words, tags in read_conll(path)[:EXAMPLES]:
        enc = tok(words, is_split_into_words=True, truncation=True, max_length=MAX_LENGTH)
        labels, previous = [], None
        for w in enc.word_ids():
            if w is None or w == previous:
                labels.append(-100)
            else:
                labels.append(label2id[tags[w]])
            previous = w
        out.append({"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"], "labels": labels})
    return out


def pad_batch(examples, pad_id, token_level):
    width = max(len(e["input_ids"]) for e in examples)

    def padded(key, value):
        return torch.tensor([e[key] + [value] * (width - len(e[key])) for e in examples])

    batch = {
        "input_ids": padded("input_ids", pad_id),
        "token_type_ids": padded("token_type_ids", 0),
        "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"]))
                                        for e in examples]),
    }
    if token_level:
        batch["labels"] = padded("labels", -100)
    else:
        batch["labels"] = torch.tensor([e["labels"][0] for e in examples])
    return batch


# --------------------------------------------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------------------------------------------


def run_steps(model, batches):
    """Trainer's optimizer, schedule and clipping over `batches`; returns the per-step records."""
    decay = set(Trainer.get_decay_parameter_names(None, model))
    params = dict(model.named_parameters())
    groups = [
        {"params": [p for n, p in params.items() if n in decay], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in params.items() if n not in decay], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8)
    warmup = math.ceil(STEPS * WARMUP_RATIO)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, STEPS)
    model.eval()  # dropout off
    steps = []
    for batch in batches:
        lr = optimizer.param_groups[0]["lr"]
        loss = model(**batch).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        steps.append({"loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item()})
    return steps, decay


def make_task(task, weights_dir, data_dir):
    model_dir = os.path.join(weights_dir, task["model"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = task["class"].from_pretrained(model_dir, dtype=torch.float32)
    label2id = model.config.label2id
    token_level = task["name"] == "ner"
    path = os.path.join(data_dir, task["data"])
    examples = (ner_examples if token_level else classification_examples)(tok, path, label2id)
    assert len(examples) == EXAMPLES, f"{path} has fewer than {EXAMPLES} examples"
    index = [list(range(i, i + BATCH_SIZE)) for i in range(0, EXAMPLES, BATCH_SIZE)]
    batches = [pad_batch([examples[i] for i in rows], tok.pad_token_id, token_level) for rows in index]

    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    model64 = copy.deepcopy(model).double()
    steps, decay = run_steps(model, batches)
    steps64, _ = run_steps(model64, batches)

    # float32 against float64: the reference must be robust at well below the test's tolerance.
    worst = max(abs(a["loss"] - b["loss"]) for a, b in zip(steps, steps64))
    params64 = dict(model64.named_parameters())
    parameters = {}
    smallest_change = math.inf
    for name, p in model.named_parameters():
        p = p.detach()
        change = (p - initial[name]).abs().reshape(-1)
        at = int(change.argmax())
        noise = name.endswith(ROUNDING_NOISE)
        if not noise:
            worst = max(worst, float((p.double() - params64[name].detach()).abs().max()))
        parameters[name] = {
            "rounding_noise": noise,
            "sum": float(p.sum()),
            "first": p.reshape(-1)[:8].tolist(),
            "largest_change_at": at,
            "value_there": float(p.reshape(-1)[at]),
            "largest_change": float(change[at]),
            "decay": name in decay,
        }
        if not noise:
            smallest_change = min(smallest_change, float(change[at]))
    log(f"  {task['name']}: losses {[round(s['loss'], 6) for s in steps]}, float32 vs float64 {worst:.2e}, "
        f"smallest largest-change {smallest_change:.2e}")
    assert worst < TOLERANCE / 4, f"{task['name']}: float32 and float64 differ by {worst}"
    assert smallest_change > TOLERANCE * 10, f"{task['name']}: a parameter barely moved ({smallest_change})"
    return {
        "model": task["model"],
        "data": task["data"],
        "labels": [model.config.id2label[i] for i in range(len(model.config.id2label))],
        "examples": examples,
        "batches": index,
        "steps": steps,
        "parameters": parameters,
        "float64_max_difference": worst,
        "min_largest_change": smallest_change,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "weights", "train", "reference.json"))
    ap.add_argument("--data", default=os.path.join(ROOT, "weights", "train"),
                    help="the directory of sentiment.csv and ner.conll (committed inputs)")
    ap.add_argument("--weights", default=os.path.join(ROOT, "weights"),
                    help="the directory of the bert-tiny-sentiment and bert-tiny-ner fixtures")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    data_dir = os.path.abspath(args.data)
    log("fine-tuning reference")
    reference = {
        "settings": {
            "steps": STEPS,
            "batch_size": BATCH_SIZE,
            "max_length": MAX_LENGTH,
            "learning_rate": LEARNING_RATE,
            "warmup_ratio": WARMUP_RATIO,
            "weight_decay": WEIGHT_DECAY,
            "max_grad_norm": MAX_GRAD_NORM,
        },
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    for task in TASKS:
        reference[task["name"]] = make_task(task, os.path.abspath(args.weights), data_dir)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_json(out, reference)
    log(f"wrote {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
