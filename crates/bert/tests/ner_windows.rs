//! `ner` with aggregation `none` on texts split into windows: every token of the whole text
//! once, by its index, whatever characters it shares with its neighbours (issue 19's two
//! minimal cases: NFD jamo sharing one syllable's span under WordPiece, zero-width byte-level
//! `Ġ` tokens under RoBERTa's BPE).

use trident_bert::{Aggregation, Entity, NerOptions, TokenClassifier};
use trident_core::{DeviceChoice, LoadOptions, ModelFiles, TextEncoder};
use trident_testing::fixture_dir;

fn load(name: &str) -> (TokenClassifier, TextEncoder) {
    let files = ModelFiles::local(fixture_dir(name)).unwrap();
    let cpu = LoadOptions {
        device: DeviceChoice::Cpu,
        ..Default::default()
    };
    (
        TokenClassifier::from_pretrained(&files, &cpu).unwrap(),
        TextEncoder::from_files(&files).unwrap(),
    )
}

/// Every token, none ignored.
fn every_token() -> NerOptions {
    NerOptions {
        aggregation: Aggregation::None,
        ignore_labels: Vec::new(),
        ..Default::default()
    }
}

/// `(index, word)` of each entity.
fn tokens(entities: &[Entity]) -> Vec<(usize, String)> {
    entities
        .iter()
        .map(|e| match e {
            Entity::Token { index, word, .. } => (*index, word.clone()),
            Entity::Group { .. } => panic!("aggregation none gave a group"),
        })
        .collect()
}

/// The text's tokens as the whole-text tokenization numbers them (special tokens counted in
/// the index, not listed; an unknown token shows the text it stands for, as in transformers).
fn expected(tokenizer: &TextEncoder, text: &str) -> Vec<(usize, String)> {
    let e = tokenizer.encode(text).unwrap();
    let chars: Vec<char> = text.chars().collect();
    (0..e.len())
        .filter(|&i| !e.special[i])
        .map(|i| match tokenizer.unk_id() {
            Some(unk) if unk == e.ids[i] => {
                let (start, end) = e.offsets[i];
                (i, chars[start..end].iter().collect())
            }
            _ => (i, e.tokens[i].clone()),
        })
        .collect()
}

/// The text is long enough to be windowed, and each of its tokens comes out exactly once, in
/// order, with the whole-text index and token; the same tokens at the start come out of the
/// short text too.
fn check(model: &str, short: &str, long: &str) {
    let (ner, tokenizer) = load(model);
    let whole = expected(&tokenizer, long);
    let limit = ner_limit(&tokenizer);
    assert!(
        whole.len() + 2 > limit,
        "{model}: the long text ({} tokens) must not fit {limit}",
        whole.len()
    );
    let got = ner.run(&[long], &every_token()).unwrap().remove(0);
    assert_eq!(tokens(&got), whole, "{model}: every token once, in order");
    let short_tokens = tokens(&ner.run(&[short], &every_token()).unwrap()[0]);
    assert_eq!(
        &tokens(&got)[..short_tokens.len() - 1],
        &short_tokens[..short_tokens.len() - 1],
        "{model}: the long text starts as the short one"
    );
}

/// The model's input limit as the fixtures set it.
fn ner_limit(tokenizer: &TextEncoder) -> usize {
    tokenizer.model_max_length.unwrap_or(512).min(64)
}

#[test]
fn byte_level_pieces_of_one_character_are_all_listed() {
    // Each CJK character and the emoji are several byte-level tokens over one character span.
    let tail = " a".repeat(70);
    check("roberta-tiny-ner", "日本 😀 a", &format!("日本 😀{tail}"));
}

#[test]
fn wordpiece_tokens_of_a_long_text_are_all_listed() {
    let tail = " a".repeat(80);
    check("bert-tiny-ner", "가 a", &format!("가{tail}"));
}

#[test]
fn zero_width_byte_level_tokens_are_listed_once() {
    // A double space gives a zero-width `Ġ` token between the words.
    check("roberta-tiny-ner", "a  a", &"a  ".repeat(63));
}

#[test]
fn grouped_strategies_still_merge_windows_by_span() {
    let (ner, _) = load("bert-tiny-ner");
    let text = format!("가{}", " a".repeat(80));
    for aggregation in [Aggregation::Simple, Aggregation::First] {
        let options = NerOptions {
            aggregation,
            ignore_labels: Vec::new(),
            ..Default::default()
        };
        let got = ner.run(&[text.as_str()], &options).unwrap().remove(0);
        let mut spans: Vec<(usize, usize)> = got
            .iter()
            .map(|e| match e {
                Entity::Group { start, end, .. } => (*start, *end),
                Entity::Token { .. } => panic!("a grouped strategy gave a token"),
            })
            .collect();
        let n = spans.len();
        spans.dedup();
        assert_eq!(spans.len(), n, "{aggregation:?}: a span listed twice");
    }
}

/// Issue 19's WordPiece case: with a tokenizer that decomposes Hangul (NFD) and knows the
/// jamo, the one character "가" becomes two tokens over one character span, `ᄀ` and `##ᅡ`.
/// The fixture's vocabulary has no jamo, so this copy of it renames two of its rarest
/// continuation pieces to them and turns on the normalizer's NFD (accent stripping keeps jamo,
/// which are letters, not marks).
#[test]
fn wordpiece_jamo_sharing_one_character_are_all_listed() {
    let src = fixture_dir("bert-tiny-ner");
    let dir = std::env::temp_dir().join(format!("trident-jamo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(src.join(file), dir.join(file)).unwrap();
    }
    let mut tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tokenizer["model"]["vocab"].as_object_mut().unwrap();
    for (old, new) in [("##itzer", "\u{1100}"), ("##iter", "##\u{1161}")] {
        let id = vocab.remove(old).unwrap();
        vocab.insert(new.to_string(), id);
    }
    tokenizer["normalizer"]["strip_accents"] = serde_json::Value::Bool(true);
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();

    let files = ModelFiles::local(&dir).unwrap();
    let encoder = TextEncoder::from_files(&files).unwrap();
    let e = encoder.encode("가 a").unwrap();
    assert_eq!(
        e.tokens[1..3],
        ["\u{1100}", "##\u{1161}"],
        "the jamo pieces"
    );
    assert_eq!(e.offsets[1], e.offsets[2], "one character span for both");
    let cpu = LoadOptions {
        device: DeviceChoice::Cpu,
        ..Default::default()
    };
    let ner = TokenClassifier::from_pretrained(&files, &cpu).unwrap();
    let long = format!("가{}", " a".repeat(80));
    let got = tokens(&ner.run(&[long.as_str()], &every_token()).unwrap()[0]);
    assert_eq!(got, expected(&encoder, &long), "every token once, in order");
    assert_eq!(got[1], (2, "##\u{1161}".to_string()), "index 2 is listed");
    std::fs::remove_dir_all(&dir).unwrap();
}
