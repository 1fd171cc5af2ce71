//! Mistral and Qwen2 (the Llama variants this crate runs from the same code) against
//! transformers on the tiny fixtures `weights/mistral-tiny` (sliding window 4, shorter than the
//! prompts and the generated sequences; an untied head) and `weights/qwen2-tiny` (nonzero q/k/v
//! biases; a config.json as the published Qwen2 checkpoints write it, with a `sliding_window`
//! that `use_sliding_window: false` switches off), both made by
//! `scripts/fixtures_qwen2_mistral.py`: logits at every real position of a left-padded batch
//! to 1e-4, generated ids exactly equal to `model.generate`, cached decoding equal to uncached,
//! the text-generation pipeline, and the per-layer window rule read from the config.

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use trident_core::config::TokenIds;
use trident_core::generation::{
    generate, CausalLm, CausalLmDecoder, CausalLmState, Decoder, GenerationConfig,
};
use trident_core::{Dtype, ModelFiles};
use trident_llama::{Family, LlamaConfig, LlamaForCausalLM};
use trident_testing::{
    assert_close, fixture_dir, int_tensor, left_padded_batch, max_abs_diff, reference, rows, tensor,
};

const MISTRAL: &str = "mistral-tiny";
const QWEN2: &str = "qwen2-tiny";

fn files(name: &str) -> ModelFiles {
    ModelFiles::local(fixture_dir(name)).unwrap()
}

fn model(name: &str) -> LlamaForCausalLM {
    LlamaForCausalLM::from_pretrained(&files(name), Device::Cpu, Dtype::F32).unwrap()
}

/// Logits `[batch, seq, vocab]` of the reference's left-padded batch, zero at padding.
fn batch_logits(m: &LlamaForCausalLM, b: &Value) -> (Tensor, Tensor) {
    let ids = int_tensor(&b["input_ids"]).unwrap();
    let mask = int_tensor(&b["attention_mask"]).unwrap();
    let padding = mask.to_kind(Kind::Bool).logical_not().unsqueeze(-1);
    let logits = m.forward(&ids, &mask).unwrap().masked_fill(&padding, 0.0);
    (logits, padding)
}

/// Padded positions depend on the attention implementation (transformers' own eager and sdpa
/// paths differ there): only real positions are compared.
fn check_logits(name: &str) {
    let r = reference(name).unwrap();
    let b = &r["batch"];
    let (logits, padding) = batch_logits(&model(name), b);
    let theirs = tensor(&b["logits_first32"])
        .unwrap()
        .masked_fill(&padding, 0.0);
    assert_close(
        &logits.narrow(-1, 0, 32),
        &theirs,
        1e-4,
        &format!("{name}: logits (first 32) at real positions"),
    );
    assert_close(
        &logits.select(1, logits.size()[1] - 1),
        &tensor(&b["logits_last_position"]).unwrap(),
        1e-4,
        &format!("{name}: last-position logits"),
    );
}

