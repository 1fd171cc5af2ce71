#!/usr/bin/env python3
"""References for `trident explain` and core's probe: weights/explain/reference.json.

For a few of the existing tiny fixtures (it makes no checkpoint of its own), one input each through transformers with
`attn_implementation="eager"`, `output_attentions=True` and `output_hidden_states=True`:

* `bert-tiny-ner` (BertForTokenClassification), `gpt2-tiny` (GPT2LMHeadModel), `llama-tiny` (LlamaForCausalLM,
  grouped-query attention and rotary positions), `bloom-tiny` (BloomForCausalLM, ALiBi; its `hidden_states[0]` is
  after `word_embeddings_layernorm`): `input_ids`, `attentions` (per layer [1, heads, seq, seq]) and
  `hidden_states`;
* `t5-tiny` (T5ForConditionalGeneration, relative position buckets) and `bart-tiny` (BartForConditionalGeneration):
  `input_ids`, `decoder_input_ids` (the decoder start token, then a few fixed ids), `encoder_attentions`,
  `decoder_attentions`, `cross_attentions`, `encoder_hidden_states` and `decoder_hidden_states`.

Hidden states are the residual stream as Trident's probe records it: the first block's input (transformers'
`hidden_states[0]`), then every block's own output, taken with forward hooks on the blocks. transformers' last
`hidden_states` entry is after the stack's final norm (GPT-2 `ln_f`, T5 `final_layer_norm`, Llama `norm`, BLOOM
`ln_f`), which is
not a block's output; the script checks that every other entry equals the hooked outputs. `embeddings` gives, where
a family adds a position vector to the token vector, each token's L2 norm of the two parts (BERT: word and position
embeddings; GPT-2: `wte`, `wpe`; BART: the scaled token embedding and the learned positions, offset 2).

The causal models' `input_ids` are a prompt (`prompt_len` tokens) followed by a few fixed continuation ids, so a test
can feed the prompt, then one token per step with a KV cache, and compare the stitched rows with this one full pass.

Nothing here uses Trident code.  Deterministic: CPU, float32, one thread; a rerun writes byte-identical files.  Run
after the fixtures it reads exist (scripts/fixtures.sh), or directly:

    .venv-fixtures/bin/python scripts/fixtures_explain.py [--weights weights] [--out weights/explain]
"""

import argparse
import json
import os
import sys
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    BartForConditionalGeneration,
    BertForTokenClassification,
    BloomForCausalLM,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    T5ForConditionalGeneration,
)

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DIGITS = 7  # significant digits written (the tests compare to 1e-4)

ENCODERS = [
    # (fixture, class, text, the blocks)
    ("bert-tiny-ner", BertForTokenClassification, "Angela Merkel visited Paris.", lambda m: m.bert.encoder.layer),
]
CAUSAL = [
    # (fixture, class, prompt, continuation ids, the blocks)
    ("gpt2-tiny", GPT2LMHeadModel, "The United Nations said", [17, 250, 3], lambda m: m.transformer.h),
    ("llama-tiny", LlamaForCausalLM, "Hello world, the cat", [40, 7, 300], lambda m: m.model.layers),
    ("bloom-tiny", BloomForCausalLM, "Hello world, the cat", [40, 7, 300], lambda m: m.transformer.h),
]
SEQ2SEQ = [
    # (fixture, class, text, decoder ids after the start token, encoder blocks, decoder blocks)
    ("t5-tiny", T5ForConditionalGeneration, "summarize: The cat sat on the mat.", [25, 9, 101],
     lambda m: m.encoder.block, lambda m: m.decoder.block),
    ("bart-tiny", BartForConditionalGeneration, "The quick brown fox jumps.", [0, 45, 200],
     lambda m: m.model.encoder.layers, lambda m: m.model.decoder.layers),
]


def rnd(x):
    v = float(format(float(x), f".{DIGITS}g"))
    return 0.0 if v == 0 else v


def tensor_json(t):
    """{"shape": [...], "data": [flat row-major]}, floats to DIGITS significant digits."""
    t = t.detach().to(torch.float32).cpu()
    return {"shape": list(t.shape), "data": [rnd(x) for x in t.reshape(-1).tolist()]}


def load(name, cls):
    path = os.path.join(WEIGHTS, name)
    model = cls.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


class Hooks:
    """Each block's output (the residual stream after it), in call order."""

    def __init__(self, blocks):
        self.outputs = []
        self.handles = [b.register_forward_hook(self.hook) for b in blocks]

    def hook(self, _module, _inputs, output):
        self.outputs.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    def close(self):
        for h in self.handles:
            h.remove()


