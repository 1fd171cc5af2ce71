//! Text classification (sentiment and the like): `{label, score}` per text, as
//! transformers' `text-classification` pipeline returns.

use super::{load_common, max_tokens, run_batches, PipelineOptions};
use crate::config::EncoderConfig;
use crate::heads::SequenceClassificationModel;
use serde::Serialize;
use tch::Kind;
use trident_core::{Encoded, Error, ModelFiles, Result, TextEncoder};

/// One label with its score.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Label {
    /// The label name from the checkpoint's `id2label`.
    pub label: String,
    /// Its probability (softmax), or independent probability (sigmoid, multi-label).
    pub score: f32,
}

/// How logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreFunction {
    /// Probabilities over mutually exclusive labels.
    Softmax,
    /// An independent probability per label (multi-label, or a single label).
    Sigmoid,
    /// Raw logits (regression).
    None,
}

/// Options of [`TextClassifier`].
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// Device and batch size.
    pub pipeline: PipelineOptions,
    /// Return the `k` best labels; `None` returns every label, sorted by score.
    pub top_k: Option<usize>,
    /// Override the score function the config implies.
    pub function: Option<ScoreFunction>,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        ClassifyOptions {
            pipeline: PipelineOptions::default(),
            top_k: Some(1),
            function: None,
        }
    }
}

/// The result for one text: the labels by decreasing score (one label unless `top_k` asks).
pub type Classification = Vec<Label>;

/// A sequence-classification pipeline.
pub struct TextClassifier {
    tokens: std::sync::atomic::AtomicUsize,
    model: SequenceClassificationModel,
    tokenizer: TextEncoder,
    labels: Vec<String>,
    function: ScoreFunction,
    max_len: usize,
    options: ClassifyOptions,
}

fn default_function(config: &EncoderConfig, num_labels: usize) -> ScoreFunction {
    match config.common.problem_type.as_deref() {
        Some("regression") => ScoreFunction::None,
        Some("multi_label_classification") => ScoreFunction::Sigmoid,
        _ if num_labels == 1 => ScoreFunction::Sigmoid,
        _ => ScoreFunction::Softmax,
    }
}

impl TextClassifier {
    /// Load a `*ForSequenceClassification` checkpoint.
    pub fn from_pretrained(files: &ModelFiles, options: ClassifyOptions) -> Result<Self> {
        let (config, tokenizer, device) = load_common(files, &options.pipeline)?;
        let labels = config.common.labels(&files.get("config.json")?)?;
        let model =
            SequenceClassificationModel::load(files, &config, device, options.pipeline.dtype)?;
        let function = options
            .function
            .unwrap_or_else(|| default_function(&config, labels.len()));
        let max_len = max_tokens(&config, &tokenizer);
        Ok(TextClassifier {
            tokens: Default::default(),
            model,
            tokenizer,
            labels,
            function,
            max_len,
            options,
        })
    }

    /// The label names, in index order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Tokenize one text; a text longer than the model takes is cut to its first
    /// `max_len` tokens, with a warning on stderr (a classifier sees one window).
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let (e, cut) = self.tokenizer.encode_truncated(text, self.max_len)?;
        if cut {
            tracing::warn!(
                "a text longer than the model's {} tokens was classified on its first {0} tokens",
                self.max_len
            );
        }
        Ok(e)
    }

    /// Classify texts; results are in input order.
    pub fn run(&self, texts: &[&str]) -> Result<Vec<Classification>> {
        let encodings = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>>>()?;
        self.run_encoded(&encodings)
    }

    /// Tokens classified so far (for throughput summaries).
    pub fn tokens_processed(&self) -> usize {
        self.tokens.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Classify already tokenized texts.
    pub fn run_encoded(&self, encodings: &[Encoded]) -> Result<Vec<Classification>> {
        let (batch_size, device) = (
            self.options.pipeline.batch_size,
            self.model.encoder.device(),
        );
        run_batches(
            encodings,
            |e| e,
            batch_size,
            &self.tokenizer,
            device,
            &self.tokens,
            |batch, _| {
                let logits = self.model.forward(batch)?.to_kind(Kind::Float); // [batch, labels]
                let scores = match self.function {
                    ScoreFunction::Softmax => logits.softmax(-1, Kind::Float),
                    ScoreFunction::Sigmoid => logits.sigmoid(),
                    ScoreFunction::None => logits,
                };
                let rows = Vec::<Vec<f32>>::try_from(&scores.to_device(tch::Device::Cpu))?;
                rows.into_iter().map(|row| self.rank(row)).collect()
            },
        )
    }

    fn rank(&self, scores: Vec<f32>) -> Result<Classification> {
        if scores.len() != self.labels.len() {
            return Err(Error::Unsupported(format!(
                "the model gives {} scores but id2label names {} labels",
                scores.len(),
                self.labels.len()
            )));
        }
        let mut ranked: Vec<Label> = self
            .labels
            .iter()
            .zip(scores)
            .map(|(l, s)| Label {
                label: l.clone(),
                score: s,
            })
            .collect();
        // Stable sort, highest first: ties keep label order, as transformers' does.
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
        ranked.truncate(self.options.top_k.unwrap_or(ranked.len()));
        Ok(ranked)
    }
}
