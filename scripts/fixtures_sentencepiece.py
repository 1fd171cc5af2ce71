#!/usr/bin/env python3
"""SentencePiece fixtures: small trained `.model` files and what transformers / sentencepiece make of them.

Trident reads SentencePiece model files itself (crates/core/src/sentencepiece.rs), for checkpoints that ship no
tokenizer.json. This script writes, into weights/sentencepiece/:

* t5-unigram/: `spiece.model` (Unigram, a small user-defined normalization rule table compiled into the
  `precompiled_charsmap`, pad 0 / eos 1 / unk 2, one USER_DEFINED piece) and the tokenizer_config.json that
  `T5Tokenizer.save_pretrained` writes (extra_ids 5). No tokenizer.json: that is the point.
* marian/: an OPUS-MT-like pair, `source.spm` (Unigram) and `target.spm` (Unigram with byte_fallback), trained on
  different languages, and one joint `vocab.json` ("</s>" 0, "<unk>" 1, two `>>xx<<` language codes, the union of
  both sides' pieces with a few source pieces left out on purpose, "<pad>" last), saved by `MarianTokenizer`.
* marian-separate/: `separate_vocabs=True`: `source.spm` (BPE), `target.spm` (Unigram), `vocab.json` for the
  source side and `target_vocab.json` for the target side, numbered differently.
* m2m100/: `sentencepiece.bpe.model` (BPE with byte_fallback) and a fairseq-style `vocab.json` ("<s>" 0,
  "<pad>" 1, "</s>" 2, "<unk>" 3, then the pieces in an order unlike the model's own), saved by
  `M2M100Tokenizer` (language codes "m2m100": `__af__` … `__zu__` follow the vocabulary).
* t5-tiny/: references only, for weights/t5-tiny/spiece.model (nmt_nfkc normalization, already committed).

Each directory's reference.json holds, for every text in TEXTS:

* `transformers`: what the tokenizer class transformers 5.24 uses for that layout gives: input ids, tokens
  (`convert_ids_to_tokens` for the vocab.json layouts; the encoding's own tokens for T5), `decode(ids,
  skip_special_tokens=True)` and `decode(ids)`. For Marian also the target-side ids (`text_target=`) and their
  decoding, the ids that generation produces and decode needs to turn back into text.
* `sentencepiece`: for every `.model`/`.spm` file in the directory, `SentencePieceProcessor.encode` (ids and
  pieces) and `decode` of those ids: the behaviour of the bare model, which Trident's generic tokenizer matches.

Which classes: in transformers 5.24 `T5Tokenizer` is the tokenizers-backed class (the sentencepiece-backed
"slow" T5Tokenizer is gone); loading a directory that has only spiece.model makes it build its Unigram pipeline
from the model file, and that is what Trident reproduces (T5 references come from that class, loaded from a
directory without tokenizer.json). `MarianTokenizer` and `M2M100Tokenizer` are still the sentencepiece-backed
Python classes (PreTrainedTokenizer); their references come from them. M2M100Tokenizer puts the source language
token first (`src_lang`, default "en"); Trident leaves that token to the translation pipeline, so the Rust tests
put `__en__` in front themselves.

Deterministic: SentencePiece training on one thread with a fixed seed and an unshuffled corpus; sorted JSON.
A second run writes byte-identical files. Run through scripts/fixtures.sh (`--only sentencepiece`), or:

    .venv-fixtures/bin/python scripts/fixtures_sentencepiece.py [--out weights/sentencepiece]
"""

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import warnings

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sentencepiece as spm  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import M2M100Tokenizer, MarianTokenizer, T5Tokenizer  # noqa: E402
from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Training text. Several languages so that the vocabularies hold accented Latin, CJK and emoji pieces; a few
# characters of TEXTS below (Ω, ∑, ✓, some CJK) appear nowhere here, so they are unknown to every model.
ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "A small model reads the text and writes a short summary.",
    "We trained the tokenizer on a tiny corpus in 2024.",
    "Numbers like 3.14, 42 and 1000 appear in the news every day.",
    "She said: \"Hello, world!\" and then left the room.",
    "Translation models turn English sentences into French or German.",
    "The weather today is sunny, with a high of 25 degrees.",
    "Our team released version 1.2 of the library last week.",
    "Machine learning needs data, compute and patience.",
    "The museum opens at 9 and closes at 17 on weekdays.",
    "Reading books is a good way to learn new words.",
    "He bought three apples, two pears and one melon.",
]
FRENCH = [
    "Le renard brun saute par-dessus le chien paresseux.",
    "L'élève a écrit une lettre à sa grand-mère.",
    "Nous étions à Paris en été, près de la Seine.",
    "Le garçon mange une pomme et boit un café.",
    "Ça coûte 12 euros, répond la boulangère.",
    "Les modèles de traduction apprennent à partir de phrases.",
    "Où est la gare ? Elle est à côté du musée.",
    "Noël approche et les enfants sont très contents.",
    "Il fait beau aujourd'hui, le ciel est bleu.",
    "Je voudrais réserver une table pour deux personnes.",
]
GERMAN = [
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Die Straße ist nass, weil es gestern geregnet hat.",
    "Ärger und Übermut helfen niemandem weiter.",
    "Wir fahren im Sommer nach München und Köln.",
    "Das Mädchen liest ein Buch über große Städte.",
    "Übersetzungsmodelle lernen aus vielen Sätzen.",
    "Der Zug kommt um 8 Uhr in Berlin an.",
    "Grüße aus Hamburg, schreibt die Großmutter.",
]
OTHER = [
    "中文文本也在这里。我们喜欢学习语言。",
    "東京は日本の首都です。",
    "今天天气很好。",
    "Emoji are fun 😀 and rockets 🚀 fly high 🎉.",
    "Smile 😀, party 🎉!",
    "Español: el niño comió una manzana en la mañana.",
    "Português: a educação é importante, não é?",
]
CORPUS = (ENGLISH + FRENCH + GERMAN + OTHER) * 3
SOURCE_CORPUS = (ENGLISH + OTHER[3:5]) * 4  # Marian source side: English (plus emoji)
TARGET_CORPUS = (FRENCH + GERMAN + OTHER[:3]) * 4  # Marian target side: French, German, CJK

