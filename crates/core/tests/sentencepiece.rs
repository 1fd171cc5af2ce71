//! SentencePiece model files read in Rust, against transformers 5.24 and the `sentencepiece`
//! library (weights/sentencepiece/*/reference.json, written by scripts/fixtures_sentencepiece.py).

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use trident_core::sentencepiece::SentencePieceModel;
use trident_core::{Encoded, ModelFiles, TextEncoder};
use trident_testing::{fixture_dir, reference};

fn sp_dir(name: &str) -> PathBuf {
    fixture_dir("sentencepiece").join(name)
}

fn sp_reference(name: &str) -> Value {
    reference(&format!("sentencepiece/{name}")).unwrap()
}

fn rows(r: &Value) -> &Vec<Value> {
    r["transformers"].as_array().unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn encoder(dir: &Path) -> TextEncoder {
    TextEncoder::from_files(&ModelFiles::local(dir).unwrap()).unwrap()
}

/// A temp dir holding copies of `files` from `from`.
struct TempDir(PathBuf);

impl TempDir {
    fn with(from: &Path, files: &[&str], tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("trident-sp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in files {
            std::fs::copy(from.join(f), dir.join(f)).unwrap();
        }
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// T5Tokenizer (transformers 5.24) built from spiece.model alone: ids, tokens, character
/// offsets and both decodings.
fn check_t5(tok: &TextEncoder, r: &Value, name: &str) {
    for row in rows(r) {
        let text = row["text"].as_str().unwrap();
        let e = tok.encode(text).unwrap();
        let want = ids(&row["ids"]);
        assert_eq!(e.ids, want, "{name}: ids of {text:?}");
        assert_eq!(
            e.tokens,
            strings(&row["tokens"]),
            "{name}: tokens of {text:?}"
        );
        let offsets: Vec<(usize, usize)> = row["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o[0].as_u64().unwrap() as usize,
                    o[1].as_u64().unwrap() as usize,
                )
            })
            .collect();
        assert_eq!(e.offsets, offsets, "{name}: offsets of {text:?}");
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            row["decoded"].as_str().unwrap(),
            "{name}: decode of {text:?}"
        );
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            row["decoded_with_special"].as_str().unwrap(),
            "{name}: decode with special tokens of {text:?}"
        );
    }
    let sentinels: Vec<i64> = (0..3)
        .map(|i| tok.token_id(&format!("<extra_id_{i}>")).unwrap())
        .collect();
    assert_eq!(sentinels, ids(&r["extra_ids"]), "{name}: sentinel ids");
}

#[test]
fn t5_unigram_matches_transformers() {
    let r = sp_reference("t5-unigram");
    let tok = encoder(&sp_dir("t5-unigram"));
    check_t5(&tok, &r, "t5-unigram");
    assert_eq!(tok.pad_id, 0);
    assert_eq!(tok.num_special_tokens(), 1);
}

#[test]
fn t5_tiny_spiece_matches_transformers_and_tokenizer_json() {
    let r = sp_reference("t5-tiny");
    let t5 = fixture_dir("t5-tiny");
    let tmp = TempDir::with(
        &t5,
        &["spiece.model", "tokenizer_config.json", "config.json"],
        "t5",
    );
    let from_spm = encoder(&tmp.0);
    check_t5(&from_spm, &r, "t5-tiny");

    // The same texts through weights/t5-tiny/tokenizer.json: every method agrees.
    let from_json = encoder(&t5);
    assert_eq!(from_spm.pad_id, from_json.pad_id);
    assert_eq!(from_spm.model_max_length, from_json.model_max_length);
    assert_eq!(
        from_spm.num_special_tokens(),
        from_json.num_special_tokens()
    );
    assert_eq!(from_spm.unk_id(), from_json.unk_id());
    let mut texts: Vec<String> = rows(&r)
        .iter()
        .map(|row| row["text"].as_str().unwrap().to_string())
        .collect();
    texts.push("summarize: The weather was fine, and 12 people walked to the museum.".into());
    for text in &texts {
        let a = from_spm.encode(text).unwrap();
        let b = from_json.encode(text).unwrap();
        assert_eq!(a, b, "encode {text:?}");
        assert_eq!(
            from_spm.encode_plain(text).unwrap(),
            from_json.encode_plain(text).unwrap()
        );
        assert_eq!(
            from_spm.encode_truncated(text, 6).unwrap(),
            from_json.encode_truncated(text, 6).unwrap()
        );
        assert_eq!(
            from_spm.encode_windows(text, 8, 2).unwrap(),
            from_json.encode_windows(text, 8, 2).unwrap()
        );
        for skip in [true, false] {
            assert_eq!(
                from_spm.decode(&a.ids, skip).unwrap(),
                from_json.decode(&b.ids, skip).unwrap()
            );
        }
        assert_eq!(
            from_spm.tokens_to_string(&a.tokens).unwrap(),
            from_json.tokens_to_string(&b.tokens).unwrap()
        );
    }
    for i in 0..10 {
        let t = format!("<extra_id_{i}>");
        assert_eq!(from_spm.token_id(&t), from_json.token_id(&t), "{t}");
    }
}

