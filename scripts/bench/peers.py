"""The peers' side of the benchmark: one workload, one system, one process; prints one JSON
line like Trident's benches/workloads.rs (load_s, run_s, units, peak_rss_kb).

Systems: transformers (torch, inference mode), ct2-float32, ct2-int8 (CTranslate2 with the
`tokenizers` library and numpy, no torch: BERT has no task heads there, so its classifier is
applied to the encoder output with numpy), and for
the encoder workloads ort-float32, ort-int8 (ONNX Runtime, see onnx_models.py; that process
imports neither torch nor transformers).

`--prepare` converts the model once (CTranslate2, ONNX) outside the timed run. `--output FILE`
also writes the results, in the JSON shapes Trident's bench writes, for run.py's accuracy
table (ONNX Runtime: every workload it runs; CTranslate2: ner, classify, embed, computed
after the timed run from the logits it kept; transformers and CTranslate2: the generated ids
and texts of the Marian and BART workloads).

Marian and BART (issue 11): transformers runs MarianMTModel / BartForConditionalGeneration
with the checkpoint's generation_config.json under exactly N new tokens; CTranslate2 gets the
same settings by argument (it reads none of them): the Marian input is split by source.spm and
the output joined by target.spm, as CTranslate2's OPUS-MT guide does, with MarianTokenizer's
</s> appended; BART's input is tokenized by tokenizer.json, its forced first token <s> is given
as the target prefix, and distilbart-cnn's no_repeat_ngram_size 3 and length_penalty 2.0 are
passed. (CTranslate2 does not force </s> as the last token, as forced_eos_token_id does in
transformers and Trident: the last position differs, the work does not.)
"""

import argparse
import json
import os
import time

import numpy as np

import onnx_models

ENCODERS = ("ner", "classify", "embed")
# Marian and BART workloads: (new tokens, beams).
SEQ2SEQ = {"marian-greedy": (32, 1), "marian-beam4": (32, 4), "bart-beam4": (64, 4)}


def peak_rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def exact(n, beams):
    return dict(max_new_tokens=n, min_new_tokens=n, num_beams=beams, do_sample=False)


def run_transformers(workload, model_dir, texts):
    import torch
    from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline)

    t0 = time.perf_counter()
    if workload == "ner":
        p = pipeline("token-classification", model=model_dir, aggregation_strategy="simple", device="cpu")
        load = time.perf_counter() - t0
        t = time.perf_counter()
        p(texts, batch_size=8)
        units = sum(len(p.tokenizer(x)["input_ids"]) for x in texts)
        return load, time.perf_counter() - t, units, "tokens", None
    if workload == "classify":
        p = pipeline("text-classification", model=model_dir, device="cpu")
        load = time.perf_counter() - t0
        t = time.perf_counter()
        p(texts, batch_size=32)
        return load, time.perf_counter() - t, len(texts), "sentences", None
    if workload == "embed":
        from sentence_transformers import SentenceTransformer
        m = SentenceTransformer(model_dir, device="cpu")
        load = time.perf_counter() - t0
        t = time.perf_counter()
        m.encode(texts, batch_size=32)
        return load, time.perf_counter() - t, len(texts), "sentences", None
    tok = AutoTokenizer.from_pretrained(model_dir)
    if workload in SEQ2SEQ:
        from transformers import BartForConditionalGeneration, MarianMTModel

        cls = MarianMTModel if workload.startswith("marian") else BartForConditionalGeneration
        model = cls.from_pretrained(model_dir).eval()
        load = time.perf_counter() - t0
        n, beams = SEQ2SEQ[workload]
        t = time.perf_counter()
        x = tok(texts, return_tensors="pt", padding=True)
        out = model.generate(**x, **exact(n, beams))
        decoded = tok.batch_decode(out, skip_special_tokens=True)
        run = time.perf_counter() - t
        # Without the decoder start token; every row has exactly n new tokens (no padding).
        outputs = {"token_ids": out[:, 1:].tolist(), "texts": decoded}
        return load, run, len(texts) * n, "new tokens", outputs
    if workload.startswith("t5"):
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
        load = time.perf_counter() - t0
        beams = 4 if workload == "t5-beam4" else 1
        t = time.perf_counter()
        x = tok(texts, return_tensors="pt", padding=True)
        out = model.generate(**x, **exact(64, beams))
        tok.batch_decode(out, skip_special_tokens=True)
        return load, time.perf_counter() - t, len(texts) * 64, "new tokens", None
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    load = time.perf_counter() - t0
    batch = 8 if workload == "gpt2-greedy-b8" else 1
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    kwargs = exact(128, 1)
    if workload == "gpt2-topp-b1":
        torch.manual_seed(0)
        kwargs.update(do_sample=True, top_p=0.9, top_k=0)
    t = time.perf_counter()
    x = tok(texts[:batch], return_tensors="pt", padding=True)
    out = model.generate(**x, **kwargs, pad_token_id=tok.eos_token_id)
    tok.batch_decode(out, skip_special_tokens=True)
    return load, time.perf_counter() - t, batch * 128, "new tokens", None


