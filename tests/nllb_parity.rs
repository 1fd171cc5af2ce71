//! NLLB-200 against transformers on the tiny fixture `weights/nllb-tiny` (an
//! `M2M100ForConditionalGeneration` laid out as facebook/nllb-200-distilled-600M: tokenizer.json
//! with the 202 `fra_Latn`-style language codes as added special tokens and `<mask>` last,
//! sentencepiece.bpe.model, a greedy generation_config.json): tokenization (the tokenizer.json
//! puts its default `eng_Latn` first, the translator swaps in the source language), encoder and
//! decoder states and logits to 1e-4, cached decoding equal to uncached, `generate` ids exactly,
//! and the translation pipeline's text as transformers 4.x's pipeline made it.

use serde_json::Value;
use tch::{Device, Tensor};
use trident::bart::BartForConditionalGeneration;
use trident::core::generation::{
    generate, Decoder, EarlyStopping, GenerationConfig, Seq2SeqDecoder,
};
use trident::core::seq2seq::TranslateOptions;
use trident::core::{Batch, Dtype, LoadOptions, ModelFiles, TextEncoder};
use trident::m2m100::{M2M100ForConditionalGeneration, LAYOUT};
use trident_testing::{assert_close, fixture_dir, int_tensor, reference, rows, tensor};

const NAME: &str = "nllb-tiny";

fn files() -> ModelFiles {
    ModelFiles::local(fixture_dir(NAME)).unwrap()
}

fn model() -> BartForConditionalGeneration {
    BartForConditionalGeneration::from_pretrained_with(&files(), Device::Cpu, Dtype::F32, LAYOUT)
        .unwrap()
}

fn ints(v: &Value) -> Vec<i64> {
    serde_json::from_value(v.clone()).unwrap()
}

fn pad_id(r: &Value) -> i64 {
    r["special_ids"]["pad"].as_i64().unwrap()
}

/// Compare Trident's encoding of `e["text"]` (its first token, the tokenizer's default
/// language, replaced by `language`) with transformers' ids, tokens and character offsets.
fn check_encoding(tok: &TextEncoder, e: &Value, language: Option<(i64, &str)>, default: i64) {
    let text = e["text"].as_str().unwrap();
    let mut ours = tok.encode(text).unwrap();
    assert_eq!(
        ours.ids.first(),
        Some(&default),
        "{text:?}: default language first"
    );
    assert_eq!(ours.ids.last(), Some(&2), "{text:?}: </s> last");
    if let Some((id, token)) = language {
        ours.ids[0] = id;
        ours.tokens[0] = token.to_string();
    }
    assert_eq!(ours.ids, ints(&e["input_ids"]), "ids of {text:?}");
    let tokens: Vec<String> = serde_json::from_value(e["tokens"].clone()).unwrap();
    assert_eq!(ours.tokens, tokens, "tokens of {text:?}");
    let offsets: Vec<(usize, usize)> =
        serde_json::from_value::<Vec<[usize; 2]>>(e["offsets"].clone())
            .unwrap()
            .into_iter()
            .map(|[a, b]| (a, b))
            .collect();
    assert_eq!(ours.offsets, offsets, "offsets of {text:?}");
}

