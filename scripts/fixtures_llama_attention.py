#!/usr/bin/env python3
"""Reference values of one Llama self-attention block (rotary position embeddings + grouped-query attention).

What it records, into weights/llama-attention/:

* reference.safetensors: the random weights of a transformers `LlamaAttention` (q/k/v/o projections, no bias;
  4 query heads and 2 key/value heads of head_dim 8, hidden size 32), a random input `hidden_states` [2, 7, 32]
  with `position_ids` [2, 7] (0..6 in both rows), and for each of three rotary variants (`default`, `linear`,
  `llama3`) the tensors transformers computes from them:
    - `inv_freq.<v>` [4]: `LlamaRotaryEmbedding.inv_freq`;
    - `cos.<v>`, `sin.<v>` [2, 7, 8]: what `LlamaRotaryEmbedding(x, position_ids)` returns (the two rows are
      identical because the position ids are);
    - `output.<v>` [2, 7, 32]: `LlamaAttention.forward` over the 7 tokens at once with an additive causal mask;
    - `output_cached.<v>` [2, 7, 32]: the same module fed through a `DynamicCache` in two calls (tokens 0..4, then
      5..6), concatenated along the sequence axis; checked equal to `output.<v>` to 1e-6.
* reference.json: the configuration, the rope parameters of each variant written the way published checkpoints
  write them (`rope_theta` plus a `rope_scaling` dict), transformers' `attention_scaling`, the tensor list, the
  exact masks used, and the versions.

Why: Trident implements Llama attention in Rust; these files let its tests compare against transformers' own
`LlamaAttention` / `LlamaRotaryEmbedding` (not a re-derivation), without Python or network.  The weights are
drawn N(0, 0.2^2) rather than transformers' tiny default init so that a wrong rotation, head grouping or
frequency scaling changes the outputs visibly.  The llama3 variant uses original_max_position_embeddings 64 so
that, with head_dim 8 and rope_theta 10000 (wavelengths 6.3, 62.8, 628, 6283), the first frequency is kept,
the second is smoothed and the last two are divided by the factor: every branch of the llama3 rule is used.

The script also recomputes everything from the formulas (float64, no transformers code) and asserts agreement,
so the JSON `formulas` entry is known to describe what transformers does.

Deterministic: CPU, float32, one thread, `torch.manual_seed(0)`; a rerun writes byte-identical files.
Run through scripts/fixtures.sh, or directly:

    .venv-fixtures/bin/python scripts/fixtures_llama_attention.py [--out weights/llama-attention]
"""

import argparse
import json
import math
import os
import sys
import warnings

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaConfig  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402
from transformers.masking_utils import create_causal_mask  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 32, 4, 2, 8
MAX_POS = 128
BATCH, SEQ, PREFIX = 2, 7, 5  # the cached run feeds tokens [0, PREFIX) then [PREFIX, SEQ)
WEIGHT_STD = 0.2
SEED = 0

# Rope parameters as published checkpoints write them in config.json (`rope_theta` next to `rope_scaling`).
VARIANTS = {
    "default": {"rope_theta": 10000.0, "rope_scaling": None},
    "linear": {"rope_theta": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    "llama3": {"rope_theta": 10000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 64}},
}
TOL = 1e-6


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


# --------------------------------------------------------------------------------------------------------------
# transformers side
# --------------------------------------------------------------------------------------------------------------


def make_config(variant):
    """LlamaConfig for a variant, built from the published layout (rope_theta + rope_scaling), which transformers
    5.x converts into `config.rope_parameters`; the result is checked against the 5.x native form."""
    pub = VARIANTS[variant]
    common = dict(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                  attention_bias=False, attention_dropout=0.0, max_position_embeddings=MAX_POS,
                  num_hidden_layers=1, intermediate_size=64, vocab_size=64)
    kw = {"rope_theta": pub["rope_theta"]}
    if pub["rope_scaling"] is not None:
        kw["rope_scaling"] = dict(pub["rope_scaling"])
    cfg = LlamaConfig(**common, **kw)
    native = {"rope_type": "default", "rope_theta": pub["rope_theta"]}
    native.update(pub["rope_scaling"] or {})
    cfg_native = LlamaConfig(**common, rope_parameters=dict(native))
    assert cfg.rope_parameters == cfg_native.rope_parameters == native, (cfg.rope_parameters, native)
    for c in (cfg, cfg_native):
        c._attn_implementation = "eager"
    return cfg


