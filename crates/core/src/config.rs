//! Reading config.json and generation_config.json with serde, and the activations they name.

use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// Read a JSON file into `T`, with the file and the serde position in the error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))
}

/// The fields of config.json that every model family shares.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct CommonConfig {
    /// `bert`, `distilbert`, `roberta`, `t5`, `gpt2`, …
    #[serde(default)]
    pub model_type: String,
    /// Class names such as `BertForTokenClassification`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Label names of a classification head, keyed by the index as a string.
    #[serde(default)]
    pub id2label: BTreeMap<String, String>,
    /// `single_label_classification`, `multi_label_classification` or `regression`.
    #[serde(default)]
    pub problem_type: Option<String>,
    /// Per-task defaults (`summarization`, `translation_en_to_de`, …).
    #[serde(default)]
    pub task_specific_params: BTreeMap<String, serde_json::Value>,
}

impl CommonConfig {
    /// The labels in index order; an error when `id2label` skips an index.
    pub fn labels(&self, path: &Path) -> Result<Vec<String>> {
        let mut labels = vec![None; self.id2label.len()];
        for (k, v) in &self.id2label {
            let i: usize = k
                .parse()
                .map_err(|_| Error::config(path, format!("id2label key '{k}' is not a number")))?;
            let slot = labels.get_mut(i).ok_or_else(|| {
                Error::config(
                    path,
                    format!(
                        "id2label has index {i} but only {} labels",
                        self.id2label.len()
                    ),
                )
            })?;
            *slot = Some(v.clone());
        }
        Ok(labels.into_iter().flatten().collect())
    }
}

/// An activation function named in a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` (BERT, `gelu`).
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation of GELU (GPT-2 `gelu_new`, T5 v1.1 `gelu_new`).
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// `max(0, x)` (original Transformer, T5 v1.0).
    #[serde(rename = "relu")]
    Relu,
    /// `x·sigmoid(x)`.
    #[serde(alias = "silu", alias = "swish")]
    Silu,
    /// `tanh(x)` (BERT pooler).
    #[serde(rename = "tanh")]
    Tanh,
}

impl Activation {
    /// Apply the activation elementwise.
    pub fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
            Activation::Tanh => x.tanh(),
        }
    }

    /// Parse a config name (`gelu`, `gelu_new`, `relu`, …).
    pub fn parse(name: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
            Error::Unsupported(format!(
                "activation '{name}' (supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, swish, tanh)"
            ))
        })
    }
}

/// One or several token ids (`eos_token_id` may be either in HF configs).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(i64),
    /// Several ids.
    Many(Vec<i64>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// The generation defaults a checkpoint may carry in generation_config.json or config.json.
/// Every field is optional: an absent one leaves the engine's default in place.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct GenerationDefaults {
    /// Total length limit (prompt included for decoder-only models).
    pub max_length: Option<usize>,
    /// Limit on new tokens.
    pub max_new_tokens: Option<usize>,
    /// Minimum total length.
    pub min_length: Option<usize>,
    /// Minimum number of new tokens.
    pub min_new_tokens: Option<usize>,
    /// Beam width.
    pub num_beams: Option<usize>,
    /// Stop beam search when `num_beams` hypotheses are finished.
    pub early_stopping: Option<serde_json::Value>,
    /// Exponent on the length in beam scores.
    pub length_penalty: Option<f64>,
    /// Forbid repeating any n-gram of this size.
    pub no_repeat_ngram_size: Option<usize>,
    /// Penalty on already generated tokens.
    pub repetition_penalty: Option<f64>,
    /// Sample instead of taking the most probable token.
    pub do_sample: Option<bool>,
    /// Softmax temperature for sampling.
    pub temperature: Option<f64>,
    /// Keep the k most probable tokens when sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p.
    pub top_p: Option<f64>,
    /// Sequences to return per input.
    pub num_return_sequences: Option<usize>,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<TokenIds>,
    /// End-of-sequence id(s).
    pub eos_token_id: Option<TokenIds>,
    /// Padding id.
    pub pad_token_id: Option<TokenIds>,
    /// First decoder input for encoder-decoder models.
    pub decoder_start_token_id: Option<TokenIds>,
    /// Prefix the pipeline puts before the text (task_specific_params).
    pub prefix: Option<String>,
}

impl GenerationDefaults {
    /// Read generation_config.json, or the same keys from config.json.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_json(path)
    }

    /// Fill every field left empty here from `other` (self wins).
    pub fn or(self, other: &GenerationDefaults) -> Self {
        macro_rules! pick {
            ($($f:ident),*) => { GenerationDefaults { $($f: self.$f.or_else(|| other.$f.clone())),* } };
        }
        pick!(
            max_length,
            max_new_tokens,
            min_length,
            min_new_tokens,
            num_beams,
            early_stopping,
            length_penalty,
            no_repeat_ngram_size,
            repetition_penalty,
            do_sample,
            temperature,
            top_k,
            top_p,
            num_return_sequences,
            bos_token_id,
            eos_token_id,
            pad_token_id,
            decoder_start_token_id,
            prefix
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_parse_by_their_config_names() {
        assert_eq!(Activation::parse("gelu").unwrap(), Activation::Gelu);
        assert_eq!(Activation::parse("gelu_new").unwrap(), Activation::GeluTanh);
        assert_eq!(Activation::parse("relu").unwrap(), Activation::Relu);
        let err = Activation::parse("mish").unwrap_err().to_string();
        assert!(err.contains("mish") && err.contains("supported"), "{err}");
    }

    #[test]
    fn generation_defaults_accept_lists_and_merge() {
        let a: GenerationDefaults =
            serde_json::from_str(r#"{"eos_token_id": [1, 2], "num_beams": 4, "unknown": 3}"#)
                .unwrap();
        let b: GenerationDefaults =
            serde_json::from_str(r#"{"eos_token_id": 7, "max_length": 20, "num_beams": 1}"#)
                .unwrap();
        let m = a.or(&b);
        assert_eq!(m.eos_token_id.unwrap().to_vec(), vec![1, 2]);
        assert_eq!(m.num_beams, Some(4));
        assert_eq!(m.max_length, Some(20));
    }

    #[test]
    fn labels_come_in_index_order() {
        let c: CommonConfig =
            serde_json::from_str(r#"{"id2label": {"10": "K", "2": "C", "0": "A", "1": "B", "3": "D", "4": "E", "5": "F", "6": "G", "7": "H", "8": "I", "9": "J"}}"#)
                .unwrap();
        let labels = c.labels(Path::new("config.json")).unwrap();
        assert_eq!(labels[2], "C");
        assert_eq!(labels[10], "K");
    }
}
