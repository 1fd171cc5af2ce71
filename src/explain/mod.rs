//! `trident explain`: what a transformer does with one text, step by step, with the numbers
//! the model computes.
//!
//! The task's own pipeline runs the text (tokenization, the model, post-processing: nothing is
//! computed a second way), with core's [`probe`](trident_core::nn::probe) recording what the
//! shared blocks computed: attention weights, the residual stream and the embeddings.
//! [`explain`] gathers it into an [`Explanation`], in the order the model computes:
//!
//! 1. the tokenizer's tokens (`input`);
//! 2. per stack (encoder, decoder): embeddings and positions, attention per layer and head
//!    (cross-attention for an encoder-decoder's decoder), the residual stream's norm per layer;
//! 3. the output: label probabilities, NER's per-token distribution and entities, the
//!    embedding, or each generation step's top candidates and the token chosen.
//!
//! [`render`] writes it as one self-contained HTML page, as JSON (the same data) or as a
//! plain-terminal summary.

pub mod render;
mod tasks;
pub mod trace;
mod views;

pub use render::{html, text};

use serde::Serialize;
use std::str::FromStr;
use trident_core::{Error, LoadOptions, ModelFiles, Result};

/// The tasks `trident explain` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Named entities (a token-classification checkpoint).
    Ner,
    /// Text classification (a sequence-classification checkpoint).
    Classify,
    /// Sentence embeddings (a BERT-family encoder).
    Embed,
    /// Summarization (an encoder-decoder).
    Summarize,
    /// Translation (an encoder-decoder).
    Translate,
    /// Text generation (a decoder-only model).
    Generate,
}

/// The task names, as `trident explain` takes them.
pub const TASKS: &[&str] = &[
    "ner",
    "classify",
    "embed",
    "summarize",
    "translate",
    "generate",
];

impl FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "ner" => Task::Ner,
            "classify" | "sentiment" => Task::Classify,
            "embed" => Task::Embed,
            "summarize" => Task::Summarize,
            "translate" => Task::Translate,
            "generate" => Task::Generate,
            other => {
                return Err(Error::Input(format!(
                    "unknown task '{other}': explain takes {}",
                    TASKS.join(", ")
                )))
            }
        })
    }
}

impl Task {
    /// The task's name.
    pub fn name(self) -> &'static str {
        match self {
            Task::Ner => "ner",
            Task::Classify => "classify",
            Task::Embed => "embed",
            Task::Summarize => "summarize",
            Task::Translate => "translate",
            Task::Generate => "generate",
        }
    }
}

/// What one explanation may show, and the task's settings.
#[derive(Debug, Clone)]
pub struct ExplainOptions {
    /// Device and numeric format of the model.
    pub load: LoadOptions,
    /// The text is cut after this many tokens (a token×token map grows with its square).
    pub max_tokens: usize,
    /// Tokens generated (summarize, translate, generate).
    pub max_new_tokens: usize,
    /// Candidates shown per generation step.
    pub top_k: usize,
    /// Source language (translate; as `trident translate --from`).
    pub source: Option<String>,
    /// Target language (translate; as `trident translate --to`).
    pub target: Option<String>,
    /// NER's aggregation strategy.
    pub aggregation: trident_bert::Aggregation,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        ExplainOptions {
            load: LoadOptions::default(),
            max_tokens: 64,
            max_new_tokens: 20,
            top_k: 5,
            source: None,
            target: None,
            aggregation: trident_bert::Aggregation::Simple,
        }
    }
}

/// Everything `trident explain` shows about one text; serialized as the JSON format and
/// embedded in the HTML page.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The format's version.
    pub trident_explain: u32,
    /// The task (`ner`, `classify`, …).
    pub task: String,
    /// The model as given (directory or hub id).
    pub model: String,
    /// config.json's `model_type`.
    pub model_type: String,
    /// The text explained (cut to the token limit when longer).
    pub text: String,
    /// Whether the text was cut.
    pub truncated: bool,
    /// What the tokenizer made of the model's input.
    pub input: InputView,
    /// The stacks in the order they ran: `encoder` (encoder-only and encoder-decoder models),
    /// `decoder` (decoder-only and encoder-decoder models).
    pub stacks: Vec<StackView>,
    /// What the task made of the model's output.
    pub output: Output,
}

/// The tokenizer's view of the input.
#[derive(Debug, Clone, Serialize)]
pub struct InputView {
    /// The string the tokenizer read (a seq2seq prefix included), which `start`/`end` index.
    pub text: String,
    /// The tokens in order.
    pub tokens: Vec<TokenView>,
}

/// One input token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenView {
    /// The token as the vocabulary spells it.
    pub token: String,
    /// Its id.
    pub id: i64,
    /// Start offset in `input.text`, in characters (Unicode code points).
    pub start: usize,
    /// End offset (exclusive); `start == end` for a special token that is not in the text.
    pub end: usize,
    /// Whether it is a special token (`[CLS]`, `</s>`, a language code, …).
    pub special: bool,
}

