//! Llama against transformers on the tiny fixture `weights/llama-tiny` (grouped-query
//! attention with 8 query and 2 key/value heads, `llama3` rotary scaling written as
//! transformers 5 writes it, a tied head): tokenization, logits at every real position of a
//! left-padded batch to 1e-4, the rotary frequencies from both config layouts, generated ids
//! exactly equal to `model.generate`, and cached decoding equal to uncached.

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use trident_core::config::TokenIds;
use trident_core::generation::{
    generate, CausalLm, CausalLmDecoder, CausalLmState, Decoder, GenerationConfig,
};
use trident_core::nn::Rotary;
use trident_core::text::Batch;
use trident_core::{Dtype, ModelFiles, TextEncoder};
use trident_llama::LlamaForCausalLM;
use trident_testing::{
    assert_close, fixture_dir, int_tensor, max_abs_diff, reference, rows, tensor,
};

const TINY: &str = "llama-tiny";

fn files() -> ModelFiles {
    ModelFiles::local(fixture_dir(TINY)).unwrap()
}

fn model() -> LlamaForCausalLM {
    LlamaForCausalLM::from_pretrained(&files(), Device::Cpu, Dtype::F32).unwrap()
}

/// The reference's left-padded `input_ids` and `attention_mask` as a batch.
fn reference_batch(v: &Value) -> Batch {
    trident_testing::left_padded_batch(v).unwrap()
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

#[test]
fn rotary_frequencies_are_read_from_both_config_layouts() {
    let r = reference(TINY).unwrap();
    let values: Vec<f32> = serde_json::from_value(r["inv_freq"].clone()).unwrap();
    let expected = Tensor::from_slice(&values);
    let m = model();
    let written = m
        .config
        .rotary()
        .unwrap()
        .inv_freq(16, Device::Cpu)
        .unwrap();
    assert_close(
        &written,
        &expected,
        1e-7,
        "rope_parameters (transformers 5)",
    );
    let published = Rotary::from_config(&r["rope_published_layout"], m.config.head_width())
        .unwrap()
        .inv_freq(16, Device::Cpu)
        .unwrap();
    assert_close(
        &published,
        &expected,
        1e-7,
        "rope_theta + rope_scaling (published)",
    );
}

#[test]
fn logits_match_transformers_at_every_real_position() {
    let r = reference(TINY).unwrap();
    let b = &r["batch"];
    let m = model();
    let ids = int_tensor(&b["input_ids"]).unwrap();
    let mask = int_tensor(&b["attention_mask"]).unwrap();
    let logits = m.forward(&ids, &mask).unwrap(); // [3, 16, vocab]
                                                  // Padded positions depend on the attention implementation (transformers' own eager and
                                                  // sdpa paths differ there): only real positions are compared.
    let real = mask.to_kind(Kind::Bool).unsqueeze(-1);
    let ours = logits
        .narrow(-1, 0, 32)
        .masked_fill(&real.logical_not(), 0.0);
    let theirs = tensor(&b["logits_first32"])
        .unwrap()
        .masked_fill(&real.logical_not(), 0.0);
    assert_close(&ours, &theirs, 1e-4, "logits (first 32) at real positions");
    let last = logits.select(1, logits.size()[1] - 1);
    assert_close(
        &last,
        &tensor(&b["logits_last_position"]).unwrap(),
        1e-4,
        "last-position logits",
    );
}

#[test]
fn generated_ids_equal_transformers_generate() {
    let r = reference(TINY).unwrap();
    let m = model();
    let defaults =
        GenerationConfig::from_file(&fixture_dir(TINY).join("generation_config.json")).unwrap();
    let cases = r["generate"].as_array().unwrap();
    assert!(cases.len() >= 2);
    for case in cases {
        let k = &case["kwargs"];
        let config = defaults.merge(&GenerationConfig {
            max_new_tokens: k["max_new_tokens"].as_u64().map(|v| v as usize),
            num_beams: k["num_beams"].as_u64().map(|v| v as usize),
            do_sample: k["do_sample"].as_bool(),
            pad_token_id: k["pad_token_id"].as_i64().map(TokenIds::One),
            ..Default::default()
        });
        let ours: Vec<Vec<i64>> = generate(&CausalLmDecoder(&m), &reference_batch(case), &config)
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
    // Grouped-query attention caches only the key/value heads.
    let kv_heads = m.config.kv_heads();
    assert_eq!(
        state.caches[0].self_attn.get().unwrap().unwrap().0.size()[1],
        kv_heads
    );
}

#[test]
fn bf16_and_int8_stay_close_to_f32() {
    let r = reference(TINY).unwrap();
    let b = &r["batch"];
    let ids = int_tensor(&b["input_ids"]).unwrap();
    let mask = int_tensor(&b["attention_mask"]).unwrap();
    let real = mask.to_kind(Kind::Bool).unsqueeze(-1);
    let logits = |dtype| {
        let m = LlamaForCausalLM::from_pretrained(&files(), Device::Cpu, dtype).unwrap();
        m.forward(&ids, &mask)
            .unwrap()
            .masked_fill(&real.logical_not(), 0.0)
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
    let g = trident_llama::generator(&files(), &trident_core::LoadOptions::default()).unwrap();
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
        case["decoded"][0].as_str().unwrap()
    );
}