# Every fixture is checked on these texts.
TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "L'élève a écrit une lettre à sa grand-mère en été.",
    "Die Straße nach München ist lang, sagt Jürgen.",
    "  leading and trailing spaces  ",
    "runs   of    spaces\tand\ttabs\nand\nnew lines",
    "\t\n indented \n",
    "Prices: 3.14, 42, 1000 and 2024-12-31.",
    "中文文本 and 東京 with unseen 龍 characters",
    "Emoji 😀🚀🎉 and an unknown one 🦀.",
    "Unknown symbols: Ω ∑ ✓ ¤",
    "ﬁne ligature, ＦＵＬＬ width, and non\u00a0breaking space",
    "NFC é vs NFD e\u0301 accents",
    "UPPER lower MiXeD",
    "a",
    " ",
    "",
    "x" * 40,
]
MARIAN_EXTRA_TEXTS = [">>fr<< Hello world", ">>de<< Good morning", ">>xx<< unknown code"]

# A small user-defined normalization table (codepoints in hex, as spm_normalize's TSV): compiled by
# SentencePiece into the precompiled_charsmap, so the Precompiled normalizer is exercised without the
# 240 KB of nmt_nfkc.
RULES = [
    ("FB01", "66 69"),  # ﬁ -> fi
    ("FF26", "46"),  # Ｆ -> F
    ("FF35", "55"),  # Ｕ -> U
    ("FF2C", "4C"),  # Ｌ -> L
    ("A0", "20"),  # no-break space -> space
    ("9", "20"),  # tab -> space
    ("A", "20"),  # newline -> space
    ("65 301", "E9"),  # e + combining acute -> é (a two-character source)
    ("2019", "27"),  # right single quotation mark -> apostrophe
]


