//! The BERT family against transformers on the tiny fixtures in weights/: tokenization,
//! logits and hidden states to 1e-4, and pipeline outputs (labels, entity groups, words,
//! offsets exactly; scores to 1e-4) for every aggregation strategy, striding and batches.

use serde_json::{json, Value};
use tch::Device;
use trident_bert::heads::{SequenceClassificationModel, TokenClassificationModel};
use trident_bert::pipelines::classify::ScoreFunction;
use trident_bert::{
    Aggregation, ClassifyOptions, EncoderConfig, NerOptions, TextClassifier, TokenClassifier,
};
use trident_core::text::{Batch, PaddingSide};
use trident_core::{DeviceChoice, LoadOptions, ModelFiles, TextEncoder};
use trident_testing::{assert_close, fixture_dir, int_tensor, json_close, reference, tensor};

const NER: &[&str] = &["bert-tiny-ner", "distilbert-tiny-ner", "roberta-tiny-ner"];
const CLASSIFY: &[&str] = &[
    "bert-tiny-sentiment",
    "bert-tiny-multilabel",
    "distilbert-tiny-sst2",
    "roberta-tiny-sentiment",
];

fn files(name: &str) -> ModelFiles {
    ModelFiles::local(fixture_dir(name)).unwrap()
}

fn cpu() -> LoadOptions {
    LoadOptions {
        device: DeviceChoice::Cpu,
        ..Default::default()
    }
}

#[test]
fn tokenization_matches_the_fast_tokenizer() {
    for name in NER.iter().chain(CLASSIFY) {
        let r = reference(name).unwrap();
        let tok = TextEncoder::from_files(&files(name)).unwrap();
        for e in r["encodings"].as_array().unwrap() {
            let text = e["text"].as_str().unwrap();
            let ours = tok.encode(text).unwrap();
            let ids: Vec<i64> = serde_json::from_value(e["input_ids"].clone()).unwrap();
            let offsets: Vec<(usize, usize)> =
                serde_json::from_value(e["offsets"].clone()).unwrap();
            let tokens: Vec<String> = serde_json::from_value(e["tokens"].clone()).unwrap();
            assert_eq!(ours.ids, ids, "{name}: ids of {text:?}");
            assert_eq!(ours.offsets, offsets, "{name}: offsets of {text:?}");
            assert_eq!(ours.tokens, tokens, "{name}: tokens of {text:?}");
        }
    }
}

fn reference_batch(r: &Value) -> Batch {
    let b = &r["batch"];
    let input_ids = int_tensor(&b["input_ids"]).unwrap();
    let token_type_ids = if b["token_type_ids"].is_array() {
        int_tensor(&b["token_type_ids"]).unwrap()
    } else {
        input_ids.zeros_like()
    };
    Batch {
        input_ids,
        attention_mask: int_tensor(&b["attention_mask"]).unwrap(),
        token_type_ids,
        encodings: Vec::new(),
        padding_side: PaddingSide::Right,
    }
}

#[test]
fn logits_and_hidden_states_match_transformers() {
    for name in NER.iter().chain(CLASSIFY) {
        let r = reference(name).unwrap();
        let files = files(name);
        let config = EncoderConfig::from_file(&files.get("config.json").unwrap()).unwrap();
        let batch = reference_batch(&r);
        let (logits, hidden) = if NER.contains(name) {
            let m = TokenClassificationModel::load(
                &files,
                &config,
                Device::Cpu,
                trident_core::Dtype::F32,
            )
            .unwrap();
            (
                m.forward(&batch).unwrap(),
                m.encoder
                    .forward(
                        &batch.input_ids,
                        &batch.attention_mask,
                        Some(&batch.token_type_ids),
                    )
                    .unwrap(),
            )
        } else {
            let m = SequenceClassificationModel::load(
                &files,
                &config,
                Device::Cpu,
                trident_core::Dtype::F32,
            )
            .unwrap();
            (
                m.forward(&batch).unwrap(),
                m.encoder
                    .forward(
                        &batch.input_ids,
                        &batch.attention_mask,
                        Some(&batch.token_type_ids),
                    )
                    .unwrap(),
            )
        };
        assert_close(
            &logits,
            &tensor(&r["batch"]["logits"]).unwrap(),
            1e-4,
            &format!("{name}: logits"),
        );
        let first8 = hidden.narrow(2, 0, 8);
        assert_close(
            &first8,
            &tensor(&r["batch"]["last_hidden_state_first8"]).unwrap(),
            1e-4,
            &format!("{name}: hidden states"),
        );
    }
}

