"""The peers' side of the benchmark: one workload, one system, one process; prints one JSON
line like Trident's benches/workloads.rs (load_s, run_s, units, peak_rss_kb).

Systems: transformers (torch, inference mode), ct2-float32, ct2-int8 (CTranslate2; BERT has
no task heads there, so its classifier is applied to the encoder output with torch).
"""

import argparse
import json
import os
import time

import numpy as np
import torch


def peak_rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def exact(n, beams):
    return dict(max_new_tokens=n, min_new_tokens=n, num_beams=beams, do_sample=False)


def run_transformers(workload, model_dir, texts):
    from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline)

    t0 = time.perf_counter()
    if workload == "ner":
        p = pipeline("token-classification", model=model_dir, aggregation_strategy="simple", device="cpu")
        load = time.perf_counter() - t0
        t = time.perf_counter()
        p(texts, batch_size=8)
        units = sum(len(p.tokenizer(x)["input_ids"]) for x in texts)
        return load, time.perf_counter() - t, units, "tokens"
    if workload == "classify":
        p = pipeline("text-classification", model=model_dir, device="cpu")
        load = time.perf_counter() - t0
        t = time.perf_counter()
        p(texts, batch_size=32)
        return load, time.perf_counter() - t, len(texts), "sentences"
    if workload == "embed":
        from sentence_transformers import SentenceTransformer
        m = SentenceTransformer(model_dir, device="cpu")
        load = time.perf_counter() - t0
        t = time.perf_counter()
        m.encode(texts, batch_size=32)
        return load, time.perf_counter() - t, len(texts), "sentences"
    tok = AutoTokenizer.from_pretrained(model_dir)
    if workload.startswith("t5"):
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
        load = time.perf_counter() - t0
        beams = 4 if workload == "t5-beam4" else 1
        t = time.perf_counter()
        x = tok(texts, return_tensors="pt", padding=True)
        out = model.generate(**x, **exact(64, beams))
        tok.batch_decode(out, skip_special_tokens=True)
        return load, time.perf_counter() - t, len(texts) * 64, "new tokens"
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
    return load, time.perf_counter() - t, batch * 128, "new tokens"


def ct2_dir(model_dir, quantization):
    """Convert once into .bench/ct2/<name>-<quantization>."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    name = os.path.basename(os.path.normpath(model_dir))
    out = os.path.join(os.path.dirname(os.path.dirname(os.path.normpath(model_dir))), "ct2", f"{name}-{quantization}")
    if not os.path.exists(os.path.join(out, "model.bin")):
        cfg_path = os.path.join(model_dir, "config.json")
        cfg = json.load(open(cfg_path))
        if cfg.get("model_type") == "bert" and "position_embedding_type" not in cfg:
            # CTranslate2 4.8's BERT converter reads this field, which transformers 5 dropped.
            cfg["position_embedding_type"] = "absolute"
            json.dump(cfg, open(cfg_path, "w"), indent=2)
        TransformersConverter(model_dir).convert(out, quantization=quantization, force=True)
    return out, ctranslate2


def bert_head(model_dir, kind):
    """The task head of a BERT checkpoint, applied with torch to CTranslate2's encoder output."""
    from safetensors.torch import load_file

    w = load_file(os.path.join(model_dir, "model.safetensors"))
    if kind == "token":
        return lambda h, pooled: torch.nn.functional.linear(h, w["classifier.weight"], w["classifier.bias"])
    return lambda h, pooled: torch.nn.functional.linear(pooled, w["classifier.weight"], w["classifier.bias"])


def run_ct2(workload, model_dir, texts, quantization):
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    path, ct2 = ct2_dir(model_dir, quantization)
    tok = AutoTokenizer.from_pretrained(model_dir)
    threads = torch.get_num_threads()
    if workload in ("ner", "classify", "embed"):
        enc = ct2.Encoder(path, device="cpu", intra_threads=threads, compute_type=quantization)
        head = None if workload == "embed" else bert_head(model_dir, "token" if workload == "ner" else "seq")
        load = time.perf_counter() - t0
        batch = 8 if workload == "ner" else 32
        t = time.perf_counter()
        units = 0
        for i in range(0, len(texts), batch):
            group = texts[i:i + batch]
            tokens = [tok.convert_ids_to_tokens(tok(x)["input_ids"]) for x in group]
            units += sum(len(x) for x in tokens)
            out = enc.forward_batch(tokens)
            hidden = torch.as_tensor(np.array(out.last_hidden_state))
            if workload == "embed":
                mask = torch.zeros(hidden.shape[:2])
                for r, x in enumerate(tokens):
                    mask[r, : len(x)] = 1
                e = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                torch.nn.functional.normalize(e, dim=-1)
            else:
                pooled = torch.as_tensor(np.array(out.pooler_output)) if out.pooler_output is not None else None
                head(hidden, pooled).softmax(-1).argmax(-1)
        return load, time.perf_counter() - t, units if workload == "ner" else len(texts), "tokens" if workload == "ner" else "sentences"
    if workload.startswith("t5"):
        tr = ct2.Translator(path, device="cpu", intra_threads=threads, compute_type=quantization)
        load = time.perf_counter() - t0
        beams = 4 if workload == "t5-beam4" else 1
        t = time.perf_counter()
        tokens = [tok.convert_ids_to_tokens(tok(x)["input_ids"]) for x in texts]
        res = tr.translate_batch(tokens, beam_size=beams, min_decoding_length=64, max_decoding_length=64)
        for r in res:
            tok.convert_tokens_to_string(r.hypotheses[0])
        return load, time.perf_counter() - t, len(texts) * 64, "new tokens"
    gen = ct2.Generator(path, device="cpu", intra_threads=threads, compute_type=quantization)
    load = time.perf_counter() - t0
    batch = 8 if workload == "gpt2-greedy-b8" else 1
    kwargs = dict(max_length=128, min_length=128, include_prompt_in_result=False)
    if workload == "gpt2-topp-b1":
        kwargs.update(sampling_topk=0, sampling_topp=0.9, sampling_temperature=1.0)
    t = time.perf_counter()
    tokens = [tok.convert_ids_to_tokens(tok(x)["input_ids"]) for x in texts[:batch]]
    res = gen.generate_batch(tokens, **kwargs)
    for r in res:
        tok.decode(r.sequences_ids[0])
    return load, time.perf_counter() - t, batch * 128, "new tokens"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prepare", action="store_true", help="only convert the model for CTranslate2")
    a = ap.parse_args()
    if a.prepare:
        if a.system.startswith("ct2"):
            ct2_dir(a.model, a.system.split("-", 1)[1])
        return
    torch.set_num_threads(a.threads)
    texts = json.load(open(a.inputs))
    with torch.inference_mode():
        if a.system == "transformers":
            load, run, units, unit = run_transformers(a.workload, a.model, texts)
        else:
            load, run, units, unit = run_ct2(a.workload, a.model, texts, a.system.split("-", 1)[1])
    print(json.dumps(dict(system=a.system, workload=a.workload, load_s=load, run_s=run, units=units,
                          unit=unit, peak_rss_kb=peak_rss_kb(), threads=a.threads)))


if __name__ == "__main__":
    main()
