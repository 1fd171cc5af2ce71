#!/usr/bin/env python3
"""The BLOOM fixture, weights/bloom-tiny: a tiny random transformers `BloomForCausalLM` and its reference outputs.

What it writes, into weights/bloom-tiny/:

* config.json, model.safetensors: BloomForCausalLM with hidden 48, 2 layers and 6 heads (head_dim 8; 6 is not a
  power of two, so the ALiBi slopes take the "extra" branch of transformers' `_get_alibi_slopes`), the default
  residual (`apply_residual_connection_post_layernorm: false`), a head tied to `word_embeddings` (no
  `lm_head.weight` stored), weights drawn with initializer_range 0.2 and every LayerNorm redrawn
  (weight 1 + N(0, 0.2^2), bias N(0, 0.2^2)) so that a test sees each one applied;
* tokenizer.json: weights/gpt2-tiny's byte-level BPE (1000 tokens, `<|endoftext|>` 999, no BOS added, as BLOOM's
  tokenizer adds none), with a BLOOM-style tokenizer_config.json (`BloomTokenizerFast`, left padding, the pad token
  `<|endoftext|>`);
* generation_config.json: bos = eos = pad = 999;
* reference.json:
    - `alibi_slopes`: transformers' `_get_alibi_slopes(n)` (float32) for n in ALIBI_HEADS;
    - `alibi_batch`: `build_alibi_tensor` of the left-padded batch's mask with 6 heads, as [batch, heads, keys];
    - `encodings` of a few texts;
    - `batch`: the 3 prompts left padded with 999, `model(input_ids, attention_mask, use_cache=False)`:
      `logits_first32` [3, seq, 32] and `logits_last_position` [3, vocab]; each row alone (no padding) gives the
      same logits at its real tokens (checked: ALiBi counts key positions over the real tokens, via the mask's
      cumsum, so left padding does not move them);
    - `batch_residual_post_layernorm`: the same batch through the same weights with
      `apply_residual_connection_post_layernorm` set on every block (the residual is the normalised input);
    - `generate[]`: greedy for one prompt, greedy and beam 3 for the 3 prompts left padded, max_new_tokens 12,
      pad 999, each checked equal with use_cache=False, and each row equal to its prompt generated alone in
      float32 and float64; with the smallest top-2 score gap along greedy paths (`min_top2_score_gap`).

Nothing here uses Trident code.  Deterministic: CPU, float32, one thread, fixed seeds (searched from SEED0 until
the references are robust); a rerun writes byte-identical files.  Run through scripts/fixtures.sh, or directly:

    .venv-fixtures/bin/python scripts/fixtures_bloom.py [--out weights/bloom-tiny] [--tokenizer weights/gpt2-tiny]
"""

import argparse
import copy
import json
import os
import shutil
import sys
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoTokenizer, BloomConfig, BloomForCausalLM  # noqa: E402
from transformers.models.bloom.modeling_bloom import _get_alibi_slopes, build_alibi_tensor  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
NAME = "bloom-tiny"
HIDDEN, LAYERS, HEADS = 48, 2, 6
INIT_RANGE = 0.5
NORM_STD = 0.2
SEQ_LENGTH = 128  # config.json's `seq_length` (BLOOM's training context; ALiBi itself has no position table)
MAX_NEW = 12
MARGIN = 1e-3  # smallest top-2 score gap allowed along a greedy path
SEED0 = 900
ALIBI_HEADS = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 112]
EOS_TOKEN = "<|endoftext|>"
# The GPT-2 fixture's prompts (scripts/make_fixtures.py GPT2_PROMPTS): unequal lengths, so the batch is padded.
PROMPTS = [
    "The United Nations said",
    "Angela Merkel met Emmanuel Macron in Berlin on",
    "Hello",
]
TEXTS = PROMPTS + ["José's café in Zürich 😀 東京", " Leading space and  double  spaces.", ""]


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


def write_config_json(path, cfg):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def tensor_json(t):
    """{"shape": [...], "data": [flat row-major]}."""
    t = t.detach().cpu()
    return {"shape": list(t.shape), "data": t.reshape(-1).tolist()}


def versions():
    return {
        "numpy": np.__version__,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "safetensors": safetensors.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------------------------
# Tokenizer, config, model
# --------------------------------------------------------------------------------------------------------------


def write_tokenizer(src, d):
    """gpt2-tiny's tokenizer.json with a tokenizer_config.json as BLOOM's hub repos write theirs."""
    shutil.copy(os.path.join(src, "tokenizer.json"), os.path.join(d, "tokenizer.json"))
    write_config_json(os.path.join(d, "tokenizer_config.json"), {
        "add_prefix_space": False, "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "model_max_length": SEQ_LENGTH,
        "pad_token": EOS_TOKEN, "padding_side": "left", "tokenizer_class": "BloomTokenizerFast",
        "unk_token": EOS_TOKEN})
    tok = AutoTokenizer.from_pretrained(d)
    eos = tok.convert_tokens_to_ids(EOS_TOKEN)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.padding_side) == (eos, eos, eos, "left")
    assert tok("Hello")["input_ids"][0] != eos, "no BOS is added"
    return tok


