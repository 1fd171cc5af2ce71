//! config.json of `BloomForCausalLM` (transformers' `BloomConfig`).
//!
//! Published checkpoints spell three sizes two ways: `hidden_size` or `n_embed` (bigscience/bloom),
//! `n_layer` or `num_hidden_layers`, `n_head` or `num_attention_heads`. Both are read; when a
//! file has both, transformers' own field (`hidden_size`, `n_layer`, `n_head`) wins.

use serde::Deserialize;
use std::path::Path;
use trident_core::config::read_json;
use trident_core::{Error, Result};

/// The keys of config.json as stored, before the spellings are merged.
#[derive(Debug, Deserialize)]
struct Stored {
    #[serde(default)]
    vocab_size: Option<i64>,
    #[serde(default)]
    hidden_size: Option<i64>,
    #[serde(default)]
    n_embed: Option<i64>,
    #[serde(default)]
    n_layer: Option<i64>,
    #[serde(default)]
    num_hidden_layers: Option<i64>,
    #[serde(default)]
    n_head: Option<i64>,
    #[serde(default)]
    num_attention_heads: Option<i64>,
    #[serde(default)]
    layer_norm_epsilon: Option<f64>,
    #[serde(default)]
    apply_residual_connection_post_layernorm: bool,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    bos_token_id: Option<i64>,
    #[serde(default)]
    seq_length: Option<i64>,
}

/// The configuration the model reads, with transformers' defaults for absent keys.
#[derive(Debug, Clone, PartialEq)]
pub struct BloomConfig {
    /// Token embeddings (rows of `word_embeddings`; default 250 880).
    pub vocab_size: i64,
    /// Width of the residual stream (`hidden_size` or `n_embed`; default 64).
    pub hidden_size: i64,
    /// Blocks `h.{i}` (`n_layer` or `num_hidden_layers`; default 2).
    pub n_layer: i64,
    /// Attention heads (`n_head` or `num_attention_heads`; default 8), each with its ALiBi slope.
    pub n_head: i64,
    /// Epsilon of every LayerNorm (default 1e-5).
    pub layer_norm_epsilon: f64,
    /// Whether each block's residuals are the normalised inputs (`norm(x) + f(norm(x))`)
    /// rather than the inputs (`x + f(norm(x))`, the default and every published BLOOM).
    pub apply_residual_connection_post_layernorm: bool,
    /// Whether the head is `word_embeddings` itself (default true, as every BLOOM).
    pub tie_word_embeddings: bool,
    /// The token an empty prompt starts from (default 1, `<s>`).
    pub bos_token_id: Option<i64>,
    /// The training context (`seq_length`, 2048 for bigscience's models). ALiBi has no position
    /// table, so this limits nothing in the model; pipelines use it as the context.
    pub seq_length: i64,
}

impl BloomConfig {
    /// Read and check config.json.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: serde_json::Value = read_json(path)?;
        Self::from_value(raw).map_err(|e| Error::config(path, e))
    }

    /// Parse and check a config.json value; the error says what is wrong.
    pub fn from_value(raw: serde_json::Value) -> std::result::Result<Self, String> {
        let s: Stored = serde_json::from_value(raw).map_err(|e| e.to_string())?;
        let c = BloomConfig {
            vocab_size: s.vocab_size.unwrap_or(250_880),
            hidden_size: s.hidden_size.or(s.n_embed).unwrap_or(64),
            n_layer: s.n_layer.or(s.num_hidden_layers).unwrap_or(2),
            n_head: s.n_head.or(s.num_attention_heads).unwrap_or(8),
            layer_norm_epsilon: s.layer_norm_epsilon.unwrap_or(1e-5),
            apply_residual_connection_post_layernorm: s.apply_residual_connection_post_layernorm,
            tie_word_embeddings: s.tie_word_embeddings.unwrap_or(true),
            bos_token_id: s.bos_token_id.or(Some(1)),
            seq_length: s.seq_length.unwrap_or(2048),
        };
        if c.vocab_size <= 0 || c.hidden_size <= 0 || c.n_layer < 0 || c.n_head <= 0 {
            return Err(format!(
                "vocab_size ({}), hidden_size ({}) and n_head ({}) must be positive, n_layer ({}) \
                 not negative",
                c.vocab_size, c.hidden_size, c.n_head, c.n_layer
            ));
        }
        if c.hidden_size % c.n_head != 0 {
            return Err(format!(
                "hidden_size = {} is not a multiple of n_head = {}",
                c.hidden_size, c.n_head
            ));
        }
        if c.seq_length <= 0 {
            return Err(format!("seq_length = {} must be positive", c.seq_length));
        }
        Ok(c)
    }

    /// Width of a head.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.n_head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_spellings_of_the_sizes_are_read() {
        // bigscience/bloom writes n_embed and num_attention_heads; transformers 5 writes
        // hidden_size, n_layer and n_head.
        let published = BloomConfig::from_value(json!({
            "n_embed": 14336, "n_layer": 70, "num_attention_heads": 112, "vocab_size": 250880
        }))
        .unwrap();
        assert_eq!(
            (published.hidden_size, published.n_layer, published.n_head),
            (14336, 70, 112)
        );
        assert_eq!(published.head_dim(), 128);
        let written = BloomConfig::from_value(json!({
            "hidden_size": 48, "num_hidden_layers": 3, "n_head": 6, "vocab_size": 10
        }))
        .unwrap();
        assert_eq!(
            (written.hidden_size, written.n_layer, written.n_head),
            (48, 3, 6)
        );
        assert!(written.tie_word_embeddings && !written.apply_residual_connection_post_layernorm);
        assert_eq!((written.bos_token_id, written.seq_length), (Some(1), 2048));
    }

    #[test]
    fn heads_that_do_not_divide_the_width_are_refused() {
        let e = BloomConfig::from_value(json!({"hidden_size": 32, "n_head": 6})).unwrap_err();
        assert!(e.contains("not a multiple of n_head"), "{e}");
        let e = BloomConfig::from_value(json!({"n_head": 0})).unwrap_err();
        assert!(e.contains("must be positive"), "{e}");
    }
}