fn check_generate(name: &str) {
    let r = reference(name).unwrap();
    let m = model(name);
    let defaults =
        GenerationConfig::from_file(&fixture_dir(name).join("generation_config.json")).unwrap();
    let cases = r["generate"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for case in cases {
        let k = &case["kwargs"];
        let config = defaults.merge(&GenerationConfig {
            max_new_tokens: k["max_new_tokens"].as_u64().map(|v| v as usize),
            num_beams: k["num_beams"].as_u64().map(|v| v as usize),
            do_sample: k["do_sample"].as_bool(),
            pad_token_id: k["pad_token_id"].as_i64().map(TokenIds::One),
            ..Default::default()
        });
        let batch = left_padded_batch(case).unwrap();
        let ours: Vec<Vec<i64>> = generate(&CausalLmDecoder(&m), &batch, &config)
            .unwrap()
            .into_iter()
            .map(|s| s.ids)
            .collect();
        assert_eq!(ours, rows(&case["output_ids"]), "{name}: {}", case["name"]);
    }
}

/// The left-padded batch decoded token by token through the caches gives the logits of one
/// uncached pass over the whole sequences (for Mistral, far past the window).
fn check_cached_equals_uncached(name: &str) {
    let r = reference(name).unwrap();
    let m = model(name);
    let case = r["generate"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "batch3_left_padded_greedy")
        .unwrap();
    let prompt_mask = int_tensor(&case["attention_mask"]).unwrap();
    let ids = int_tensor(&case["output_ids"]).unwrap(); // [3, prompt + 12], left-padded
    let (n_rows, total) = (ids.size()[0], ids.size()[1]);
    let prompt = prompt_mask.size()[1];
    let full_mask = Tensor::cat(
        &[
            &prompt_mask,
            &Tensor::ones([n_rows, total - prompt], (Kind::Int64, Device::Cpu)),
        ],
        1,
    );
    let uncached = m.forward(&ids, &full_mask).unwrap();
    let decoder = CausalLmDecoder(&m);
    let mut state = CausalLmState::new(m.num_layers(), &prompt_mask, m.device()).unwrap();
    let first = decoder.step(&ids.narrow(1, 0, prompt), &mut state).unwrap();
    let mut worst = max_abs_diff(&first, &uncached.select(1, prompt - 1));
    // Two tokens at a time for the first steps, then one: several new queries after a cache
    // get the window too.
    let mut pos = prompt;
    while pos < total {
        let n = if pos < prompt + 4 {
            2.min(total - pos)
        } else {
            1
        };
        let logits = decoder.step(&ids.narrow(1, pos, n), &mut state).unwrap();
        worst = worst.max(max_abs_diff(&logits, &uncached.select(1, pos + n - 1)));
        pos += n;
    }
    assert!(
        worst <= 1e-4,
        "{name}: cached and uncached logits differ by {worst:e}"
    );
}

/// Through core's text-generation pipeline (what `trident generate` and `trident serve` run).
fn check_pipeline(name: &str) {
    let r = reference(name).unwrap();
    let case = r["generate"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "greedy")
        .unwrap();
    let g = trident_llama::generator(&files(name), &trident_core::LoadOptions::default()).unwrap();
    assert_eq!(g.context(), 128);
    let options = trident_core::causal::GenerateOptions {
        generation: GenerationConfig {
            max_new_tokens: Some(12),
            ..Default::default()
        },
        ..Default::default()
    };
    let prompt = case["texts"][0].as_str().unwrap();
    let out = g.run(&[prompt], &options).unwrap();
    assert_eq!(
        out[0][0].generated_text,
        case["decoded"][0].as_str().unwrap(),
        "{name}"
    );
}

#[test]
fn mistral_logits_match_transformers_at_every_real_position() {
    check_logits(MISTRAL);
}

#[test]
fn qwen2_logits_match_transformers_at_every_real_position() {
    check_logits(QWEN2);
}

#[test]
fn mistral_generated_ids_equal_transformers_generate() {
    check_generate(MISTRAL);
}

#[test]
fn qwen2_generated_ids_equal_transformers_generate() {
    check_generate(QWEN2);
}

#[test]
fn mistral_cached_decoding_equals_uncached() {
    check_cached_equals_uncached(MISTRAL);
}

#[test]
fn qwen2_cached_decoding_equals_uncached() {
    check_cached_equals_uncached(QWEN2);
}

#[test]
fn mistral_generation_pipeline_continues_as_transformers() {
    check_pipeline(MISTRAL);
}

#[test]
fn qwen2_generation_pipeline_continues_as_transformers() {
    check_pipeline(QWEN2);
}

/// The family's quirks come from config.json: Mistral windows every layer and has no biases;
/// Qwen2 has q/k/v biases (its checkpoint holds them and no o_proj bias, so loading would
/// fail otherwise) and ignores its `sliding_window` while `use_sliding_window` is false.
#[test]
fn the_family_quirks_are_read_from_the_config() {
    let mistral = model(MISTRAL);
    assert_eq!(mistral.config.family, Family::Mistral);
    assert_eq!(mistral.model.windows, [Some(4), Some(4)]);
    assert!(!mistral.config.qkv_bias() && !mistral.config.o_proj_bias());
    assert!(!mistral.config.tie_word_embeddings);
    let qwen = model(QWEN2);
    assert_eq!(qwen.config.family, Family::Qwen2);
    assert_eq!(qwen.config.sliding_window, Some(4));
    assert_eq!(qwen.model.windows, [None, None]);
    assert!(qwen.config.qkv_bias() && !qwen.config.o_proj_bias() && !qwen.config.mlp_has_bias());
    let r = reference(QWEN2).unwrap();
    let names: Vec<String> = serde_json::from_value(r["weight_names"].clone()).unwrap();
    assert!(names.contains(&"model.layers.1.self_attn.v_proj.bias".to_string()));
}

/// A text alone gives the logits it gets inside the left-padded batch, window included.
#[test]
fn mistral_text_alone_equals_the_same_text_in_a_padded_batch() {
    let r = reference(MISTRAL).unwrap();
    let b = &r["batch"];
    let m = model(MISTRAL);
    let (batched, _) = batch_logits(&m, b);
    for (i, (ids, mask)) in rows(&b["input_ids"])
        .into_iter()
        .zip(rows(&b["attention_mask"]))
        .enumerate()
    {
        let real: Vec<i64> = ids
            .iter()
            .zip(&mask)
            .filter(|(_, &m)| m == 1)
            .map(|(&t, _)| t)
            .collect();
        let n = real.len() as i64;
        let alone = m
            .forward(
                &Tensor::from_slice(&real).unsqueeze(0),
                &Tensor::ones([1, n], (Kind::Int64, Device::Cpu)),
            )
            .unwrap()
            .squeeze_dim(0);
        let inside = batched.get(i as i64).narrow(0, ids.len() as i64 - n, n);
        assert_close(&alone, &inside, 1e-4, &format!("row {i} alone"));
    }
}

/// Qwen2 with `use_sliding_window`: the layers from `max_window_layers` (1) on see 4 keys.
/// Written either way (published: `max_window_layers`; transformers 5: `layer_types`), the
/// windows are the same, and the logits are transformers' for that configuration.
#[test]
fn qwen2_with_its_window_switched_on_windows_the_later_layers() {
    let r = reference(QWEN2).unwrap();
    let config_path = fixture_dir(QWEN2).join("config.json");
    let mut raw: Value = trident_core::config::read_json(&config_path).unwrap();
    raw["use_sliding_window"] = Value::Bool(true);
    let config = LlamaConfig::from_value(raw.clone()).unwrap();
    assert_eq!(config.layer_windows().unwrap(), [None, Some(4)]);
    let mut typed = raw.clone();
    typed["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
    assert_eq!(
        LlamaConfig::from_value(typed)
            .unwrap()
            .layer_windows()
            .unwrap(),
        [None, Some(4)]
    );
    let m = LlamaForCausalLM::from_config(&files(QWEN2), config, Device::Cpu, Dtype::F32).unwrap();
    let (logits, padding) = batch_logits(&m, &r["batch"]);
    let sliding = &r["batch_sliding_layers"];
    assert_eq!(
        sliding["layer_types"],
        serde_json::json!(["full_attention", "sliding_attention"])
    );
    let theirs = tensor(&sliding["logits_first32"])
        .unwrap()
        .masked_fill(&padding, 0.0);
    assert_close(
        &logits.narrow(-1, 0, 32),
        &theirs,
        1e-4,
        "qwen2 with sliding layers",
    );
}

/// What the variants' configs may not say: an unknown `model_type`, a window of 0, a
/// `layer_types` list of the wrong length or with an unknown kind, a sliding layer without a
/// window.
#[test]
fn bad_variant_configs_are_refused_with_a_clear_error() {
    let raw: Value =
        trident_core::config::read_json(&fixture_dir(MISTRAL).join("config.json")).unwrap();
    let refused = |edit: &dyn Fn(&mut Value), expected: &str| {
        let mut c = raw.clone();
        edit(&mut c);
        let err = LlamaConfig::from_value(c).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    };
    refused(
        &|c| c["model_type"] = "gemma".into(),
        "model_type 'gemma' is not a Llama-family model",
    );
    refused(&|c| c["sliding_window"] = 0.into(), "sliding_window = 0");
    let qwen = |c: &mut Value| {
        c["model_type"] = "qwen2".into();
        c["use_sliding_window"] = true.into();
    };
    refused(
        &|c| {
            qwen(c);
            c["layer_types"] = serde_json::json!(["full_attention"]);
        },
        "layer_types lists 1 layers, num_hidden_layers is 2",
    );
    refused(
        &|c| {
            qwen(c);
            c["layer_types"] = serde_json::json!(["full_attention", "chunked_attention"]);
        },
        "layer type 'chunked_attention'",
    );
    refused(
        &|c| {
            qwen(c);
            c["sliding_window"] = Value::Null;
            c["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
        },
        "no sliding_window",
    );
    // Mistral with `sliding_window: null` attends fully; a config without model_type is Llama.
    let mut full = raw.clone();
    full["sliding_window"] = Value::Null;
    let c = LlamaConfig::from_value(full).unwrap();
    assert_eq!(c.layer_windows().unwrap(), [None, None]);
    let mut untyped = raw.clone();
    untyped.as_object_mut().unwrap().remove("model_type");
    let c = LlamaConfig::from_value(untyped).unwrap();
    assert_eq!(
        (c.family, c.layer_windows().unwrap()),
        (Family::Llama, vec![None, None])
    );
}