/// Skipping the padding: at real tokens the hidden states and NER logits are the padded
/// computation's (and transformers'), padded positions hold zeros; a batch without padding
/// gives `forward`'s values. The first token alone equals `forward`'s first token.
#[test]
fn the_unpadded_encoder_matches_at_real_tokens() {
    for name in NER.iter().chain(CLASSIFY) {
        let r = reference(name).unwrap();
        let files = files(name);
        let config = EncoderConfig::from_file(&files.get("config.json").unwrap()).unwrap();
        let batch = reference_batch(&r);
        let real = batch.attention_mask.unsqueeze(-1).to_kind(tch::Kind::Float); // [batch, seq, 1]
        assert!(
            real.min().double_value(&[]) == 0.0,
            "{name}: the batch has padding"
        );
        let m =
            TokenClassificationModel::load(&files, &config, Device::Cpu, trident_core::Dtype::F32);
        let (encoder, ner) = match m {
            Ok(m) => (None, Some(m)),
            Err(_) => (
                Some(
                    SequenceClassificationModel::load(
                        &files,
                        &config,
                        Device::Cpu,
                        trident_core::Dtype::F32,
                    )
                    .unwrap()
                    .encoder,
                ),
                None,
            ),
        };
        let encoder = encoder
            .as_ref()
            .unwrap_or_else(|| &ner.as_ref().unwrap().encoder);
        let padded = encoder.forward_batch(&batch).unwrap();
        let unpadded = encoder.forward_unpadded(&batch).unwrap();
        assert_close(
            &unpadded,
            &(&padded * &real),
            1e-5,
            &format!("{name}: real tokens"),
        );
        // The first token alone (what sequence classification reads), its last layer
        // computed for that row only.
        assert_close(
            &encoder.forward_first_token(&batch).unwrap(),
            &padded.narrow(1, 0, 1),
            1e-5,
            &format!("{name}: first token"),
        );
        assert_close(
            &unpadded.narrow(2, 0, 8),
            &(tensor(&r["batch"]["last_hidden_state_first8"]).unwrap() * &real),
            1e-4,
            &format!("{name}: against transformers"),
        );
        if let Some(ner) = &ner {
            let logits = ner.forward_unpadded(&batch).unwrap();
            assert_close(
                &(logits * &real),
                &(tensor(&r["batch"]["logits"]).unwrap() * &real),
                1e-4,
                &format!("{name}: NER logits at real tokens"),
            );
        }
        // The first row alone has no padding: forward's values (to rounding: each call may
        // run another measured kernel).
        let first = r["batch"]["attention_mask"][0].as_array().unwrap();
        let len = first.iter().filter(|v| v.as_i64() == Some(1)).count() as i64;
        let one = Batch {
            input_ids: batch.input_ids.narrow(0, 0, 1).narrow(1, 0, len),
            attention_mask: batch.attention_mask.narrow(0, 0, 1).narrow(1, 0, len),
            token_type_ids: batch.token_type_ids.narrow(0, 0, 1).narrow(1, 0, len),
            encodings: Vec::new(),
            padding_side: PaddingSide::Right,
        };
        assert_close(
            &encoder.forward_unpadded(&one).unwrap(),
            &encoder.forward_batch(&one).unwrap(),
            1e-5,
            &format!("{name}: a batch without padding"),
        );
    }
}

fn ner_options(kwargs: &Value) -> NerOptions {
    let mut o = NerOptions {
        batch_size: kwargs["batch_size"].as_u64().unwrap_or(8) as usize,
        ..Default::default()
    };
    if let Some(a) = kwargs["aggregation_strategy"].as_str() {
        o.aggregation = a.parse::<Aggregation>().unwrap();
    }
    o.stride = kwargs["stride"].as_u64().map(|s| s as usize);
    if let Some(labels) = kwargs["ignore_labels"].as_array() {
        o.ignore_labels = labels
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
    }
    o
}

