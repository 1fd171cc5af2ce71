"""A full-size (gpt2-small shape), randomly initialised GPT-2 saved in bfloat16, for measuring
how much memory loading a bf16 checkpoint costs (scripts/bench/load_rss.sh).

Same model shape and tokenizer as make_models.py's .bench/models/gpt2 (12 layers, 768 hidden,
12 heads, 50257 tokens, 1024 positions; GPT-2's real BPE from weights/gpt2-bpe-files, fetched
by scripts/setup-gpt2-bpe.sh), but the weights are stored as bfloat16 in model.safetensors
(config.json says "dtype": "bfloat16"). The weights are drawn in float32 by transformers'
own init after torch.manual_seed(0), then cast. Written under .bench/ (git-ignored).

    .venv-fixtures/bin/python scripts/bench/make_gpt2_bf16.py [--out .bench/models/gpt2-bf16]
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

ROOT = Path(__file__).resolve().parents[2]


def gpt2_tokenizer():
    bpe = ROOT / "weights" / "gpt2-bpe-files"
    if not (bpe / "encoder.json").exists():
        raise SystemExit(f"{bpe} is missing: run scripts/setup-gpt2-bpe.sh first")
    # transformers 5 ignores vocab_file/merges_file here: pass the vocabulary and merges.
    vocab = json.loads((bpe / "encoder.json").read_text(encoding="utf-8"))
    merges = [tuple(l.split(" ")) for l in (bpe / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:] if l]
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert tok("Hello world")["input_ids"] == [15496, 995]
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / ".bench" / "models" / "gpt2-bf16"))
    ap.add_argument("--force", action="store_true", help="rewrite an existing checkpoint")
    args = ap.parse_args()
    out = Path(args.out)
    st = out / "model.safetensors"
    if st.exists() and not args.force:
        print(f"{st} exists ({st.stat().st_size} bytes); --force rewrites it")
        return
    tok = gpt2_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()  # gpt2-small defaults: 12 x 768, 50257 tokens, 1024 positions
    model = model.to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)

    from safetensors import safe_open

    with safe_open(str(st), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        n = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    assert dtypes == {"BF16"}, dtypes
    print(f"{st}: {st.stat().st_size} bytes, {n} parameters, dtypes {sorted(dtypes)}")


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    main()
