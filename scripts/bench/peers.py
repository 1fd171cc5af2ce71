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

Llama decoders (issue 12: smollm2-360m, tinyllama-1.1b; `<model>-prefill512`, `-greedy-b1`,
`-greedy-b8`, `-topp-b1`): the checkpoints are bf16, so transformers loads them with
dtype=float32 (its "auto" would run bf16); CTranslate2 converts them once per quantization
(float32, int8) as the other workloads. llama.cpp (`llamacpp-f16`, `llamacpp-q8_0`;
llama-cpp-python built from source by setup_llamacpp.sh) runs GGUF files made by llama.cpp's
own converter (convert_hf_to_gguf.py, F16) and quantizer (llama_model_quantize, Q8_0 from the
F16), through its C API: one llama_decode per step for all rows (batch 8: 8 sequences in one
context, as llama.cpp's `batched` example), n_threads = n_threads_batch = --threads, its
default flash-attention setting, the weights mmapped (its default). Every system gets the same
ids (the `tokenizers` library for CTranslate2 and llama.cpp; llama.cpp's own tokenizer gives the
same ids but leaves out BOS, as its converter writes add_bos_token false for this tokenizer),
exactly N new tokens (EOS
suppressed: min_new_tokens, min_length, or a -inf logit bias on EOS for llama.cpp), greedy or
top-p 0.9 with top-k off and temperature 1. Prefill: one 512-token prompt, 1 new token; units
are prompt tokens.
"""

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

import onnx_models

ENCODERS = ("ner", "classify", "embed")
# Marian and BART workloads: (new tokens, beams).
SEQ2SEQ = {"marian-greedy": (32, 1), "marian-beam4": (32, 4), "bart-beam4": (64, 4)}
# The Llama decoders of issue 12 and their workloads, `<model>-<kind>`.
LLAMA_MODELS = ("smollm2-360m", "tinyllama-1.1b")
LLAMA_KINDS = ("prefill512", "greedy-b1", "greedy-b8", "topp-b1")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def llama_kind(workload):
    """`prefill512`, `greedy-b1`, `greedy-b8` or `topp-b1` for a Llama workload, else None."""
    for m in LLAMA_MODELS:
        kind = workload[len(m) + 1:] if workload.startswith(m + "-") else None
        if kind in LLAMA_KINDS:
            return kind
    return None


def llama_plan(workload):
    """(batch, new tokens, top-p sampling, prefill) of a Llama workload. BENCH_SCALE=N divides
    the 128 new tokens (run.py --smoke: a check that it runs, not a measurement)."""
    kind = llama_kind(workload)
    prefill = kind == "prefill512"
    new = 1 if prefill else 128 // int(os.environ.get("BENCH_SCALE", "1"))
    return (8 if kind == "greedy-b8" else 1), new, kind == "topp-b1", prefill


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
    if llama_kind(workload):
        return run_transformers_llama(workload, model_dir, tok, texts, t0)
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


def run_transformers_llama(workload, model_dir, tok, texts, t0):
    import torch
    from transformers import AutoModelForCausalLM

    # The checkpoint is bf16: ask for float32 (transformers 5 would otherwise load it as stored).
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    load = time.perf_counter() - t0
    batch, n, topp, prefill = llama_plan(workload)
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    kwargs = exact(n, 1)
    if topp:
        torch.manual_seed(0)
        kwargs.update(do_sample=True, top_p=0.9, top_k=0, temperature=1.0)
    t = time.perf_counter()
    x = tok(texts[:batch], return_tensors="pt", padding=True)
    out = model.generate(**x, **kwargs, pad_token_id=tok.eos_token_id)
    tok.batch_decode(out, skip_special_tokens=True)
    run = time.perf_counter() - t
    prompt = x["input_ids"].shape[1]
    if out.shape[1] - prompt != n:
        raise SystemExit(f"{workload}: {out.shape[1] - prompt} new tokens, not {n}")
    return load, run, prompt if prefill else batch * n, "prompt tokens" if prefill else "new tokens", None


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
    if llama_kind(workload):
        return run_ct2_llama(workload, path, tok, texts, quantization, threads, t0)
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


def run_ct2_llama(workload, path, tok, texts, compute_type, threads, t0):
    import ctranslate2

    gen = ctranslate2.Generator(path, device="cpu", intra_threads=threads, compute_type=compute_type)
    load = time.perf_counter() - t0
    batch, n, topp, prefill = llama_plan(workload)
    kwargs = dict(max_length=n, min_length=n, include_prompt_in_result=False)
    if topp:
        kwargs.update(sampling_topk=0, sampling_topp=0.9, sampling_temperature=1.0)
    t = time.perf_counter()
    tokens = [e.tokens for e in tok.encode_batch(texts[:batch])]
    res = gen.generate_batch(tokens, **kwargs)
    for r in res:
        tok.decode(r.sequences_ids[0])
    run = time.perf_counter() - t
    got = [len(r.sequences_ids[0]) for r in res]
    if got != [n] * batch:
        raise SystemExit(f"{workload}: {got} new tokens, not {n}")
    return load, run, len(tokens[0]) if prefill else batch * n, "prompt tokens" if prefill else "new tokens", None


# ---------------------------------------------------------------------------------------------
# llama.cpp (llama-cpp-python's bindings of its C API).



def llamacpp_converter():
    """llama.cpp's convert_hf_to_gguf.py, from the llama-cpp-python sdist that
    setup_llamacpp.sh unpacked under .bench/llamacpp (or $LLAMA_CPP_CONVERTER)."""
    path = os.environ.get("LLAMA_CPP_CONVERTER")
    if not path:
        import llama_cpp

        found = sorted(glob.glob(os.path.join(ROOT, ".bench", "llamacpp", f"llama_cpp_python-{llama_cpp.__version__}",
                                              "vendor", "llama.cpp", "convert_hf_to_gguf.py")))
        path = found[-1] if found else None
    if not path or not os.path.exists(path):
        raise SystemExit("llama.cpp's convert_hf_to_gguf.py not found: run scripts/bench/setup_llamacpp.sh "
                         "(or set LLAMA_CPP_CONVERTER)")
    return path


def gguf_path(model_dir, outtype, threads=2):
    """The model as GGUF, made once into .bench/gguf/<name>-<outtype>.gguf: F16 by llama.cpp's
    converter, Q8_0 by llama.cpp's quantizer from the F16."""
    name = os.path.basename(os.path.normpath(model_dir))
    out_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.normpath(model_dir))), "gguf")
    out = os.path.join(out_dir, f"{name}-{outtype}.gguf")
    if os.path.exists(out):
        return out
    os.makedirs(out_dir, exist_ok=True)
    tmp = out + ".part"
    if outtype == "f16":
        import subprocess

        # The converter runs in its own process (it imports torch and its own gguf-py).
        subprocess.run([sys.executable, os.path.abspath(__file__), "--gguf-convert", model_dir, tmp], check=True)
    else:
        import ctypes

        import llama_cpp

        f16 = gguf_path(model_dir, "f16", threads)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[outtype]
        params.nthread = threads
        if llama_cpp.llama_model_quantize(f16.encode(), tmp.encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"llama_model_quantize {f16} -> {outtype} failed")
    os.replace(tmp, out)
    return out


