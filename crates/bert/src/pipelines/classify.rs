//! Text classification (sentiment and the like): `{label, score}` per text, as
//! transformers' `text-classification` pipeline returns.

use super::{check_batch_size, load_common, max_tokens, run_batches, DEFAULT_BATCH_SIZE};
use crate::config::EncoderConfig;
use crate::heads::SequenceClassificationModel;
use serde::Serialize;
use tch::Kind;
use trident_core::{Encoded, Error, LoadOptions, ModelFiles, Result, TextEncoder};

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

/// One call's options of a [`TextClassifier`].
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Return the `k` best labels; `None` returns every label, sorted by score.
    pub top_k: Option<usize>,
    /// Override the score function the config implies.
    pub function: Option<ScoreFunction>,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        ClassifyOptions {
            batch_size: DEFAULT_BATCH_SIZE,
            top_k: Some(1),
            function: None,
        }
    }
}

/// The result for one text: the labels by decreasing score (one label unless `top_k` asks).
pub type Classification = Vec<Label>;

/// A sequence-classification pipeline. Loaded once, it serves any number of calls, from any
/// number of threads, each with its own [`ClassifyOptions`].
pub struct TextClassifier {
    tokens: std::sync::atomic::AtomicUsize,
    model: SequenceClassificationModel,
    tokenizer: TextEncoder,
    labels: Vec<String>,
    function: ScoreFunction,
    max_len: usize,
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
    pub fn from_pretrained(files: &ModelFiles, options: &LoadOptions) -> Result<Self> {
        let (config, tokenizer, device) = load_common(files, options)?;
        let labels = config.common.labels(&files.get("config.json")?)?;
        let model = SequenceClassificationModel::load(files, &config, device, options.dtype)?;
        let function = default_function(&config, labels.len());
        let max_len = max_tokens(&config, &tokenizer);
        Ok(TextClassifier {
            tokens: Default::default(),
            model,
            tokenizer,
            labels,
            function,
            max_len,
        })
    }

    /// The label names, in index order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// How logits become scores when a call does not say.
    pub fn score_function(&self) -> ScoreFunction {
        self.function
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
    pub fn run(&self, texts: &[&str], options: &ClassifyOptions) -> Result<Vec<Classification>> {
        let encodings = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>>>()?;
        self.run_encoded(&encodings, options)
    }

    /// Tokens classified so far (for throughput summaries).
    pub fn tokens_processed(&self) -> usize {
        self.tokens.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Classify already tokenized texts.
    pub fn run_encoded(
        &self,
        encodings: &[Encoded],
        options: &ClassifyOptions,
    ) -> Result<Vec<Classification>> {
        check_batch_size(options.batch_size)?;
        let (batch_size, device) = (options.batch_size, self.model.encoder.device());
        let function = options.function.unwrap_or(self.function);
        run_batches(
            encodings,
            |e| e,
            batch_size,
            &self.tokenizer,
            device,
            &self.tokens,
            |batch, _| {
                let logits = self.model.forward(batch)?; // [batch, labels] f32
                let scores = match function {
                    ScoreFunction::Softmax => logits.f_softmax(-1, Kind::Float)?,
                    ScoreFunction::Sigmoid => logits.f_sigmoid()?,
                    ScoreFunction::None => logits,
                };
                let rows = Vec::<Vec<f32>>::try_from(&scores.f_to_device(tch::Device::Cpu)?)?;
                rows.into_iter()
                    .map(|row| self.rank(row, options))
                    .collect()
            },
        )
    }

    fn rank(&self, scores: Vec<f32>, options: &ClassifyOptions) -> Result<Classification> {
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
        ranked.truncate(options.top_k.unwrap_or(ranked.len()));
        Ok(ranked)
    }
}
