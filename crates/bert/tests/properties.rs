//! Property tests over generated adversarial texts — combining marks, NFD and precomposed
//! Hangul, CJK, emoji with ZWJ and skin tones, right-to-left scripts, zero-width and unusual
//! spaces, control characters, very long words, URLs, and texts past the model's position
//! limit — through NER (every aggregation; a WordPiece and a byte-level BPE model) and
//! classification. The invariants hold without Python in the loop; equality with transformers
//! stays in the fixture tests (parity.rs).
//!
//! - every entity's span lies in the text: `0 ≤ start ≤ end ≤ len(text)` in characters;
//! - `none` with WordPiece: `word` is the span's text (without `##`), or the span itself for an
//!   unknown token;
//! - `none`: each token index at most once; on a windowed text with nothing ignored, every
//!   token of the whole text exactly once;
//! - results do not depend on the batch size or on the order of the inputs.

use proptest::prelude::*;
use std::sync::OnceLock;
use trident_bert::{
    Aggregation, ClassifyOptions, Entity, NerOptions, TextClassifier, TokenClassifier,
};
use trident_core::{DeviceChoice, LoadOptions, ModelFiles, TextEncoder};
use trident_testing::fixture_dir;

/// The pieces generated texts are made of, by kind.
const PIECES: &[&str] = &[
    // Latin with combining marks, and a precomposed accent.
    "e\u{301}",
    "Zoe\u{308}",
    "café",
    // Hangul: precomposed, and NFD jamo.
    "가",
    "\u{1100}\u{1161}",
    "한국어",
    // CJK.
    "東京",
    "北京市",
    // Emoji: ZWJ sequences, skin tones, flags.
    "👩🏽\u{200d}💻",
    "👨\u{200d}👩\u{200d}👧",
    "🇫🇷",
    "🍜",
    // Right-to-left.
    "مرحبا",
    "שלום",
    // Zero-width and unusual spaces.
    "\u{200b}",
    "\u{200d}",
    "\u{feff}",
    "\u{a0}",
    "\u{2003}",
    "\u{3000}",
    // Control characters.
    "\u{1}",
    "\u{7}",
    "\t",
    // Very long words, URLs, names, punctuation.
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "https://example.com/path?q=a&b=c#frag",
    "Angela Merkel",
    "Emmanuel Macron",
    "Berlin",
    "Paris",
    "U.N.",
    "—",
    "...",
    "a",
];

/// Format characters BERT's normaliser removes (Unicode category Cf among the pieces).
const DROPPED: &[char] = &['\u{200b}', '\u{200d}', '\u{feff}'];

const SEPARATORS: &[&str] = &[" ", "", "  ", " \n "];

/// A text of `n` pieces with separators between them.
fn text(n: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            prop::sample::select(PIECES),
            prop::sample::select(SEPARATORS),
        ),
        n,
    )
    .prop_map(|parts| {
        parts
            .into_iter()
            .map(|(piece, sep)| format!("{piece}{sep}"))
            .collect()
    })
}

/// Short texts (within the limit) and long ones (split into windows).
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![3 => text(1..8), 1 => text(40..90)]
}

struct Loaded {
    ner: TokenClassifier,
    tokenizer: TextEncoder,
}

fn load(name: &str) -> Loaded {
    let files = ModelFiles::local(fixture_dir(name)).unwrap();
    let cpu = LoadOptions {
        device: DeviceChoice::Cpu,
        ..Default::default()
    };
    Loaded {
        ner: TokenClassifier::from_pretrained(&files, &cpu).unwrap(),
        tokenizer: TextEncoder::from_files(&files).unwrap(),
    }
}