/// The bare model against `SentencePieceProcessor.encode` / `.decode`, for every model file of
/// every fixture (Unigram and BPE, with and without byte fallback, nmt_nfkc, a user-defined
/// rule table and identity normalization).
#[test]
fn bare_models_match_sentencepiece() {
    let mut checked = 0;
    for (name, dir) in [
        ("t5-unigram", sp_dir("t5-unigram")),
        ("t5-tiny", fixture_dir("t5-tiny")),
        ("marian", sp_dir("marian")),
        ("marian-separate", sp_dir("marian-separate")),
        ("m2m100", sp_dir("m2m100")),
    ] {
        let r = sp_reference(name);
        for (file, refs) in r["sentencepiece"].as_object().unwrap() {
            let model = SentencePieceModel::from_file(&dir.join(file)).unwrap();
            let tok = model.tokenizer().unwrap();
            for row in refs.as_array().unwrap() {
                let text = row["text"].as_str().unwrap();
                let e = tok.encode(text, false).unwrap();
                let got: Vec<i64> = e.get_ids().iter().map(|&i| i64::from(i)).collect();
                let want = ids(&row["ids"]);
                assert_eq!(got, want, "{name}/{file}: ids of {text:?}");
                // SentencePiece spells an unknown piece by its text; tokenizers' BPE writes <unk>.
                for ((t, p), &id) in e.get_tokens().iter().zip(strings(&row["pieces"])).zip(&got) {
                    if id != i64::from(model.unk_id()) {
                        assert_eq!(t, &p, "{name}/{file}: pieces of {text:?}");
                    }
                }
                let want_ids: Vec<u32> = want.iter().map(|&i| i as u32).collect();
                assert_eq!(
                    model.decode(&want_ids),
                    row["decoded"].as_str().unwrap(),
                    "{name}/{file}: decode of {text:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 7 * 18, "only {checked} texts checked");
}

fn check_marian(name: &str) {
    let dir = sp_dir(name);
    let r = sp_reference(name);
    let tok = encoder(&dir);
    let vocab: HashMap<String, i64> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("vocab.json")).unwrap()).unwrap();
    assert_eq!(tok.pad_id, vocab["<pad>"]);
    assert_eq!(tok.unk_id(), Some(vocab["<unk>"]));
    for row in rows(&r) {
        let text = row["text"].as_str().unwrap();
        let e = tok.encode(text).unwrap();
        let want = ids(&row["ids"]);
        assert_eq!(e.ids, want, "{name}: ids of {text:?}");
        // Tokens are the source model's pieces as the vocabulary spells them.
        let mut tokens: Vec<String> = strings(&row["pieces"])
            .into_iter()
            .map(|p| {
                if vocab.contains_key(&p) {
                    p
                } else {
                    "<unk>".into()
                }
            })
            .collect();
        tokens.push("</s>".into());
        assert_eq!(e.tokens, tokens, "{name}: tokens of {text:?}");
        check_offsets(&e, text, name);
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            row["decoded"].as_str().unwrap(),
            "{name}: decode of {text:?}"
        );
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            row["decoded_with_special"].as_str().unwrap(),
            "{name}: decode with special tokens of {text:?}"
        );
        assert_eq!(
            tok.decode(&ids(&row["target_ids"]), true).unwrap(),
            row["target_decoded"].as_str().unwrap(),
            "{name}: decode of the target ids of {text:?}"
        );
        let plain = tok.encode_plain(text).unwrap();
        assert_eq!(
            plain.ids,
            want[..want.len() - 1],
            "{name}: plain ids of {text:?}"
        );
    }
}

/// Every non-special token's offsets are character offsets inside the text.
fn check_offsets(e: &Encoded, text: &str, name: &str) {
    let n = text.chars().count();
    for (i, &(s, t)) in e.offsets.iter().enumerate() {
        if !e.special[i] {
            assert!(
                s <= t && t <= n,
                "{name}: offsets {s}..{t} of {text:?} ({n} chars)"
            );
        }
    }
}

#[test]
fn marian_matches_transformers() {
    check_marian("marian");
    let tok = encoder(&sp_dir("marian"));
    // The language code is one token over its own characters; the rest follows it.
    let e = tok.encode(">>fr<< Hello world").unwrap();
    assert_eq!((e.tokens[0].as_str(), e.offsets[0]), (">>fr<<", (0, 6)));
    assert_eq!(e.offsets[1].0, 7, "{:?}", e.offsets);
    assert_eq!(tok.token_id(">>de<<"), Some(3));
    assert_eq!(tok.vocab().get(">>fr<<"), Some(&2));
    // Windows and batches carry the vocabulary's ids too.
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(3);
    let full = tok.encode(&text).unwrap();
    let windows = tok.encode_windows(&text, 16, 4).unwrap();
    assert!(windows.len() > 1);
    assert_eq!(windows[0].ids[..15], full.ids[..15]);
    assert!(windows.iter().all(|w| w.ids.last() == Some(&0)));
    let (cut, was_cut) = tok.encode_truncated(&text, 10).unwrap();
    assert!(was_cut);
    assert_eq!(cut.ids[..9], full.ids[..9]);
    assert_eq!(cut.ids[9], 0);
}