def bloom_config(tok):
    eos = tok.eos_token_id
    return BloomConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, layer_norm_epsilon=1e-5,
        initializer_range=INIT_RANGE, bos_token_id=eos, eos_token_id=eos, pad_token_id=None,
        apply_residual_connection_post_layernorm=False, hidden_dropout=0.0, attention_dropout=0.0,
        pretraining_tp=1, slow_but_exact=False, tie_word_embeddings=True, use_cache=True, seq_length=SEQ_LENGTH,
    )


def init_model(config, seed):
    torch.manual_seed(seed)
    model = BloomForCausalLM(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1.0 + torch.randn_like(module.weight) * NORM_STD)
                module.bias.copy_(torch.randn_like(module.bias) * NORM_STD)
    return model


def with_residual_post_layernorm(model):
    """The same weights with BLOOM's other residual: `norm(x) + f(norm(x))` (BloomBlock reads the flag at init)."""
    m = copy.deepcopy(model)
    m.config.apply_residual_connection_post_layernorm = True
    for block in m.transformer.h:
        block.apply_residual_connection_post_layernorm = True
    return m


# --------------------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------------------


def left_padded(tok, texts):
    t = copy.deepcopy(tok)
    t.padding_side = "left"
    enc = t(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def top2_gap(scores):
    s = torch.sort(scores.double(), dim=-1, descending=True).values
    return float((s[..., 0] - s[..., 1]).min())


def generation_cases(model, tok):
    pad = tok.pad_token_id
    common = {"max_new_tokens": MAX_NEW, "do_sample": False, "pad_token_id": pad}
    specs = [
        ("greedy", [PROMPTS[0]], {"num_beams": 1}),
        ("batch3_left_padded_greedy", PROMPTS, {"num_beams": 1}),
        ("batch3_left_padded_beam3", PROMPTS, {"num_beams": 3}),
    ]
    cases = []
    for name, texts, kw in specs:
        kwargs = {**common, **kw}
        enc = left_padded(tok, texts)
        with torch.no_grad():
            res = model.generate(**enc, **kwargs, output_scores=True, return_dict_in_generate=True)
        out = res.sequences
        rec = {
            "name": name,
            "texts": texts,
            "kwargs": kwargs,
            "padding_side": "left",
            "input_ids": enc["input_ids"].tolist(),
            "attention_mask": enc["attention_mask"].tolist(),
            "output_ids": out.tolist(),
            "decoded": tok.batch_decode(out, skip_special_tokens=True),
        }
        if kw["num_beams"] == 1:
            rec["min_top2_score_gap"] = min(top2_gap(s) for s in res.scores)
        cases.append(rec)
    return cases


def check(model, cases):
    """None if the seed gives robust references, else why not.

    Robustness is checked in float64 on each prompt alone (transformers' BLOOM gives NaN for left-padded rows in
    float64: a padded query sees no key, its softmax is NaN, and the NaN values then reach the real rows through
    0-weighted products). Each row of a padded batch must equal its prompt generated alone, so this also checks
    that left padding changes nothing (ALiBi counts key positions over the real tokens)."""
    for c in cases:
        if c.get("min_top2_score_gap", 1.0) < MARGIN:
            return f"{c['name']}: top-2 gap {c['min_top2_score_gap']:.2e}"
        for row in c["output_ids"]:
            if len(set(row[-MAX_NEW:])) < 4:
                return f"{c['name']}: fewer than 4 distinct generated tokens"
    m64 = copy.deepcopy(model).double()
    for c in cases:
        enc = {"input_ids": torch.tensor(c["input_ids"]), "attention_mask": torch.tensor(c["attention_mask"])}
        with torch.no_grad():
            if model.generate(**enc, **c["kwargs"], use_cache=False).tolist() != c["output_ids"]:
                return f"{c['name']}: cached and uncached generate differ"
            for ids, mask, out in zip(c["input_ids"], c["attention_mask"], c["output_ids"]):
                real = [i for i, m in zip(ids, mask) if m == 1]
                pads = len(ids) - len(real)
                for m in (model, m64):
                    alone = m.generate(input_ids=torch.tensor([real]), attention_mask=torch.ones(1, len(real),
                                       dtype=torch.int64), **c["kwargs"])[0].tolist()
                    rest = out[pads + len(alone):]
                    if out[pads:pads + len(alone)] != alone or any(t != c["kwargs"]["pad_token_id"] for t in rest):
                        return f"{c['name']}: a row alone differs ({m.dtype})"
    return None


def batch_logits(model, tok):
    """Logits of the left-padded prompts, and the check that each row alone gives them at its real tokens."""
    enc = left_padded(tok, PROMPTS)
    with torch.no_grad():
        logits = model(**enc, use_cache=False).logits
        worst = 0.0
        for i, text in enumerate(PROMPTS):
            one = tok(text, return_tensors="pt")
            n = one["input_ids"].shape[1]
            alone = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"], use_cache=False).logits
            worst = max(worst, float((alone[0] - logits[i, -n:]).abs().max()))
    assert worst < 1e-4, worst
    return {
        "texts": PROMPTS,
        "padding_side": "left",
        "pad_token_id": tok.pad_token_id,
        "use_cache": False,
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "logits_first32": tensor_json(logits[:, :, :32]),
        "logits_last_position": tensor_json(logits[:, -1, :]),
        "unpadded_rows_max_abs_diff": worst,
        "note": "compare real positions only (attention_mask 1): a padded query sees no key",
    }


def alibi_references(tok):
    enc = left_padded(tok, PROMPTS)
    mask = enc["attention_mask"]
    alibi = build_alibi_tensor(mask, HEADS, torch.float32)  # [batch * heads, 1, keys]
    b, k = mask.shape
    return (
        {str(n): _get_alibi_slopes(n, torch.device("cpu")) for n in ALIBI_HEADS},
        {"num_heads": HEADS, "attention_mask": mask.tolist(),
         "alibi": tensor_json(alibi.reshape(b, HEADS, k)),
         "formula": "transformers' build_alibi_tensor: slopes[h] * ((cumsum(mask) - 1) * mask)[b, k], "
                    "reshaped [batch, heads, keys] (the query axis broadcast)"},
    )


def encodings(tok, texts):
    out = []
    for text in texts:
        e = tok(text, return_offsets_mapping=True)
        out.append({"text": text, "input_ids": e["input_ids"], "offsets": [list(o) for o in e["offset_mapping"]]})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "weights", NAME))
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "weights", "gpt2-tiny"),
                    help="a directory whose tokenizer.json is copied (gpt2-tiny's byte-level BPE)")
    args = ap.parse_args()
    d = os.path.abspath(args.out)
    log(f"{NAME} fixture")
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    tok = write_tokenizer(os.path.abspath(args.tokenizer), d)
    config = bloom_config(tok)
    generation = {"bos_token_id": tok.eos_token_id, "eos_token_id": tok.eos_token_id,
                  "pad_token_id": tok.pad_token_id}
    for attempt in range(100):
        seed = SEED0 + attempt
        model = init_model(config, seed)
        model.generation_config = transformers.GenerationConfig(**generation)
        why = check(model, generation_cases(model, tok))
        if why is None:
            break
        log(f"  {NAME}: seed {seed} rejected ({why})")
    else:
        raise SystemExit(f"{NAME}: no seed found")
    model.save_pretrained(d, safe_serialization=True)
    os.chmod(os.path.join(d, "model.safetensors"), 0o644)
    write_config_json(os.path.join(d, "generation_config.json"),
                      {**generation, "transformers_version": transformers.__version__})

    # Everything below from the saved files, as a user would load them.
    tok = AutoTokenizer.from_pretrained(d)
    model = BloomForCausalLM.from_pretrained(d).eval()
    cfg_json = json.load(open(os.path.join(d, "config.json"), encoding="utf-8"))
    assert cfg_json["n_head"] == HEADS and cfg_json["apply_residual_connection_post_layernorm"] is False, cfg_json
    assert cfg_json["seq_length"] == SEQ_LENGTH, cfg_json
    names = sorted(load_file(os.path.join(d, "model.safetensors")).keys())
    assert "lm_head.weight" not in names, names
    cases = generation_cases(model, tok)
    assert check(model, cases) is None
    slopes, alibi_batch = alibi_references(tok)
    ref = {
        "fixture": NAME,
        "model_class": "BloomForCausalLM",
        "seed": seed,
        "versions": versions(),
        "config": {"hidden_size": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "initializer_range": INIT_RANGE,
                   "layer_norms": f"weight 1 + N(0, {NORM_STD}^2), bias N(0, {NORM_STD}^2)",
                   "tied_lm_head": True},
        "generation_config": generation,
        "alibi_slopes": slopes,
        "alibi_batch": alibi_batch,
        "encodings": encodings(tok, TEXTS),
        "batch": batch_logits(model, tok),
        "batch_residual_post_layernorm": batch_logits(with_residual_post_layernorm(model), tok),
        "generate": cases,
        "cached_equals_uncached_generate": True,  # checked by check()
        "weight_names": names,
    }
    write_json(os.path.join(d, "reference.json"), ref)
    log(f"  {NAME}: seed {seed}, written to {d}")


if __name__ == "__main__":
    main()