def causal_mask(q_len, kv_len, offset, dtype=torch.float32):
    """Additive mask [BATCH, 1, q_len, kv_len]: 0 where key <= offset + query, finfo(dtype).min elsewhere (what
    transformers' masking_utils builds for the eager implementation)."""
    q = torch.arange(q_len)[:, None] + offset
    k = torch.arange(kv_len)[None, :]
    m = torch.where(k <= q, torch.zeros((), dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype))
    return m[None, None].expand(BATCH, 1, q_len, kv_len).contiguous()


def checked_mask(cfg, h, cache, position_ids, offset):
    """causal_mask(), asserted equal to the mask transformers' LlamaModel would build for the same call."""
    mine = causal_mask(h.shape[1], offset + h.shape[1], offset)
    theirs = create_causal_mask(config=cfg, inputs_embeds=h, attention_mask=torch.ones(BATCH, offset + h.shape[1],
                                dtype=torch.int64), cache=cache, position_ids=position_ids,
                                allow_is_causal_skip=False)
    assert torch.equal(mine, theirs), (mine, theirs)
    return mine


def run_variant(variant, state_dict, hidden_states, position_ids):
    cfg = make_config(variant)
    attn = LlamaAttention(cfg, layer_idx=0)
    attn.load_state_dict(state_dict)
    attn.eval()
    rotary = LlamaRotaryEmbedding(cfg).eval()
    with torch.no_grad():
        cos, sin = rotary(hidden_states, position_ids)
        assert cos.shape == sin.shape == (BATCH, SEQ, HEAD_DIM)
        assert torch.equal(cos[0], cos[1]) and torch.equal(sin[0], sin[1])
        mask = checked_mask(cfg, hidden_states, None, position_ids, 0)
        out, _ = attn(hidden_states, position_embeddings=(cos, sin), attention_mask=mask)

        cache = DynamicCache()
        parts = []
        for lo, hi in ((0, PREFIX), (PREFIX, SEQ)):
            h, p = hidden_states[:, lo:hi], position_ids[:, lo:hi]
            c, s = rotary(h, p)
            assert torch.equal(c, cos[:, lo:hi]) and torch.equal(s, sin[:, lo:hi])
            m = checked_mask(cfg, h, cache, p, lo)
            o, _ = attn(h, position_embeddings=(c, s), attention_mask=m, cache=cache)
            parts.append(o)
            assert cache.get_seq_length() == hi
        assert tuple(cache.layers[0].keys.shape) == (BATCH, KV_HEADS, SEQ, HEAD_DIM)
        out_cached = torch.cat(parts, dim=1)
    diff = float((out_cached - out).abs().max())
    assert diff <= TOL, f"{variant}: cached output differs from uncached by {diff}"
    return {
        "cfg": cfg,
        "inv_freq": rotary.inv_freq.detach().clone(),
        "attention_scaling": float(rotary.attention_scaling),
        "cos": cos.contiguous(), "sin": sin.contiguous(),
        "output": out.contiguous(), "output_cached": out_cached.contiguous(),
        "cached_max_abs_diff": diff,
    }


# --------------------------------------------------------------------------------------------------------------
# Independent float64 re-computation from the formulas (guards the description in the JSON)
# --------------------------------------------------------------------------------------------------------------