fn as_inputs(input: &Value) -> (Vec<String>, bool) {
    match input {
        Value::Array(items) => (
            items
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect(),
            true,
        ),
        other => (vec![other.as_str().unwrap().to_string()], false),
    }
}

#[test]
fn ner_pipeline_matches_transformers_for_every_strategy() {
    for name in NER {
        let r = reference(name).unwrap();
        let files = files(name);
        // One loaded model serves every case, each call with its own options.
        let pipeline = TokenClassifier::from_pretrained(&files, &cpu()).unwrap();
        let mut checked = 0;
        for case in r["pipelines"]["token-classification"].as_array().unwrap() {
            let options = ner_options(&case["kwargs"]);
            let (texts, is_list) = as_inputs(&case["input"]);
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let out = pipeline.run(&refs, &options).unwrap();
            let actual = if is_list { json!(out) } else { json!(out[0]) };
            let too_long = texts
                .iter()
                .any(|t| t.as_str() == r["long_text"].as_str().unwrap());
            if too_long && case["kwargs"]["stride"].is_null() {
                // transformers silently truncates a text beyond the model's limit when no
                // stride is given; Trident windows it instead, so it finds entities past the cut.
                let last_end = |v: &Value| {
                    v.as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["end"].as_u64().unwrap())
                        .max()
                        .unwrap_or(0)
                };
                assert!(
                    last_end(&actual) > last_end(&case["output"]),
                    "{name}: long text not windowed"
                );
                continue;
            }
            if let Err(e) = json_close(&actual, &case["output"], 1e-4) {
                panic!("{name} {} on {:?}: {e}", case["kwargs"], case["input"]);
            }
            checked += 1;
        }
        assert!(checked >= 40, "{name}: only {checked} cases");
    }
}

#[test]
fn classification_pipeline_matches_transformers() {
    for name in CLASSIFY {
        let r = reference(name).unwrap();
        let files = files(name);
        // One loaded model serves every case, each call with its own options.
        let pipeline = TextClassifier::from_pretrained(&files, &cpu()).unwrap();
        for case in r["pipelines"]["text-classification"].as_array().unwrap() {
            let kwargs = &case["kwargs"];
            let top_k = match kwargs.get("top_k") {
                None => Some(1),
                Some(Value::Null) => None,
                Some(k) => Some(k.as_u64().unwrap() as usize),
            };
            let function = (kwargs["function_to_apply"].as_str() == Some("none"))
                .then_some(ScoreFunction::None);
            let options = ClassifyOptions {
                batch_size: 8,
                top_k,
                function,
            };
            let (texts, is_list) = as_inputs(&case["input"]);
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let out = pipeline.run(&refs, &options).unwrap();
            // transformers returns a bare dict per text for a list without top_k.
            let actual = match (is_list, kwargs.get("top_k")) {
                (true, None) => json!(out
                    .iter()
                    .map(|labels| json!(labels[0]))
                    .collect::<Vec<_>>()),
                (true, _) => json!(out),
                (false, _) => json!(out[0]),
            };
            if let Err(e) = json_close(&actual, &case["output"], 1e-4) {
                panic!("{name} {kwargs} on {:?}: {e}", case["input"]);
            }
        }
    }
}

