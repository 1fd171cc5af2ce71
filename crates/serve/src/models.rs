//! The loaded models a server holds, one pipeline each, and the tasks they serve.

use serde::Serialize;
use trident_bert::{Embedder, TextClassifier, TokenClassifier};
use trident_core::seq2seq::{Summarizer, Translator};
use trident_core::{ChatTemplate, TextEncoder};
use trident_gpt::TextGenerator;

/// What a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Named-entity recognition (token classification).
    Ner,
    /// Text classification (sentiment, topics).
    Classify,
    /// Sentence embeddings.
    Embed,
    /// Summarization.
    Summarize,
    /// Translation.
    Translate,
    /// Text generation.
    Generate,
}

impl Task {
    /// Every task, in route order.
    pub const ALL: [Task; 6] = [
        Task::Ner,
        Task::Classify,
        Task::Embed,
        Task::Summarize,
        Task::Translate,
        Task::Generate,
    ];

    /// The task's name in routes and configuration.
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

    /// Parse a task name (`sentiment` is `classify`, `token-classification` is `ner`, …).
    pub fn parse(name: &str) -> Option<Task> {
        Some(match name.to_ascii_lowercase().as_str() {
            "ner" | "token-classification" => Task::Ner,
            "classify" | "sentiment" | "text-classification" => Task::Classify,
            "embed" | "embeddings" | "feature-extraction" | "sentence-similarity" => Task::Embed,
            "summarize" | "summarization" => Task::Summarize,
            "translate" | "translation" => Task::Translate,
            "generate" | "text-generation" => Task::Generate,
            _ => return None,
        })
    }
}

/// A task's pipeline, loaded once and shared by every request.
pub enum Pipeline {
    /// `TokenClassifier`.
    Ner(TokenClassifier),
    /// `TextClassifier`.
    Classify(TextClassifier),
    /// `Embedder`.
    Embed(Embedder),
    /// `Summarizer`.
    Summarize(Summarizer),
    /// `Translator`.
    Translate(Translator),
    /// `TextGenerator`.
    Generate(TextGenerator),
}

impl Pipeline {
    /// The task it serves.
    pub fn task(&self) -> Task {
        match self {
            Pipeline::Ner(_) => Task::Ner,
            Pipeline::Classify(_) => Task::Classify,
            Pipeline::Embed(_) => Task::Embed,
            Pipeline::Summarize(_) => Task::Summarize,
            Pipeline::Translate(_) => Task::Translate,
            Pipeline::Generate(_) => Task::Generate,
        }
    }
}

/// One served model.
pub struct LoadedModel {
    /// The name clients use.
    pub name: String,
    /// Where it was loaded from (directory or hub id).
    pub source: String,
    /// Its numeric format (`f32`, `bf16`, `int8`).
    pub dtype: String,
    /// The pipeline.
    pub pipeline: Pipeline,
    /// Its tokenizer, for `/tokenize`, token counts and limits.
    pub tokenizer: TextEncoder,
    /// The longest input the model takes in one window, in tokens, when it has a limit.
    pub max_input_length: Option<usize>,
    /// Labels of a classifier, in id order.
    pub labels: Vec<String>,
    /// The checkpoint's chat template (chat_template.jinja or tokenizer_config.json), when
    /// it has one.
    pub chat_template: Option<ChatTemplate>,
}

impl LoadedModel {
    /// The task it serves.
    pub fn task(&self) -> Task {
        self.pipeline.task()
    }
}