def formula_inv_freq(variant):
    pub = VARIANTS[variant]
    base, sc = pub["rope_theta"], pub["rope_scaling"] or {"rope_type": "default"}
    # transformers computes the base frequencies in float32, then applies the scaling in float32
    inv = 1.0 / (base ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.int64).float() / HEAD_DIM))
    wavelengths = 2 * math.pi / inv
    zones = None
    if sc["rope_type"] == "linear":
        inv = inv / sc["factor"]
    elif sc["rope_type"] == "llama3":
        factor, lo, hi, old = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"], \
            sc["original_max_position_embeddings"]
        out, zones = [], []
        for f in inv.tolist():
            f32 = torch.tensor(f, dtype=torch.float32)
            wavelen = 2 * math.pi / f32
            if wavelen < old / hi:
                out.append(f32)
                zones.append("unchanged")
            elif wavelen > old / lo:
                out.append(f32 / factor)
                zones.append("divided_by_factor")
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                out.append((1 - smooth) * f32 / factor + smooth * f32)
                zones.append("smoothed")
        inv = torch.stack(out).float()
    return inv, zones, wavelengths


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def formula_attention(sd, x, pos, inv_freq):
    x = x.double()
    wq, wk, wv, wo = (sd[f"{n}.weight"].double() for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    b, t, _ = x.shape
    q = (x @ wq.T).view(b, t, HEADS, HEAD_DIM).transpose(1, 2)
    k = (x @ wk.T).view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
    v = (x @ wv.T).view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
    ang = pos.double()[..., None] * inv_freq.double()  # [b, t, head_dim/2]
    emb = torch.cat((ang, ang), dim=-1)[:, None]  # [b, 1, t, head_dim]: halves repeated, not interleaved
    cos, sin = emb.cos(), emb.sin()
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    g = HEADS // KV_HEADS
    k = k.repeat_interleave(g, dim=1)  # query head h uses kv head h // g
    v = v.repeat_interleave(g, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM)
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    ctx = torch.softmax(scores, dim=-1) @ v  # [b, heads, t, head_dim]
    ctx = ctx.transpose(1, 2).reshape(b, t, HEADS * HEAD_DIM)
    return ctx @ wo.T, cos[:, 0], sin[:, 0]


# --------------------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "weights",
                                                  "llama-attention"))
    args = ap.parse_args()
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    print("llama-attention reference", flush=True)

    torch.manual_seed(SEED)
    shapes = {"q_proj": (HEADS * HEAD_DIM, HIDDEN), "k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
              "v_proj": (KV_HEADS * HEAD_DIM, HIDDEN), "o_proj": (HIDDEN, HEADS * HEAD_DIM)}
    state_dict = {f"{n}.weight": torch.randn(*s) * WEIGHT_STD for n, s in shapes.items()}
    hidden_states = torch.randn(BATCH, SEQ, HIDDEN)
    position_ids = torch.arange(SEQ, dtype=torch.int64)[None].expand(BATCH, SEQ).contiguous()

    tensors = {f"self_attn.{k}": v.contiguous() for k, v in state_dict.items()}
    tensors["hidden_states"] = hidden_states
    tensors["position_ids"] = position_ids
    variants_json = {}
    for name in VARIANTS:
        r = run_variant(name, state_dict, hidden_states, position_ids)
        for key in ("output", "output_cached", "cos", "sin", "inv_freq"):
            tensors[f"{key}.{name}"] = r[key].float().contiguous()

        inv_ref, zones, wavelengths = formula_inv_freq(name)
        assert torch.allclose(r["inv_freq"], inv_ref, rtol=1e-6, atol=0), (name, r["inv_freq"], inv_ref)
        out64, cos64, sin64 = formula_attention(state_dict, hidden_states, position_ids, r["inv_freq"])
        out_diff = float((out64 - r["output"].double()).abs().max())
        cs_diff = max(float((cos64 - r["cos"].double()).abs().max()), float((sin64 - r["sin"].double()).abs().max()))
        assert out_diff < 1e-5 and cs_diff < 1e-5, (name, out_diff, cs_diff)
        assert r["attention_scaling"] == 1.0

        entry = {
            "rope_theta": VARIANTS[name]["rope_theta"],
            "rope_scaling": VARIANTS[name]["rope_scaling"],
            "transformers_rope_parameters": dict(r["cfg"].rope_parameters),
            "attention_scaling": r["attention_scaling"],
            "inv_freq": r["inv_freq"],
            "cached_vs_uncached_max_abs_diff": r["cached_max_abs_diff"],
            "float64_formula_max_abs_diff": {"output": out_diff, "cos_sin": cs_diff},
        }
        if zones is not None:
            entry["llama3_zones"] = zones
            entry["llama3_wavelengths"] = wavelengths.tolist()
        variants_json[name] = entry

    # identical weights and inputs in every variant; outputs must differ between variants
    assert not torch.allclose(tensors["output.default"], tensors["output.linear"])
    assert not torch.allclose(tensors["output.default"], tensors["output.llama3"])

    st_path = os.path.join(out_dir, "reference.safetensors")
    save_file(tensors, st_path, metadata={"format": "pt"})
    os.chmod(st_path, 0o644)  # safetensors writes 0600
    back = load_file(st_path)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)

    ref = {
        "description": "transformers LlamaAttention (eager, GQA 4 query / 2 kv heads, head_dim 8) with "
                       "LlamaRotaryEmbedding in three rope variants; random weights N(0, 0.2^2), float32, CPU",
        "source": {"attention": "transformers.models.llama.modeling_llama.LlamaAttention",
                   "rotary": "transformers.models.llama.modeling_llama.LlamaRotaryEmbedding",
                   "cache": "transformers.cache_utils.DynamicCache",
                   "script": "scripts/fixtures_llama_attention.py"},
        "config": {"hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
                   "head_dim": HEAD_DIM, "attention_bias": False, "attention_dropout": 0.0,
                   "max_position_embeddings": MAX_POS, "attn_implementation": "eager",
                   "scaling": HEAD_DIM ** -0.5, "num_key_value_groups": HEADS // KV_HEADS},
        "variants": variants_json,
        "seed": SEED,
        "init": "torch.manual_seed(0); then, in this order, q_proj.weight [32,32], k_proj.weight [16,32], "
                "v_proj.weight [16,32], o_proj.weight [32,32] = torch.randn(shape) * 0.2; then hidden_states = "
                "torch.randn(2, 7, 32); no biases",
        "inputs": {
            "hidden_states": [BATCH, SEQ, HIDDEN],
            "position_ids": position_ids.tolist(),
            "attention_mask": "additive float32 [batch, 1, q_len, kv_len]: 0.0 where key_pos <= query_pos, "
                              "torch.finfo(float32).min (-3.40282347e38) elsewhere; equal to what "
                              "transformers.masking_utils.create_causal_mask builds for these calls (checked)",
        },
        "uncached": "output.<v> = LlamaAttention(hidden_states, position_embeddings=rotary(hidden_states, "
                    "position_ids), attention_mask=mask [2,1,7,7])[0]",
        "cached": {
            "description": "output_cached.<v>: one DynamicCache; call 1 with hidden_states[:, 0:5], positions 0..4, "
                           "mask [2,1,5,5] causal; call 2 with hidden_states[:, 5:7], positions 5..6, mask [2,1,2,7] "
                           "(query i at position 5+i sees keys 0..5+i); outputs concatenated on axis 1. The cache "
                           "holds keys after the rotation and before the kv heads are repeated: [2, 2, seq, 8]",
            "calls": [{"positions": list(range(0, PREFIX)), "mask_shape": [BATCH, 1, PREFIX, PREFIX]},
                      {"positions": list(range(PREFIX, SEQ)), "mask_shape": [BATCH, 1, SEQ - PREFIX, SEQ]}],
            "tolerance": TOL,
        },
        "cos_sin_layout": "cos.<v>/sin.<v> are exactly what LlamaRotaryEmbedding.forward returns: [batch, seq, "
                          "head_dim] (both rows identical here); emb = cat(freqs, freqs) along the last axis, "
                          "freqs[b, t, i] = position_ids[b, t] * inv_freq[i]; cos/sin multiplied by "
                          "attention_scaling (1.0 for all three variants)",
        "formulas": {
            "inv_freq_default": "1 / rope_theta ** (arange(0, head_dim, 2) / head_dim), in float32",
            "inv_freq_linear": "inv_freq_default / factor (equivalent to positions / factor)",
            "inv_freq_llama3": "wavelen = 2*pi / inv_freq_default; low_wavelen = original_max_position_embeddings "
                               "/ low_freq_factor; high_wavelen = original_max_position_embeddings / "
                               "high_freq_factor; wavelen < high_wavelen: unchanged; wavelen > low_wavelen: "
                               "inv_freq / factor; otherwise smooth = (original_max_position_embeddings / wavelen - "
                               "low_freq_factor) / (high_freq_factor - low_freq_factor), inv = (1 - smooth) * "
                               "inv_freq / factor + smooth * inv_freq",
            "rotation": "rotate_half (half split, NOT interleaved pairs): x1 = x[..., :head_dim/2], x2 = x[..., "
                        "head_dim/2:], rotate_half(x) = cat(-x2, x1); q' = q*cos + rotate_half(q)*sin, same for k; "
                        "v is not rotated",
            "attention": "q, k, v = x W^T (no bias), split into heads [b, heads, t, head_dim]; rope on q, k; kv "
                         "head j is shared by query heads j*groups .. j*groups+groups-1 (repeat_kv = "
                         "repeat_interleave on the head axis); softmax(q k^T * head_dim^-0.5 + mask) v in float32; "
                         "heads concatenated [b, t, heads*head_dim]; o_proj (no bias)",
        },
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                    for k, v in sorted(tensors.items())},
        "versions": {"numpy": np.__version__, "python": "%d.%d.%d" % sys.version_info[:3],
                     "safetensors": safetensors.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    write_json(os.path.join(out_dir, "reference.json"), ref)
    print(f"wrote {st_path} and reference.json", flush=True)


if __name__ == "__main__":
    main()
