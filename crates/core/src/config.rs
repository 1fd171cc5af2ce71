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
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Gelu => x.f_gelu("none")?,
            Activation::GeluTanh => x.f_gelu("tanh")?,
            Activation::Relu => x.f_relu()?,
            Activation::Silu => x.f_silu()?,
            Activation::Tanh => x.f_tanh()?,
        })
    }

    /// [`Activation::forward`] over `x`'s own memory, for a tensor nobody else reads (a
    /// projection's fresh output): the same kernel, so the same values, without a second
    /// block of `x`'s size. Out of place where autograd needs the input (training).
    pub fn forward_owned(self, mut x: Tensor) -> Result<Tensor> {
        if x.requires_grad() {
            return self.forward(&x);
        }
        let _ = match self {
            Activation::Gelu => x.f_gelu_("none")?,
            Activation::GeluTanh => x.f_gelu_("tanh")?,
            Activation::Relu => x.f_relu_()?,
            Activation::Silu => x.f_silu_()?,
            Activation::Tanh => x.f_tanh_()?,
        };
        Ok(x)
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
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
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

#[cfg(test)]
mod tests {
    /// In place or not, every activation gives the same values, bit for bit.
    #[test]
    fn activations_in_place_equal_out_of_place() {
        let x = tch::Tensor::randn([4, 33], (tch::Kind::Float, tch::Device::Cpu)) * 3.0;
        for a in [
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Relu,
            Activation::Silu,
            Activation::Tanh,
        ] {
            let fresh = x.copy();
            let ptr = fresh.data_ptr();
            let owned = a.forward_owned(fresh).unwrap();
            assert!(owned.equal(&a.forward(&x).unwrap()), "{a:?}");
            assert_eq!(owned.data_ptr(), ptr, "{a:?} in place");
        }
    }

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
    fn labels_come_in_index_order() {
        let c: CommonConfig =
            serde_json::from_str(r#"{"id2label": {"10": "K", "2": "C", "0": "A", "1": "B", "3": "D", "4": "E", "5": "F", "6": "G", "7": "H", "8": "I", "9": "J"}}"#)
                .unwrap();
        let labels = c.labels(Path::new("config.json")).unwrap();
        assert_eq!(labels[2], "C");
        assert_eq!(labels[10], "K");
    }
}
