"""ONNX Runtime as a benchmark peer for the encoder workloads (ner, classify, embed).

Preparation (`peers.py --prepare --system ort-float32|ort-int8`, once per model, outside the
timed run) writes .bench/onnx/<model>-float32/model.onnx and .bench/onnx/<model>-int8/model.onnx:

1. the checkpoint exported with torch (TorchScript exporter, eager attention: the graph shape
   that onnxruntime's transformer optimizer recognises), dynamic batch and sequence axes;
2. optimised by `onnxruntime.transformers.optimizer.optimize_model` (model_type 'bert'), which
   fuses the embeddings, attention, skip + layer norm and bias + GELU; the fused node counts
   are checked and printed;
3. checked against torch (the transformers model the `transformers` peer runs): the largest
   absolute difference over real tokens must stay under 1e-4, else preparation fails;
4. for int8, `onnxruntime.quantization.quantize_dynamic` applied to the optimised model
   (int8 weights per output channel, uint8 activations quantized at run time).

The timed run (`run()`) needs neither torch nor transformers: the `tokenizers` library with
the checkpoint's tokenizer.json (the same tokenizer transformers' fast tokenizer wraps;
preparation checks that both give the same ids and offsets), and numpy for the post-processing,
which follows the transformers pipelines: NER with aggregation "simple", classification
softmax top label, sentence embeddings as mean pooling over the attention mask + L2 norm.
"""

import inspect
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

TOLERANCE = 1e-4
# What the fused graph must contain per encoder layer, at least.
FUSED = ("EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu", "Gelu", "FastGelu")
BATCH = {"ner": 8, "classify": 32, "embed": 32}


def onnx_dir(model_dir, kind):
    """.bench/onnx/<model>-<kind>, beside .bench/models."""
    model_dir = Path(model_dir).resolve()
    return model_dir.parent.parent / "onnx" / f"{model_dir.name}-{kind}"


def load_tokenizer(model_dir, workload):
    """The checkpoint's tokenizer.json, set up as transformers calls it for this workload:
    pad to the longest text of the batch; no truncation for the pipelines (whose inputs fit),
    sentence-transformers' max_seq_length for embeddings. (tokenizer.json files often carry a
    fixed padding / truncation of their own, which transformers overrides per call.)"""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    if workload == "embed":
        st = os.path.join(model_dir, "sentence_bert_config.json")
        max_len = json.load(open(st)).get("max_seq_length", 512) if os.path.exists(st) else 512
        tok.enable_truncation(max_length=max_len)
    pad = json.load(open(os.path.join(model_dir, "config.json"))).get("pad_token_id", 0) or 0
    tok.enable_padding(pad_id=pad, pad_token=tok.id_to_token(pad) or "[PAD]")
    return tok


def feeds(encodings, names):
    """The session inputs for a padded batch of encodings."""
    arrays = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    return {n: arrays[n] for n in names}


# ---------------------------------------------------------------------------------------------
# Post-processing, numpy only.


def softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def split_tag(label):
    """('B'|'I', tag) of a B-/I- label; other labels count as a continuation of themselves."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def ner_simple(text, ids, offsets, special, logits, id2label, id_to_token, tokens_to_string, unk_id):
    """Entity groups of one text with aggregation "simple", as transformers' token
    classification pipeline computes them: each non-special token takes its best label
    (softmax score); adjacent tokens with the same tag join a group unless the token is B-;
    a group's score is the mean of its tokens', its word the decoder's join of its tokens;
    groups labelled O are dropped. `logits` cover the text's tokens (no padding)."""
    scores = softmax(np.asarray(logits, dtype=np.float32))
    tokens = []
    for i, tid in enumerate(ids):
        if special[i]:
            continue
        start, end = int(offsets[i][0]), int(offsets[i][1])
        best = int(scores[i].argmax())
        word = text[start:end] if int(tid) == unk_id else id_to_token(int(tid))
        tokens.append((id2label[best], scores[i][best], word, start, end))
    groups, current = [], []

    def close():
        groups.append({
            "entity_group": current[0][0].split("-", 1)[-1],
            "score": float(np.nanmean([t[1] for t in current])),
            "word": tokens_to_string([t[2] for t in current]),
            "start": current[0][3],
            "end": current[-1][4],
        })

    for t in tokens:
        if current:
            bi, tag = split_tag(t[0])
            if tag == split_tag(current[-1][0])[1] and bi != "B":
                current.append(t)
                continue
            close()
        current = [t]
    if current:
        close()
    return [g for g in groups if g["entity_group"] != "O"]


