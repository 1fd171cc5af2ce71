//! A sharded bf16 checkpoint, `weights/mistral-tiny-bf16-sharded` (mistral-tiny's weights
//! rounded to bfloat16 and split into two safetensors files with
//! `model.safetensors.index.json`, made by `scripts/fixtures_qwen2_mistral.py`), against
//! transformers run on the very same files in float32 and in bfloat16.

use tch::{Device, Kind, Tensor};
use trident_core::{Dtype, ModelFiles};
use trident_llama::LlamaForCausalLM;
use trident_testing::{assert_close, fixture_dir, int_tensor, reference, tensor};

const SHARDED: &str = "mistral-tiny-bf16-sharded";

/// Our logits (f32) at the reference batch's real positions, zero at padding, and the padding.
fn logits(dtype: Dtype) -> (Tensor, Tensor) {
    let r = reference(SHARDED).unwrap();
    let b = &r["batch"];
    let files = ModelFiles::local(fixture_dir(SHARDED)).unwrap();
    let m = LlamaForCausalLM::from_pretrained(&files, Device::Cpu, dtype).unwrap();
    let ids = int_tensor(&b["input_ids"]).unwrap();
    let mask = int_tensor(&b["attention_mask"]).unwrap();
    let padding = mask.to_kind(Kind::Bool).logical_not().unsqueeze(-1);
    let out = m.forward(&ids, &mask).unwrap();
    assert_eq!(out.kind(), Kind::Float);
    (out.masked_fill(&padding, 0.0), padding)
}

fn reference_logits(which: &str, padding: &Tensor) -> (Tensor, Tensor) {
    let r = reference(SHARDED).unwrap();
    let first32 = tensor(&r[which]["logits_first32"])
        .unwrap()
        .masked_fill(padding, 0.0);
    (first32, tensor(&r[which]["logits_last_position"]).unwrap())
}

#[test]
fn the_fixture_is_two_shards_and_an_index() {
    let dir = fixture_dir(SHARDED);
    assert!(dir.join("model.safetensors.index.json").is_file());
    assert!(!dir.join("model.safetensors").exists());
    let r = reference(SHARDED).unwrap();
    let shards = r["shards"].as_object().unwrap();
    assert_eq!(shards.len(), 2);
    for (file, names) in shards {
        assert!(dir.join(file).is_file(), "{file}");
        assert!(!names.as_array().unwrap().is_empty(), "{file}");
    }
}

/// Read into f32, the bf16 values are exact: the logits are transformers' f32 run on the same
/// files to float rounding, which needs every tensor of both shards.
#[test]
fn sharded_bf16_weights_loaded_in_f32_match_transformers_in_f32() {
    let (ours, padding) = logits(Dtype::F32);
    let (first32, last) = reference_logits("batch_f32", &padding);
    assert_close(&ours.narrow(-1, 0, 32), &first32, 1e-4, "logits (first 32)");
    assert_close(
        &ours.select(1, ours.size()[1] - 1),
        &last,
        1e-4,
        "last-position logits",
    );
}

/// Computing in bf16 (weights read straight into bf16): within bf16's rounding of
/// transformers' bf16 run, and of the f32 logits.
#[test]
fn sharded_bf16_weights_computed_in_bf16_stay_within_bf16_rounding() {
    let (ours, padding) = logits(Dtype::Bf16);
    let (bf16_first32, bf16_last) = reference_logits("batch_bf16", &padding);
    let (f32_first32, f32_last) = reference_logits("batch_f32", &padding);
    let ours_first32 = ours.narrow(-1, 0, 32);
    let ours_last = ours.select(1, ours.size()[1] - 1);
    // |logits| reach about 6 here, where bf16's step is 1/32: two ulps of the largest logit
    // against transformers' bf16 run (measured on an Intel Xeon: equal to the bit), and the
    // relative error bf16 brings against the f32 logits (measured: 1.2e-2).
    let relative =
        |a: &Tensor, b: &Tensor| (a - b).norm().double_value(&[]) / b.norm().double_value(&[]);
    for (what, a, b, tol) in [
        (
            "vs transformers bf16, first 32",
            &ours_first32,
            &bf16_first32,
            1.0 / 16.0,
        ),
        (
            "vs transformers bf16, last",
            &ours_last,
            &bf16_last,
            1.0 / 16.0,
        ),
    ] {
        let abs = (a - b).abs().max().double_value(&[]);
        assert!(abs <= tol, "{what}: max abs diff {abs}");
    }
    for (what, a, b) in [
        ("vs f32, first 32", &ours_first32, &f32_first32),
        ("vs f32, last", &ours_last, &f32_last),
    ] {
        let err = relative(a, b);
        assert!(err < 3e-2, "{what}: relative error {err}");
    }
}
