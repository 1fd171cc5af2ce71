//! BART, Marian and M2M100 against transformers on the tiny fixtures `weights/bart-tiny`,
//! `weights/marian-tiny` (OPUS-MT layout: source/target SentencePiece models, no
//! tokenizer.json) and `weights/m2m100-tiny` (SentencePiece + vocab.json, language tokens):
//! tokenization, encoder and decoder states and logits to 1e-4, cached decoding equal to
//! uncached, `generate` ids exactly (greedy, beams, batches, the checkpoint's own settings),
//! and the summarization/translation pipelines' text as transformers 4.x's pipelines made it.

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use trident::bart::{BartForConditionalGeneration, Layout};
use trident::core::generation::{
    generate, Decoder, EarlyStopping, GenerationConfig, Seq2SeqDecoder,
};
use trident::core::seq2seq::{SummarizeOptions, TranslateOptions};
use trident::core::{Batch, Dtype, LoadOptions, ModelFiles, TextEncoder};
use trident_testing::{assert_close, fixture_dir, int_tensor, reference, rows, tensor};

/// Each fixture with its family's layout.
const FIXTURES: [(&str, Layout); 3] = [
    ("bart-tiny", Layout::BART),
    ("marian-tiny", trident::marian::LAYOUT),
    ("m2m100-tiny", trident::m2m100::LAYOUT),
];

fn files(name: &str) -> ModelFiles {
    ModelFiles::local(fixture_dir(name)).unwrap()
}

fn model(name: &str, layout: Layout, dtype: Dtype) -> BartForConditionalGeneration {
    BartForConditionalGeneration::from_pretrained_with(&files(name), Device::Cpu, dtype, layout)
        .unwrap()
}

fn pad_id(r: &Value) -> i64 {
    r["special_ids"]["pad"].as_i64().unwrap()
}

#[test]
fn tokenization_matches_the_reference() {
    // BART: byte-level BPE from tokenizer.json.
    let tok = TextEncoder::from_files(&files("bart-tiny")).unwrap();
    let r = reference("bart-tiny").unwrap();
    for e in r["encodings"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        let ids: Vec<i64> = serde_json::from_value(e["input_ids"].clone()).unwrap();
        assert_eq!(tok.encode(text).unwrap().ids, ids, "bart {text:?}");
    }
    // Marian: the source SentencePiece model and vocab.json, no tokenizer.json.
    assert!(!fixture_dir("marian-tiny").join("tokenizer.json").exists());
    let tok = TextEncoder::from_files(&files("marian-tiny")).unwrap();
    let r = reference("marian-tiny").unwrap();
    for e in r["encodings"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        let ids: Vec<i64> = serde_json::from_value(e["input_ids"].clone()).unwrap();
        assert_eq!(tok.encode(text).unwrap().ids, ids, "marian {text:?}");
    }
    // M2M100: the source language token, then the text and </s>.
    let tok = TextEncoder::from_files(&files("m2m100-tiny")).unwrap();
    let r = reference("m2m100-tiny").unwrap();
    let fr = tok.token_id("__fr__").unwrap();
    assert_eq!(fr, r["special_ids"]["lang_fr"].as_i64().unwrap());
    for e in r["encodings_src_lang_fr"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        let ids: Vec<i64> = serde_json::from_value(e["input_ids"].clone()).unwrap();
        let mut ours = vec![fr];
        ours.extend(tok.encode(text).unwrap().ids);
        assert_eq!(ours, ids, "m2m100 {text:?}");
    }
}

#[test]
fn encoder_and_decoder_match_transformers() {
    for (name, layout) in FIXTURES {
        let m = model(name, layout, Dtype::F32);
        let r = reference(name).unwrap();
        let b = &r["batch"];
        let input_ids = int_tensor(&b["input_ids"]).unwrap();
        let mask = int_tensor(&b["attention_mask"]).unwrap();
        let dec = int_tensor(&b["decoder_input_ids"]).unwrap();
        let out = m.forward(&input_ids, &mask, &dec).unwrap();
        let first = |t: &Tensor, n: i64| t.narrow(-1, 0, n);
        assert_close(
            &first(&out.encoder_last_hidden_state, 8),
            &tensor(&b["encoder_last_hidden_state_first8"]).unwrap(),
            1e-4,
            &format!("{name} encoder hidden states"),
        );
        assert_close(
            &first(&out.decoder_last_hidden_state, 8),
            &tensor(&b["decoder_last_hidden_state_first8"]).unwrap(),
            1e-4,
            &format!("{name} decoder hidden states"),
        );
        assert_close(
            &first(&out.logits, 32),
            &tensor(&b["logits_first32"]).unwrap(),
            1e-4,
            &format!("{name} logits"),
        );
        let last = out.logits.select(1, out.logits.size()[1] - 1);
        assert_close(
            &last,
            &tensor(&b["logits_last_position"]).unwrap(),
            1e-4,
            &format!("{name} last-position logits"),
        );
    }
}

