#!/usr/bin/env python3
"""Golden fixtures of the two Llama-architecture variants Trident's `crates/llama` loads besides Llama itself.

What it writes (each directory a tiny random checkpoint plus `reference.json` with transformers' outputs):

* weights/qwen2-tiny: `Qwen2ForCausalLM` (q/k/v projections with biases, redrawn N(0, 0.2^2) so that a test sees
  them; o_proj without; a tied head as in Qwen2.5-0.5B).  Its config.json is written the way the published Qwen2 /
  Qwen2.5 checkpoints write it (transformers 4.x): `rope_theta` at the top level, `use_sliding_window: false`
  with a `sliding_window` (here 4, so that applying it by mistake changes the outputs) and `max_window_layers`,
  and no `layer_types`.  transformers then runs every layer with full attention; the script asserts that.
  `batch_sliding_layers` also records the same weights run with `use_sliding_window: true` (layer 0 full, layer
  1 windowed: `max_window_layers` 1), for the per-layer window rule.
* weights/mistral-tiny: `MistralForCausalLM` with `sliding_window` 4 (each query attends to itself and the 3 keys
  before it, transformers' `kv_idx > q_idx - sliding_window`) and an untied head; config.json as transformers 5
  writes it (`rope_parameters`).  The prompts are longer than the window, and so are the generated sequences.
* weights/mistral-tiny-bf16-sharded: mistral-tiny's weights rounded to bfloat16, split into two safetensors files
  with `model.safetensors.index.json` (as `save_pretrained` shards them), config.json with `dtype: bfloat16`.
  Its references: transformers on these very files in float32 (`batch_f32`: the bf16 values upcast, so an f32
  load must agree to float rounding) and in bfloat16 (`batch_bf16`).

Each checkpoint reuses weights/llama-tiny's tokenizer (tokenizer.json + tokenizer_config.json, copied: a
byte-level BPE with Llama 3's special tokens; written by scripts/make_fixtures.py, which must run first).
The references, as for llama-tiny: logits at every real position of the three prompts left padded (the first 32
vocabulary entries, and the whole vocabulary at the last position), greedy `generate` ids for one prompt and for
the left-padded batch (12 new tokens), checked equal in float64 and with `use_cache=False`; each seed is the first
from 900 (Qwen2) / 950 (Mistral) whose greedy paths have top-2 gaps >= 1e-3 and varied tokens.

Helpers (JSON writing, generation cases, float64 check) come from scripts/make_fixtures.py, imported as a module.
Deterministic: CPU, float32, one thread, fixed seeds; a rerun writes byte-identical files.  Run through
scripts/fixtures.sh, or directly:

    .venv-fixtures/bin/python scripts/fixtures_qwen2_mistral.py [--out weights]
"""

import argparse
import copy
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import make_fixtures as mf  # noqa: E402  (sets the environment, threads and determinism flags)
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

PROMPTS = mf.GPT2_PROMPTS  # the same three prompts as llama-tiny: 7, 16 and 4 tokens with its tokenizer (BOS included)
MAX_NEW = 12
WINDOW = 4
INIT_RANGE = 0.2
NORM_STD = 0.2  # RMSNorm weights redrawn 1 + N(0, std^2)
BIAS_STD = 0.2  # Qwen2's q/k/v biases redrawn N(0, std^2)
SPECIALS = mf.LLAMA_SPECIALS  # <|begin_of_text|> (bos), <|end_of_text|> (eos, pad of the batches), ..., <|eot_id|>
SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def common_config(tok):
    bos, eos = tok.convert_tokens_to_ids(SPECIALS[:2])
    return dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-6,
                max_position_embeddings=128, attention_dropout=0.0, initializer_range=INIT_RANGE,
                bos_token_id=bos, eos_token_id=eos, pad_token_id=None, use_cache=True)


