//! Core blocks against values computed by the reference implementations (transformers and
//! torch), recorded in weights/core/reference.json by scripts/make_fixtures.py.

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use trident_core::nn::mask::{causal_padding_mask, padding_mask};
use trident_core::nn::{
    relative_position_bucket, sinusoidal_table, AttentionContext, KvCache, Linear,
    MultiHeadAttention, Projections,
};
use trident_testing::{assert_close, int_tensor, naive_attention, reference, tensor};

fn core_ref() -> Value {
    reference("core").expect("weights/core/reference.json (run `make fixtures`)")
}

#[test]
fn t5_buckets_match_transformers_in_both_directions() {
    let r = &core_ref()["t5_relative_position_bucket"];
    let start = r["relative_position"]["start"].as_i64().unwrap();
    let end = r["relative_position"]["end_inclusive"].as_i64().unwrap();
    let (buckets, distance) = (
        r["num_buckets"].as_i64().unwrap(),
        r["max_distance"].as_i64().unwrap(),
    );
    let rel = Tensor::arange_start(start, end + 1, (Kind::Int64, Device::Cpu));
    for (key, bidirectional) in [("bidirectional", true), ("unidirectional", false)] {
        let expected: Vec<i64> = serde_json::from_value(r[key].clone()).unwrap();
        let actual = Vec::<i64>::try_from(
            &relative_position_bucket(&rel, bidirectional, buckets, distance).unwrap(),
        )
        .unwrap();
        assert_eq!(actual, expected, "{key} buckets");
    }
}

#[test]
fn sinusoidal_table_matches_the_paper_formula() {
    let r = &core_ref()["sinusoidal"];
    let table = sinusoidal_table(
        r["n_pos"].as_i64().unwrap(),
        r["dim"].as_i64().unwrap(),
        Device::Cpu,
    )
    .unwrap();
    assert_close(
        &table,
        &tensor(&r["table"]).unwrap(),
        1e-6,
        "sinusoidal table",
    );
}

/// Our attention (the fused kernel) and the naive formula, both against the reference.
#[test]
fn masked_attention_matches_naive_softmax() {
    let r = &core_ref()["attention"];
    let (q, k, v) = (
        tensor(&r["q"]).unwrap(),
        tensor(&r["k"]).unwrap(),
        tensor(&r["v"]).unwrap(),
    );
    let head_dim = q.size()[3] as f64;
    let attention_mask = int_tensor(&r["attention_mask"]).unwrap();
    let position_bias = tensor(&r["position_bias"]).unwrap();
    for case in ["padding", "padding_causal", "t5_unscaled_position_bias"] {
        let c = &r[case];
        let mask = if c["causal"].as_bool().unwrap() {
            causal_padding_mask(&attention_mask, q.size()[2], Kind::Float).unwrap()
        } else {
            padding_mask(&attention_mask, Kind::Float).unwrap()
        };
        let bias = if c["uses_position_bias"].as_bool().unwrap() {
            &mask + &position_bias
        } else {
            mask
        };
        let scale = if c["scaled"].as_bool().unwrap() {
            1.0 / head_dim.sqrt()
        } else {
            1.0
        };
        let expected = tensor(&c["output"]).unwrap();
        let fused =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&bias), 0.0, false, scale, false);
        assert_close(&fused, &expected, 1e-5, &format!("{case}: fused attention"));
        assert_close(
            &naive_attention(&q, &k, &v, Some(&bias), scale),
            &expected,
            1e-5,
            &format!("{case}: naive attention"),
        );
    }
}

/// The whole module: identity projections make MultiHeadAttention compute exactly the
/// per-head attention of the reference q, k, v.
#[test]
fn multi_head_attention_module_splits_and_merges_heads() {
    let r = &core_ref()["attention"];
    let (q, k) = (tensor(&r["q"]).unwrap(), tensor(&r["k"]).unwrap());
    let (b, h, s, d) = (q.size()[0], q.size()[1], q.size()[2], q.size()[3]);
    let hidden = h * d;
    let merge = |t: &Tensor| t.transpose(1, 2).reshape([b, s, hidden]); // [batch, seq, heads·dim]
    let eye = Tensor::eye(hidden, (Kind::Float, Device::Cpu));
    let proj = || Linear::from_tensors(eye.copy(), None);
    let attention = MultiHeadAttention::new(
        Projections::Separate {
            q: proj(),
            k: proj(),
            v: proj(),
        },
        proj(),
        h,
        d,
    );
    // Cross-attention form: queries from `q`, keys and values both projected from `k`.
    let mask = padding_mask(&int_tensor(&r["attention_mask"]).unwrap(), Kind::Float).unwrap();
    let ctx = AttentionContext {
        mask: Some(&mask),
        ..Default::default()
    };
    let out = attention
        .forward(&merge(&q), Some(&merge(&k)), &ctx, None)
        .unwrap();
    let expected = naive_attention(&q, &k, &k, Some(&mask), 1.0 / (d as f64).sqrt());
    assert_close(
        &out,
        &merge(&expected),
        1e-5,
        "module vs per-head attention",
    );
}

