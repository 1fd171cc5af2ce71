//! The attention seam for the Llama family, against transformers: a `LlamaAttention` block
//! with grouped-query attention (4 query heads sharing 2 key/value heads) and rotary
//! positions in three variants (plain θ = 10000, `linear` and `llama3` scaling), on random
//! weights, uncached and cached (5 tokens, then 2). The reference values were recorded by
//! `scripts/fixtures_llama_attention.py` with transformers' own modules.

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use trident_core::nn::mask::causal_mask;
use trident_core::nn::{
    AttentionContext, KvCache, Linear, MultiHeadAttention, Projections, RopeScaling, Rotary,
};
use trident_core::{Checkpoint, Dtype, Weights};
use trident_testing::{assert_close, fixture_dir, reference};

const VARIANTS: [&str; 3] = ["default", "linear", "llama3"];

/// The recorded tensors.
fn stored() -> Checkpoint {
    Checkpoint::from_file(&fixture_dir("llama-attention").join("reference.safetensors")).unwrap()
}

/// `self_attn` with Llama's weight names: q/k/v/o projections without biases, 2 KV heads.
fn attention(config: &Value) -> MultiHeadAttention {
    let weights = Weights::from_checkpoint(stored(), Device::Cpu, Dtype::F32).unwrap();
    let p = weights.root() / "self_attn";
    let (hidden, heads, kv_heads, head_dim) = (
        config["hidden_size"].as_i64().unwrap(),
        config["num_attention_heads"].as_i64().unwrap(),
        config["num_key_value_heads"].as_i64().unwrap(),
        config["head_dim"].as_i64().unwrap(),
    );
    let projections = Projections::Separate {
        q: Linear::new(&(&p / "q_proj"), hidden, heads * head_dim, false).unwrap(),
        k: Linear::new(&(&p / "k_proj"), hidden, kv_heads * head_dim, false).unwrap(),
        v: Linear::new(&(&p / "v_proj"), hidden, kv_heads * head_dim, false).unwrap(),
    };
    let o_proj = Linear::new(&(&p / "o_proj"), heads * head_dim, hidden, false).unwrap();
    let attention = MultiHeadAttention::new(projections, o_proj, heads, head_dim)
        .with_kv_heads(kv_heads)
        .unwrap();
    weights.finish().unwrap();
    attention
}

/// The variant's rotary settings, read as a published config.json spells them.
fn rotary(config: &Value, variant: &Value) -> Rotary {
    let json = serde_json::json!({
        "max_position_embeddings": config["max_position_embeddings"],
        "rope_theta": variant["rope_theta"],
        "rope_scaling": variant["rope_scaling"],
    });
    Rotary::from_config(&json, config["head_dim"].as_i64().unwrap()).unwrap()
}

#[test]
fn rotary_frequencies_and_angles_equal_transformers() {
    let r = reference("llama-attention").unwrap();
    let ckpt = stored();
    let positions = ckpt.get("position_ids").unwrap();
    for name in VARIANTS {
        let rotary = rotary(&r["config"], &r["variants"][name]);
        let inv_freq = rotary.inv_freq(7, Device::Cpu).unwrap();
        assert_close(
            &inv_freq,
            &ckpt.get(&format!("inv_freq.{name}")).unwrap(),
            1e-7,
            &format!("{name} inv_freq"),
        );
        let angles = rotary.angles(&positions, Kind::Float).unwrap();
        // Ours [batch, 1, seq, head_dim]; transformers' [batch, seq, head_dim].
        assert_close(
            &angles.cos().squeeze_dim(1),
            &ckpt.get(&format!("cos.{name}")).unwrap(),
            1e-6,
            &format!("{name} cos"),
        );
        assert_close(
            &angles.sin().squeeze_dim(1),
            &ckpt.get(&format!("sin.{name}")).unwrap(),
            1e-6,
            &format!("{name} sin"),
        );
    }
}