def qwen2_config(tok, sliding):
    return transformers.Qwen2Config(**common_config(tok), tie_word_embeddings=True, use_sliding_window=sliding,
                                    sliding_window=WINDOW, max_window_layers=1,
                                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


def mistral_config(tok):
    return transformers.MistralConfig(**common_config(tok), head_dim=8, tie_word_embeddings=False,
                                      sliding_window=WINDOW,
                                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def generation_config(tok):
    bos, eos, eot = tok.convert_tokens_to_ids([SPECIALS[0], SPECIALS[1], SPECIALS[4]])
    return {"bos_token_id": bos, "eos_token_id": [eos, eot]}


def init_model(cls, config, seed):
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + torch.randn_like(p) * NORM_STD)
            elif name.endswith("_proj.bias"):
                p.copy_(torch.randn_like(p) * BIAS_STD)
    return model


def pad_tokenizer(tok):
    t = copy.deepcopy(tok)
    t.pad_token = SPECIALS[1]
    t.padding_side = "left"
    return t


def generation_cases(model, tok):
    """Greedy generate for one prompt and for the 3 prompts left padded (pad = `<|end_of_text|>`)."""
    padtok = pad_tokenizer(tok)
    kw = {"max_new_tokens": MAX_NEW, "num_beams": 1, "do_sample": False, "pad_token_id": padtok.pad_token_id}
    cases = []
    for name, texts in (("greedy", [PROMPTS[0]]), ("batch3_left_padded_greedy", PROMPTS)):
        rec, enc = mf.generation_case(model, padtok, name, texts, dict(kw), padding_side="left")
        rec["padding_side"] = "left"
        rec["position_ids"] = mf.gpt2_position_ids(enc["attention_mask"]).tolist()
        cases.append(rec)
    return cases


def check(model, cases):
    """None if the seed is usable, else why not."""
    for c in cases:
        if c["min_top2_score_gap"] < mf.MARGIN:
            return f"{c['name']}: top-2 gap {c['min_top2_score_gap']:.2e}"
        for row in c["output_ids"]:
            if len(set(row[-MAX_NEW:])) < 4:
                return f"{c['name']}: fewer than 4 distinct generated tokens"
    bad = mf.check_float64(model, cases)
    if bad is not None:
        return f"{bad} differs in float64"
    for c in cases:
        again = mf.run_generate(model, {"input_ids": torch.tensor(c["input_ids"]),
                                        "attention_mask": torch.tensor(c["attention_mask"])},
                                {**c["kwargs"], "use_cache": False})
        if again.tolist() != c["output_ids"]:
            return f"{c['name']}: cached and uncached generate differ"
    return None


def batch_logits(model, tok):
    """The 3 prompts left padded: logits at every position, with the mask and position ids generate() uses."""
    enc = pad_tokenizer(tok)(PROMPTS, padding=True, return_tensors="pt")
    pos = mf.gpt2_position_ids(enc["attention_mask"])
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=pos,
                    use_cache=False).logits.float()
    return enc, pos, out


def batch_record(model, tok):
    enc, pos, logits = batch_logits(model, tok)
    padtok = pad_tokenizer(tok)
    with torch.no_grad():
        # Each row alone (no padding, positions 0..n-1) gives the same logits at its real tokens: the window
        # counts key slots, and left padding only shifts them.
        max_diff = 0.0
        for i, text in enumerate(PROMPTS):
            one = padtok(text, return_tensors="pt")
            n = one["input_ids"].shape[1]
            lo = model(**one, use_cache=False).logits[0]
            max_diff = max(max_diff, float((lo - logits[i, -n:]).abs().max()))
        assert max_diff < 1e-4, max_diff
        eager = copy.deepcopy(model)
        eager.set_attn_implementation("eager")
        le = eager(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=pos,
                   use_cache=False).logits
    real = enc["attention_mask"].bool()
    eager_diff_real = float((le - logits)[real].abs().max())
    assert eager_diff_real < 1e-4, eager_diff_real
    return {
        "texts": PROMPTS,
        "padding_side": "left",
        "pad_token_id": padtok.pad_token_id,
        "use_cache": False,
        "attn_implementation": model.config._attn_implementation,
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "position_ids": pos.tolist(),
        "logits_first32": mf.tensor_json(logits[:, :, :32]),
        "logits_last_position": mf.tensor_json(logits[:, -1, :]),
        "unpadded_rows_max_abs_diff": max_diff,
        "eager_vs_default_max_abs_diff_real_positions": eager_diff_real,
        "note": "logits at padded positions (attention_mask 0) depend on the attention implementation: compare "
                "real positions only",
    }


def window_effect(model, tok, config_without_window):
    """Largest change of the real-position logits when the same weights run without the window."""
    full = type(model)(config_without_window).eval()
    full.load_state_dict(model.state_dict())
    enc, _, a = batch_logits(model, tok)
    _, _, b = batch_logits(full, tok)
    return float((a - b)[enc["attention_mask"].bool()].abs().max())


def copy_tokenizer(src, d):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, f), os.path.join(d, f))


def search_seed(name, cls, config, tok, first):
    for attempt in range(100):
        s = first + attempt
        model = init_model(cls, config, s)
        model.generation_config = transformers.GenerationConfig(**generation_config(tok))
        why = check(model, generation_cases(model, tok))
        if why is None:
            return model, s
        mf.log(f"  {name}: seed {s} rejected ({why})")
    raise SystemExit(f"{name}: no seed found")