def train(corpus, tmp, name, **kwargs):
    """Train a SentencePiece model in memory and return its serialized bytes."""
    buf = io.BytesIO()
    options = dict(
        vocab_size=300,
        model_type="unigram",
        character_coverage=1.0,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        seed_sentencepiece_size=100000,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    options.update(kwargs)
    if options.pop("custom_rules", False):
        # The model records the path it was given: a relative one, from the temp dir, keeps it reproducible.
        with open(os.path.join(tmp, "normalization_rules.tsv"), "w", encoding="utf-8") as f:
            f.write("".join(f"{a}\t{b}\n" for a, b in RULES))
        options["normalization_rule_tsv"] = "normalization_rules.tsv"
    spm.set_random_generator_seed(1234)
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf, **options)
    finally:
        os.chdir(cwd)
    return buf.getvalue()


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=1, sort_keys=True)
        f.write("\n")


def load_sp(path):
    sp = spm.SentencePieceProcessor()
    sp.Load(path)
    return sp


def sentencepiece_refs(directory, files, texts):
    out = {}
    for name in files:
        sp = load_sp(os.path.join(directory, name))
        rows = []
        for text in texts:
            ids = sp.encode(text)
            rows.append(
                {
                    "text": text,
                    "ids": ids,
                    "pieces": sp.encode(text, out_type=str),
                    "decoded": sp.decode(ids),
                }
            )
        out[name] = rows
    return out


def versions():
    return {
        "python": sys.version.split()[0],
        "sentencepiece": spm.__version__,
        "tokenizers": tokenizers.__version__,
        "transformers": transformers.__version__,
    }


def clean_saved(directory, keep):
    """Keep only `keep` of what save_pretrained wrote (it also writes files Trident must do without)."""
    for name in os.listdir(directory):
        if name not in keep:
            os.remove(os.path.join(directory, name))


