"""The Llama-architecture models of issue 12's decoding benchmark: their shapes (make_models.py
builds them from these) and what a token costs in them (run.py's bounds); and the same cost for
the benchmark's GPT-2. No imports beyond
the standard library, so that rendering needs neither torch nor transformers."""

LLAMA = {
    # HuggingFaceTB/SmolLM2-360M: 362M parameters, tied head.
    "smollm2-360m": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                         intermediate_size=2560, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5),
    # TinyLlama/TinyLlama-1.1B-Chat-v1.0: 1.10B parameters, untied head.
    "tinyllama-1.1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                           intermediate_size=5632, vocab_size=32000, tie_word_embeddings=False, rope_theta=10000.0,
                           max_position_embeddings=2048, rms_norm_eps=1e-5),
}


def layer_weights(s):
    """Weights of the projections of every block: q, k, v, o, gate, up, down."""
    h, i = s["hidden_size"], s["intermediate_size"]
    kv = s["num_key_value_heads"] * h // s["num_attention_heads"]
    return s["num_hidden_layers"] * (2 * h * h + 2 * h * kv + 3 * h * i)


def head_weights(s):
    """The output head, [vocab, hidden] (the token table itself when tied)."""
    return s["vocab_size"] * s["hidden_size"]


def weights_per_token(s):
    """Weights a decoding step reads once, whatever its batch: every projection and the head.
    Left out: the norms (hidden-size vectors), the one row per token of the token table, int8
    scales (one per output row), and the KV cache (f32, 96 positions on average over the 32 + 128
    of the workloads: 0.1-0.5 % of the f32 weights, 0.4-2.2 % of the int8 ones)."""
    return layer_weights(s) + head_weights(s)


def prefill_flops_per_token(s, n):
    """f32 FLOPs per prompt token of an n-token prefill: 2 per projection weight, plus causal
    attention (QKᵀ and AV over on average n/2 keys: 2 · n · hidden per layer); the head runs for
    the last position only and is left out."""
    return 2 * layer_weights(s) + 2 * n * s["hidden_size"] * s["num_hidden_layers"]


# GPT-2 124M (the benchmark's gpt2 checkpoint): 12 blocks of hidden 768, each with the fused
# q/k/v projection (768 × 2304), the attention output (768 × 768) and the MLP (768 × 3072, twice);
# the head is the token table (50,257 × 768). 123.5M weights, 494 MB in f32.
GPT2_WEIGHTS_PER_TOKEN = 12 * 768 * (2304 + 768 + 2 * 3072) + 50257 * 768
