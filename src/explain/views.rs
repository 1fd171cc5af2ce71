//! From what the model computed (tensors, encodings) to the views of an [`Explanation`]:
//! rounded maps, norms, token tables, and the one line on positions read from config.json.

use super::trace::StackTrace;
use super::{Candidate, EmbeddingView, InputView, StackView, StepView, TokenView};
use serde_json::Value;
use tch::{Kind, Tensor};
use trident_core::{Encoded, ModelFiles, Result, TextEncoder};

/// Dimensions of the position vectors drawn as a heat strip.
const STRIP_DIMS: i64 = 64;

/// 4 decimals: what a page shows, and a JSON of reasonable size.
fn round4(x: f32) -> f32 {
    (x * 1e4).round() / 1e4
}

/// `[rows, cols]` → rows of rounded values.
fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let rows = Vec::<Vec<f32>>::try_from(&t.f_to_kind(Kind::Float)?.f_contiguous()?)?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_iter().map(round4).collect())
        .collect())
}

/// `[n]` → rounded values.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    let v = Vec::<f32>::try_from(&t.f_to_kind(Kind::Float)?.f_contiguous()?)?;
    Ok(v.into_iter().map(round4).collect())
}

/// L2 norm of each row of `[n, hidden]`.
fn norms(t: &Tensor) -> Result<Vec<f32>> {
    values(&t.f_norm_scalaropt_dim(2.0, [-1i64], false)?)
}

/// `[heads, q, k]` per layer → `[layer][head][q][k]`.
fn maps(layers: &[Tensor]) -> Result<Vec<Vec<Vec<Vec<f32>>>>> {
    layers
        .iter()
        .map(|w| {
            (0..w.size()[0])
                .map(|h| rows(&w.f_select(0, h)?))
                .collect::<Result<Vec<_>>>()
        })
        .collect()
}

/// The view of one stack's trace; `tokens` label its rows, `source_tokens` the columns of its
/// cross-attention.
pub(crate) fn stack(
    name: &str,
    trace: &StackTrace,
    tokens: Vec<String>,
    source_tokens: Option<Vec<String>>,
    positions: (String, String),
) -> Result<StackView> {
    let residual_norms = trace
        .hidden_states
        .iter()
        .map(norms)
        .collect::<Result<Vec<_>>>()?;
    let layer_changes = trace
        .hidden_states
        .windows(2)
        .map(|w| norms(&w[1].f_sub(&w[0])?))
        .collect::<Result<Vec<_>>>()?;
    let position_strip = match &trace.position_embeddings {
        Some(p) => Some(rows(&p.f_narrow(1, 0, p.size()[1].min(STRIP_DIMS))?)?),
        None => None,
    };
    let (position_kind, position_note) = positions;
    Ok(StackView {
        name: name.to_string(),
        layers: trace.layers(),
        heads: trace.heads(),
        embeddings: EmbeddingView {
            token_norms: trace.token_embeddings.as_ref().map(norms).transpose()?,
            position_norms: trace.position_embeddings.as_ref().map(norms).transpose()?,
            position_strip,
            position_kind,
            position_note,
        },
        attention: maps(&trace.self_attention)?,
        cross_attention: match trace.cross_attention.is_empty() {
            true => None,
            false => Some(maps(&trace.cross_attention)?),
        },
        source_tokens,
        tokens,
        residual_norms,
        layer_changes,
    })
}

/// The tokenizer's view of `encoded`, which indexes `text`.
pub(crate) fn input(text: &str, encoded: &Encoded) -> InputView {
    InputView {
        text: text.to_string(),
        tokens: (0..encoded.len())
            .map(|i| TokenView {
                token: encoded.tokens.get(i).cloned().unwrap_or_default(),
                id: encoded.ids[i],
                start: encoded.offsets.get(i).map_or(0, |o| o.0),
                end: encoded.offsets.get(i).map_or(0, |o| o.1),
                special: encoded.special.get(i).copied().unwrap_or(false),
            })
            .collect(),
    }
}

/// `text` cut after the token that fills `max_tokens` with the special tokens, at that
/// token's end; whether it was cut.
pub(crate) fn cut(
    tokenizer: &TextEncoder,
    text: &str,
    max_tokens: usize,
) -> Result<(String, bool)> {
    let plain = tokenizer.encode_plain(text)?;
    let room = max_tokens
        .saturating_sub(tokenizer.num_special_tokens())
        .max(1);
    if plain.len() <= room {
        return Ok((text.to_string(), false));
    }
    let end = plain.offsets[room - 1].1;
    Ok((text.chars().take(end).collect(), true))
}

/// How `ids` read as text, one token at a time.
pub(crate) fn token_texts(tokenizer: &TextEncoder, ids: &[i64]) -> Vec<String> {
    ids.iter().map(|&id| token_text(tokenizer, id)).collect()
}

fn token_text(tokenizer: &TextEncoder, id: i64) -> String {
    match tokenizer.decode(&[id], false) {
        Ok(t) if !t.is_empty() => t,
        _ => format!("<{id}>"),
    }
}

