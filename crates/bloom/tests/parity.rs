//! BLOOM against transformers on the tiny fixture `weights/bloom-tiny` (6 heads, a count that is
//! not a power of two; written by scripts/fixtures_bloom.py): ALiBi slopes and biases, logits at
//! every real position of a left-padded batch to 1e-4 (with both residual variants), generated ids
//! exactly equal to `model.generate` (greedy and beam, batched with left padding), cached decoding
//! equal to uncached, and a prompt alone equal to the same prompt inside a padded batch.

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use trident_bloom::{BloomConfig, BloomForCausalLM};
use trident_core::config::TokenIds;
use trident_core::generation::{
    generate, CausalLm, CausalLmDecoder, CausalLmState, Decoder, GenerationConfig,
};
use trident_core::nn::{alibi_bias, alibi_slopes};
use trident_core::{Dtype, ModelFiles, TextEncoder};
use trident_testing::{
    assert_close, fixture_dir, int_tensor, max_abs_diff, reference, rows, tensor,
};

const TINY: &str = "bloom-tiny";

fn files() -> ModelFiles {
    ModelFiles::local(fixture_dir(TINY)).unwrap()
}

fn model() -> BloomForCausalLM {
    BloomForCausalLM::from_pretrained(&files(), Device::Cpu, Dtype::F32).unwrap()
}

/// Logits at the real positions of a recorded batch (`logits_first32`, `logits_last_position`),
/// padded positions zeroed on both sides: a padded query sees no key, so what it computes
/// depends on the implementation.
fn assert_batch_logits(m: &BloomForCausalLM, b: &Value, what: &str) {
    let ids = int_tensor(&b["input_ids"]).unwrap();
    let mask = int_tensor(&b["attention_mask"]).unwrap();
    let logits = m.forward(&ids, &mask).unwrap(); // [3, seq, vocab]
    let padded = mask.to_kind(Kind::Bool).unsqueeze(-1).logical_not();
    let ours = logits.narrow(-1, 0, 32).masked_fill(&padded, 0.0);
    let theirs = tensor(&b["logits_first32"])
        .unwrap()
        .masked_fill(&padded, 0.0);
    assert_close(&ours, &theirs, 1e-4, &format!("{what}: logits (first 32)"));
    let last = logits.select(1, logits.size()[1] - 1);
    assert_close(
        &last,
        &tensor(&b["logits_last_position"]).unwrap(),
        1e-4,
        &format!("{what}: last-position logits"),
    );
}

#[test]
fn tokenization_matches_the_fast_tokenizer() {
    let r = reference(TINY).unwrap();
    let tok = TextEncoder::from_files(&files()).unwrap();
    for e in r["encodings"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        let ids: Vec<i64> = serde_json::from_value(e["input_ids"].clone()).unwrap();
        assert_eq!(tok.encode(text).unwrap().ids, ids, "{text:?}");
    }
}

/// Core's slopes are transformers' `_get_alibi_slopes` to the bit (f32 values), for head counts
/// that are powers of two and for those that are not (6, 12, 112 as in BLOOM-176B).
#[test]
fn alibi_slopes_match_transformers() {
    let r = reference(TINY).unwrap();
    let recorded = r["alibi_slopes"].as_object().unwrap();
    for n in ["6", "8", "12"] {
        assert!(recorded.contains_key(n), "the fixture lacks {n} heads");
    }
    for (heads, values) in recorded {
        let theirs: Vec<f64> = serde_json::from_value(values.clone()).unwrap();
        let ours = alibi_slopes(heads.parse().unwrap());
        assert_eq!(ours.len(), theirs.len(), "{heads} heads");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            // The fixture writes f32 values with 9 significant digits: they read back exactly.
            assert_eq!(*a as f32, *b as f32, "{heads} heads, slope {i}");
        }
    }
}

/// The bias of the left-padded batch equals transformers' `build_alibi_tensor`: slopes times
/// key positions counted over each row's real tokens.
#[test]
fn alibi_bias_of_a_left_padded_batch_matches_transformers() {
    let r = reference(TINY).unwrap();
    let a = &r["alibi_batch"];
    let mask = int_tensor(&a["attention_mask"]).unwrap();
    let heads = a["num_heads"].as_i64().unwrap();
    let ours = alibi_bias(&mask, heads, Kind::Float).unwrap(); // [batch, heads, 1, k]
    assert_eq!(ours.size()[2], 1);
    assert_close(
        &ours.squeeze_dim(2),
        &tensor(&a["alibi"]).unwrap(),
        0.0,
        "alibi bias",
    );
}

#[test]
fn logits_match_transformers_at_every_real_position() {
    let r = reference(TINY).unwrap();
    assert_batch_logits(&model(), &r["batch"], "default residual");
}

/// `apply_residual_connection_post_layernorm` is read from the config: the same weights with
/// the flag set give transformers' logits for that variant (and not the default's).
#[test]
fn the_normed_residual_variant_matches_transformers() {
    let r = reference(TINY).unwrap();
    let mut config = BloomConfig::from_file(&fixture_dir(TINY).join("config.json")).unwrap();
    assert!(!config.apply_residual_connection_post_layernorm);
    config.apply_residual_connection_post_layernorm = true;
    let m = BloomForCausalLM::load(&files(), config, Device::Cpu, Dtype::F32).unwrap();
    assert_batch_logits(&m, &r["batch_residual_post_layernorm"], "normed residual");
    let default = tensor(&r["batch"]["logits_last_position"]).unwrap();
    let variant = tensor(&r["batch_residual_post_layernorm"]["logits_last_position"]).unwrap();
    assert!(max_abs_diff(&default, &variant) > 0.1, "the variants agree");
}

