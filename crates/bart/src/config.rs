//! config.json of BART and of the families built on its code (Marian, M2M100/NLLB): the three
//! configuration classes of transformers spell these keys the same way, so one reader serves
//! them; each family's crate says which of its quirks apply ([`crate::Layout`]).

use serde::Deserialize;
use std::path::Path;
use trident_core::config::read_json;
use trident_core::config::Activation;
use trident_core::{Error, Result};

/// The keys of `BartConfig`, `MarianConfig` and `M2M100Config` that the model reads.
#[derive(Debug, Clone, Deserialize)]
pub struct BartConfig {
    /// `model_type`: `bart`, `marian`, `m2m_100`, …
    #[serde(default)]
    pub model_type: String,
    /// Token embeddings (the encoder's, and the decoder's when shared).
    pub vocab_size: i64,
    /// Marian with separate vocabularies: the decoder's (default `vocab_size`).
    #[serde(default)]
    pub decoder_vocab_size: Option<i64>,
    /// Width of every hidden state.
    pub d_model: i64,
    /// Encoder blocks.
    pub encoder_layers: i64,
    /// Decoder blocks.
    pub decoder_layers: i64,
    /// Encoder attention heads.
    pub encoder_attention_heads: i64,
    /// Decoder attention heads.
    pub decoder_attention_heads: i64,
    /// Encoder feed-forward width.
    pub encoder_ffn_dim: i64,
    /// Decoder feed-forward width.
    pub decoder_ffn_dim: i64,
    /// Feed-forward non-linearity (`gelu` for BART, `swish` for OPUS-MT, `relu` for M2M100).
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Positions the model was trained on (BART's learned table has 2 more rows).
    pub max_position_embeddings: i64,
    /// Multiply token embeddings by √d_model.
    #[serde(default)]
    pub scale_embedding: bool,
    /// Padding id (also the position padding index of M2M100's sinusoids).
    #[serde(default = "default_pad")]
    pub pad_token_id: i64,
    /// End-of-sequence id.
    #[serde(default = "default_eos")]
    pub eos_token_id: i64,
    /// The id every output starts with.
    #[serde(default)]
    pub decoder_start_token_id: Option<i64>,
    /// Whether the decoder's token embedding is the encoder's (Marian; default true).
    #[serde(default = "default_true")]
    pub share_encoder_decoder_embeddings: bool,
    /// Whether the head is the decoder's token embedding (default true).
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

fn default_activation() -> String {
    "gelu".into()
}
fn default_pad() -> i64 {
    1
}
fn default_eos() -> i64 {
    2
}
fn default_true() -> bool {
    true
}

/// nn.LayerNorm's default epsilon, which all three families use.
pub const LAYER_NORM_EPS: f64 = 1e-5;

impl BartConfig {
    /// Read and check config.json.
    pub fn from_file(path: &Path) -> Result<Self> {
        let c: BartConfig = read_json(path)?;
        let heads = [
            ("encoder_attention_heads", c.encoder_attention_heads),
            ("decoder_attention_heads", c.decoder_attention_heads),
        ];
        for (name, h) in heads {
            if h <= 0 || c.d_model % h != 0 {
                return Err(Error::config(
                    path,
                    format!("d_model = {} is not divisible by {name} = {h}", c.d_model),
                ));
            }
        }
        if c.vocab_size <= 0 || c.d_model <= 0 || c.max_position_embeddings <= 0 {
            return Err(Error::config(
                path,
                "vocab_size, d_model and max_position_embeddings must be positive",
            ));
        }
        c.activation()
            .map_err(|e| Error::config(path, e.to_string()))?;
        Ok(c)
    }

    /// The feed-forward activation.
    pub fn activation(&self) -> Result<Activation> {
        Activation::parse(&self.activation_function)
    }

    /// The decoder's vocabulary size.
    pub fn target_vocab_size(&self) -> i64 {
        self.decoder_vocab_size.unwrap_or(self.vocab_size)
    }

    /// √d_model when `scale_embedding`, else 1.
    pub fn embed_scale(&self) -> f64 {
        if self.scale_embedding {
            (self.d_model as f64).sqrt()
        } else {
            1.0
        }
    }

    /// The decoder start id (BART-CNN: `</s>`; Marian: the pad token), EOS when unset.
    pub fn decoder_start(&self) -> i64 {
        self.decoder_start_token_id.unwrap_or(self.eos_token_id)
    }
}