def ct2_dir(model_dir, quantization):
    """Convert once into .bench/ct2/<name>-<quantization>."""
    import ctranslate2

    name = os.path.basename(os.path.normpath(model_dir))
    out = os.path.join(os.path.dirname(os.path.dirname(os.path.normpath(model_dir))), "ct2", f"{name}-{quantization}")
    if not os.path.exists(os.path.join(out, "model.bin")):
        # (Imported only here: the converter imports transformers and torch.)
        from ctranslate2.converters import TransformersConverter

        cfg_path = os.path.join(model_dir, "config.json")
        cfg = json.load(open(cfg_path))
        if cfg.get("model_type") == "bert" and "position_embedding_type" not in cfg:
            # CTranslate2 4.8's BERT converter reads this field, which transformers 5 dropped.
            cfg["position_embedding_type"] = "absolute"
            json.dump(cfg, open(cfg_path, "w"), indent=2)
        TransformersConverter(model_dir).convert(out, quantization=quantization, force=True)
    return out, ctranslate2


def bert_head(model_dir, kind):
    """The task head of a BERT checkpoint, applied with numpy to CTranslate2's encoder output
    (token classification: every position; sequence classification: the pooled output)."""
    from safetensors import safe_open

    # Only the two head tensors are read (load_file would read the whole checkpoint).
    with safe_open(os.path.join(model_dir, "model.safetensors"), framework="numpy") as f:
        weight = f.get_tensor("classifier.weight").astype(np.float32)
        bias = f.get_tensor("classifier.bias").astype(np.float32)
    if kind == "token":
        return lambda h, pooled: h @ weight.T + bias
    return lambda h, pooled: pooled @ weight.T + bias


def run_ct2(workload, model_dir, texts, quantization, threads, keep=False):
    """(load_s, run_s, units, unit, outputs); outputs (ner, classify, embed, and the Marian and
    BART workloads with `keep`) are computed after the timed run from what the run kept.

    The process is as lean as a CTranslate2 deployment: ctranslate2, the `tokenizers` library
    and numpy, neither torch nor transformers (which would add ~300 MB to its peak RSS)."""
    if workload in SEQ2SEQ:
        return run_ct2_seq2seq(workload, model_dir, texts, quantization, threads, keep)
    from tokenizers import Tokenizer

    t0 = time.perf_counter()
    path, ct2 = ct2_dir(model_dir, quantization)
    if workload in ENCODERS:
        tok = onnx_models.load_tokenizer(model_dir, workload)
        tok.no_padding()
        enc = ct2.Encoder(path, device="cpu", intra_threads=threads, compute_type=quantization)
        head = None if workload == "embed" else bert_head(model_dir, "token" if workload == "ner" else "seq")
        load = time.perf_counter() - t0
        batch = 8 if workload == "ner" else 32
        t = time.perf_counter()
        units = 0
        kept = []
        for i in range(0, len(texts), batch):
            encodings = tok.encode_batch(texts[i:i + batch])
            tokens = [e.tokens for e in encodings]
            units += sum(len(x) for x in tokens)
            out = enc.forward_batch(tokens)
            hidden = np.array(out.last_hidden_state)
            if workload == "embed":
                mask = np.zeros(hidden.shape[:2], dtype=np.float32)
                for r, x in enumerate(tokens):
                    mask[r, : len(x)] = 1
                e = onnx_models.mean_pool_normalize(hidden, mask)
                if keep:
                    kept += list(e)
            else:
                pooled = np.array(out.pooler_output) if out.pooler_output is not None else None
                logits = head(hidden, pooled)
                onnx_models.softmax(logits).argmax(-1)
                if keep:
                    kept += [(e, row) for e, row in zip(encodings, logits)]
        run_s = time.perf_counter() - t
        outputs = ct2_outputs(workload, model_dir, tok, texts, kept) if keep else None
        return (load, run_s, units if workload == "ner" else len(texts), "tokens" if workload == "ner" else "sentences",
                outputs)
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    if workload.startswith("t5"):
        tr = ct2.Translator(path, device="cpu", intra_threads=threads, compute_type=quantization)
        load = time.perf_counter() - t0
        beams = 4 if workload == "t5-beam4" else 1
        t = time.perf_counter()
        tokens = [e.tokens for e in tok.encode_batch(texts)]
        res = tr.translate_batch(tokens, beam_size=beams, min_decoding_length=64, max_decoding_length=64)
        unk = tok.token_to_id("<unk>") or 0
        for r in res:
            tok.decode([tok.token_to_id(x) or unk for x in r.hypotheses[0]])
        return load, time.perf_counter() - t, len(texts) * 64, "new tokens", None
    gen = ct2.Generator(path, device="cpu", intra_threads=threads, compute_type=quantization)
    load = time.perf_counter() - t0
    batch = 8 if workload == "gpt2-greedy-b8" else 1
    kwargs = dict(max_length=128, min_length=128, include_prompt_in_result=False)
    if workload == "gpt2-topp-b1":
        kwargs.update(sampling_topk=0, sampling_topp=0.9, sampling_temperature=1.0)
    t = time.perf_counter()
    tokens = [e.tokens for e in tok.encode_batch(texts[:batch])]
    res = gen.generate_batch(tokens, **kwargs)
    for r in res:
        tok.decode(r.sequences_ids[0])
    return load, time.perf_counter() - t, batch * 128, "new tokens", None