/// The encoder on real tokens only (what generation runs): `encode`'s and transformers'
/// values at real tokens, zeros at padding, and the decoder's logits unchanged.
#[test]
fn the_unpadded_encoder_matches_at_real_tokens() {
    for (name, layout) in FIXTURES {
        let m = model(name, layout, Dtype::F32);
        let r = reference(name).unwrap();
        let b = &r["batch"];
        let input_ids = int_tensor(&b["input_ids"]).unwrap();
        let mask = int_tensor(&b["attention_mask"]).unwrap();
        let real = mask.unsqueeze(-1).to_kind(Kind::Float); // [batch, src, 1]
        let padding = 1.0 - real.mean(Kind::Float).double_value(&[]);
        assert!(
            padding >= trident::core::nn::packing::WORTH_PACKING,
            "{name}: {padding} of the batch is padding, too little to pack"
        );
        let unpadded = m.encode_unpadded(&input_ids, &mask).unwrap();
        let padded = m.encode(&input_ids, &mask).unwrap();
        assert_close(
            &unpadded,
            &(&padded * &real),
            1e-5,
            &format!("{name}: real tokens"),
        );
        assert_close(
            &unpadded.narrow(-1, 0, 8),
            &(tensor(&b["encoder_last_hidden_state_first8"]).unwrap() * &real),
            1e-4,
            &format!("{name}: against transformers"),
        );
        let dec = int_tensor(&b["decoder_input_ids"]).unwrap();
        let encoder_mask = BartForConditionalGeneration::encoder_mask(&mask).unwrap();
        let logits = m
            .lm_logits(
                &m.decode_hidden(&dec, &unpadded, &encoder_mask, 1, None)
                    .unwrap(),
            )
            .unwrap();
        assert_close(
            &logits.narrow(-1, 0, 32),
            &tensor(&b["logits_first32"]).unwrap(),
            1e-4,
            &format!("{name}: logits over the unpadded encoder"),
        );
    }
}

#[test]
fn cached_decoding_equals_uncached() {
    for (name, layout) in FIXTURES {
        let m = model(name, layout, Dtype::F32);
        let r = reference(name).unwrap();
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
            assert_close(
                &step,
                &full.select(1, t),
                1e-4,
                &format!("{name} position {t}"),
            );
        }
        assert_eq!(state.caches.len() as i64, m.config.decoder_layers);
    }
}

/// transformers' `generate` kwargs over the checkpoint's settings; a kwarg given as `null`
/// (transformers' way of switching a checkpoint setting off) removes it.
fn settings(defaults: &GenerationConfig, kwargs: &Value) -> GenerationConfig {
    let usize_of = |k: &str| kwargs.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let f64_of = |k: &str| kwargs.get(k).and_then(Value::as_f64);
    let known = [
        "max_new_tokens",
        "max_length",
        "min_length",
        "do_sample",
        "num_beams",
        "length_penalty",
        "early_stopping",
        "no_repeat_ngram_size",
        "num_return_sequences",
        "forced_bos_token_id",
        "bad_words_ids",
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
        min_length: usize_of("min_length"),
        do_sample: kwargs.get("do_sample").and_then(Value::as_bool),
        num_beams: usize_of("num_beams"),
        length_penalty: f64_of("length_penalty"),
        early_stopping: kwargs
            .get("early_stopping")
            .map(|v| EarlyStopping::from_json(v).unwrap()),
        no_repeat_ngram_size: usize_of("no_repeat_ngram_size"),
        num_return_sequences: usize_of("num_return_sequences"),
        forced_bos_token_id: kwargs.get("forced_bos_token_id").and_then(Value::as_i64),
        ..Default::default()
    };
    let mut config = defaults.merge(&over);
    if kwargs.get("forced_bos_token_id") == Some(&Value::Null) {
        config.forced_bos_token_id = None;
    }
    if kwargs.get("bad_words_ids") == Some(&Value::Null) {
        config.bad_words_ids = None;
    }
    config
}