def top_label(logits, id2label):
    """[{label, score}] for one text: softmax, best label (transformers' text-classification
    default for single-label checkpoints)."""
    p = softmax(np.asarray(logits, dtype=np.float32))
    best = int(p.argmax())
    return [{"label": id2label[best], "score": float(p[best])}]


def mean_pool_normalize(hidden, mask):
    """sentence-transformers' mean pooling over the attention mask, then L2 normalisation."""
    m = mask[..., None].astype(hidden.dtype)
    summed = (hidden * m).sum(axis=1)
    pooled = summed / np.clip(m.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12, None)


def id2label_of(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    return {int(k): v for k, v in cfg.get("id2label", {}).items()}


# ---------------------------------------------------------------------------------------------
# The timed run.


def session(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(workload, model_dir, texts, kind, threads):
    """(load_s, run_s, units, unit, outputs) of one workload on ONNX Runtime; outputs in the
    JSON shapes Trident's bench writes."""
    t0 = time.perf_counter()
    path = onnx_dir(model_dir, kind) / "model.onnx"
    if not (onnx_dir(model_dir, kind) / "meta.json").exists():
        raise SystemExit(f"{path} is missing: run peers.py --prepare --system ort-{kind} first")
    sess = session(path, threads)
    names = [i.name for i in sess.get_inputs()]
    tok = load_tokenizer(model_dir, workload)
    id2label = id2label_of(model_dir)
    unk_id = tok.token_to_id("[UNK]")
    decode = tok.decoder.decode if tok.decoder is not None else " ".join
    load = time.perf_counter() - t0

    batch = BATCH[workload]
    outputs, units = [], 0
    t = time.perf_counter()
    for i in range(0, len(texts), batch):
        group = texts[i:i + batch]
        enc = tok.encode_batch(group)
        x = feeds(enc, names)
        out = sess.run(None, x)[0]
        if workload == "ner":
            for text, e, logits in zip(group, enc, out):
                n = sum(e.attention_mask)
                units += n
                outputs.append(ner_simple(text, e.ids[:n], e.offsets[:n], e.special_tokens_mask[:n], logits[:n],
                                          id2label, tok.id_to_token, decode, unk_id))
        elif workload == "classify":
            outputs += [top_label(row, id2label) for row in out]
        else:
            mask = x["attention_mask"] if "attention_mask" in x else np.array([e.attention_mask for e in enc])
            outputs += [{"embedding": v.tolist()} for v in mean_pool_normalize(out, mask)]
    run_s = time.perf_counter() - t
    if workload == "ner":
        return load, run_s, units, "tokens", outputs
    return load, run_s, len(texts), "sentences", outputs


# ---------------------------------------------------------------------------------------------
# Preparation: export, optimise, check, quantize.


def torch_model(workload, model_dir, eager):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

    cls = {"ner": AutoModelForTokenClassification, "classify": AutoModelForSequenceClassification,
           "embed": AutoModel}[workload]
    kwargs = {"attn_implementation": "eager"} if eager else {}
    return cls.from_pretrained(model_dir, **kwargs).eval()


def torch_outputs(model, workload, x):
    """The tensor the ONNX graph returns: logits, or the last hidden state for embeddings."""
    import torch

    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in x.items()})
    return (out.last_hidden_state if workload == "embed" else out.logits).float().numpy()


