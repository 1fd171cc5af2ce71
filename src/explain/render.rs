//! An [`Explanation`] as one self-contained HTML page (inline CSS and JavaScript, the data
//! embedded as JSON, nothing fetched) or as a plain-terminal summary. The JSON format is the
//! explanation serialized as it is; the page embeds the same JSON except for the attention
//! maps, which it packs (see [`pack_maps`]) so that a 512-token text stays a page a browser
//! opens in seconds.

use super::{Explanation, Output, StackView};
use serde_json::{json, Value};
use std::fmt::Write;
use trident_core::{Error, Result};

/// The page: a template with a small vanilla-JavaScript renderer that draws the maps on
/// canvases from the embedded data.
const PAGE: &str = include_str!("page.html");

/// The explanation as one HTML page that needs no network to view.
pub fn html(explanation: &Explanation) -> Result<String> {
    let data = serde_json::to_string(&page_data(explanation)?)
        .map_err(|e| Error::Input(format!("cannot serialize the explanation: {e}")))?
        // Inside <script>, "</" could end the element early.
        .replace("</", "<\\/");
    let title = format!(
        "trident explain · {} · {}",
        explanation.task, explanation.model
    );
    Ok(PAGE
        .replace("{{TITLE}}", &escape(&title))
        .replace("{{DATA}}", &data))
}

/// The explanation as the page embeds it: the JSON format's data with each stack's
/// `attention` and `cross_attention` packed by [`pack_maps`].
fn page_data(e: &Explanation) -> Result<Value> {
    let mut stacks = Vec::with_capacity(e.stacks.len());
    for s in &e.stacks {
        // Everything but the maps (a struct literal: a field added to StackView must be
        // placed here).
        let light = StackView {
            name: s.name.clone(),
            tokens: s.tokens.clone(),
            layers: s.layers,
            heads: s.heads,
            embeddings: s.embeddings.clone(),
            attention: Vec::new(),
            cross_attention: None,
            source_tokens: s.source_tokens.clone(),
            residual_norms: s.residual_norms.clone(),
            layer_changes: s.layer_changes.clone(),
        };
        let mut v = to_value(&light)?;
        v["attention"] = pack_maps(&s.attention);
        if let Some(c) = &s.cross_attention {
            v["cross_attention"] = pack_maps(c);
        }
        stacks.push(v);
    }
    let mut v = to_value(&Explanation {
        trident_explain: e.trident_explain,
        task: e.task.clone(),
        model: e.model.clone(),
        model_type: e.model_type.clone(),
        text: e.text.clone(),
        truncated: e.truncated,
        input: e.input.clone(),
        stacks: Vec::new(),
        output: e.output.clone(),
    })?;
    v["stacks"] = Value::Array(stacks);
    Ok(v)
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v)
        .map_err(|e| Error::Input(format!("cannot serialize the explanation: {e}")))
}

/// Attention maps `[layer][head][query][key]` as the page embeds them: each map (one layer,
/// one head) scaled by its largest weight to 8 bits (`round(w / max × 255)`), the bytes
/// row by row in one base64 string, so a weight reads back as `byte / 255 × max`, within
/// `max / 510` of the JSON format's value; the page decodes a map only when it is shown.
/// `{"encoding": "u8-base64", "max": [layer][head], "maps": [layer][head]}`.
pub fn pack_maps(maps: &[Vec<Vec<Vec<f32>>>]) -> Value {
    let mut max = Vec::with_capacity(maps.len());
    let mut packed = Vec::with_capacity(maps.len());
    for layer in maps {
        let (mut ms, mut ps) = (Vec::new(), Vec::new());
        for head in layer {
            let m = head
                .iter()
                .flatten()
                .fold(0f32, |a, &w| if w.is_finite() { a.max(w) } else { a });
            let bytes: Vec<u8> = head
                .iter()
                .flatten()
                .map(|&w| match m > 0.0 && w.is_finite() {
                    true => (w.clamp(0.0, m) / m * 255.0).round() as u8,
                    false => 0,
                })
                .collect();
            ms.push(m);
            ps.push(base64(&bytes));
        }
        max.push(ms);
        packed.push(ps);
    }
    json!({ "encoding": "u8-base64", "max": max, "maps": packed })
}