/// Beams sharing one encoder row (grouped cross-attention) get exactly what each would get
/// from its own copy of the encoder output and mask.
#[test]
fn grouped_cross_attention_equals_attention_on_repeated_rows() {
    let (inputs, beams, h, d, src) = (3i64, 4i64, 2i64, 8i64, 5i64);
    let hidden = h * d;
    let proj = || {
        let w = Tensor::randn([hidden, hidden], (Kind::Float, Device::Cpu)) * 0.3;
        Linear::from_tensors(w, None)
    };
    let attention = MultiHeadAttention::new(
        Projections::Separate {
            q: proj(),
            k: proj(),
            v: proj(),
        },
        proj(),
        h,
        d,
    );
    let encoder = Tensor::randn([inputs, src, hidden], (Kind::Float, Device::Cpu));
    let lengths = Tensor::from_slice(&[5i64, 3, 1]).unsqueeze(1);
    let mask = padding_mask(
        &Tensor::arange(src, (Kind::Int64, Device::Cpu))
            .unsqueeze(0)
            .lt_tensor(&lengths)
            .to_kind(Kind::Int64),
        Kind::Float,
    )
    .unwrap(); // [inputs, 1, 1, src]
    let x = Tensor::randn([inputs * beams, 1, hidden], (Kind::Float, Device::Cpu));
    let repeat = Tensor::arange(inputs, (Kind::Int64, Device::Cpu))
        .repeat_interleave_self_int(beams, 0, None);
    // Each encoder row serves `beams` consecutive query rows.
    let grouped = attention
        .forward(
            &x,
            Some(&encoder),
            &AttentionContext {
                mask: Some(&mask),
                groups: beams,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    let repeated_mask = mask.index_select(0, &repeat);
    let repeated = attention
        .forward(
            &x,
            Some(&encoder.index_select(0, &repeat)),
            &AttentionContext {
                mask: Some(&repeated_mask),
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_close(&grouped, &repeated, 1e-5, "grouped vs repeated rows");
}

#[test]
fn kv_cache_appends_and_reorders_like_transformers() {
    let r = &core_ref()["kv_cache"];
    let t = |key: &str| tensor(&r[key]).unwrap();
    let mut cache = KvCache::new();
    let (k1, _) = cache.append(&t("k1"), &t("v1")).unwrap();
    assert_eq!(k1.size(), t("k1").size());
    let (k, v) = cache.append(&t("k2"), &t("v2")).unwrap();
    assert_eq!(cache.len(), r["seq_len_after"].as_i64().unwrap());
    assert_close(&k, &t("k_concat"), 0.0, "appended keys");
    assert_close(&v, &t("v_concat"), 0.0, "appended values");
    let beam_idx: Vec<i64> = serde_json::from_value(r["beam_idx"].clone()).unwrap();
    cache.reorder(&Tensor::from_slice(&beam_idx)).unwrap();
    let (k, v) = cache.get().unwrap().unwrap();
    assert_close(&k, &t("k_reordered"), 0.0, "reordered keys");
    assert_close(&v, &t("v_reordered"), 0.0, "reordered values");
    // Growth past the initial capacity keeps the contents.
    let mut cache = KvCache::new();
    let step = t("k2");
    let mut expected = Vec::new();
    for i in 0..40 {
        let x = &step + i as f64;
        let (k, _) = cache.append(&x, &x).unwrap();
        assert_eq!(k.size()[2], i + 1);
        expected.push(x);
    }
    let (k, _) = cache.get().unwrap().unwrap();
    assert_close(&k, &Tensor::cat(&expected, 2), 0.0, "keys after growth");
}