def make_t5(out, tmp):
    d = os.path.join(out, "t5-unigram")
    os.makedirs(d, exist_ok=True)
    model = train(
        CORPUS,
        tmp,
        "t5",
        custom_rules=True,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        user_defined_symbols=["<sep>"],
    )
    with open(os.path.join(d, "spiece.model"), "wb") as f:
        f.write(model)
    # Save as the class does, then keep only spiece.model + tokenizer_config.json.
    tok = T5Tokenizer.from_pretrained(d, extra_ids=5)
    save = os.path.join(tmp, "t5-save")
    tok.save_pretrained(save)
    with open(os.path.join(save, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    for key in ("is_local", "local_files_only"):  # loading options, not the tokenizer's
        config.pop(key, None)
    write_json(os.path.join(d, "tokenizer_config.json"), config)
    clean_saved(d, {"spiece.model", "tokenizer_config.json"})
    t5_refs(d, d, ["spiece.model"])


def t5_refs(model_dir, ref_dir, spm_files):
    """References of T5Tokenizer loaded from `model_dir` (which has no tokenizer.json)."""
    tok = T5Tokenizer.from_pretrained(model_dir)
    assert not os.path.exists(os.path.join(model_dir, "tokenizer.json"))
    rows = []
    for text in TEXTS + ["a <extra_id_0> b </s> c", "<sep> tagged <sep>"]:
        enc = tok(text)
        ids = enc["input_ids"]
        rows.append(
            {
                "text": text,
                "ids": ids,
                "tokens": enc.tokens(),
                "offsets": [list(o) for o in tok(text, return_offsets_mapping=True)["offset_mapping"]],
                "decoded": tok.decode(ids, skip_special_tokens=True),
                "decoded_with_special": tok.decode(ids, skip_special_tokens=False),
            }
        )
    ref = {
        "class": type(tok).__name__,
        "extra_ids": [tok.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(3)],
        "transformers": rows,
        "sentencepiece": sentencepiece_refs(model_dir, spm_files, TEXTS),
        "versions": versions(),
    }
    write_json(os.path.join(ref_dir, "reference.json"), ref)


def make_t5_tiny(out, tmp):
    src = os.path.join(ROOT, "weights", "t5-tiny")
    d = os.path.join(tmp, "t5-tiny-spiece-only")
    os.makedirs(d, exist_ok=True)
    for name in ("spiece.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, name), os.path.join(d, name))
    ref_dir = os.path.join(out, "t5-tiny")
    os.makedirs(ref_dir, exist_ok=True)
    t5_refs(d, ref_dir, ["spiece.model"])


def pieces_of(model_bytes, tmp, name):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(model_bytes)
    sp = load_sp(path)
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]


def marian_refs(d, tok, texts, spm_files):
    rows = []
    for text in texts:
        ids = tok(text)["input_ids"]
        target_ids = tok(text_target=text)["input_ids"]
        rows.append(
            {
                "text": text,
                "ids": ids,
                "tokens": tok.convert_ids_to_tokens(ids),
                "pieces": tok.tokenize(text),
                "decoded": tok.decode(ids, skip_special_tokens=True),
                "decoded_with_special": tok.decode(ids, skip_special_tokens=False),
                "target_ids": target_ids,
                "target_decoded": tok.decode(target_ids, skip_special_tokens=True),
            }
        )
    return {
        "class": type(tok).__name__,
        "transformers": rows,
        "sentencepiece": sentencepiece_refs(d, spm_files, texts),
        "versions": versions(),
    }


def make_marian(out, tmp):
    d = os.path.join(out, "marian")
    os.makedirs(d, exist_ok=True)
    common = dict(unk_id=0, bos_id=-1, eos_id=1, pad_id=-1)
    source = train(SOURCE_CORPUS, tmp, "src", vocab_size=200, custom_rules=True, **common)
    target = train(
        TARGET_CORPUS, tmp, "tgt", vocab_size=520, byte_fallback=True, normalization_rule_name="identity", **common
    )
    src_pieces = pieces_of(source, tmp, "m-src.spm")
    tgt_pieces = pieces_of(target, tmp, "m-tgt.spm")
    # Leave a few source pieces out of the vocabulary: MarianTokenizer maps them to <unk>.
    left_out = {p for p in src_pieces if p in ("▁the", "▁fox", "ing", "s")}
    assert left_out, "no source piece to leave out"
    vocab = {"</s>": 0, "<unk>": 1, ">>fr<<": 2, ">>de<<": 3}
    for p in src_pieces + tgt_pieces:
        if p not in vocab and p not in left_out:
            vocab[p] = len(vocab)
    vocab["<pad>"] = len(vocab)
    paths = {}
    for name, data in (("source.spm", source), ("target.spm", target)):
        paths[name] = os.path.join(tmp, "marian-" + name)
        with open(paths[name], "wb") as f:
            f.write(data)
    write_json(os.path.join(tmp, "marian-vocab.json"), vocab)
    tok = MarianTokenizer(
        source_spm=paths["source.spm"],
        target_spm=paths["target.spm"],
        vocab=os.path.join(tmp, "marian-vocab.json"),
        source_lang="en",
        target_lang="fr",
    )
    tok.save_pretrained(d)
    clean_saved(d, {"source.spm", "target.spm", "vocab.json", "tokenizer_config.json"})
    tok = MarianTokenizer.from_pretrained(d)
    ref = marian_refs(d, tok, TEXTS + MARIAN_EXTRA_TEXTS, ["source.spm", "target.spm"])
    ref["left_out"] = sorted(left_out)
    write_json(os.path.join(d, "reference.json"), ref)


def make_marian_separate(out, tmp):
    d = os.path.join(out, "marian-separate")
    os.makedirs(d, exist_ok=True)
    common = dict(unk_id=0, bos_id=-1, eos_id=1, pad_id=-1)
    source = train(
        SOURCE_CORPUS, tmp, "src2", vocab_size=180, model_type="bpe", normalization_rule_name="identity", **common
    )
    target = train(TARGET_CORPUS, tmp, "tgt2", vocab_size=220, custom_rules=True, **common)
    src_pieces = pieces_of(source, tmp, "s-src.spm")
    tgt_pieces = pieces_of(target, tmp, "s-tgt.spm")
    src_vocab = {"</s>": 0, "<unk>": 1}
    for p in src_pieces:
        src_vocab.setdefault(p, len(src_vocab))
    src_vocab["<pad>"] = len(src_vocab)
    # The target side numbered in reverse piece order, so that the two vocabularies disagree everywhere.
    tgt_vocab = {"</s>": 0, "<unk>": 1}
    for p in reversed(tgt_pieces):
        tgt_vocab.setdefault(p, len(tgt_vocab))
    tgt_vocab["<pad>"] = len(tgt_vocab)
    paths = {}
    for name, data in (("source.spm", source), ("target.spm", target)):
        paths[name] = os.path.join(tmp, "sep-" + name)
        with open(paths[name], "wb") as f:
            f.write(data)
    write_json(os.path.join(tmp, "sep-vocab.json"), src_vocab)
    write_json(os.path.join(tmp, "sep-target_vocab.json"), tgt_vocab)
    tok = MarianTokenizer(
        source_spm=paths["source.spm"],
        target_spm=paths["target.spm"],
        vocab=os.path.join(tmp, "sep-vocab.json"),
        target_vocab_file=os.path.join(tmp, "sep-target_vocab.json"),
        separate_vocabs=True,
        source_lang="en",
        target_lang="de",
    )
    tok.save_pretrained(d)
    clean_saved(d, {"source.spm", "target.spm", "vocab.json", "target_vocab.json", "tokenizer_config.json"})
    tok = MarianTokenizer.from_pretrained(d)
    assert tok.separate_vocabs
    ref = marian_refs(d, tok, TEXTS, ["source.spm", "target.spm"])
    write_json(os.path.join(d, "reference.json"), ref)


def make_m2m100(out, tmp):
    d = os.path.join(out, "m2m100")
    os.makedirs(d, exist_ok=True)
    model = train(
        CORPUS,
        tmp,
        "m2m",
        vocab_size=650,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        unk_id=3,
        bos_id=0,
        eos_id=2,
        pad_id=1,
    )
    pieces = pieces_of(model, tmp, "m2m.model")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    # fairseq numbers its dictionary by frequency, not in the model's order: sort by the piece's text instead.
    for p in sorted(pieces):
        vocab.setdefault(p, len(vocab))
    spm_path = os.path.join(tmp, "sentencepiece.bpe.model")
    with open(spm_path, "wb") as f:
        f.write(model)
    write_json(os.path.join(tmp, "m2m-vocab.json"), vocab)
    tok = M2M100Tokenizer(vocab_file=os.path.join(tmp, "m2m-vocab.json"), spm_file=spm_path, language_codes="m2m100")
    tok.save_pretrained(d)
    clean_saved(d, {"sentencepiece.bpe.model", "vocab.json", "tokenizer_config.json"})
    # transformers 5.24 saves `extra_special_tokens: []` and then forgets that the language tokens are special
    # (text "__fr__" is split into pieces, decode keeps "__en__"). Checkpoints made by 4.x list them as
    # additional special tokens; with that list 5.24 treats them as special again, as M2M100 intends.
    with open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config.pop("extra_special_tokens", None)
    config["additional_special_tokens"] = [f"__{code}__" for code in FAIRSEQ_LANGUAGE_CODES["m2m100"]]
    write_json(os.path.join(d, "tokenizer_config.json"), config)
    tok = M2M100Tokenizer.from_pretrained(d, src_lang="en")
    assert "__fr__" in tok.all_special_tokens
    rows = []
    for text in TEXTS + ["__fr__ inline language token", "Hello __de__ world"]:
        ids = tok(text)["input_ids"]
        rows.append(
            {
                "text": text,
                "ids": ids,
                "tokens": tok.convert_ids_to_tokens(ids),
                "pieces": tok.tokenize(text),
                "decoded": tok.decode(ids, skip_special_tokens=True),
                "decoded_with_special": tok.decode(ids, skip_special_tokens=False),
            }
        )
    ref = {
        "class": type(tok).__name__,
        "src_lang": "en",
        "lang_ids": {code: tok.get_lang_id(code) for code in ("af", "en", "fr", "de", "zh", "zu")},
        "transformers": rows,
        "sentencepiece": sentencepiece_refs(d, ["sentencepiece.bpe.model"], TEXTS),
        "versions": versions(),
    }
    write_json(os.path.join(d, "reference.json"), ref)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "weights", "sentencepiece"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        make_t5(args.out, tmp)
        make_t5_tiny(args.out, tmp)
        make_marian(args.out, tmp)
        make_marian_separate(args.out, tmp)
        make_m2m100(args.out, tmp)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