/// A generation step from its logits `[vocab]`: the `k` most probable tokens and `chosen`.
pub(crate) fn step(
    tokenizer: &TextEncoder,
    logits: &Tensor,
    chosen: i64,
    k: usize,
) -> Result<StepView> {
    let probs = logits.f_to_kind(Kind::Float)?.f_softmax(-1, Kind::Float)?;
    let vocab = probs.size()[0];
    let (top, ids) = probs.f_topk((k as i64).min(vocab), -1, true, true)?;
    let top = Vec::<f32>::try_from(&top)?;
    let ids = Vec::<i64>::try_from(&ids)?;
    let p = |id: i64| -> Result<f32> {
        match id >= 0 && id < vocab {
            true => Ok(probs.f_double_value(&[id])? as f32),
            false => Ok(0.0),
        }
    };
    let chosen_p = p(chosen)?;
    let rank = 1 + probs
        .f_gt(f64::from(chosen_p))?
        .f_sum(Kind::Int64)?
        .f_int64_value(&[])? as usize;
    Ok(StepView {
        chosen: Candidate {
            token: token_text(tokenizer, chosen),
            id: chosen,
            probability: chosen_p,
        },
        rank,
        top: ids
            .into_iter()
            .zip(top)
            .map(|(id, probability)| Candidate {
                token: token_text(tokenizer, id),
                id,
                probability,
            })
            .collect(),
    })
}

/// config.json as JSON.
pub(crate) fn config(files: &ModelFiles) -> Result<Value> {
    trident_core::config::read_json(&files.get("config.json")?)
}

/// config.json's `model_type`.
pub(crate) fn model_type(config: &Value) -> String {
    config["model_type"].as_str().unwrap_or("").to_string()
}

/// How positions enter this model (`kind`, one sentence with the model's values), for its
/// encoder or its `decoder`.
pub(crate) fn positions(config: &Value, decoder: bool) -> (String, String) {
    let int = |k: &str| config[k].as_i64();
    let model_type = model_type(config);
    let learned = |table: Option<i64>, how: &str| {
        let table = table.map_or(String::new(), |n| format!(" (a table of {n})"));
        (
            "learned".to_string(),
            format!(
                "learned: a trained vector for each position{table}{how} is added to each token's \
                 vector before the first layer; the attention itself sees no positions"
            ),
        )
    };
    match model_type.as_str() {
        "bert" | "distilbert" => learned(int("max_position_embeddings"), ""),
        "roberta" | "xlm-roberta" | "camembert" => learned(
            int("max_position_embeddings"),
            &format!(
                ", counted from {} (after the padding id)",
                int("pad_token_id").unwrap_or(1) + 1
            ),
        ),
        "gpt2" => learned(int("n_positions"), ""),
        "bart" => learned(
            int("max_position_embeddings"),
            ", counted from 2 (as BART's table is offset)",
        ),
        "marian" => (
            "sinusoidal".into(),
            format!(
                "sinusoidal: a fixed vector of sin(p / 10000^(2i/{d})) in its first half and \
                 cos(p / 10000^(2i/{d})) in its second is added to each token's vector: nothing \
                 is learned, and near positions get similar vectors (the strip below)",
                d = int("d_model").unwrap_or(0)
            ),
        ),
        "m2m_100" | "nllb" => (
            "sinusoidal".into(),
            format!(
                "sinusoidal (fairseq): a fixed vector of sines then cosines of p / \
                 10000^(i/{h}), counting positions from {start}, is added to each token's vector: \
                 nothing is learned (the strip below)",
                h = int("d_model").unwrap_or(2) / 2 - 1,
                start = int("pad_token_id").unwrap_or(1) + 1
            ),
        ),
        "t5" | "mt5" | "umt5" => (
            "relative".into(),
            format!(
                "relative: no vector is added; each head adds a learned bias to its attention \
                 scores for the distance between query and key, in {} buckets (small distances \
                 exact, larger ones logarithmic up to {} tokens), {}",
                int("relative_attention_num_buckets").unwrap_or(32),
                int("relative_attention_max_distance").unwrap_or(128),
                match decoder {
                    true => "looking back only (the decoder)",
                    false => "in both directions (the encoder)",
                }
            ),
        ),
        "llama" | "mistral" | "qwen2" => {
            let rope = &config["rope_parameters"];
            let theta = config["rope_theta"]
                .as_f64()
                .or(rope["rope_theta"].as_f64())
                .unwrap_or(10000.0);
            let heads = int("num_attention_heads").unwrap_or(1).max(1);
            let head_dim = int("head_dim").unwrap_or(int("hidden_size").unwrap_or(0) / heads);
            let scaling = [&config["rope_scaling"], rope]
                .iter()
                .find_map(|s| {
                    let kind = s["rope_type"].as_str().or(s["type"].as_str())?;
                    (kind != "default").then(|| {
                        let factor = s["factor"]
                            .as_f64()
                            .map_or(String::new(), |f| format!(", factor {f}"));
                        format!(" ({kind} scaling{factor})")
                    })
                })
                .unwrap_or_default();
            (
                "rotary".into(),
                format!(
                    "rotary: no vector is added; before their dot product, queries and keys are \
                     turned pair by pair by the angle position × θ_i, θ_i = {theta}^(−2i/{head_dim}){scaling}, \
                     so a score depends on how far apart two tokens are"
                ),
            )
        }
        "bloom" => {
            let heads = int("n_head").or(int("num_attention_heads")).unwrap_or(1);
            let slopes = trident_core::nn::alibi_slopes(heads);
            let shown: Vec<String> = slopes.iter().take(4).map(|s| format!("{s:.4}")).collect();
            let more = if slopes.len() > 4 { ", …" } else { "" };
            (
                "alibi".into(),
                format!(
                    "ALiBi: no vector is added; head h subtracts slope_h × (distance to the key) \
                     from its scores, with slopes {}{more} for its {heads} heads, so far tokens \
                     count less",
                    shown.join(", ")
                ),
            )
        }
        other => (
            "unknown".into(),
            format!("positions of model_type '{other}' are not described here"),
        ),
    }
}
