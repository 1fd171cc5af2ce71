//! An [`Explanation`] as one self-contained HTML page (inline CSS and JavaScript, the data
//! embedded as JSON, nothing fetched) or as a plain-terminal summary. The JSON format is the
//! explanation serialized as it is.

use super::{Explanation, Output};
use std::fmt::Write;
use trident_core::{Error, Result};

/// The page: a template with a small vanilla-JavaScript renderer that draws the maps on
/// canvases from the embedded data.
const PAGE: &str = include_str!("page.html");

/// The explanation as one HTML page that needs no network to view.
pub fn html(explanation: &Explanation) -> Result<String> {
    let data = serde_json::to_string(explanation)
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