/// A text gives the same entities alone as inside a padded batch with longer texts.
#[test]
fn a_text_alone_equals_the_text_in_a_padded_batch() {
    for name in NER {
        let r = reference(name).unwrap();
        let texts: Vec<&str> = r["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let pipeline = TokenClassifier::from_pretrained(&files(name), &cpu()).unwrap();
        let options = NerOptions {
            batch_size: 16,
            ..Default::default()
        };
        let together = pipeline.run(&texts, &options).unwrap();
        for (text, batched) in texts.iter().zip(&together) {
            let alone = pipeline.run(&[text], &options).unwrap().remove(0);
            json_close(&json!(alone), &json!(batched), 1e-5)
                .unwrap_or_else(|e| panic!("{name} on {text:?}: {e}"));
        }
    }
}

#[test]
fn a_long_article_is_windowed_not_cut() {
    let r = reference("bert-tiny-ner").unwrap();
    let long = r["long_text"].as_str().unwrap();
    let pipeline = TokenClassifier::from_pretrained(&files("bert-tiny-ner"), &cpu()).unwrap();
    let options = NerOptions {
        batch_size: 4,
        ..Default::default()
    };
    let entities = pipeline.run(&[long], &options).unwrap().remove(0);
    let last_end = entities.iter().map(|e| match e {
        trident_bert::Entity::Group { end, .. } | trident_bert::Entity::Token { end, .. } => *end,
    });
    // Entities are found past the first window's ~60 tokens (well into the text).
    assert!(
        last_end.max().unwrap_or(0) > long.chars().count() / 2,
        "no entities in the second half of a long text"
    );
}

/// Without tokenizer.json, the tokenizer is built from vocab.txt (and tokenizer_config.json)
/// and gives the same ids and offsets.
#[test]
fn tokenizer_falls_back_to_vocab_txt() {
    let src = fixture_dir("bert-tiny-ner");
    let dir = std::env::temp_dir().join(format!("trident-vocab-txt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokenizer_json: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap())
            .unwrap();
    let mut vocab: Vec<(String, u64)> = tokenizer_json["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, i)| (t.clone(), i.as_u64().unwrap()))
        .collect();
    vocab.sort_by_key(|(_, i)| *i);
    let lines: Vec<String> = vocab.into_iter().map(|(t, _)| t).collect();
    std::fs::write(dir.join("vocab.txt"), lines.join("\n") + "\n").unwrap();
    std::fs::copy(
        src.join("tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    let from_vocab = TextEncoder::from_files(&ModelFiles::local(&dir).unwrap()).unwrap();
    let from_json = TextEncoder::from_files(&files("bert-tiny-ner")).unwrap();
    for text in reference("bert-tiny-ner").unwrap()["texts"]
        .as_array()
        .unwrap()
    {
        let text = text.as_str().unwrap();
        let (a, b) = (
            from_vocab.encode(text).unwrap(),
            from_json.encode(text).unwrap(),
        );
        assert_eq!((a.ids, a.offsets), (b.ids, b.offsets), "{text:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// bf16 and int8 stay close to f32 on every family: the encoder's output within a few
/// percent (relative L2 error), and the heads' logits too, with more room since a tiny random
/// head's logits are small differences of large terms (a wrong layout or scale is off by
/// far more than either bound).
#[test]
fn bf16_and_int8_stay_close_to_f32() {
    use trident_core::Dtype;
    let relative = |a: &tch::Tensor, b: &tch::Tensor| {
        (a - b).norm().double_value(&[]) / b.norm().double_value(&[])
    };
    for name in NER.iter().chain(CLASSIFY) {
        let r = reference(name).unwrap();
        let files = files(name);
        let config = EncoderConfig::from_file(&files.get("config.json").unwrap()).unwrap();
        let batch = reference_batch(&r);
        let run = |dtype| {
            let (logits, hidden) = if NER.contains(name) {
                let m = TokenClassificationModel::load(&files, &config, Device::Cpu, dtype);
                let m = m.unwrap();
                (
                    m.forward(&batch).unwrap(),
                    m.encoder.forward_batch(&batch).unwrap(),
                )
            } else {
                let m = SequenceClassificationModel::load(&files, &config, Device::Cpu, dtype);
                let m = m.unwrap();
                (
                    m.forward(&batch).unwrap(),
                    m.encoder.forward_batch(&batch).unwrap(),
                )
            };
            assert_eq!(logits.kind(), tch::Kind::Float, "{name} {dtype}");
            (logits, hidden.to_kind(tch::Kind::Float))
        };
        let (logits, hidden) = run(Dtype::F32);
        for dtype in [Dtype::Bf16, Dtype::Int8] {
            let (l, h) = run(dtype);
            let (el, eh) = (relative(&l, &logits), relative(&h, &hidden));
            eprintln!("{name} {dtype}: relative error: hidden {eh:.4}, logits {el:.4}");
            assert!(eh < 0.05, "{name} {dtype}: hidden states off by {eh}");
            assert!(el < 0.15, "{name} {dtype}: logits off by {el}");
        }
    }
}
