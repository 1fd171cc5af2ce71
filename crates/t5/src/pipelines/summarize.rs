//! Summarization: `summarize: ` + text → a shorter text (transformers' `SummarizationPipeline`).

use super::{task_params, Seq2Seq, Settings};
use serde::Serialize;
use trident_core::generation::{GenerationConfig, GenerationOptions};
use trident_core::{DeviceChoice, Dtype, ModelFiles, Result};

/// One summary, serialized as transformers prints it: `{"summary_text": …}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The summary.
    pub summary_text: String,
    /// Pieces the document was split into to fit the encoder (1 when it fit whole).
    #[serde(skip)]
    pub chunks: usize,
    /// Tokens generated for this summary (EOS included).
    #[serde(skip)]
    pub generated_tokens: usize,
    /// The generated token ids (a split document's pieces in order), what transformers'
    /// pipeline returns with `return_tensors=True`.
    #[serde(skip)]
    pub token_ids: Vec<i64>,
}

/// How to load and run a [`Summarizer`].
#[derive(Debug, Clone)]
pub struct SummarizerOptions {
    /// Where the model runs (`Auto`: CUDA when present).
    pub device: DeviceChoice,
    /// The numeric format the model computes in.
    pub dtype: Dtype,
    /// Generation options overriding the checkpoint's `summarization` defaults.
    pub generation: GenerationOptions,
    /// Longest input in tokens before a document is split (default: the tokenizer's
    /// `model_max_length`, else 512).
    pub max_input_tokens: Option<usize>,
    /// Pieces generated together in one batch.
    pub batch_size: usize,
    /// When a document had to be split, summarize the joined summaries once more.
    pub resummarize: bool,
}

impl Default for SummarizerOptions {
    fn default() -> Self {
        SummarizerOptions {
            device: DeviceChoice::Auto,
            dtype: Dtype::F32,
            generation: GenerationOptions::default(),
            max_input_tokens: None,
            batch_size: 8,
            resummarize: false,
        }
    }
}

/// Summarizes documents with a T5 checkpoint.
pub struct Summarizer {
    inner: Seq2Seq,
    resummarize: bool,
}

impl Summarizer {
    /// Load the model and apply `task_specific_params["summarization"]` (prefix and
    /// generation defaults), then `options`.
    pub fn from_pretrained(files: &ModelFiles, options: SummarizerOptions) -> Result<Self> {
        let params = task_params(files)?;
        let inner = Seq2Seq::load(
            files,
            params.get("summarization"),
            "",
            Settings {
                device: options.device,
                dtype: options.dtype,
                generation: &options.generation,
                max_input_tokens: options.max_input_tokens,
                batch_size: options.batch_size,
            },
        )?;
        Ok(Summarizer {
            inner,
            resummarize: options.resummarize,
        })
    }

    /// Summaries of `texts`: for each text, `num_return_sequences` summaries.
    pub fn run(&self, texts: &[&str]) -> Result<Vec<Vec<Summary>>> {
        let mut results = self.inner.run(texts, "summarize")?;
        if self.resummarize {
            for r in results.iter_mut().filter(|r| r.chunks > 1) {
                let joined: Vec<&str> = r.texts.iter().map(String::as_str).collect();
                let again = self.inner.run(&joined, "summarize")?;
                r.texts = again.iter().map(|a| a.texts[0].clone()).collect();
                r.token_ids = again.iter().map(|a| a.token_ids[0].clone()).collect();
                r.generated_tokens += again.iter().map(|a| a.generated_tokens).sum::<usize>();
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.texts
                    .into_iter()
                    .zip(r.token_ids)
                    .map(|(summary_text, token_ids)| Summary {
                        summary_text,
                        chunks: r.chunks,
                        generated_tokens: r.generated_tokens,
                        token_ids,
                    })
                    .collect()
            })
            .collect())
    }

    /// The text put before every document (`summarize: ` for T5).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Longest input in tokens before a document is split.
    pub fn max_input_tokens(&self) -> usize {
        self.inner.max_input_tokens
    }

    /// The generation settings in effect.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.inner.generation
    }
}
