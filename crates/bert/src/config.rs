//! config.json of BERT, DistilBERT and RoBERTa, read into one shape.

use serde::Deserialize;
use std::path::Path;
use trident_core::config::{read_json, Activation, CommonConfig};
use trident_core::{Error, Result};

/// Which member of the BERT family a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// BERT (`bert`).
    Bert,
    /// DistilBERT (`distilbert`): no token types, fewer layers, different weight names.
    DistilBert,
    /// RoBERTa and its relatives (`roberta`, `xlm-roberta`, `camembert`): BERT's architecture
    /// with positions counted from `pad_token_id + 1`.
    Roberta,
}

impl Family {
    /// The prefix of the base model's weights in task checkpoints.
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::DistilBert => "distilbert",
            Family::Roberta => "roberta",
        }
    }
}

/// The encoder's hyper-parameters, whatever the family calls them.
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    /// The family.
    pub family: Family,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Width of the hidden states.
    pub hidden_size: i64,
    /// Number of layers.
    pub num_layers: i64,
    /// Attention heads per layer.
    pub num_heads: i64,
    /// Width of the feed-forward layer.
    pub intermediate_size: i64,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Number of learned positions.
    pub max_position_embeddings: i64,
    /// Number of token types (0: none, as in DistilBERT).
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Padding id (RoBERTa's positions start after it).
    pub pad_token_id: i64,
    /// Labels, problem type and other family-independent fields.
    pub common: CommonConfig,
}

#[derive(Deserialize)]
struct BertJson {
    vocab_size: i64,
    hidden_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    intermediate_size: i64,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default = "default_positions")]
    max_position_embeddings: i64,
    #[serde(default = "two")]
    type_vocab_size: i64,
    #[serde(default = "bert_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: Option<i64>,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

#[derive(Deserialize)]
struct DistilBertJson {
    vocab_size: i64,
    #[serde(default = "distil_dim")]
    dim: i64,
    #[serde(default = "six")]
    n_layers: i64,
    #[serde(default = "twelve")]
    n_heads: i64,
    #[serde(default = "distil_hidden")]
    hidden_dim: i64,
    #[serde(default = "gelu")]
    activation: String,
    #[serde(default = "default_positions")]
    max_position_embeddings: i64,
    #[serde(default)]
    pad_token_id: Option<i64>,
}

fn gelu() -> String {
    "gelu".into()
}
fn default_positions() -> i64 {
    512
}
fn two() -> i64 {
    2
}
fn six() -> i64 {
    6
}
fn twelve() -> i64 {
    12
}
fn distil_dim() -> i64 {
    768
}
fn distil_hidden() -> i64 {
    3072
}
fn bert_eps() -> f64 {
    1e-12
}

impl EncoderConfig {
    /// Read config.json; an unsupported `model_type` or setting is a clear error.
    pub fn from_file(path: &Path) -> Result<Self> {
        let common: CommonConfig = read_json(path)?;
        let family = match common.model_type.as_str() {
            "bert" => Family::Bert,
            "distilbert" => Family::DistilBert,
            "roberta" | "xlm-roberta" | "camembert" => Family::Roberta,
            other => {
                return Err(Error::Unsupported(format!(
                    "{}: model_type '{other}' is not an encoder Trident supports (bert, distilbert, roberta, xlm-roberta, camembert)",
                    path.display()
                )))
            }
        };
        let config = if family == Family::DistilBert {
            let c: DistilBertJson = read_json(path)?;
            EncoderConfig {
                family,
                vocab_size: c.vocab_size,
                hidden_size: c.dim,
                num_layers: c.n_layers,
                num_heads: c.n_heads,
                intermediate_size: c.hidden_dim,
                activation: Activation::parse(&c.activation)?,
                max_position_embeddings: c.max_position_embeddings,
                type_vocab_size: 0,
                layer_norm_eps: 1e-12,
                pad_token_id: c.pad_token_id.unwrap_or(0),
                common,
            }
        } else {
            let c: BertJson = read_json(path)?;
            if let Some(kind) = c
                .position_embedding_type
                .as_deref()
                .filter(|k| *k != "absolute")
            {
                return Err(Error::Unsupported(format!(
                    "{}: position_embedding_type '{kind}' (only 'absolute' is implemented)",
                    path.display()
                )));
            }
            EncoderConfig {
                family,
                vocab_size: c.vocab_size,
                hidden_size: c.hidden_size,
                num_layers: c.num_hidden_layers,
                num_heads: c.num_attention_heads,
                intermediate_size: c.intermediate_size,
                activation: Activation::parse(&c.hidden_act)?,
                max_position_embeddings: c.max_position_embeddings,
                type_vocab_size: c.type_vocab_size,
                layer_norm_eps: c.layer_norm_eps,
                pad_token_id: c.pad_token_id.unwrap_or(if family == Family::Roberta {
                    1
                } else {
                    0
                }),
                common,
            }
        };
        if config.num_heads <= 0 || config.hidden_size % config.num_heads != 0 {
            return Err(Error::config(
                path,
                format!(
                    "hidden size {} is not divisible by {} heads",
                    config.hidden_size, config.num_heads
                ),
            ));
        }
        Ok(config)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_heads
    }

    /// The longest input in tokens: RoBERTa spends `pad_token_id + 1` positions on its offset.
    pub fn max_input_tokens(&self) -> usize {
        let reserved = if self.family == Family::Roberta {
            self.pad_token_id + 1
        } else {
            0
        };
        (self.max_position_embeddings - reserved).max(1) as usize
    }
}