def gguf_convert(model_dir, out):
    """convert_hf_to_gguf.py MODEL --outtype f16 --outfile OUT. The bench's tokenizer (weights/
    llama-tiny's: byte-level BPE with GPT-2's pre-tokenizer regex, 1,006 ids) is not in the
    converter's table of known tokenizer hashes, which it refuses; its pre-tokenizer is named
    `gpt-2` here, which is what it is. Everything else is the converter's own."""
    import runpy

    converter = llamacpp_converter()
    sys.path.insert(0, os.path.dirname(converter))
    sys.path.insert(1, os.path.join(os.path.dirname(converter), "gguf-py"))
    import conversion.base as base

    known = base.TextModel.get_vocab_base_pre

    def pre_tokenizer(self, tokenizer):
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            print("the bench tokenizer's pre-tokenizer: gpt-2 (byte-level, GPT-2's regex)", file=sys.stderr)
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = pre_tokenizer
    sys.argv = [converter, model_dir, "--outtype", "f16", "--outfile", out]
    runpy.run_path(converter, run_name="__main__")


def llamacpp_extra_buffers(path):
    """Whether llama.cpp may use its extra weight buffer types (`use_extra_bufts`, on by default;
    on x86 the one that applies to F16 and Q8_0 is AMX, which repacks Q8_0 weights for its tile
    kernels). $LLAMACPP_EXTRA_BUFTS=0/1 decides; otherwise a probe, once per GGUF file (a
    32-token prompt and one step, in a process of its own), finds out whether llama.cpp runs
    with them here, and the runs use them if it did. (Built by GCC 12, llama.cpp's AMX matmul
    loads a tile configuration whose stores the compiler dropped, and dies of SIGSEGV at
    `ldtilecfg`: see BENCHMARKS.md.) The probe's outcome is kept in PATH.probe."""
    env = os.environ.get("LLAMACPP_EXTRA_BUFTS")
    if env in ("0", "1"):
        return env == "1"
    probe = path + ".probe"
    if not os.path.exists(probe):
        import subprocess

        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--llamacpp-probe", path],
                             capture_output=True, text=True)
        verdict = "ok" if out.returncode == 0 else (
            f"died of signal {-out.returncode}" if out.returncode < 0 else f"exit {out.returncode}")
        with open(probe, "w") as f:
            f.write(verdict + "\n")
    verdict = open(probe).read().strip()
    if verdict != "ok":
        print(f"llama.cpp with its extra buffer types (AMX) {verdict} on {os.path.basename(path)}: "
              "running without them", file=sys.stderr)
    return verdict == "ok"


