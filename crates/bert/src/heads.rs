//! Task heads on top of the encoder, and the loaded task models.

use crate::config::{EncoderConfig, Family};
use crate::model::Encoder;
use tch::{Device, Kind, Tensor};
use trident_core::nn::{dropout, Linear};
use trident_core::text::Batch;
use trident_core::{Dtype, Error, ModelFiles, Result, WeightPath, Weights};

/// The sequence-classification head of each family.
#[derive(Debug)]
pub enum SequenceHead {
    /// BERT: `bert.pooler.dense` + tanh on `[CLS]`, then `classifier`.
    Bert {
        /// `bert.pooler.dense`.
        pooler: Linear,
        /// `classifier`.
        classifier: Linear,
    },
    /// DistilBERT: `pre_classifier` + ReLU on `[CLS]`, then `classifier`.
    DistilBert {
        /// `pre_classifier`.
        pre_classifier: Linear,
        /// `classifier`.
        classifier: Linear,
    },
    /// RoBERTa: `classifier.dense` + tanh on `<s>`, then `classifier.out_proj`.
    Roberta {
        /// `classifier.dense`.
        dense: Linear,
        /// `classifier.out_proj`.
        out_proj: Linear,
    },
}

impl SequenceHead {
    /// The head of `c`'s family with `num_labels` outputs, named under `root`.
    pub(crate) fn new(root: &WeightPath, c: &EncoderConfig, num_labels: i64) -> Result<Self> {
        let h = c.hidden_size;
        Ok(match c.family {
            Family::Bert => SequenceHead::Bert {
                pooler: Linear::new(&(root / "bert" / "pooler" / "dense"), h, h, true)?,
                classifier: Linear::new(&(root / "classifier"), h, num_labels, true)?,
            },
            Family::DistilBert => SequenceHead::DistilBert {
                pre_classifier: Linear::new(&(root / "pre_classifier"), h, h, true)?,
                classifier: Linear::new(&(root / "classifier"), h, num_labels, true)?,
            },
            Family::Roberta => SequenceHead::Roberta {
                dense: Linear::new(&(root / "classifier" / "dense"), h, h, true)?,
                out_proj: Linear::new(&(root / "classifier" / "out_proj"), h, num_labels, true)?,
            },
        })
    }

    /// `[batch, seq, hidden]` → `[batch, labels]`, from the first token's hidden state.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        self.forward_with_dropout(hidden, 0.0)
    }

    /// [`forward`](Self::forward) of a model being trained: dropout `p` where each family's
    /// head has it (before `classifier`; RoBERTa also before `dense`).
    pub fn forward_with_dropout(&self, hidden: &Tensor, p: f64) -> Result<Tensor> {
        let first = hidden.f_select(1, 0)?; // [batch, hidden]
        match self {
            SequenceHead::Bert { pooler, classifier } => {
                classifier.forward(&dropout(&pooler.forward(&first)?.f_tanh()?, p)?)
            }
            SequenceHead::DistilBert {
                pre_classifier,
                classifier,
            } => classifier.forward(&dropout(&pre_classifier.forward(&first)?.f_relu()?, p)?),
            SequenceHead::Roberta { dense, out_proj } => {
                let h = dense.forward(&dropout(&first, p)?)?.f_tanh()?;
                out_proj.forward(&dropout(&h, p)?)
            }
        }
    }
}

fn num_labels(c: &EncoderConfig) -> Result<i64> {
    match c.common.id2label.len() {
        0 => Err(Error::Unsupported(
            "config.json has no id2label: this is not a classification checkpoint".into(),
        )),
        n => Ok(n as i64),
    }
}

fn check_architecture(
    c: &EncoderConfig,
    files: &ModelFiles,
    suffix: &str,
    task: &str,
) -> Result<()> {
    match c.common.architectures.first() {
        Some(arch) if !arch.ends_with(suffix) => Err(Error::Unsupported(format!(
            "{} is a {arch} checkpoint; {task} needs a *{suffix} checkpoint",
            files.name()
        ))),
        _ => Ok(()),
    }
}

/// Read the encoder and a head (`head` reads it under the root) from the checkpoint, in the
/// format of `dtype`.
fn load_with_head<H>(
    files: &ModelFiles,
    config: &EncoderConfig,
    device: Device,
    dtype: Dtype,
    head: impl FnOnce(&WeightPath) -> Result<H>,
) -> Result<(Encoder, H)> {
    let weights = Weights::open(files, device, dtype)?;
    let root = weights.root();
    let encoder = Encoder::new(&(&root / config.family.prefix()), config)?;
    let head = head(&root)?;
    weights.finish()?;
    Ok((encoder, head))
}