def export(workload, model_dir, path, sample):
    import torch

    model = torch_model(workload, model_dir, eager=True)
    params = inspect.signature(model.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in params]

    class Graph(torch.nn.Module):
        """The model with positional inputs and one tensor out."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            out = self.inner(**dict(zip(names, args)))
            return out.last_hidden_state if workload == "embed" else out.logits

    output = "last_hidden_state" if workload == "embed" else "logits"
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if workload == "classify" else {0: "batch", 1: "sequence"}
    args = tuple(torch.from_numpy(sample[n]) for n in names)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(Graph(model), args, str(path), input_names=names, output_names=[output],
                          dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False)
    return names


def count_ops(model_proto):
    counts = {}
    for node in model_proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def prepare(workload, model_dir, kind, texts):
    """Write (once) the ONNX model of `kind` for `workload`; returns a summary line."""
    import onnxruntime

    out = onnx_dir(model_dir, kind)
    meta_path = out / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("onnxruntime") == onnxruntime.__version__ and meta.get("workload") == workload:
            return summary(kind, meta, cached=True)
    if kind == "float32":
        meta = prepare_float32(workload, model_dir, texts, out)
    elif kind == "int8":
        f32 = onnx_dir(model_dir, "float32")
        print(prepare(workload, model_dir, "float32", texts), flush=True)
        meta = prepare_int8(workload, model_dir, texts, f32 / "model.onnx", out)
    else:
        raise SystemExit(f"unknown ONNX kind {kind}")
    meta.update(workload=workload, onnxruntime=onnxruntime.__version__)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return summary(kind, meta, cached=False)


def summary(kind, meta, cached):
    fused = ", ".join(f"{k} {v}" for k, v in meta["fused"].items() if v)
    return (f"onnx {kind} {meta['workload']}: fused nodes: {fused}; max |ORT - torch| {meta['max_diff']:.2e}"
            + (f"; {meta['note']}" if meta.get("note") else "") + (" (cached)" if cached else ""))


def check_batches(tok, texts, names):
    """A few inputs for the comparisons: one padded batch as in the timed run, and one text alone."""
    batch = [feeds(tok.encode_batch(texts[:8]), names), feeds(tok.encode_batch(texts[:1]), names)]
    return batch


def max_difference(workload, sess, reference, batches):
    worst = 0.0
    for x in batches:
        got = sess.run(None, x)[0]
        ref = torch_outputs(reference, workload, x)
        if workload == "classify":
            diff = np.abs(got - ref)
        else:
            # Real tokens only: padded positions are not part of any result.
            diff = np.abs(got - ref)[x["attention_mask"].astype(bool)]
        worst = max(worst, float(diff.max()))
    return worst


def prepare_float32(workload, model_dir, texts, out):
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    layers = cfg["num_hidden_layers"]
    tok = load_tokenizer(model_dir, workload)
    check_tokenizer(model_dir, workload, texts, tok)
    out.mkdir(parents=True, exist_ok=True)
    raw, final = out / "exported.onnx", out / "model.onnx"
    names = export(workload, model_dir, raw, feeds(tok.encode_batch(texts[:2]), ["input_ids", "attention_mask", "token_type_ids"]))
    opt = optimize_model(str(raw), model_type="bert", num_heads=cfg["num_attention_heads"],
                         hidden_size=cfg["hidden_size"], opt_level=0, use_gpu=False)
    counts = count_ops(opt.model)
    fused = {k: counts.get(k, 0) for k in FUSED}
    gelu = fused["BiasGelu"] + fused["Gelu"] + fused["FastGelu"]
    if fused["Attention"] != layers or fused["SkipLayerNormalization"] < layers or gelu != layers:
        raise SystemExit(f"onnx {workload}: the optimizer did not fuse the {layers} layers: {fused}")
    opt.save_model_to_file(str(final))
    raw.unlink()
    onnx.checker.check_model(str(final))

    sess = session(final, 2)
    reference = torch_model(workload, model_dir, eager=False)
    diff = max_difference(workload, sess, reference, check_batches(tok, texts, names))
    note = None
    if workload == "ner":
        note = check_ner_postprocess(model_dir, texts, tok, reference)
    if diff > TOLERANCE:
        final.unlink()
        raise SystemExit(f"onnx {workload}: ORT float32 differs from torch by {diff:.2e} > {TOLERANCE:.0e}")
    return {"fused": fused, "max_diff": diff, "inputs": names, "note": note}


def prepare_int8(workload, model_dir, texts, f32_path, out):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.mkdir(parents=True, exist_ok=True)
    final = out / "model.onnx"
    # Per-channel int8 weights; no reduced range: the u8s8 kernels of AVX512-VNNI / AMX
    # (and AVX2-VNNI) do not saturate, and reduce_range costs accuracy without speed.
    quantize_dynamic(str(f32_path), str(final), weight_type=QuantType.QInt8, per_channel=True, reduce_range=False,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    counts = count_ops(onnx.load(str(final)))
    fused = {k: counts.get(k, 0) for k in ("EmbedLayerNormalization", "QEmbedLayerNormalization", "QAttention", "Attention", "SkipLayerNormalization",
                                           "BiasGelu", "DynamicQuantizeMatMul", "MatMulInteger", "MatMul")}
    tok = load_tokenizer(model_dir, workload)
    names = [i.name for i in session(final, 2).get_inputs()]
    diff = max_difference(workload, session(final, 2), torch_model(workload, model_dir, eager=False),
                          check_batches(tok, texts, names))
    # No tolerance for int8: the difference is what quantization costs (reported, not checked).
    return {"fused": fused, "max_diff": diff, "note": "int8: difference reported, not checked"}


def check_tokenizer(model_dir, workload, texts, tok):
    """The tokenizers library set up as load_tokenizer does gives the ids and offsets that
    transformers' tokenizer gives (as the pipelines call it) on every input."""
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(model_dir)
    kwargs = {"truncation": True, "max_length": tok.truncation["max_length"]} if tok.truncation else {}
    for text, e in zip(texts, tok.encode_batch(texts)):
        r = ref(text, return_offsets_mapping=True, **kwargs)
        n = sum(e.attention_mask)
        if r["input_ids"] != e.ids[:n] or [tuple(o) for o in r["offset_mapping"]] != [tuple(o) for o in e.offsets[:n]]:
            raise SystemExit(f"onnx {workload}: the tokenizers library tokenizes {text[:40]!r} unlike transformers")


