//! Test-only helpers, a dev-dependency of every crate and not part of the public API: the
//! golden fixtures in `weights/` (recorded with Python transformers by
//! `scripts/make_fixtures.py`) and tensor comparisons. Used by every crate's tests.

use serde_json::Value;
use std::path::PathBuf;
use tch::{Kind, Tensor};
use trident_core::{Error, Result};

/// A JSON list of id lists (`input_ids`, `output_ids` of a reference) as rows.
pub fn rows(v: &Value) -> Vec<Vec<i64>> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

/// A right-padded batch (padded with `pad`) from recorded ids and attention mask: the
/// recorded padding is stripped, then redone, so the batch is built as the pipelines build it.
pub fn batch_of(
    input_ids: &Value,
    attention_mask: &Value,
    pad: i64,
) -> Result<trident_core::Batch> {
    let encodings = rows(input_ids)
        .into_iter()
        .zip(rows(attention_mask))
        .map(|(ids, mask)| {
            let n = mask.iter().filter(|&&m| m == 1).count().min(ids.len());
            trident_core::Encoded {
                ids: ids[..n].to_vec(),
                type_ids: vec![0; n],
                ..Default::default()
            }
        })
        .collect();
    trident_core::Batch::new(
        encodings,
        pad,
        trident_core::PaddingSide::Right,
        tch::Device::Cpu,
    )
}

/// A reference's left-padded `input_ids` and `attention_mask` as they were recorded (the
/// decoder-only fixtures' prompts).
pub fn left_padded_batch(v: &Value) -> Result<trident_core::Batch> {
    let input_ids = int_tensor(&v["input_ids"])?;
    Ok(trident_core::Batch {
        token_type_ids: input_ids.zeros_like(),
        attention_mask: int_tensor(&v["attention_mask"])?,
        input_ids,
        encodings: Vec::new(),
        padding_side: trident_core::PaddingSide::Left,
    })
}

/// The fixture directory `weights/<name>` (or `$TRIDENT_FIXTURES/<name>` when set).
pub fn fixture_dir(name: &str) -> PathBuf {
    let root = std::env::var_os("TRIDENT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../weights")));
    root.join(name)
}

/// `weights/<name>/reference.json`.
pub fn reference(name: &str) -> Result<Value> {
    let path = fixture_dir(name).join("reference.json");
    trident_core::config::read_json(&path)
}

/// A number from JSON, where the fixtures write filtered values as `"-inf"`.
pub fn number(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        Value::String(s) if s == "inf" => f64::INFINITY,
        other => other.as_f64().unwrap_or(f64::NAN),
    }
}

/// A `{"shape": [...], "data": [...]}` object as an f32 tensor.
pub fn tensor(v: &Value) -> Result<Tensor> {
    let shape: Vec<i64> = v["shape"]
        .as_array()
        .ok_or_else(|| Error::Input("fixture tensor without shape".into()))?
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    let data: Vec<f32> = v["data"]
        .as_array()
        .ok_or_else(|| Error::Input("fixture tensor without data".into()))?
        .iter()
        .map(|x| number(x) as f32)
        .collect();
    Ok(Tensor::f_from_slice(&data)?.f_reshape(shape)?)
}

/// A nested JSON list of integers (`[[1, 2], [3, 4]]`) as an int64 tensor.
pub fn int_tensor(v: &Value) -> Result<Tensor> {
    let rows: Vec<Vec<i64>> =
        serde_json::from_value(v.clone()).map_err(|e| Error::Input(e.to_string()))?;
    let width = rows.first().map_or(0, Vec::len) as i64;
    let flat: Vec<i64> = rows.concat();
    Ok(Tensor::f_from_slice(&flat)?.f_reshape([rows.len() as i64, width])?)
}

/// The largest absolute difference between two tensors of equal shape (infinities equal
/// when they match); panics with a message when the shapes differ.
pub fn max_abs_diff(actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(actual.size(), expected.size(), "shapes differ");
    let a = actual.to_kind(Kind::Double).to_device(tch::Device::Cpu);
    let e = expected.to_kind(Kind::Double).to_device(tch::Device::Cpu);
    let both_inf = a
        .isinf()
        .logical_and(&e.isinf())
        .logical_and(&a.eq_tensor(&e));
    let diff = (a - e).abs().masked_fill(&both_inf, 0.0);
    diff.max().double_value(&[])
}

/// Assert that two tensors agree to `tol`, naming `what` on failure.
pub fn assert_close(actual: &Tensor, expected: &Tensor, tol: f64, what: &str) {
    let d = max_abs_diff(actual, expected);
    assert!(d <= tol, "{what}: max abs difference {d:e} > {tol:e}");
}

/// Compare two JSON values: numbers to `tol`, everything else exactly. The error names the
/// first differing path.
pub fn json_close(actual: &Value, expected: &Value, tol: f64) -> std::result::Result<(), String> {
    fn walk(a: &Value, e: &Value, tol: f64, path: &str) -> std::result::Result<(), String> {
        match (a, e) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                if (x - y).abs() <= tol {
                    Ok(())
                } else {
                    Err(format!("{path}: {x} != {y} (tolerance {tol})"))
                }
            }
            (Value::Array(x), Value::Array(y)) => {
                if x.len() != y.len() {
                    return Err(format!(
                        "{path}: {} items != {} items\nactual:   {a}\nexpected: {e}",
                        x.len(),
                        y.len()
                    ));
                }
                x.iter()
                    .zip(y)
                    .enumerate()
                    .try_for_each(|(i, (x, y))| walk(x, y, tol, &format!("{path}[{i}]")))
            }
            (Value::Object(x), Value::Object(y)) => {
                let mut kx: Vec<&String> = x.keys().collect();
                let mut ky: Vec<&String> = y.keys().collect();
                kx.sort();
                ky.sort();
                if kx != ky {
                    return Err(format!("{path}: keys {kx:?} != {ky:?}"));
                }
                x.iter()
                    .try_for_each(|(k, v)| walk(v, &y[k], tol, &format!("{path}.{k}")))
            }
            _ if a == e => Ok(()),
            _ => Err(format!("{path}: {a} != {e}")),
        }
    }
    walk(actual, expected, tol, "$")
}

/// Plain attention without the fused kernel, for checking it: `softmax(q·kᵀ·scale + bias)·v`
/// on `[batch, heads, seq, head_dim]` tensors.
pub fn naive_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
) -> Tensor {
    let scores = q.matmul(&k.transpose(-2, -1)) * scale; // [batch, heads, q, k]
    let scores = match bias {
        Some(b) => scores + b,
        None => scores,
    };
    scores.softmax(-1, scores.kind()).matmul(v)
}