#[test]
fn grouped_query_attention_with_rotary_equals_transformers_cached_and_uncached() {
    let r = reference("llama-attention").unwrap();
    let ckpt = stored();
    let attention = attention(&r["config"]);
    let x = ckpt.get("hidden_states").unwrap(); // [2, 7, 32]
    let positions = ckpt.get("position_ids").unwrap(); // [2, 7]
    let (rows, n) = (x.size()[0], x.size()[1]);
    for name in VARIANTS {
        let rotary = rotary(&r["config"], &r["variants"][name]);

        // Uncached: all 7 positions at once under the causal mask.
        let angles = rotary.angles(&positions, Kind::Float).unwrap();
        let mask = causal_mask(n, n, Kind::Float, Device::Cpu).unwrap();
        let ctx = AttentionContext {
            mask: Some(&mask),
            rotary: Some(&angles),
            ..Default::default()
        };
        let out = tch::no_grad(|| attention.forward(&x, None, &ctx, None)).unwrap();
        let expected = ckpt.get(&format!("output.{name}")).unwrap();
        assert_close(&out, &expected, 1e-5, &format!("{name} uncached"));

        // Cached: positions 0..5, then 5..7, keys rotated before they are cached.
        let mut cache = KvCache::new();
        let mut pieces = Vec::new();
        for (start, len) in [(0, 5), (5, 2)] {
            let angles = rotary
                .angles(&positions.narrow(1, start, len), Kind::Float)
                .unwrap();
            let mask = causal_mask(len, start + len, Kind::Float, Device::Cpu).unwrap();
            let ctx = AttentionContext {
                mask: Some(&mask),
                rotary: Some(&angles),
                ..Default::default()
            };
            let piece = tch::no_grad(|| {
                attention.forward(&x.narrow(1, start, len), None, &ctx, Some(&mut cache))
            })
            .unwrap();
            pieces.push(piece);
        }
        let (k, _) = cache.get().unwrap().unwrap();
        assert_eq!(
            k.size(),
            [rows, 2, n, 8],
            "the cache keeps only the 2 key/value heads"
        );
        let cached = Tensor::cat(&pieces, 1);
        let expected = ckpt.get(&format!("output_cached.{name}")).unwrap();
        assert_close(&cached, &expected, 1e-5, &format!("{name} cached"));
    }
}

#[test]
fn both_config_layouts_give_the_same_rotary() {
    let published = serde_json::json!({
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    });
    let transformers5 = serde_json::json!({
        "max_position_embeddings": 131072,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192},
    });
    let a = Rotary::from_config(&published, 64).unwrap();
    assert_eq!(a, Rotary::from_config(&transformers5, 64).unwrap());
    assert_eq!(a.theta, 500000.0);
    assert!(matches!(a.scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));
    // Older checkpoints say "type" instead of "rope_type"; no scaling at all is plain rotary.
    let old = serde_json::json!({"rope_scaling": {"type": "linear", "factor": 4.0}});
    assert_eq!(
        Rotary::from_config(&old, 64).unwrap().scaling,
        RopeScaling::Linear { factor: 4.0 }
    );
    assert_eq!(
        Rotary::from_config(&serde_json::json!({}), 64)
            .unwrap()
            .scaling,
        RopeScaling::None
    );
    let err = Rotary::from_config(
        &serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}),
        64,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("yarn") && err.contains("supported"), "{err}");
}

#[test]
fn dynamic_scaling_grows_the_base_only_past_the_original_context() {
    let rotary = Rotary {
        head_dim: 8,
        theta: 10000.0,
        scaling: RopeScaling::Dynamic {
            factor: 2.0,
            original_max_position_embeddings: 16,
        },
        max_position_embeddings: 16,
    };
    let plain = Rotary {
        scaling: RopeScaling::None,
        ..rotary.clone()
    };
    let within = rotary.inv_freq(16, Device::Cpu).unwrap();
    assert_close(
        &within,
        &plain.inv_freq(16, Device::Cpu).unwrap(),
        0.0,
        "within",
    );
    // transformers: base · (factor · len / original − (factor − 1))^(d / (d − 2)).
    let base: f64 = 10000.0 * (2.0f64 * 32.0 / 16.0 - 1.0).powf(8.0 / 6.0);
    let expected: Vec<f32> = (0..4)
        .map(|i| (1.0 / base.powf(2.0 * i as f64 / 8.0)) as f32)
        .collect();
    assert_close(
        &rotary.inv_freq(32, Device::Cpu).unwrap(),
        &Tensor::from_slice(&expected),
        1e-6,
        "past the original context",
    );
}
