"""A full-size, randomly initialised Llama-architecture checkpoint in bfloat16, sharded as
published checkpoints are, for measuring what loading a real-size decoder costs
(scripts/bench/load_rss.sh; issue 12's target: peak RSS ≤ 1.2 × the bf16 files).

The default shape is SmolLM2-1.7B's (24 layers, hidden 2048, 32 heads, intermediate 8192,
vocabulary 49152, tied head, rope θ 130000): 1.71 billion parameters, 3.42 GB in bf16. The
weights are drawn N(0, 0.02²) directly in bfloat16, tensor by tensor, and written into
safetensors shards of at most --shard-gb GB with a model.safetensors.index.json, so making it
never holds more than one shard in memory. The tokenizer is weights/llama-tiny's (its ids
are all below the vocabulary size). Written under .bench/ (git-ignored).

    .venv-fixtures/bin/python scripts/bench/make_llama_bf16.py [--out .bench/models/smollm2-1.7b-bf16]
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]

SMOLLM2_1_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 24,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 130000,
    "rope_scaling": None,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}


def tensors(c):
    """(name, shape) of every weight, in checkpoint order."""
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    d = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * d
    yield "model.embed_tokens.weight", (v, h)
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}"
        yield f"{p}.input_layernorm.weight", (h,)
        yield f"{p}.self_attn.q_proj.weight", (h, h)
        yield f"{p}.self_attn.k_proj.weight", (kv, h)
        yield f"{p}.self_attn.v_proj.weight", (kv, h)
        yield f"{p}.self_attn.o_proj.weight", (h, h)
        yield f"{p}.post_attention_layernorm.weight", (h,)
        yield f"{p}.mlp.gate_proj.weight", (i, h)
        yield f"{p}.mlp.up_proj.weight", (i, h)
        yield f"{p}.mlp.down_proj.weight", (h, i)
    yield "model.norm.weight", (h,)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / ".bench/models/smollm2-1.7b-bf16"))
    ap.add_argument("--shard-gb", type=float, default=2.0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    limit = int(args.shard_gb * 1e9)
    shards, current, size = [], {}, 0
    for name, shape in tensors(SMOLLM2_1_7B):
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = (torch.randn(shape, dtype=torch.float32) * 0.02).to(torch.bfloat16)
        nbytes = t.numel() * 2
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = file
            total += t.numel() * 2
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(SMOLLM2_1_7B, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2))
    tiny = ROOT / "weights" / "llama-tiny"
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny / f).exists():
            shutil.copy(tiny / f, out / f)
    print(f"{out}: {sum(t.numel() for s in shards for t in s.values()) / 1e9:.2f} B parameters, "
          f"{total / 1e9:.2f} GB in {len(shards)} shards")


if __name__ == "__main__":
    main()