def check_ner_postprocess(model_dir, texts, tok, model):
    """ner_simple gives exactly the entities transformers' pipeline gives, on the same logits."""
    import torch
    from transformers import pipeline

    p = pipeline("token-classification", model=model, tokenizer=model_dir, aggregation_strategy="simple", device="cpu")
    id2label = id2label_of(model_dir)
    decode = tok.decoder.decode
    checked = 0
    for text in texts[:8]:
        want = p(text)  # batch 1, unpadded: the same logits as below
        e = tok.encode(text)
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([e.ids]), attention_mask=torch.tensor([e.attention_mask]),
                           token_type_ids=torch.tensor([e.type_ids])).logits[0].float().numpy()
        got = ner_simple(text, e.ids, e.offsets, e.special_tokens_mask, logits, id2label, tok.id_to_token,
                         decode, tok.token_to_id("[UNK]"))
        key = lambda ents: [(x["entity_group"], x["word"], x["start"], x["end"], round(float(x["score"]), 6)) for x in ents]
        if key(want) != key(got):
            raise SystemExit(f"onnx ner: the simple aggregation differs from transformers' on {text[:40]!r}:\n"
                             f"{key(want)[:5]}\n{key(got)[:5]}")
        checked += len(got)
    return f"aggregation = transformers' on {checked} entities"