def llamacpp_probe(path):
    """Load PATH with llama.cpp's default buffer types and run a 32-token prompt and one step."""
    import ctypes

    import llama_cpp as L

    quiet = L.llama_log_callback(lambda level, text, user_data: None)
    L.llama_log_set(quiet, ctypes.c_void_p(0))
    L.llama_backend_init()
    model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
    cparams = L.llama_context_default_params()
    cparams.n_ctx, cparams.n_threads, cparams.n_threads_batch = 256, 1, 1
    ctx = L.llama_init_from_model(model, cparams)
    b = L.llama_batch_init(32, 0, 1)
    for n in (32, 1):
        for i in range(n):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = 1 + i, i if n > 1 else 32, 1, i == n - 1
            b.seq_id[i][0] = 0
        b.n_tokens = n
        if L.llama_decode(ctx, b) != 0:
            raise SystemExit("llama_decode failed")


def run_llamacpp(workload, model_dir, texts, outtype, threads):
    """One Llama workload on llama.cpp through its C API (see the top of this file)."""
    import ctypes

    import llama_cpp as L
    from tokenizers import Tokenizer

    batch, n, topp, prefill = llama_plan(workload)
    extra_buffers = llamacpp_extra_buffers(gguf_path(model_dir, outtype, threads))
    t0 = time.perf_counter()
    path = gguf_path(model_dir, outtype, threads)
    quiet = L.llama_log_callback(lambda level, text, user_data: None)  # kept alive by this frame
    L.llama_log_set(quiet, ctypes.c_void_p(0))
    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    mparams.n_gpu_layers = 0
    mparams.use_extra_bufts = extra_buffers
    model = L.llama_model_load_from_file(path.encode(), mparams)
    if not model:
        raise SystemExit(f"llama.cpp could not load {path}")
    vocab = L.llama_model_get_vocab(model)
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    prompt_len = len(tok.encode(texts[0]).ids)
    cparams = L.llama_context_default_params()
    # Each sequence gets n_ctx / n_seq_max positions.
    cparams.n_ctx = batch * (-(-(prompt_len + n) // 256) * 256)
    cparams.n_batch = cparams.n_ubatch = max(512, batch * prompt_len)
    cparams.n_seq_max = batch
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.no_perf = False  # keep llama.cpp's own prompt / eval timings for the result line
    ctx = L.llama_init_from_model(model, cparams)
    if not ctx:
        raise SystemExit("llama.cpp could not create a context")
    eos = L.llama_vocab_eos(vocab)
    config_eos = json.load(open(os.path.join(model_dir, "config.json"))).get("eos_token_id")
    if eos != config_eos:
        raise SystemExit(f"llama.cpp's EOS {eos} is not config.json's {config_eos}")

    def sampler():
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        # EOS never wins: exactly n new tokens, as min_new_tokens does for the others.
        bias = (L.llama_logit_bias * 1)(L.llama_logit_bias(eos, float("-inf")))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_logit_bias(L.llama_vocab_n_tokens(vocab), 1, bias))
        if topp:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(0.9, 1))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(0))
        else:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        return chain

    samplers = [sampler() for _ in range(batch)]
    b = L.llama_batch_init(max(batch * prompt_len, batch), 0, batch)

    def fill(rows):
        """rows: [(token, position, sequence, wants logits)] into the batch."""
        for i, (token, pos, seq, logits) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(rows)
        if L.llama_decode(ctx, b) != 0:
            raise SystemExit("llama_decode failed")

    load = time.perf_counter() - t0
    L.llama_perf_context_reset(ctx)
    t = time.perf_counter()
    ids = [e.ids for e in tok.encode_batch(texts[:batch])]
    rows, last = [], []
    for r, row in enumerate(ids):
        rows += [(x, p, r, p == len(row) - 1) for p, x in enumerate(row)]
        last.append(len(rows) - 1)
    fill(rows)  # the prompts, all rows in one batch
    out = [[] for _ in ids]
    for step in range(n):
        new = [L.llama_sampler_sample(samplers[r], ctx, last[r]) for r in range(len(ids))]
        for r, x in enumerate(new):
            out[r].append(x)
        if step == n - 1:
            break
        fill([(x, len(ids[r]) + step, r, True) for r, x in enumerate(new)])
        last = list(range(len(ids)))
    for o in out:
        tok.decode(o)
    run = time.perf_counter() - t
    perf = L.llama_perf_context(ctx)
    for s_ in samplers:
        L.llama_sampler_free(s_)
    L.llama_batch_free(b)
    extra = {"extra_bufts": extra_buffers, "prompt_eval_s": perf.t_p_eval_ms / 1000, "prompt_eval_tokens": perf.n_p_eval,
             "eval_s": perf.t_eval_ms / 1000, "eval_tokens": perf.n_eval}
    units = len(ids[0]) if prefill else batch * n
    return load, run, units, "prompt tokens" if prefill else "new tokens", None, extra


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
    if sys.argv[1:2] == ["--gguf-convert"]:  # gguf_path's converter process: MODEL_DIR OUT
        return gguf_convert(sys.argv[2], sys.argv[3])
    if sys.argv[1:2] == ["--llamacpp-probe"]:  # llamacpp_extra_buffers' probe process: GGUF
        return llamacpp_probe(sys.argv[2])
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prepare", action="store_true", help="only convert the model (CTranslate2, ONNX, GGUF)")
    ap.add_argument("--output", help="also write the results to this JSON file")
    a = ap.parse_args()
    texts = json.load(open(a.inputs))
    if a.system.startswith("llamacpp") and not llama_kind(a.workload):
        raise SystemExit(f"{a.system} runs only the Llama workloads")
    if a.prepare:
        if a.system.startswith("ct2"):
            ct2_dir(a.model, a.system.split("-", 1)[1])
        elif a.system.startswith("llamacpp"):
            path = gguf_path(a.model, a.system.split("-", 1)[1], a.threads)
            used = llamacpp_extra_buffers(path)
            print(f"llamacpp {os.path.basename(path)}: extra buffer types (AMX) {'on' if used else 'off'} "
                  f"(probe: {open(path + '.probe').read().strip() if os.path.exists(path + '.probe') else 'not run'})",
                  flush=True)
        elif a.system.startswith("ort"):
            if a.workload not in ENCODERS:
                raise SystemExit(f"{a.system} runs only {', '.join(ENCODERS)}")
            print(onnx_models.prepare(a.workload, a.model, a.system.split("-", 1)[1], texts), flush=True)
        return
    outputs, extra = None, {}
    if a.system.startswith("llamacpp"):
        load, run, units, unit, outputs, extra = run_llamacpp(a.workload, a.model, texts, a.system.split("-", 1)[1],
                                                              a.threads)
    elif a.system.startswith("ort"):
        if a.workload not in ENCODERS:
            raise SystemExit(f"{a.system} runs only {', '.join(ENCODERS)}")
        load, run, units, unit, outputs = onnx_models.run(a.workload, a.model, texts, a.system.split("-", 1)[1], a.threads)
    elif a.system.startswith("ct2"):
        keep = bool(a.output) and (a.workload in ENCODERS or a.workload in SEQ2SEQ)
        load, run, units, unit, outputs = run_ct2(a.workload, a.model, texts, a.system.split("-", 1)[1], a.threads,
                                                  keep=keep)
    elif a.system == "transformers":
        import torch

        torch.set_num_threads(a.threads)
        with torch.inference_mode():
            load, run, units, unit, outputs = run_transformers(a.workload, a.model, texts)
    else:
        raise SystemExit(f"unknown system {a.system}")
    if a.output and outputs is not None:
        with open(a.output, "w") as f:
            json.dump(outputs, f)
    print(json.dumps(dict(system=a.system, workload=a.workload, load_s=load, run_s=run, units=units,
                          unit=unit, peak_rss_kb=peak_rss_kb(), threads=a.threads, **extra)))


if __name__ == "__main__":
    main()