#[test]
fn marian_separate_vocabs_match_transformers() {
    check_marian("marian-separate");
}

#[test]
fn m2m100_matches_transformers() {
    let r = sp_reference("m2m100");
    let tok = encoder(&sp_dir("m2m100"));
    for (code, id) in r["lang_ids"].as_object().unwrap() {
        assert_eq!(
            tok.token_id(&format!("__{code}__")),
            id.as_i64(),
            "__{code}__"
        );
    }
    let src = tok.token_id("__en__").unwrap();
    assert_eq!(tok.vocab().get("__en__"), Some(&src));
    assert_eq!(r["src_lang"], "en");
    assert_eq!(tok.pad_id, 1);
    assert_eq!(tok.unk_id(), Some(3));
    for row in rows(&r) {
        let text = row["text"].as_str().unwrap();
        let e = tok.encode(text).unwrap();
        // M2M100Tokenizer puts the source language first; Trident's pipeline does that.
        let mut got = vec![src];
        got.extend(&e.ids);
        let want = ids(&row["ids"]);
        assert_eq!(got, want, "m2m100: ids of {text:?}");
        let mut tokens = vec!["__en__".to_string()];
        tokens.extend(e.tokens.iter().cloned());
        assert_eq!(
            tokens,
            strings(&row["tokens"]),
            "m2m100: tokens of {text:?}"
        );
        check_offsets(&e, text, "m2m100");
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            row["decoded"].as_str().unwrap(),
            "m2m100: decode of {text:?}"
        );
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            row["decoded_with_special"].as_str().unwrap(),
            "m2m100: decode with special tokens of {text:?}"
        );
    }
}

/// A tiny deterministic generator for the corruption tests.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn corrupt_model_files_are_errors() {
    let good = std::fs::read(fixture_dir("t5-tiny").join("spiece.model")).unwrap();
    let path = Path::new("spiece.model");
    assert!(SentencePieceModel::from_bytes(&good, path).is_ok());

    // Truncated, empty and garbage files: an error that names the file and says what to do.
    for bad in [
        &good[..good.len() / 2],
        &good[..good.len() - 3],
        &good[..1],
        &b""[..],
        &b"this is not a protobuf at all"[..],
        &[0xff; 64][..],
    ] {
        let err = SentencePieceModel::from_bytes(bad, path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spiece.model") && err.contains("download it again"),
            "{err}"
        );
    }

    // Through TextEncoder: a checkpoint with a truncated spiece.model fails to load.
    let tmp = TempDir::with(&fixture_dir("t5-tiny"), &["tokenizer_config.json"], "bad");
    std::fs::write(tmp.0.join("spiece.model"), &good[..good.len() / 3]).unwrap();
    let err = TextEncoder::from_files(&ModelFiles::local(&tmp.0).unwrap())
        .err()
        .expect("a truncated spiece.model must not load")
        .to_string();
    assert!(err.contains("spiece.model"), "{err}");

    // Random truncations and flipped bytes (many of them inside the character map) never
    // panic: either the file is refused or the tokenizer works.
    let texts = ["Hello world", "ﬁne ＦＵＬＬ café 中文 😀", "  a\tb\nc  "];
    let mut rng = Lcg(7);
    for round in 0..300 {
        let mut bytes = good.clone();
        if round % 3 == 0 {
            bytes.truncate(rng.next() as usize % good.len());
        } else {
            for _ in 0..1 + round % 5 {
                let at = rng.next() as usize % bytes.len();
                bytes[at] ^= 1 << (rng.next() % 8);
            }
        }
        if let Ok(model) = SentencePieceModel::from_bytes(&bytes, path) {
            if let Ok(tok) = model.tokenizer() {
                for t in texts {
                    let _ = tok.encode(t, true);
                }
            }
            if let Ok(tok) = model.t5_tokenizer(10, &[], "</s>") {
                for t in texts {
                    let _ = tok.encode(t, true);
                }
            }
        }
    }
}

#[test]
fn spiece_of_another_tokenizer_class_is_refused() {
    let tmp = TempDir::with(&fixture_dir("t5-tiny"), &["spiece.model"], "albert");
    std::fs::write(
        tmp.0.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "AlbertTokenizer"}"#,
    )
    .unwrap();
    let err = TextEncoder::from_files(&ModelFiles::local(&tmp.0).unwrap())
        .err()
        .expect("an ALBERT spiece.model is not read as T5's")
        .to_string();
    assert!(
        err.contains("AlbertTokenizer") && err.contains("tokenizer.json"),
        "{err}"
    );
}