#[test]
fn generated_ids_equal_transformers_generate() {
    let r = reference(TINY).unwrap();
    let m = model();
    let defaults =
        GenerationConfig::from_file(&fixture_dir(TINY).join("generation_config.json")).unwrap();
    let cases = r["generate"].as_array().unwrap();
    assert!(cases.iter().any(|c| c["kwargs"]["num_beams"] == 3));
    for case in cases {
        let k = &case["kwargs"];
        let config = defaults.merge(&GenerationConfig {
            max_new_tokens: k["max_new_tokens"].as_u64().map(|v| v as usize),
            num_beams: k["num_beams"].as_u64().map(|v| v as usize),
            do_sample: k["do_sample"].as_bool(),
            pad_token_id: k["pad_token_id"].as_i64().map(TokenIds::One),
            ..Default::default()
        });
        let batch = trident_testing::left_padded_batch(case).unwrap();
        let ours: Vec<Vec<i64>> = generate(&CausalLmDecoder(&m), &batch, &config)
            .unwrap()
            .into_iter()
            .map(|s| s.ids)
            .collect();
        assert_eq!(ours, rows(&case["output_ids"]), "{}", case["name"]);
    }
}

#[test]
fn cached_decoding_equals_uncached() {
    let r = reference(TINY).unwrap();
    let m = model();
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
    for pos in prompt..total {
        let logits = decoder.step(&ids.narrow(1, pos, 1), &mut state).unwrap();
        worst = worst.max(max_abs_diff(&logits, &uncached.select(1, pos)));
    }
    assert!(
        worst <= 1e-4,
        "cached and uncached logits differ by {worst:e}"
    );
    assert_eq!(state.caches[0].self_attn.len(), total);
}

/// ALiBi counts key positions over the real tokens, so left padding changes nothing.
#[test]
fn a_prompt_alone_equals_the_same_prompt_in_a_padded_batch() {
    let r = reference(TINY).unwrap();
    let b = &r["batch"];
    let m = model();
    let ids = int_tensor(&b["input_ids"]).unwrap();
    let mask = int_tensor(&b["attention_mask"]).unwrap();
    let batched = m.forward(&ids, &mask).unwrap();
    let seq = ids.size()[1];
    for row in 0..ids.size()[0] {
        let n = mask.get(row).sum(Kind::Int64).int64_value(&[]);
        let alone_ids = ids.get(row).narrow(0, seq - n, n).unsqueeze(0);
        let alone = m
            .forward(&alone_ids, &alone_ids.ones_like())
            .unwrap()
            .get(0);
        let d = max_abs_diff(&alone, &batched.get(row).narrow(0, seq - n, n));
        assert!(d <= 1e-4, "row {row}: alone and batched differ by {d:e}");
    }
}

#[test]
fn bf16_and_int8_stay_close_to_f32() {
    let r = reference(TINY).unwrap();
    let b = &r["batch"];
    let ids = int_tensor(&b["input_ids"]).unwrap();
    let mask = int_tensor(&b["attention_mask"]).unwrap();
    let padded = mask.to_kind(Kind::Bool).unsqueeze(-1).logical_not();
    let logits = |dtype| {
        let m = BloomForCausalLM::from_pretrained(&files(), Device::Cpu, dtype).unwrap();
        m.forward(&ids, &mask).unwrap().masked_fill(&padded, 0.0)
    };
    let exact = logits(Dtype::F32);
    for dtype in [Dtype::Bf16, Dtype::Int8] {
        let ours = logits(dtype);
        let err = (&ours - &exact).norm().double_value(&[]) / exact.norm().double_value(&[]);
        assert!(err < 0.1, "{dtype}: logits off by {err}");
    }
}

/// Through core's text-generation pipeline (what `trident generate` and `trident serve` run):
/// the greedy continuation is transformers' (its decoded output, prompt included).
#[test]
fn the_generation_pipeline_continues_as_transformers() {
    let r = reference(TINY).unwrap();
    let case = r["generate"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "greedy")
        .unwrap();
    let g = trident_bloom::generator(&files(), &trident_core::LoadOptions::default()).unwrap();
    assert_eq!(g.context(), 128); // config.json's seq_length
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
        case["decoded"][0].as_str().unwrap()
    );
}

#[test]
fn a_checkpoint_without_its_tensors_is_an_error_naming_them() {
    let dir = std::env::temp_dir().join(format!("trident-bloom-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture_dir(TINY).join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    // A safetensors file that holds only the embeddings.
    let table = Tensor::zeros([1000, 48], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(
        &[("transformer.word_embeddings.weight", &table)],
        dir.join("model.safetensors"),
    )
    .unwrap();
    let files = ModelFiles::local(&dir).unwrap();
    let err = BloomForCausalLM::from_pretrained(&files, Device::Cpu, Dtype::F32).unwrap_err();
    std::fs::remove_dir_all(&dir).ok();
    let message = err.to_string();
    assert!(
        message.contains("query_key_value") || message.contains("word_embeddings_layernorm"),
        "{message}"
    );
}
