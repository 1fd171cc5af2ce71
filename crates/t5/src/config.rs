//! T5's config.json: sizes, the feed-forward flavour, and the special token ids.

use serde::Deserialize;
use std::path::Path;
use trident_core::config::{read_json, Activation, TokenIds};
use trident_core::{Error, Result};

fn default_buckets() -> i64 {
    32
}
fn default_max_distance() -> i64 {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> String {
    "relu".into()
}
fn yes() -> bool {
    true
}

/// The fields of a T5 config.json that the model uses (transformers' `T5Config`).
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    /// `t5` or `mt5` (same architecture).
    #[serde(default)]
    pub model_type: String,
    /// Vocabulary size (rows of `shared`).
    pub vocab_size: i64,
    /// Hidden size.
    pub d_model: i64,
    /// Width of each attention head (`num_heads · d_kv` need not equal `d_model`).
    pub d_kv: i64,
    /// Inner width of the feed-forward network.
    pub d_ff: i64,
    /// Encoder blocks.
    pub num_layers: i64,
    /// Decoder blocks (defaults to `num_layers`; may be deeper).
    #[serde(default)]
    pub num_decoder_layers: Option<i64>,
    /// Attention heads.
    pub num_heads: i64,
    /// Buckets of the relative position bias.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: i64,
    /// Distance from which all positions share the last bucket.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: i64,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu` (v1.0), `gated-gelu` (v1.1, flan-t5), or `[gated-]<activation>`.
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
    /// Whether `lm_head` reuses `shared` (v1.0) — and then the decoder output is rescaled.
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// Whether the decoder output is rescaled by `d_model^-0.5` before `lm_head`
    /// (transformers 5 writes it; older configs imply it from `tie_word_embeddings`).
    #[serde(default)]
    pub scale_decoder_outputs: Option<bool>,
    /// Padding id.
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    /// End-of-sequence id(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// First decoder input.
    #[serde(default)]
    pub decoder_start_token_id: Option<i64>,
}

impl T5Config {
    /// Read and check config.json.
    pub fn from_file(path: &Path) -> Result<Self> {
        // The model type first: another family's config lacks T5's fields, and "missing field
        // `d_model`" would not say what is wrong.
        let common: trident_core::config::CommonConfig = read_json(path)?;
        if !matches!(common.model_type.as_str(), "t5" | "mt5") {
            return Err(Error::Unsupported(format!(
                "{}: model_type '{}' is not an encoder-decoder Trident supports: summarize and \
                 translate need a T5 checkpoint (t5-small, t5-base, google/flan-t5-*, \
                 google/mt5-*)",
                path.display(),
                common.model_type
            )));
        }
        let config: T5Config = read_json(path)?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<()> {
        if !matches!(self.model_type.as_str(), "t5" | "mt5") {
            return Err(Error::config(
                path,
                format!(
                    "model_type '{}' is not T5: summarize and translate need a T5 checkpoint \
                     (t5-small, t5-base, google/flan-t5-*, google/mt5-*)",
                    self.model_type
                ),
            ));
        }
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
        ];
        if let Some((name, v)) = sizes.iter().find(|(_, v)| *v <= 0) {
            return Err(Error::config(
                path,
                format!("{name} must be positive, got {v}"),
            ));
        }
        self.feed_forward(path)?;
        Ok(())
    }

    /// Decoder depth.
    pub fn decoder_layers(&self) -> i64 {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// The feed-forward activation and whether it is gated (`wi_0`, `wi_1`).
    pub fn feed_forward(&self, path: &Path) -> Result<(Activation, bool)> {
        let spec = self.feed_forward_proj.as_str();
        let (gated, name) = match spec.strip_prefix("gated-") {
            Some(rest) => (true, rest),
            None => (false, spec),
        };
        // transformers maps "gated-gelu" to the tanh approximation, for compatibility with
        // the original v1.1 checkpoints.
        let name = if spec == "gated-gelu" {
            "gelu_new"
        } else {
            name
        };
        let activation = Activation::parse(name)
            .map_err(|e| Error::config(path, format!("feed_forward_proj '{spec}': {e}")))?;
        Ok((activation, gated))
    }

    /// Whether the decoder output is rescaled before `lm_head`.
    pub fn rescales_decoder_output(&self) -> bool {
        self.scale_decoder_outputs
            .unwrap_or(self.tie_word_embeddings)
    }

    /// The id the decoder starts from (the pad id when the config does not say).
    pub fn decoder_start(&self) -> i64 {
        self.decoder_start_token_id
            .or(self.pad_token_id)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_forward_flavours_parse_and_bad_ones_are_named() {
        let mut c: T5Config = serde_json::from_str(
            r#"{"model_type": "t5", "vocab_size": 10, "d_model": 4, "d_kv": 2, "d_ff": 8,
                "num_layers": 1, "num_heads": 2}"#,
        )
        .unwrap();
        let p = Path::new("config.json");
        assert_eq!(c.feed_forward(p).unwrap(), (Activation::Relu, false));
        assert!(c.tie_word_embeddings);
        assert_eq!(c.decoder_layers(), 1);
        c.feed_forward_proj = "gated-gelu".into();
        assert_eq!(c.feed_forward(p).unwrap(), (Activation::GeluTanh, true));
        c.feed_forward_proj = "gated-silu".into();
        assert_eq!(c.feed_forward(p).unwrap(), (Activation::Silu, true));
        c.feed_forward_proj = "gated-mish".into();
        let err = c.check(p).unwrap_err().to_string();
        assert!(err.contains("gated-mish"), "{err}");
        c.feed_forward_proj = "relu".into();
        c.model_type = "bert".into();
        assert!(c.check(p).unwrap_err().to_string().contains("not T5"));
    }
}