#[test]
fn generate_gives_transformers_ids_exactly() {
    for (name, layout) in FIXTURES {
        let m = model(name, layout, Dtype::F32);
        let r = reference(name).unwrap();
        let defaults = GenerationConfig::from_checkpoint(&files(name), None).unwrap();
        let cases = r["generate"].as_array().unwrap();
        assert!(cases.len() >= 8, "{name}: every generate case is recorded");
        for case in cases {
            let config = settings(&defaults, &case["kwargs"]);
            let batch = padded(&case["input_ids"], &case["attention_mask"], pad_id(&r));
            let out = generate(&Seq2SeqDecoder(&m), &batch, &config).unwrap();
            let ids: Vec<Vec<i64>> = out.iter().map(|s| s.ids.clone()).collect();
            assert_eq!(
                ids,
                rows(&case["output_ids"]),
                "{name} {}",
                case["name"].as_str().unwrap()
            );
        }
    }
}

/// The text of each output, as the reference's pipeline printed it.
fn texts(output: &Value, key: &str) -> Vec<String> {
    output
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o[key].as_str().unwrap().to_string())
        .collect()
}

fn inputs(case: &Value) -> Vec<String> {
    match &case["input"] {
        Value::String(s) => vec![s.clone()],
        v => serde_json::from_value(v.clone()).unwrap(),
    }
}

#[test]
fn summarization_matches_the_4x_pipeline() {
    let s = trident::summarizer(&files("bart-tiny"), &LoadOptions::default()).unwrap();
    let r = reference("bart-tiny").unwrap();
    let mut checked = 0;
    for case in r["summarization"].as_array().unwrap() {
        let call = &case["call_kwargs"];
        if call.get("truncation").is_some() {
            // transformers cuts the text at the encoder's limit; Trident splits it instead
            // (see long_documents_are_split_at_the_position_limit).
            continue;
        }
        let mut options = SummarizeOptions::default();
        options.generation.max_length = call["max_length"].as_u64().map(|v| v as usize);
        options.generation.num_beams = call["num_beams"].as_u64().map(|v| v as usize);
        let texts_in = inputs(case);
        let refs: Vec<&str> = texts_in.iter().map(String::as_str).collect();
        let ours: Vec<String> = s
            .run(&refs, &options)
            .unwrap()
            .into_iter()
            .map(|mut v| v.remove(0).summary_text)
            .collect();
        assert_eq!(ours, texts(&case["output"], "summary_text"), "{refs:?}");
        checked += 1;
    }
    assert!(checked >= 5);
}

#[test]
fn long_documents_are_split_at_the_position_limit() {
    // transformers fails on this text (more tokens than BART's learned positions); Trident
    // splits it at sentence boundaries into pieces that fit.
    let r = reference("bart-tiny").unwrap();
    assert!(r["long_text_untruncated_error"]
        .as_str()
        .unwrap()
        .contains("IndexError"));
    let limit = 64;
    assert!(r["long_text_num_tokens"].as_u64().unwrap() > limit);
    let s = trident::summarizer(&files("bart-tiny"), &LoadOptions::default()).unwrap();
    let options = SummarizeOptions::default();
    assert_eq!(s.max_input_tokens(&options), limit as usize);
    let out = s
        .run(&[r["long_text"].as_str().unwrap()], &options)
        .unwrap();
    assert!(out[0][0].chunks > 1, "{out:?}");
    // Asking for more than the positions allow still splits at the limit.
    let wide = SummarizeOptions {
        max_input_tokens: Some(10_000),
        ..Default::default()
    };
    assert_eq!(s.max_input_tokens(&wide), limit as usize);
}