/// WordPiece (BERT) and byte-level BPE (RoBERTa), loaded once for every case.
fn models() -> &'static [(&'static str, Loaded)] {
    static MODELS: OnceLock<Vec<(&'static str, Loaded)>> = OnceLock::new();
    MODELS.get_or_init(|| {
        ["bert-tiny-ner", "roberta-tiny-ner"]
            .into_iter()
            .map(|name| (name, load(name)))
            .collect()
    })
}

const STRATEGIES: [Aggregation; 5] = [
    Aggregation::None,
    Aggregation::Simple,
    Aggregation::First,
    Aggregation::Average,
    Aggregation::Max,
];

fn options(aggregation: Aggregation, batch_size: usize) -> NerOptions {
    NerOptions {
        aggregation,
        batch_size,
        ignore_labels: Vec::new(),
        ..Default::default()
    }
}

/// (label, start, end, word, index) and the score of an entity.
fn key(e: &Entity) -> ((String, usize, usize, String, Option<usize>), f32) {
    match e {
        Entity::Token {
            entity,
            score,
            index,
            word,
            start,
            end,
        } => (
            (entity.clone(), *start, *end, word.clone(), Some(*index)),
            *score,
        ),
        Entity::Group {
            entity_group,
            score,
            word,
            start,
            end,
        } => (
            (entity_group.clone(), *start, *end, word.clone(), None),
            *score,
        ),
    }
}

/// Two runs' results are the same entities, scores within float noise of a different
/// padding.
fn same(a: &[Vec<Entity>], b: &[Vec<Entity>]) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        let (kx, ky): (Vec<_>, Vec<_>) = (x.iter().map(key).collect(), y.iter().map(key).collect());
        prop_assert_eq!(
            kx.iter().map(|k| &k.0).collect::<Vec<_>>(),
            ky.iter().map(|k| &k.0).collect::<Vec<_>>()
        );
        for (p, q) in kx.iter().zip(&ky) {
            prop_assert!((p.1 - q.1).abs() < 1e-4, "scores {} and {}", p.1, q.1);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn spans_lie_in_the_text_and_tokens_appear_once(text in any_text()) {
        let chars: Vec<char> = text.chars().collect();
        for (name, m) in models() {
            for aggregation in STRATEGIES {
                let got = m.ner.run(&[text.as_str()], &options(aggregation, 8)).unwrap();
                let mut seen = std::collections::BTreeSet::new();
                for e in &got[0] {
                    let ((_, start, end, word, index), _) = key(e);
                    prop_assert!(start <= end && end <= chars.len(),
                        "{name} {aggregation:?}: span {start}..{end} of {} chars", chars.len());
                    if let Some(index) = index {
                        prop_assert!(seen.insert(index), "{name}: index {index} twice");
                        if *name == "bert-tiny-ner" {
                            // The word is the token, which may span characters BERT's
                            // normaliser drops (control and zero-width format characters:
                            // "a\u{200b}c" is the one token "ac", as in transformers), or for
                            // an unknown token the text itself.
                            let span: String = chars[start..end].iter().collect();
                            let kept: String =
                                span.chars().filter(|c| !c.is_control() && !DROPPED.contains(c)).collect();
                            let piece = word.strip_prefix("##").unwrap_or(&word);
                            prop_assert!(piece == span || piece == kept,
                                "{}: word {:?} and span {:?}", name, piece, span);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn windowed_none_lists_every_token_exactly_once(text in text(60..110)) {
        for (name, m) in models() {
            let e = m.tokenizer.encode(&text).unwrap();
            let expected: Vec<usize> = (0..e.len()).filter(|&i| !e.special[i]).collect();
            // Past both fixtures' 64 positions: the text is split into windows.
            prop_assume!(expected.len() > 64);
            let got = m.ner.run(&[text.as_str()], &options(Aggregation::None, 8)).unwrap();
            let indices: Vec<usize> = got[0].iter().filter_map(|e| key(e).0 .4).collect();
            prop_assert_eq!(indices, expected, "{}", name);
        }
    }

    #[test]
    fn results_do_not_depend_on_batch_size_or_order(
        texts in prop::collection::vec(any_text(), 2..6),
        rotate in 1usize..5,
    ) {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut rotated = refs.clone();
        rotated.rotate_left(rotate % refs.len());
        for (_, m) in models() {
            for aggregation in [Aggregation::None, Aggregation::Simple, Aggregation::Max] {
                let one = m.ner.run(&refs, &options(aggregation, 1)).unwrap();
                let many = m.ner.run(&refs, &options(aggregation, 64)).unwrap();
                same(&one, &many)?;
                let mut back = m.ner.run(&rotated, &options(aggregation, 64)).unwrap();
                back.rotate_right(rotate % refs.len());
                same(&one, &back)?;
            }
        }
    }

    #[test]
    fn classification_does_not_depend_on_batch_size_or_order(
        texts in prop::collection::vec(any_text(), 2..6),
    ) {
        static CLASSIFIER: OnceLock<TextClassifier> = OnceLock::new();
        let classifier = CLASSIFIER.get_or_init(|| {
            let files = ModelFiles::local(fixture_dir("distilbert-tiny-sst2")).unwrap();
            let cpu = LoadOptions { device: DeviceChoice::Cpu, ..Default::default() };
            TextClassifier::from_pretrained(&files, &cpu).unwrap()
        });
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let all = |batch_size| ClassifyOptions { batch_size, top_k: None, function: None };
        let one = classifier.run(&refs, &all(1)).unwrap();
        let mut reversed = refs.clone();
        reversed.reverse();
        let mut back = classifier.run(&reversed, &all(64)).unwrap();
        back.reverse();
        for (a, b) in one.iter().zip(&back) {
            prop_assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                prop_assert!((x.score - y.score).abs() < 1e-4, "{} vs {}", x.score, y.score);
            }
        }
    }
}