/// One stack of layers (an encoder or a decoder) as it ran on the input.
#[derive(Debug, Clone, Serialize)]
pub struct StackView {
    /// `encoder` or `decoder`.
    pub name: String,
    /// The tokens the stack read, one per row of its maps (a decoder: the prompt or the start
    /// token, then the generated tokens it read back).
    pub tokens: Vec<String>,
    /// Layers.
    pub layers: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// Embeddings and positions.
    pub embeddings: EmbeddingView,
    /// Self-attention weights `[layer][head][query][key]` (each row sums to 1; 4 decimals).
    pub attention: Vec<Vec<Vec<Vec<f32>>>>,
    /// Cross-attention weights `[layer][head][query][source token]` (an encoder-decoder's
    /// decoder only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_attention: Option<Vec<Vec<Vec<Vec<f32>>>>>,
    /// The source tokens the cross-attention columns stand for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_tokens: Option<Vec<String>>,
    /// The residual stream's L2 norm per token: `[layers + 1][token]`, the embeddings then
    /// each layer's output.
    pub residual_norms: Vec<Vec<f32>>,
    /// How far each layer moved each token's vector: `‖output − input‖` `[layer][token]`.
    pub layer_changes: Vec<Vec<f32>>,
}

/// A stack's embeddings: the token vectors and how positions enter.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingView {
    /// L2 norm of each token's embedding vector (after any embedding scale), when the family
    /// marks it.
    pub token_norms: Option<Vec<f32>>,
    /// L2 norm of the position vector added to each token (learned or sinusoidal tables).
    pub position_norms: Option<Vec<f32>>,
    /// The position vectors themselves, `[token][dimension]` for the first dimensions (up to
    /// 64): a heat strip of the position code.
    pub position_strip: Option<Vec<Vec<f32>>>,
    /// `learned`, `sinusoidal`, `relative`, `rotary` or `alibi`.
    pub position_kind: String,
    /// One sentence on how positions enter, with the model's values.
    pub position_note: String,
}

/// What the task made of the model's output.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Output {
    /// Sequence classification.
    Classification {
        /// `softmax`, `sigmoid` or `none` (raw logits).
        function: String,
        /// Every label with its score, best first.
        labels: Vec<trident_bert::Label>,
    },
    /// Token classification.
    Ner {
        /// The label names, in index order.
        labels: Vec<String>,
        /// Per input token, the softmax over the labels `[token][label]`.
        token_scores: Vec<Vec<f32>>,
        /// Per input token, the most probable label.
        predicted: Vec<String>,
        /// The aggregation strategy that grouped tokens into entities.
        aggregation: String,
        /// The pipeline's entities, each with the input tokens it covers.
        entities: Vec<EntityView>,
    },
    /// Sentence embedding.
    Embedding {
        /// How token vectors became one: `mean`, `cls` or `max`.
        pooling: String,
        /// Whether the vector was scaled to length 1.
        normalized: bool,
        /// The vector.
        vector: Vec<f32>,
    },
    /// Generation (summarize, translate, generate).
    Generation {
        /// `greedy`, `sampling` or `beam search (N beams)`.
        search: String,
        /// The text produced.
        text: String,
        /// One entry per generated token.
        steps: Vec<StepView>,
    },
}

/// One entity of the NER pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct EntityView {
    /// Its label (`PER`; a token label such as `B-PER` with aggregation `none`).
    pub label: String,
    /// Its score.
    pub score: f32,
    /// The text it covers, as the pipeline spells it.
    pub word: String,
    /// Start character offset in the text.
    pub start: usize,
    /// End character offset (exclusive).
    pub end: usize,
    /// The input tokens inside it.
    pub tokens: Vec<usize>,
}

/// One generation step.
#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    /// The token chosen.
    pub chosen: Candidate,
    /// Its rank among the model's candidates (1: the most probable).
    pub rank: usize,
    /// The most probable next tokens, best first.
    pub top: Vec<Candidate>,
}

/// A candidate next token.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// The token as text.
    pub token: String,
    /// Its id.
    pub id: i64,
    /// Its probability under the model (softmax of the logits, before generation settings).
    pub probability: f32,
}

/// Explain `text` with the `task`'s pipeline on the checkpoint `files`.
pub fn explain(
    task: Task,
    files: &ModelFiles,
    text: &str,
    options: &ExplainOptions,
) -> Result<Explanation> {
    if text.trim().is_empty() {
        return Err(Error::Input(
            "the text is empty: there is nothing to explain".into(),
        ));
    }
    if options.max_tokens < 2 {
        return Err(Error::Input("max_tokens must be at least 2".into()));
    }
    if options.top_k == 0 {
        return Err(Error::Input("top_k must be at least 1".into()));
    }
    match task {
        Task::Ner => tasks::ner(files, text, options),
        Task::Classify => tasks::classify(files, text, options),
        Task::Embed => tasks::embed(files, text, options),
        Task::Summarize | Task::Translate => tasks::seq2seq(task, files, text, options),
        Task::Generate => tasks::generate(files, text, options),
    }
}