#[test]
fn marian_translates_its_own_pair_like_the_4x_pipeline() {
    let t = trident::translator(&files("marian-tiny"), &LoadOptions::default()).unwrap();
    let r = reference("marian-tiny").unwrap();
    let mut checked = 0;
    for case in r["translation_fr_to_en"].as_array().unwrap() {
        let texts_in = inputs(case);
        let refs: Vec<&str> = texts_in.iter().map(String::as_str).collect();
        let call = &case["call_kwargs"];
        for mut options in [
            TranslateOptions::model_pair(),
            TranslateOptions::new("fr", "en"),
        ] {
            options.generation.max_length = call["max_length"].as_u64().map(|v| v as usize);
            options.generation.num_beams = call["num_beams"].as_u64().map(|v| v as usize);
            let ours: Vec<String> = t
                .run(&refs, &options)
                .unwrap()
                .into_iter()
                .map(|mut v| v.remove(0).translation_text)
                .collect();
            assert_eq!(ours, texts(&case["output"], "translation_text"), "{refs:?}");
        }
        checked += 1;
    }
    assert!(checked >= 3);
    // Another pair is refused with what the model does translate.
    let err = t
        .run(&["Das Haus."], &TranslateOptions::new("de", "en"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("translates fr → en only"), "{err}");
}

#[test]
fn m2m100_translates_between_its_language_codes_like_the_4x_pipeline() {
    let t = trident::translator(&files("m2m100-tiny"), &LoadOptions::default()).unwrap();
    let r = reference("m2m100-tiny").unwrap();
    let mut checked = 0;
    for case in r["translation"].as_array().unwrap() {
        let (src, tgt) = (
            case["src_lang"].as_str().unwrap(),
            case["tgt_lang"].as_str().unwrap(),
        );
        let mut options = TranslateOptions::new(src, tgt);
        let call = &case["call_kwargs"];
        options.generation.max_length = call["max_length"].as_u64().map(|v| v as usize);
        options.generation.num_beams = call["num_beams"].as_u64().map(|v| v as usize);
        let texts_in = inputs(case);
        let refs: Vec<&str> = texts_in.iter().map(String::as_str).collect();
        let ours: Vec<String> = t
            .run(&refs, &options)
            .unwrap()
            .into_iter()
            .map(|mut v| v.remove(0).translation_text)
            .collect();
        assert_eq!(
            ours,
            texts(&case["output"], "translation_text"),
            "{src} → {tgt} {refs:?}"
        );
        checked += 1;
    }
    assert!(checked >= 3);
    // An unknown code lists the close valid ones; a missing one says what to pass.
    let err = t
        .run(&["Bonjour."], &TranslateOptions::new("fra", "en"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'fra' is not a language code") && err.contains("fr"),
        "{err}"
    );
    let err = t
        .run(&["Bonjour."], &TranslateOptions::model_pair())
        .unwrap_err()
        .to_string();
    assert!(err.contains("pass --from and --to"), "{err}");
}

/// bf16 and int8 stay close to f32: the decoder's logits within a bound (relative L2 error),
/// returned as f32. The tiny random fixtures are drawn with large weights, and transformers'
/// own reduced-precision passes are off by as much on them (measured on the same batch, with
/// `model.to(torch.bfloat16)`: bart-tiny 0.008, marian-tiny 0.148, m2m100-tiny 0.051; with
/// `torch.ao.quantization.quantize_dynamic` int8: 0.027, 0.277, 0.164); a wrong layout or
/// scale is off by far more (≈ 1).
#[test]
fn bf16_and_int8_stay_close_to_f32() {
    let bounds = [
        ("bart-tiny", 0.05),
        ("marian-tiny", 0.25),
        ("m2m100-tiny", 0.15),
    ];
    for ((name, layout), (_, bound)) in FIXTURES.into_iter().zip(bounds) {
        let r = reference(name).unwrap();
        let b = &r["batch"];
        let input_ids = int_tensor(&b["input_ids"]).unwrap();
        let mask = int_tensor(&b["attention_mask"]).unwrap();
        let dec = int_tensor(&b["decoder_input_ids"]).unwrap();
        let logits = |dtype| {
            model(name, layout, dtype)
                .forward(&input_ids, &mask, &dec)
                .unwrap()
                .logits
        };
        let exact = logits(Dtype::F32);
        for dtype in [Dtype::Bf16, Dtype::Int8] {
            let ours = logits(dtype);
            assert_eq!(ours.kind(), Kind::Float, "{name} {dtype}");
            let err = (&ours - &exact).norm().double_value(&[]) / exact.norm().double_value(&[]);
            eprintln!("{name} {dtype}: relative logit error {err:.4}");
            assert!(err < bound, "{name} {dtype}: logits off by {err}");
        }
    }
}

/// A right-padded batch of recorded ids (see [`trident_testing::batch_of`]).
fn padded(input_ids: &Value, attention_mask: &Value, pad: i64) -> Batch {
    trident_testing::batch_of(input_ids, attention_mask, pad).unwrap()
}
