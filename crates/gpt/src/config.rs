//! GPT-2's config.json (transformers' `GPT2Config`), with its defaults for absent fields.

use serde::Deserialize;
use std::path::Path;
use trident_core::config::{read_json, Activation, TokenIds};
use trident_core::{Error, Result};

fn default_vocab() -> i64 {
    50257
}
fn default_positions() -> i64 {
    1024
}
fn default_embd() -> i64 {
    768
}
fn default_layers() -> i64 {
    12
}
fn default_activation() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_special() -> Option<TokenIds> {
    Some(TokenIds::One(50256))
}
fn yes() -> bool {
    true
}

/// The fields of a GPT-2 config.json the model uses (gpt2, distilgpt2, gpt2-medium/large/xl).
#[derive(Debug, Clone, Deserialize)]
pub struct GPT2Config {
    /// `gpt2`.
    #[serde(default)]
    pub model_type: String,
    /// Vocabulary size (rows of `wte`).
    #[serde(default = "default_vocab")]
    pub vocab_size: i64,
    /// The context: number of learned positions (rows of `wpe`).
    #[serde(default = "default_positions")]
    pub n_positions: i64,
    /// Hidden size.
    #[serde(default = "default_embd")]
    pub n_embd: i64,
    /// Number of blocks.
    #[serde(default = "default_layers")]
    pub n_layer: i64,
    /// Attention heads per block.
    #[serde(default = "default_layers")]
    pub n_head: i64,
    /// Inner width of the MLP; `null` means `4 · n_embd`.
    #[serde(default)]
    pub n_inner: Option<i64>,
    /// The MLP's activation (`gelu_new` for every released GPT-2).
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Scale attention scores by `1/√head_dim` (true for every released GPT-2).
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    /// Also divide attention scores by `layer_index + 1` (a Mistral-style stability trick).
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Cross-attention blocks (GPT-2 as the decoder of an encoder-decoder); not supported.
    #[serde(default)]
    pub add_cross_attention: bool,
    /// Whether `lm_head` reuses `wte` (true for every released GPT-2).
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// Beginning-of-text id; an empty prompt starts from it.
    #[serde(default = "default_special")]
    pub bos_token_id: Option<TokenIds>,
    /// End-of-text id(s).
    #[serde(default = "default_special")]
    pub eos_token_id: Option<TokenIds>,
}

impl GPT2Config {
    /// Read and check config.json; a model that is not GPT-2 or asks for something not
    /// implemented is a clear error.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: GPT2Config = read_json(path)?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<()> {
        if self.model_type != "gpt2" {
            return Err(Error::Unsupported(format!(
                "{}: model_type '{}' is not GPT-2 (trident generate supports gpt2, distilgpt2 and \
                 gpt2-medium/large/xl checkpoints)",
                path.display(),
                self.model_type
            )));
        }
        if self.add_cross_attention {
            return Err(Error::Unsupported(format!(
                "{}: add_cross_attention (GPT-2 as an encoder-decoder's decoder) is not implemented",
                path.display()
            )));
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_inner", self.inner_size()),
        ];
        if let Some((name, value)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(Error::config(
                path,
                format!("{name} must be positive, got {value}"),
            ));
        }
        if self.n_embd % self.n_head != 0 {
            return Err(Error::config(
                path,
                format!(
                    "n_embd {} is not divisible by n_head {}",
                    self.n_embd, self.n_head
                ),
            ));
        }
        Activation::parse(&self.activation_function)?;
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.n_embd / self.n_head
    }

    /// Inner width of the MLP.
    pub fn inner_size(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// The MLP's activation.
    pub fn activation(&self) -> Result<Activation> {
        Activation::parse(&self.activation_function)
    }

    /// The multiplier on `Q·Kᵀ` in block `layer` (0-based).
    pub fn attention_scale(&self, layer: i64) -> f64 {
        let mut scale = if self.scale_attn_weights {
            1.0 / (self.head_dim() as f64).sqrt()
        } else {
            1.0
        };
        if self.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        scale
    }

    /// The beginning-of-text id (the first, when the config lists several).
    pub fn bos_id(&self) -> Option<i64> {
        self.bos_token_id
            .as_ref()
            .and_then(|t| t.to_vec().first().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<GPT2Config> {
        let c: GPT2Config =
            serde_json::from_str(json).map_err(|e| Error::config("config.json", e.to_string()))?;
        c.check(Path::new("config.json"))?;
        Ok(c)
    }

    #[test]
    fn absent_fields_take_gpt2_small_defaults() {
        let c = parse(r#"{"model_type": "gpt2"}"#).unwrap();
        assert_eq!((c.n_embd, c.n_layer, c.n_head), (768, 12, 12));
        assert_eq!(
            (c.n_positions, c.vocab_size, c.inner_size()),
            (1024, 50257, 3072)
        );
        assert_eq!(c.bos_id(), Some(50256));
        assert_eq!(c.activation().unwrap(), Activation::GeluTanh);
        assert!((c.attention_scale(3) - 0.125).abs() < 1e-12);
    }

    #[test]
    fn attention_scale_follows_the_two_flags() {
        let c = parse(
            r#"{"model_type": "gpt2", "n_embd": 64, "n_head": 4,
                "scale_attn_by_inverse_layer_idx": true}"#,
        )
        .unwrap();
        assert!((c.attention_scale(0) - 0.25).abs() < 1e-12);
        assert!((c.attention_scale(1) - 0.125).abs() < 1e-12);
        let c = parse(r#"{"model_type": "gpt2", "scale_attn_weights": false}"#).unwrap();
        assert_eq!(c.attention_scale(5), 1.0);
    }

    #[test]
    fn unusable_configs_are_named_errors() {
        let err = |json| parse(json).unwrap_err().to_string();
        assert!(err(r#"{"model_type": "bert"}"#).contains("not GPT-2"));
        assert!(err(r#"{"model_type": "gpt2", "n_embd": 10, "n_head": 3}"#).contains("divisible"));
        assert!(err(r#"{"model_type": "gpt2", "n_layer": 0}"#).contains("n_layer"));
        assert!(err(r#"{"model_type": "gpt2", "activation_function": "mish"}"#).contains("mish"));
        assert!(
            err(r#"{"model_type": "gpt2", "add_cross_attention": true}"#)
                .contains("add_cross_attention")
        );
    }
}