#[test]
fn tokenization_matches_the_reference() {
    let dir = fixture_dir(NAME);
    assert!(dir.join("tokenizer.json").exists() && !dir.join("vocab.json").exists());
    let tok = TextEncoder::from_files(&files()).unwrap();
    let r = reference(NAME).unwrap();
    let ids = &r["special_ids"];
    let id = |k: &str| ids[k].as_i64().unwrap();
    let (eng, fra) = (id("lang_eng_Latn"), id("lang_fra_Latn"));
    assert_eq!(tok.token_id("eng_Latn"), Some(eng));
    assert_eq!(tok.token_id("fra_Latn"), Some(fra));
    assert_eq!(tok.token_id("deu_Latn"), Some(id("lang_deu_Latn")));
    assert_eq!(tok.token_id("<mask>"), Some(id("mask")));
    assert_eq!(tok.pad_id, id("pad"));
    assert_eq!(tok.model_max_length, Some(64));
    // Every language code is a token, numbered after the SentencePiece pieces, `<mask>` last.
    let codes = r["lang_token_ids"].as_object().unwrap();
    assert_eq!(codes.len(), 202);
    for (code, want) in codes {
        assert_eq!(tok.token_id(code), want.as_i64(), "{code}");
    }
    assert_eq!(
        tok.vocab().len() as u64,
        r["tokenizer"]["vocab_size"].as_u64().unwrap()
    );

    // tokenizer.json's own post-processor: `eng_Latn … </s>` (src_lang null → eng_Latn).
    for e in r["encodings_default"].as_array().unwrap() {
        check_encoding(&tok, e, None, eng);
    }
    // TranslationPipeline with src_lang: that language's token first instead.
    for e in r["encodings_src_lang_fra_Latn"].as_array().unwrap() {
        check_encoding(&tok, e, Some((fra, "fra_Latn")), eng);
    }
    for e in r["encodings_src_lang_eng_Latn"].as_array().unwrap() {
        check_encoding(&tok, e, Some((eng, "eng_Latn")), eng);
    }
    // Decoding skips the language codes (special added tokens) with the other special tokens.
    for case in r["generate"].as_array().unwrap() {
        let decoded: Vec<String> = serde_json::from_value(case["decoded"].clone()).unwrap();
        for (row, want) in rows(&case["output_ids"]).iter().zip(decoded) {
            assert_eq!(tok.decode(row, true).unwrap(), want, "{row:?}");
        }
    }
}

/// transformers' tokens are the vocabulary's spelling (`convert_ids_to_tokens`): `<mask>`.
/// The `tokenizers` library's token string of an added token matched with `lstrip: true`
/// holds the space it swallowed (`" <mask>"`); `TextEncoder` spells it as the vocabulary does.
#[test]

fn lstrip_added_tokens_are_spelled_as_the_vocabulary_spells_them() {
    let tok = TextEncoder::from_files(&files()).unwrap();
    let r = reference(NAME).unwrap();
    let e = r["encodings_default"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["text"].as_str().unwrap().contains("<mask>"))
        .unwrap();
    let tokens: Vec<String> = serde_json::from_value(e["tokens"].clone()).unwrap();
    assert!(tokens.contains(&"<mask>".to_string()));
    let ours = tok.encode(e["text"].as_str().unwrap()).unwrap();
    assert_eq!(ours.ids, ints(&e["input_ids"]));
    assert_eq!(ours.tokens, tokens);
}

#[test]
fn encoder_and_decoder_match_transformers() {
    let r = reference(NAME).unwrap();
    let b = &r["batch"];
    assert_eq!(b["src_lang"], "fra_Latn");
    let input_ids = int_tensor(&b["input_ids"]).unwrap();
    let mask = int_tensor(&b["attention_mask"]).unwrap();
    let dec = int_tensor(&b["decoder_input_ids"]).unwrap();
    let m = model();
    assert_eq!(
        m.config.vocab_size,
        r["tokenizer"]["vocab_size"].as_i64().unwrap() + 2,
        "two rows past the tokenizer, as in nllb-200"
    );
    let out = m.forward(&input_ids, &mask, &dec).unwrap();
    let first = |t: &Tensor, n: i64| t.narrow(-1, 0, n);
    assert_close(
        &first(&out.encoder_last_hidden_state, 8),
        &tensor(&b["encoder_last_hidden_state_first8"]).unwrap(),
        1e-4,
        "encoder hidden states",
    );
    assert_close(
        &first(&out.decoder_last_hidden_state, 8),
        &tensor(&b["decoder_last_hidden_state_first8"]).unwrap(),
        1e-4,
        "decoder hidden states",
    );
    assert_close(
        &first(&out.logits, 32),
        &tensor(&b["logits_first32"]).unwrap(),
        1e-4,
        "logits",
    );
    let last = out.logits.select(1, out.logits.size()[1] - 1);
    assert_close(
        &last,
        &tensor(&b["logits_last_position"]).unwrap(),
        1e-4,
        "last-position logits",
    );
    // The M2M100 crate's wrapper is the same model. Not to the bit: each loaded model
    // measures its own kernels (`nn::kernels`), and a class that settles within one forward
    // runs whichever candidate was fastest on that call's timings, so two loads may add a
    // product's terms in different orders (4e-6 apart on one CI machine).
    let wrapped =
        M2M100ForConditionalGeneration::from_pretrained(&files(), Device::Cpu, Dtype::F32).unwrap();
    let again = wrapped.model.forward(&input_ids, &mask, &dec).unwrap();
    assert_close(
        &again.logits,
        &out.logits,
        1e-5,
        "M2M100ForConditionalGeneration",
    );
    assert_close(
        &first(&again.logits, 32),
        &tensor(&b["logits_first32"]).unwrap(),
        1e-4,
        "M2M100ForConditionalGeneration logits",
    );
}