def residual(first, hooked, reported):
    """[first block's input] + block outputs, checked against transformers' own hidden states."""
    states = [first] + hooked
    assert len(reported) == len(states), (len(reported), len(states))
    for i in range(len(states) - 1):  # the last reported one may be after a final norm
        assert torch.allclose(states[i], reported[i], atol=1e-6), f"hidden state {i}"
    return [tensor_json(s) for s in states]


def norms(t):
    return [rnd(x) for x in t[0].norm(dim=-1).tolist()]


def encoder_case(name, cls, text, blocks):
    model, tok = load(name, cls)
    ids = tok(text, return_tensors="pt")["input_ids"]
    hooks = Hooks(blocks(model))
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, output_hidden_states=True)
        emb = model.bert.embeddings
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        embeddings = {"token": norms(emb.word_embeddings(ids)), "position": norms(emb.position_embeddings(positions))}
    hooks.close()
    return {
        "kind": "encoder",
        "text": text,
        "input_ids": ids[0].tolist(),
        "attentions": [tensor_json(a) for a in out.attentions],
        "hidden_states": residual(out.hidden_states[0], hooks.outputs, out.hidden_states),
        "embeddings": embeddings,
    }


def causal_case(name, cls, prompt, continuation, blocks):
    model, tok = load(name, cls)
    prompt_ids = tok(prompt)["input_ids"]
    ids = torch.tensor([prompt_ids + continuation])
    hooks = Hooks(blocks(model))
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, output_hidden_states=True, use_cache=False)
    hooks.close()
    case = {
        "kind": "causal",
        "text": prompt,
        "prompt_len": len(prompt_ids),
        "input_ids": ids[0].tolist(),
        "attentions": [tensor_json(a) for a in out.attentions],
        "hidden_states": residual(out.hidden_states[0], hooks.outputs, out.hidden_states),
    }
    if name.startswith("gpt2"):
        with torch.no_grad():
            t = model.transformer
            case["embeddings"] = {"token": norms(t.wte(ids)), "position": norms(t.wpe(torch.arange(ids.shape[1])[None]))}
    return case


def seq2seq_case(name, cls, text, decoder_ids, encoder_blocks, decoder_blocks):
    model, tok = load(name, cls)
    ids = tok(text, return_tensors="pt")["input_ids"]
    dec = torch.tensor([[model.config.decoder_start_token_id] + decoder_ids])
    enc_hooks, dec_hooks = Hooks(encoder_blocks(model)), Hooks(decoder_blocks(model))
    with torch.no_grad():
        out = model(input_ids=ids, decoder_input_ids=dec, output_attentions=True, output_hidden_states=True,
                    use_cache=False)
    enc_hooks.close()
    dec_hooks.close()
    case = {
        "kind": "seq2seq",
        "text": text,
        "input_ids": ids[0].tolist(),
        "decoder_input_ids": dec[0].tolist(),
        "encoder_attentions": [tensor_json(a) for a in out.encoder_attentions],
        "decoder_attentions": [tensor_json(a) for a in out.decoder_attentions],
        "cross_attentions": [tensor_json(a) for a in out.cross_attentions],
        "encoder_hidden_states": residual(out.encoder_hidden_states[0], enc_hooks.outputs, out.encoder_hidden_states),
        "decoder_hidden_states": residual(out.decoder_hidden_states[0], dec_hooks.outputs, out.decoder_hidden_states),
    }
    if name.startswith("bart"):
        with torch.no_grad():
            e = model.model.encoder  # embed_tokens scales by embed_scale itself
            case["embeddings"] = {"token": norms(e.embed_tokens(ids)), "position": norms(e.embed_positions(ids))}
    return case


def main():
    global WEIGHTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=os.path.join(ROOT, "weights"))
    parser.add_argument("--out", default=os.path.join(ROOT, "weights", "explain"))
    args = parser.parse_args()
    WEIGHTS = args.weights
    cases = {}
    for spec in ENCODERS:
        cases[spec[0]] = encoder_case(*spec)
    for spec in CAUSAL:
        cases[spec[0]] = causal_case(*spec)
    for spec in SEQ2SEQ:
        cases[spec[0]] = seq2seq_case(*spec)
    reference = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": "%d.%d.%d" % sys.version_info[:3]},
        "cases": cases,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "reference.json")
    text = json.dumps(reference, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote {path} ({len(text) // 1024} KB)", file=sys.stderr)


if __name__ == "__main__":
    main()