/// Standard base64 with padding (what the page's `atob` reads).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(match i <= chunk.len() {
                true => ABC[(n >> shift & 63) as usize] as char,
                false => '=',
            });
        }
    }
    out
}

/// Text for HTML element content.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The explanation as plain text: the token table, the stacks, and the output (the top-k
/// candidates of each generation step).
pub fn text(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trident explain · {} · {} ({})",
        e.task, e.model, e.model_type
    );
    let cut = if e.truncated {
        " (cut to --max-tokens)"
    } else {
        ""
    };
    let _ = writeln!(out, "text{cut}: {:?}", e.text);
    let _ = writeln!(out, "\ntokens ({}):", e.input.tokens.len());
    let _ = writeln!(out, "{:>4}  {:<20} {:>8}  span", "#", "token", "id");
    for (i, t) in e.input.tokens.iter().enumerate() {
        let span = match t.special {
            true => "special".to_string(),
            false => format!("{}..{}", t.start, t.end),
        };
        let _ = writeln!(out, "{i:>4}  {:<20} {:>8}  {span}", t.token, t.id);
    }
    for s in &e.stacks {
        let _ = writeln!(
            out,
            "\n{}: {} tokens, {} layers × {} heads{}",
            s.name,
            s.tokens.len(),
            s.layers,
            s.heads,
            if s.cross_attention.is_some() {
                ", with cross-attention to the source"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "  positions: {}", s.embeddings.position_note);
        if let (Some(first), Some(last)) = (s.residual_norms.first(), s.residual_norms.last()) {
            let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
            let _ = writeln!(
                out,
                "  mean vector length: {:.3} after the embeddings, {:.3} after the last layer",
                mean(first),
                mean(last)
            );
        }
    }
    let _ = writeln!(out);
    match &e.output {
        Output::Classification { function, labels } => {
            let _ = writeln!(out, "labels ({function}):");
            for l in labels {
                let _ = writeln!(out, "  {:<24} {:.4}", l.label, l.score);
            }
        }
        Output::Ner {
            predicted,
            aggregation,
            entities,
            ..
        } => {
            let _ = writeln!(out, "per-token labels:");
            for (t, label) in e.input.tokens.iter().zip(predicted) {
                let _ = writeln!(out, "  {:<20} {label}", t.token);
            }
            let _ = writeln!(out, "entities (aggregation {aggregation}):");
            for en in entities {
                let _ = writeln!(
                    out,
                    "  {:<10} {:.4}  {:?} [{}..{}] tokens {:?}",
                    en.label, en.score, en.word, en.start, en.end, en.tokens
                );
            }
        }
        Output::Embedding {
            pooling,
            normalized,
            vector,
        } => {
            let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            let _ = writeln!(
                out,
                "embedding: {} dimensions, {pooling} pooling{}, length {norm:.4}",
                vector.len(),
                if *normalized { ", normalized" } else { "" }
            );
        }
        Output::Generation {
            search,
            text,
            steps,
        } => {
            let _ = writeln!(out, "generated ({search}): {text:?}");
            for (i, s) in steps.iter().enumerate() {
                let top: Vec<String> = s
                    .top
                    .iter()
                    .map(|c| format!("{:?} {:.3}", c.token, c.probability))
                    .collect();
                let _ = writeln!(
                    out,
                    "  step {:>3}: {:?} ({:.3}, rank {})  top: {}",
                    i + 1,
                    s.chosen.token,
                    s.chosen.probability,
                    s.rank,
                    top.join(", ")
                );
            }
        }
    }
    out
}