#[test]
fn cached_decoding_equals_uncached() {
    let m = model();
    let r = reference(NAME).unwrap();
    let b = &r["batch"];
    let batch = padded(&b["input_ids"], &b["attention_mask"], pad_id(&r));
    let dec = int_tensor(&b["decoder_input_ids"]).unwrap();
    let full = m
        .forward(&batch.input_ids, &batch.attention_mask, &dec)
        .unwrap()
        .logits;
    let decoder = Seq2SeqDecoder(&m);
    let mut state = decoder.start(&batch).unwrap();
    for t in 0..dec.size()[1] {
        let step = decoder.step(&dec.narrow(1, t, 1), &mut state).unwrap();
        assert_close(&step, &full.select(1, t), 1e-4, &format!("position {t}"));
    }
    assert_eq!(state.caches.len() as i64, m.config.decoder_layers);
}

/// transformers' `generate` kwargs over the checkpoint's settings; a kwarg given as `null`
/// (transformers' way of switching a checkpoint setting off) removes it.
fn settings(defaults: &GenerationConfig, kwargs: &Value) -> GenerationConfig {
    let usize_of = |k: &str| kwargs.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let known = [
        "max_new_tokens",
        "max_length",
        "do_sample",
        "num_beams",
        "length_penalty",
        "early_stopping",
        "num_return_sequences",
        "forced_bos_token_id",
    ];
    for key in kwargs.as_object().unwrap().keys() {
        assert!(
            known.contains(&key.as_str()),
            "unhandled generate kwarg {key}"
        );
    }
    let over = GenerationConfig {
        max_new_tokens: usize_of("max_new_tokens"),
        max_length: usize_of("max_length"),
        do_sample: kwargs.get("do_sample").and_then(Value::as_bool),
        num_beams: usize_of("num_beams"),
        length_penalty: kwargs.get("length_penalty").and_then(Value::as_f64),
        early_stopping: kwargs
            .get("early_stopping")
            .map(|v| EarlyStopping::from_json(v).unwrap()),
        num_return_sequences: usize_of("num_return_sequences"),
        forced_bos_token_id: kwargs.get("forced_bos_token_id").and_then(Value::as_i64),
        ..Default::default()
    };
    let mut config = defaults.merge(&over);
    if kwargs.get("forced_bos_token_id") == Some(&Value::Null) {
        config.forced_bos_token_id = None;
    }
    config
}

#[test]
fn generate_gives_transformers_ids_exactly() {
    let m = model();
    let r = reference(NAME).unwrap();
    let defaults = GenerationConfig::from_checkpoint(&files(), None).unwrap();
    // nllb-200's generation_config.json: greedy, max_length only.
    assert_eq!(defaults.max_length, Some(48));
    assert!(defaults.num_beams.unwrap_or(1) == 1);
    let cases = r["generate"].as_array().unwrap();
    assert!(cases.len() >= 10, "every generate case is recorded");
    for case in cases {
        let config = settings(&defaults, &case["kwargs"]);
        let batch = padded(&case["input_ids"], &case["attention_mask"], pad_id(&r));
        let out = generate(&Seq2SeqDecoder(&m), &batch, &config).unwrap();
        let ids: Vec<Vec<i64>> = out.iter().map(|s| s.ids.clone()).collect();
        assert_eq!(
            ids,
            rows(&case["output_ids"]),
            "{}",
            case["name"].as_str().unwrap()
        );
    }
}

