//! config.json of `LlamaForCausalLM` and of the two variants built from the same code,
//! `MistralForCausalLM` and `Qwen2ForCausalLM` ([`Family`], from `model_type`).
//!
//! What a variant changes is read here, in one place: which projections carry biases
//! ([`LlamaConfig::qkv_bias`], [`LlamaConfig::o_proj_bias`], [`LlamaConfig::mlp_has_bias`])
//! and which layers attend through a sliding window ([`LlamaConfig::layer_windows`]). The
//! blocks themselves are the same for all three.

use serde::Deserialize;
use std::path::Path;
use trident_core::config::{read_json, Activation};
use trident_core::nn::Rotary;
use trident_core::{Error, Result};

/// The architectures this crate loads, by config.json's `model_type`.
pub const MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2"];

/// Which member of the Llama family a checkpoint is (config.json's `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// `llama` (Llama 2/3, SmolLM2, TinyLlama): biases only where `attention_bias` /
    /// `mlp_bias` say, full causal attention.
    #[default]
    Llama,
    /// `mistral`: no biases; every layer attends through `sliding_window` when it is set.
    Mistral,
    /// `qwen2` (Qwen2, Qwen2.5): biases on q/k/v (not on o_proj or the feed-forward); a
    /// sliding window only with `use_sliding_window`, on the layers from `max_window_layers`
    /// on (or where `layer_types` says `sliding_attention`).
    Qwen2,
}

impl Family {
    /// The family of a `model_type`.
    pub fn from_model_type(model_type: &str) -> Result<Self> {
        match model_type {
            "llama" => Ok(Family::Llama),
            "mistral" => Ok(Family::Mistral),
            "qwen2" => Ok(Family::Qwen2),
            other => Err(Error::Unsupported(format!(
                "model_type '{other}' is not a Llama-family model (trident-llama loads {})",
                MODEL_TYPES.join(", ")
            ))),
        }
    }
}

/// The keys of transformers' `LlamaConfig`, `MistralConfig` and `Qwen2Config` the model reads.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2` (absent: `llama`).
    #[serde(default = "default_model_type")]
    pub model_type: String,
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
    /// Llama: biases on q/k/v/o (Mistral and Qwen2 ignore it: see [`LlamaConfig::qkv_bias`]).
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama: biases on the feed-forward projections (Mistral and Qwen2 have none).
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral, Qwen2: how many keys (the query's own included) a windowed layer sees;
    /// `null` for none.
    #[serde(default)]
    pub sliding_window: Option<i64>,
    /// Qwen2: whether `sliding_window` applies at all (false in the published checkpoints,
    /// which still write a `sliding_window`).
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Qwen2: the layers below this index attend fully even with `use_sliding_window`
    /// (transformers' default 28).
    #[serde(default)]
    pub max_window_layers: Option<i64>,
    /// Qwen2 as transformers 5 writes it: `full_attention` or `sliding_attention` per layer.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
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
    /// The family `model_type` names (set by [`LlamaConfig::from_file`] and
    /// [`LlamaConfig::from_value`]).
    #[serde(skip)]
    pub family: Family,
}

fn default_model_type() -> String {
    "llama".into()
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
        Self::parse(read_json(path)?, path)
    }

    /// Check an already parsed config.json (errors name it `config.json`).
    pub fn from_value(raw: serde_json::Value) -> Result<Self> {
        Self::parse(raw, Path::new("config.json"))
    }

    fn parse(raw: serde_json::Value, path: &Path) -> Result<Self> {
        let mut c: LlamaConfig =
            serde_json::from_value(raw.clone()).map_err(|e| Error::config(path, e.to_string()))?;
        c.raw = raw;
        c.family = Family::from_model_type(&c.model_type)
            .map_err(|e| Error::config(path, e.to_string()))?;
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
        c.layer_windows().map_err(|e| match e {
            Error::Config { message, .. } => Error::config(path, message),
            other => other,
        })?;
        Ok(c)
    }

    /// Whether q_proj, k_proj and v_proj have biases: Qwen2 always, Mistral never, Llama
    /// when `attention_bias` is set.
    pub fn qkv_bias(&self) -> bool {
        match self.family {
            Family::Llama => self.attention_bias,
            Family::Mistral => false,
            Family::Qwen2 => true,
        }
    }

    /// Whether o_proj has a bias: Llama when `attention_bias` is set, never otherwise.
    pub fn o_proj_bias(&self) -> bool {
        self.family == Family::Llama && self.attention_bias
    }

    /// Whether the feed-forward projections have biases: Llama when `mlp_bias` is set.
    pub fn mlp_has_bias(&self) -> bool {
        self.family == Family::Llama && self.mlp_bias
    }

    /// The key window of each layer (`None`: full causal attention), as transformers
    /// decides it: Llama never has one; Mistral puts `sliding_window` (when not null) on every
    /// layer; Qwen2 only with `use_sliding_window`, on the layers `layer_types` marks
    /// `sliding_attention` or, without `layer_types`, from `max_window_layers` on.
    pub fn layer_windows(&self) -> Result<Vec<Option<i64>>> {
        let n = self.num_hidden_layers.max(0) as usize;
        let window = match self.family {
            Family::Llama => None,
            Family::Mistral => self.sliding_window,
            Family::Qwen2 => self.sliding_window.filter(|_| self.use_sliding_window),
        };
        if let Some(w) = window.filter(|&w| w < 1) {
            return Err(Error::config(
                Path::new("config.json"),
                format!("sliding_window = {w}: it must be at least 1"),
            ));
        }
        if self.family != Family::Qwen2 {
            return Ok(vec![window; n]);
        }
        match &self.layer_types {
            Some(types) => {
                if types.len() != n {
                    return Err(Error::config(
                        Path::new("config.json"),
                        format!(
                            "layer_types lists {} layers, num_hidden_layers is {n}",
                            types.len()
                        ),
                    ));
                }
                types
                    .iter()
                    .map(|t| match (t.as_str(), window) {
                        ("full_attention", _) => Ok(None),
                        ("sliding_attention", Some(w)) => Ok(Some(w)),
                        ("sliding_attention", None) => Err(Error::config(
                            Path::new("config.json"),
                            "layer_types has a sliding_attention layer, but there is no \
                             sliding_window (or use_sliding_window is false)",
                        )),
                        (other, _) => Err(Error::config(
                            Path::new("config.json"),
                            format!(
                                "layer type '{other}' (supported: full_attention, sliding_attention)"
                            ),
                        )),
                    })
                    .collect()
            }
            None => {
                let first = self.max_window_layers.unwrap_or(28).max(0) as usize;
                Ok((0..n).map(|i| window.filter(|_| i >= first)).collect())
            }
        }
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