def run_ct2_seq2seq(workload, model_dir, texts, quantization, threads, keep):
    """The Marian and BART workloads on CTranslate2 (see the module's doc for the settings).
    The Marian process imports sentencepiece and not `tokenizers`, as an OPUS-MT deployment."""
    n, beams = SEQ2SEQ[workload]
    marian = workload.startswith("marian")
    if marian:
        import sentencepiece as spm
    else:
        from tokenizers import Tokenizer

    t0 = time.perf_counter()
    path, ct2 = ct2_dir(model_dir, quantization)
    if marian:
        source = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "source.spm"))
        target = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "target.spm"))
        kwargs = {}
    else:
        tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        kwargs = dict(target_prefix=[["<s>"]] * len(texts), no_repeat_ngram_size=3, length_penalty=2.0)
    tr = ct2.Translator(path, device="cpu", intra_threads=threads, compute_type=quantization)
    load = time.perf_counter() - t0
    t = time.perf_counter()
    if marian:
        tokens = [pieces + ["</s>"] for pieces in source.encode(texts, out_type=str)]
    else:
        tokens = [e.tokens for e in tok.encode_batch(texts)]
    res = tr.translate_batch(tokens, beam_size=beams, min_decoding_length=n, max_decoding_length=n, **kwargs)
    hyps = [r.hypotheses[0] for r in res]
    if marian:
        decoded = [target.decode(h) for h in hyps]
    else:
        decoded = [tok.decode([tok.token_to_id(x) for x in h], skip_special_tokens=True) for h in hyps]
    run = time.perf_counter() - t
    outputs = None
    if keep:
        if marian:
            vocab = json.load(open(os.path.join(model_dir, "vocab.json"), encoding="utf-8"))
            ids = [[vocab.get(x, vocab["<unk>"]) for x in h] for h in hyps]
        else:
            ids = [[tok.token_to_id(x) for x in h] for h in hyps]
        outputs = {"token_ids": ids, "texts": decoded}
    return load, run, len(texts) * n, "new tokens", outputs


def ct2_outputs(workload, model_dir, tok, texts, kept):
    """CTranslate2's results in Trident's JSON shapes, from the per-text logits (or normalised
    embeddings) its run kept, post-processed as the ONNX Runtime peer does."""
    if workload == "embed":
        return [{"embedding": v.tolist()} for v in kept]
    id2label = onnx_models.id2label_of(model_dir)
    if workload == "classify":
        return [onnx_models.top_label(row, id2label) for _, row in kept]
    decode = tok.decoder.decode if tok.decoder is not None else " ".join
    unk_id = tok.token_to_id("[UNK]")
    return [onnx_models.ner_simple(text, e.ids, e.offsets, e.special_tokens_mask, logits, id2label,
                                   tok.id_to_token, decode, unk_id)
            for text, (e, logits) in zip(texts, kept)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prepare", action="store_true", help="only convert the model (CTranslate2, ONNX)")
    ap.add_argument("--output", help="also write the results to this JSON file")
    a = ap.parse_args()
    texts = json.load(open(a.inputs))
    if a.prepare:
        if a.system.startswith("ct2"):
            ct2_dir(a.model, a.system.split("-", 1)[1])
        elif a.system.startswith("ort"):
            if a.workload not in ENCODERS:
                raise SystemExit(f"{a.system} runs only {', '.join(ENCODERS)}")
            print(onnx_models.prepare(a.workload, a.model, a.system.split("-", 1)[1], texts), flush=True)
        return
    outputs = None
    if a.system.startswith("ort"):
        if a.workload not in ENCODERS:
            raise SystemExit(f"{a.system} runs only {', '.join(ENCODERS)}")
        load, run, units, unit, outputs = onnx_models.run(a.workload, a.model, texts, a.system.split("-", 1)[1], a.threads)
    elif a.system.startswith("ct2"):
        keep = bool(a.output) and (a.workload in ENCODERS or a.workload in SEQ2SEQ)
        load, run, units, unit, outputs = run_ct2(a.workload, a.model, texts, a.system.split("-", 1)[1], a.threads,
                                                  keep=keep)
    else:
        import torch

        torch.set_num_threads(a.threads)
        with torch.inference_mode():
            load, run, units, unit, outputs = run_transformers(a.workload, a.model, texts)
    if a.output and outputs is not None:
        with open(a.output, "w") as f:
            json.dump(outputs, f)
    print(json.dumps(dict(system=a.system, workload=a.workload, load_s=load, run_s=run, units=units,
                          unit=unit, peak_rss_kb=peak_rss_kb(), threads=a.threads)))


if __name__ == "__main__":
    main()
