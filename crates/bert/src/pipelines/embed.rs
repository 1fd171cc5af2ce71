//! Sentence embeddings as sentence-transformers computes them: the encoder's last hidden
//! state, pooled over real tokens (1_Pooling/config.json), then L2-normalised when
//! modules.json lists a Normalize module.

use super::{load_common, run_batches};
use crate::heads::EncoderModel;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use trident_core::config::read_json;
use trident_core::{Error, LoadOptions, ModelFiles, Result, TextEncoder};

/// One text's embedding.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Embedding {
    /// The vector.
    pub embedding: Vec<f32>,
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over real (unpadded) tokens.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise maximum over real tokens.
    Max,
}

#[derive(Deserialize)]
struct PoolingJson {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// One call's options of an [`Embedder`].
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// Texts per forward pass.
    pub batch_size: usize,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions {
            batch_size: super::DEFAULT_BATCH_SIZE,
        }
    }
}

/// A sentence-embedding pipeline. Loaded once, it serves any number of calls, from any
/// number of threads.
pub struct Embedder {
    tokens: std::sync::atomic::AtomicUsize,
    model: EncoderModel,
    tokenizer: TextEncoder,
    pooling: Pooling,
    normalize: bool,
    max_len: usize,
}

impl Embedder {
    /// Load a BERT-family encoder with its sentence-transformers settings (mean pooling and
    /// normalisation when the files do not say otherwise).
    pub fn from_pretrained(files: &ModelFiles, options: &LoadOptions) -> Result<Self> {
        let (config, tokenizer, device) = load_common(files, options)?;
        let model = EncoderModel::load(files, &config, device, options.dtype)?;
        let (mut pooling, mut normalize) = (Pooling::Mean, true);
        if let Some(path) = files.get_optional("modules.json")? {
            let modules: Vec<Module> = read_json(&path)?;
            normalize = modules.iter().any(|m| m.kind.ends_with("Normalize"));
            if let Some(m) = modules.iter().find(|m| m.kind.ends_with("Pooling")) {
                let file = format!("{}/config.json", m.path.trim_end_matches('/'));
                let p: PoolingJson = read_json(&files.get(&file)?)?;
                pooling = match (
                    p.pooling_mode_mean_tokens,
                    p.pooling_mode_cls_token,
                    p.pooling_mode_max_tokens,
                ) {
                    (true, false, false) => Pooling::Mean,
                    (false, true, false) => Pooling::Cls,
                    (false, false, true) => Pooling::Max,
                    _ => {
                        return Err(Error::Unsupported(format!(
                            "{file}: only one of mean, cls or max pooling is supported"
                        )))
                    }
                };
            }
        }
        let model_limit = config.max_input_tokens();
        let max_len = match files.get_optional("sentence_bert_config.json")? {
            Some(p) => read_json::<SentenceBertConfig>(&p)?.max_seq_length,
            None => tokenizer.model_max_length,
        }
        .map_or(model_limit, |m| m.min(model_limit));
        Ok(Embedder {
            tokens: Default::default(),
            model,
            tokenizer,
            pooling,
            normalize,
            max_len,
        })
    }

    /// How token vectors become one vector.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether the pooled vector is scaled to length 1.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// Tokens embedded so far (for throughput summaries).
    pub fn tokens_processed(&self) -> usize {
        self.tokens.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Embed texts (cut to the model's `max_seq_length` tokens, as sentence-transformers does).
    pub fn run(&self, texts: &[&str], options: &EmbedOptions) -> Result<Vec<Embedding>> {
        super::check_batch_size(options.batch_size)?;
        let encodings = texts
            .iter()
            .map(|t| Ok(self.tokenizer.encode_truncated(t, self.max_len)?.0))
            .collect::<Result<Vec<_>>>()?;
        let device = self.model.encoder.device();
        run_batches(
            &encodings,
            |e| e,
            options.batch_size,
            &self.tokenizer,
            device,
            &self.tokens,
            |batch, _| {
                // [batch, seq, hidden] f32; [CLS] pooling reads one row, and only it is
                // computed in the last layer.
                let hidden = match self.pooling {
                    Pooling::Cls => self.model.forward_first_token(batch)?,
                    Pooling::Mean | Pooling::Max => self.model.forward_unpadded(batch)?,
                };
                let pooled = self.pool(&hidden, &batch.attention_mask)?; // [batch, hidden]
                let pooled = if self.normalize {
                    l2_normalize(&pooled)?
                } else {
                    pooled
                };
                let rows = Vec::<Vec<f32>>::try_from(&pooled.f_to_device(tch::Device::Cpu)?)?;
                Ok(rows
                    .into_iter()
                    .map(|embedding| Embedding { embedding })
                    .collect())
            },
        )
    }

    fn pool(&self, hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let mask = attention_mask.f_unsqueeze(-1)?.f_to_kind(Kind::Float)?; // [batch, seq, 1]
        Ok(match self.pooling {
            Pooling::Cls => hidden.f_select(1, 0)?,
            Pooling::Mean => hidden
                .f_mul(&mask)?
                .f_sum_dim_intlist(1, false, Kind::Float)?
                .f_div(
                    &mask
                        .f_sum_dim_intlist(1, false, Kind::Float)?
                        .f_clamp_min(1e-9)?,
                )?,
            Pooling::Max => hidden
                .f_masked_fill(&mask.f_eq(0.0)?, -1e9)?
                .f_amax(1, false)?,
        })
    }
}

fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_div(
        &x.f_norm_scalaropt_dim(2.0, [1i64], true)?
            .f_clamp_min(1e-12)?,
    )?)
}

/// Cosine similarity of two vectors (1: same direction); 0 when either is all zeros.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}