def save_checkpoint(model, d, tok_dir, tok):
    mf.clean_dir(d)
    copy_tokenizer(tok_dir, d)
    mf.save_model(model, d)
    os.chmod(os.path.join(d, "model.safetensors"), 0o644)
    mf.write_config_json(os.path.join(d, "generation_config.json"),
                         {**generation_config(tok), "transformers_version": transformers.__version__})


def base_reference(name, cls_name, seed, tok, model, d):
    return {
        "fixture": name,
        "model_class": cls_name,
        "seed": seed,
        "versions": mf.versions(),
        "tokenizer": mf.tokenizer_info(tok),
        "tokenizer_from": "weights/llama-tiny (copied)",
        "generation_config": generation_config(tok),
        "init": {"initializer_range": INIT_RANGE, "norm_weight": f"1 + N(0, {NORM_STD}^2)"},
        "config": mf.read_json(os.path.join(d, "config.json")),
        "inv_freq": model.model.rotary_emb.inv_freq,
        "weight_names": sorted(load_file(os.path.join(d, "model.safetensors")).keys()),
    }


def make_qwen2(out_dir, tok_dir):
    mf.log("qwen2 fixture")
    name = "qwen2-tiny"
    d = os.path.join(out_dir, name)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model, s = search_seed(name, transformers.Qwen2ForCausalLM, qwen2_config(tok, False), tok, 900)
    save_checkpoint(model, d, tok_dir, tok)
    # config.json as the published Qwen2 / Qwen2.5 checkpoints write it (transformers 4.x).
    path = os.path.join(d, "config.json")
    cfg = mf.read_json(path)
    assert cfg["layer_types"] == ["full_attention"] * 2 and cfg["sliding_window"] is None, cfg
    del cfg["layer_types"], cfg["rope_parameters"]
    cfg.update({"sliding_window": WINDOW, "use_sliding_window": False, "max_window_layers": 1,
                "rope_theta": 1000000.0, "rope_scaling": None})
    mf.write_config_json(path, cfg)
    tok = AutoTokenizer.from_pretrained(d)
    model = transformers.Qwen2ForCausalLM.from_pretrained(d).eval()
    assert model.config.sliding_window is None and model.config.layer_types == ["full_attention"] * 2
    assert abs(float(model.model.rotary_emb.inv_freq[1]) / 1e6 ** (-2 / 8) - 1) < 1e-6, model.model.rotary_emb.inv_freq
    cases = generation_cases(model, tok)
    assert check(model, cases) is None
    names = sorted(load_file(os.path.join(d, "model.safetensors")).keys())
    assert "model.layers.0.self_attn.q_proj.bias" in names and "model.layers.0.self_attn.o_proj.bias" not in names
    assert "lm_head.weight" not in names
    ref = base_reference(name, "Qwen2ForCausalLM", s, tok, model, d)
    ref["init"]["qkv_bias"] = f"N(0, {BIAS_STD}^2)"
    ref["batch"] = batch_record(model, tok)
    ref["generate"] = cases
    # The same weights with the window switched on: layers >= max_window_layers (layer 1) attend to 4 keys.
    sliding_cfg = copy.deepcopy(model.config)
    sliding_cfg.use_sliding_window = True
    sliding_cfg.sliding_window = WINDOW
    sliding_cfg.layer_types = ["full_attention", "sliding_attention"]
    sliding = transformers.Qwen2ForCausalLM(sliding_cfg).eval()
    sliding.load_state_dict(model.state_dict())
    sliding_ref = transformers.Qwen2Config.from_dict({**cfg, "use_sliding_window": True})
    assert sliding_ref.layer_types == sliding_cfg.layer_types and sliding_ref.sliding_window == WINDOW
    enc, _, sl = batch_logits(sliding, tok)
    _, _, full = batch_logits(model, tok)
    effect = float((sl - full)[enc["attention_mask"].bool()].abs().max())
    assert effect > 1e-2, effect
    ref["batch_sliding_layers"] = {
        "config_changes": {"use_sliding_window": True},
        "layer_types": sliding_cfg.layer_types,
        "logits_first32": mf.tensor_json(sl[:, :, :32]),
        "max_abs_change_from_full_attention": effect,
    }
    ref["cached_equals_uncached_generate"] = True  # checked by check()
    mf.write_json(os.path.join(d, "reference.json"), ref)
    mf.log(f"  {name}: seed {s}")