/// The text of each output, as the reference's pipeline printed it.
fn texts(output: &Value) -> Vec<String> {
    output
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["translation_text"].as_str().unwrap().to_string())
        .collect()
}

fn inputs(case: &Value) -> Vec<String> {
    match &case["input"] {
        Value::String(s) => vec![s.clone()],
        v => serde_json::from_value(v.clone()).unwrap(),
    }
}

/// Generated ids of every recorded row: after the decoder start token, through EOS (the
/// padding of a batch dropped).
fn generated(output_ids: &Value, eos: i64) -> Vec<Vec<i64>> {
    let calls: Vec<Vec<Vec<i64>>> = serde_json::from_value(output_ids.clone()).unwrap();
    calls
        .into_iter()
        .flatten()
        .map(|row| {
            let body = &row[1..];
            match body.iter().position(|&t| t == eos) {
                Some(i) => body[..=i].to_vec(),
                None => body.to_vec(),
            }
        })
        .collect()
}

#[test]
fn translates_between_language_codes_like_the_4x_pipeline() {
    let t = trident::translator(&files(), &LoadOptions::default()).unwrap();
    let r = reference(NAME).unwrap();
    let codes = t.language_codes();
    assert_eq!(codes.len(), 202);
    assert!(["fra_Latn", "eng_Latn", "deu_Latn", "zho_Hans"]
        .iter()
        .all(|c| codes.iter().any(|k| k == c)));
    let mut checked = 0;
    for case in r["translation"].as_array().unwrap() {
        let (src, tgt) = (
            case["src_lang"].as_str().unwrap(),
            case["tgt_lang"].as_str().unwrap(),
        );
        let call = &case["call_kwargs"];
        let mut options = TranslateOptions::new(src, tgt);
        options.generation.num_beams = call["num_beams"].as_u64().map(|v| v as usize);
        // transformers' pipeline runs a list text by text unless batch_size says otherwise.
        options.batch_size = call["batch_size"].as_u64().unwrap_or(1) as usize;
        let texts_in = inputs(case);
        let refs: Vec<&str> = texts_in.iter().map(String::as_str).collect();
        let ours: Vec<_> = t
            .run(&refs, &options)
            .unwrap()
            .into_iter()
            .map(|mut v| v.remove(0))
            .collect();
        let what = format!("{src} → {tgt} {call} {refs:?}");
        assert_eq!(
            ours.iter()
                .map(|o| o.translation_text.clone())
                .collect::<Vec<_>>(),
            texts(&case["output"]),
            "{what}"
        );
        assert_eq!(
            ours.iter().map(|o| o.token_ids.clone()).collect::<Vec<_>>(),
            generated(&case["output_ids"], 2),
            "{what}"
        );
        checked += 1;
    }
    assert!(checked >= 10);
    // The settings of a call: the target language forced first, the checkpoint's greedy search.
    let s = t
        .settings(&TranslateOptions::new("fra_Latn", "deu_Latn"))
        .unwrap();
    assert_eq!(
        s.forced_bos_token_id,
        r["special_ids"]["lang_deu_Latn"].as_i64()
    );
    assert_eq!(s.max_length, Some(48));
    // M2M100's two-letter codes are not NLLB's: the error offers the close ones.
    let err = t
        .run(&["Bonjour."], &TranslateOptions::new("fr", "eng_Latn"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'fr' is not a language code") && err.contains("fra_Latn"),
        "{err}"
    );
    let err = t
        .run(&["Bonjour."], &TranslateOptions::model_pair())
        .unwrap_err()
        .to_string();
    assert!(err.contains("pass --from and --to"), "{err}");
}

/// A right-padded batch of recorded ids (see [`trident_testing::batch_of`]).
fn padded(input_ids: &Value, attention_mask: &Value, pad: i64) -> Batch {
    trident_testing::batch_of(input_ids, attention_mask, pad).unwrap()
}