/// A `*ForSequenceClassification` model.
#[derive(Debug)]
pub struct SequenceClassificationModel {
    /// The encoder.
    pub encoder: Encoder,
    /// The head.
    pub head: SequenceHead,
}

impl SequenceClassificationModel {
    /// Load from config.json and the weights.
    pub fn load(
        files: &ModelFiles,
        config: &EncoderConfig,
        device: Device,
        dtype: Dtype,
    ) -> Result<Self> {
        check_architecture(config, files, "ForSequenceClassification", "classification")?;
        let n = num_labels(config)?;
        let (encoder, head) = load_with_head(files, config, device, dtype, |root| {
            SequenceHead::new(root, config, n)
        })?;
        Ok(SequenceClassificationModel { encoder, head })
    }

    /// `[batch, labels]` logits (f32 whatever the model computes in). They are read off the
    /// first token, so the encoder computes only what that token's state needs
    /// ([`Encoder::forward_first_token`]).
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let hidden = self.encoder.forward_first_token(batch)?; // [batch, 1, hidden]
        Ok(self.head.forward(&hidden)?.f_to_kind(Kind::Float)?)
    }
}

/// A `*ForTokenClassification` model: `classifier` on every token.
#[derive(Debug)]
pub struct TokenClassificationModel {
    /// The encoder.
    pub encoder: Encoder,
    /// `classifier`.
    pub classifier: Linear,
}

impl TokenClassificationModel {
    /// Load from config.json and the weights.
    pub fn load(
        files: &ModelFiles,
        config: &EncoderConfig,
        device: Device,
        dtype: Dtype,
    ) -> Result<Self> {
        check_architecture(
            config,
            files,
            "ForTokenClassification",
            "token classification (NER)",
        )?;
        let n = num_labels(config)?;
        let (encoder, classifier) = load_with_head(files, config, device, dtype, |root| {
            Linear::new(&(root / "classifier"), config.hidden_size, n, true)
        })?;
        Ok(TokenClassificationModel {
            encoder,
            classifier,
        })
    }

    /// `[batch, seq, labels]` logits (f32 whatever the model computes in), at every position
    /// as transformers computes them.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let hidden = self.encoder.forward_batch(batch)?;
        Ok(self.classifier.forward(&hidden)?.f_to_kind(Kind::Float)?)
    }

    /// [`forward`](Self::forward) at the real tokens, the padding skipped
    /// ([`Encoder::forward_unpadded`]): padded positions are not computed (they hold the
    /// classifier's bias). What the NER pipeline runs.
    pub fn forward_unpadded(&self, batch: &Batch) -> Result<Tensor> {
        let hidden = self.encoder.forward_unpadded(batch)?;
        Ok(self.classifier.forward(&hidden)?.f_to_kind(Kind::Float)?)
    }
}

/// The bare encoder, for hidden states and sentence embeddings.
#[derive(Debug)]
pub struct EncoderModel {
    /// The encoder.
    pub encoder: Encoder,
}

impl EncoderModel {
    /// Load the base model's weights (with or without the family prefix).
    pub fn load(
        files: &ModelFiles,
        config: &EncoderConfig,
        device: Device,
        dtype: Dtype,
    ) -> Result<Self> {
        let (encoder, ()) = load_with_head(files, config, device, dtype, |_| Ok(()))?;
        Ok(EncoderModel { encoder })
    }

    /// `[batch, seq, hidden]` last hidden state (f32 whatever the model computes in), at
    /// every position as transformers computes it.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        Ok(self.encoder.forward_batch(batch)?.f_to_kind(Kind::Float)?)
    }

    /// [`forward`](Self::forward) at the real tokens, the padding skipped
    /// ([`Encoder::forward_unpadded`]): zeros at padded positions. What the embedding
    /// pipeline runs (its pooling reads real tokens only).
    pub fn forward_unpadded(&self, batch: &Batch) -> Result<Tensor> {
        Ok(self
            .encoder
            .forward_unpadded(batch)?
            .f_to_kind(Kind::Float)?)
    }

    /// `[batch, 1, hidden]`: the last hidden state at the first token only
    /// ([`Encoder::forward_first_token`]), f32. What `[CLS]` pooling runs.
    pub fn forward_first_token(&self, batch: &Batch) -> Result<Tensor> {
        Ok(self
            .encoder
            .forward_first_token(batch)?
            .f_to_kind(Kind::Float)?)
    }
}