def shard_bf16(model, d, tok_dir, tok):
    """Mistral's weights in bfloat16, split in two files with the index `save_pretrained` writes."""
    mf.clean_dir(d)
    copy_tokenizer(tok_dir, d)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    first = [n for n in names if n.startswith("model.embed_tokens.") or n.startswith("model.layers.0.")]
    parts = [{n: state[n] for n in first}, {n: state[n] for n in names if n not in first}]
    weight_map = {}
    for shard, part in zip(SHARDS, parts):
        save_file(part, os.path.join(d, shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    mf.write_config_json(os.path.join(d, "model.safetensors.index.json"),
                         {"metadata": {"total_size": total}, "weight_map": weight_map})
    cfg = mf.read_json(os.path.join(os.path.dirname(d), "mistral-tiny", "config.json"))
    cfg["dtype"] = "bfloat16"
    mf.write_config_json(os.path.join(d, "config.json"), cfg)
    mf.write_config_json(os.path.join(d, "generation_config.json"),
                         {**generation_config(tok), "transformers_version": transformers.__version__})
    return weight_map


def make_mistral(out_dir, tok_dir):
    mf.log("mistral fixture")
    name = "mistral-tiny"
    d = os.path.join(out_dir, name)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model, s = search_seed(name, transformers.MistralForCausalLM, mistral_config(tok), tok, 950)
    save_checkpoint(model, d, tok_dir, tok)
    tok = AutoTokenizer.from_pretrained(d)
    model = transformers.MistralForCausalLM.from_pretrained(d).eval()
    assert model.config.sliding_window == WINDOW
    cases = generation_cases(model, tok)
    assert check(model, cases) is None
    for c in cases:
        assert len(c["output_ids"][0]) > WINDOW + MAX_NEW
    no_window = copy.deepcopy(model.config)
    no_window.sliding_window = None
    effect = window_effect(model, tok, no_window)
    assert effect > 1e-2, effect
    ref = base_reference(name, "MistralForCausalLM", s, tok, model, d)
    ref["sliding_window"] = WINDOW
    ref["window_rule"] = "transformers 5.24 masking_utils.sliding_window_overlay: kv_idx > q_idx - sliding_window " \
                         "(indices of the padded sequence / cache), with the causal and padding masks"
    ref["batch"] = batch_record(model, tok)
    ref["batch_max_abs_change_without_window"] = effect
    ref["generate"] = cases
    ref["cached_equals_uncached_generate"] = True  # checked by check()
    mf.write_json(os.path.join(d, "reference.json"), ref)
    mf.log(f"  {name}: seed {s}")

    name = "mistral-tiny-bf16-sharded"
    sd = os.path.join(out_dir, name)
    weight_map = shard_bf16(model, sd, tok_dir, tok)
    f32 = transformers.MistralForCausalLM.from_pretrained(sd, dtype=torch.float32).eval()
    bf16 = transformers.MistralForCausalLM.from_pretrained(sd, dtype=torch.bfloat16).eval()
    assert next(f32.parameters()).dtype == torch.float32 and next(bf16.parameters()).dtype == torch.bfloat16
    for k, v in f32.state_dict().items():
        assert torch.equal(v, model.state_dict()[k].to(torch.bfloat16).float()), k
    enc, pos, l32 = batch_logits(f32, tok)
    _, _, l16 = batch_logits(bf16, tok)
    real = enc["attention_mask"].bool()
    mf.write_json(os.path.join(sd, "reference.json"), {
        "fixture": name,
        "made_from": "mistral-tiny: its state_dict rounded to bfloat16, split in two safetensors files",
        "versions": mf.versions(),
        "shards": {shard: sorted(n for n, s in weight_map.items() if s == shard) for shard in SHARDS},
        "batch": {
            "texts": PROMPTS,
            "input_ids": enc["input_ids"].tolist(),
            "attention_mask": enc["attention_mask"].tolist(),
            "position_ids": pos.tolist(),
        },
        "batch_f32": {"dtype": "float32", "logits_first32": mf.tensor_json(l32[:, :, :32]),
                      "logits_last_position": mf.tensor_json(l32[:, -1, :])},
        "batch_bf16": {"dtype": "bfloat16", "logits_first32": mf.tensor_json(l16[:, :, :32]),
                       "logits_last_position": mf.tensor_json(l16[:, -1, :]),
                       "max_abs_diff_from_f32_real_positions": float((l16 - l32)[real].abs().max()),
                       "max_abs_f32_real_positions": float(l32[real].abs().max())},
    })
    mf.log(f"  {name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "weights"))
    ap.add_argument("--only", default="", help="comma list: qwen2,mistral (default both)")
    args = ap.parse_args()
    out_dir = os.path.abspath(args.out)
    tok_dir = os.path.join(out_dir, "llama-tiny")
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        raise SystemExit(f"{tok_dir}/tokenizer.json is missing: run make_fixtures.py --only llama first")
    only = set(filter(None, args.only.split(","))) or {"qwen2", "mistral"}
    if "qwen2" in only:
        make_qwen2(out_dir, tok_dir)
    if "mistral" in only:
        make_mistral(out_dir, tok_dir)
    mf.log("done")


if __name__ == "__main__":
    main()
