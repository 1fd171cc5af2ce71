//! config.json of `LlamaForCausalLM`.

use serde::Deserialize;
use std::path::Path;
use trident_core::config::{read_json, Activation};
use trident_core::nn::Rotary;
use trident_core::{Error, Result};

/// The keys of transformers' `LlamaConfig` the model reads.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    /// Token embeddings.
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the SwiGLU feed-forward.
    pub intermediate_size: i64,
    /// Decoder blocks.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention); default: as many as query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// Width of a head; default `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<i64>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Positions the model was trained on.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
    /// Whether the head is the token embedding (Llama 3.2, SmolLM2).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o (Qwen2 has them on q/k/v).
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the feed-forward projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// The token an empty prompt starts from.
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    /// The feed-forward activation (`silu`).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// The whole file, for the rotary settings (`rope_theta` + `rope_scaling`, or
    /// `rope_parameters`).
    #[serde(skip)]
    pub raw: serde_json::Value,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_positions() -> i64 {
    2048
}
fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    /// Read and check config.json.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: serde_json::Value = read_json(path)?;
        let mut c: LlamaConfig =
            serde_json::from_value(raw.clone()).map_err(|e| Error::config(path, e.to_string()))?;
        c.raw = raw;
        if c.num_attention_heads <= 0 || c.hidden_size <= 0 || c.vocab_size <= 0 {
            return Err(Error::config(
                path,
                "hidden_size, num_attention_heads and vocab_size must be positive",
            ));
        }
        let kv = c.kv_heads();
        if kv <= 0 || c.num_attention_heads % kv != 0 {
            return Err(Error::config(
                path,
                format!(
                    "num_key_value_heads = {kv} must divide num_attention_heads = {}",
                    c.num_attention_heads
                ),
            ));
        }
        c.activation()
            .map_err(|e| Error::config(path, e.to_string()))?;
        c.rotary().map_err(|e| Error::config(path, e.to_string()))?;
        Ok(c)
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of a head.
    pub fn head_width(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// The feed-forward activation.
    pub fn activation(&self) -> Result<Activation> {
        Activation::parse(&self.hidden_act)
    }

    /// The rotary settings.
    pub fn rotary(&self) -> Result<Rotary> {
        Rotary::from_config(&self.raw, self.head_width())
    }
}
