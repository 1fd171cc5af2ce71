//! Summarization: text → a shorter text (transformers' `SummarizationPipeline`), with any
//! encoder-decoder model: BART-CNN as is, T5 with its `summarize: ` prefix from
//! `task_specific_params`.

use super::{AnySeq2SeqLm, Seq2SeqPipeline, Seq2SeqRequest};
use crate::generation::GenerationConfig;
use crate::{ModelFiles, Result};
use serde::Serialize;

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

/// One call's options of a [`Summarizer`].
#[derive(Debug, Clone)]
pub struct SummarizeOptions {
    /// Generation settings over the checkpoint's `summarization` defaults.
    pub generation: GenerationConfig,
    /// Longest input in tokens before a document is split (default: the tokenizer's
    /// `model_max_length`, else 512).
    pub max_input_tokens: Option<usize>,
    /// Pieces generated together in one batch.
    pub batch_size: usize,
    /// When a document had to be split, summarize the joined summaries once more.
    pub resummarize: bool,
}

impl Default for SummarizeOptions {
    fn default() -> Self {
        SummarizeOptions {
            generation: GenerationConfig::default(),
            max_input_tokens: None,
            batch_size: 8,
            resummarize: false,
        }
    }
}

/// Summarizes documents with an encoder-decoder checkpoint. Loaded once, it serves any number
/// of calls, from any number of threads, each with its own [`SummarizeOptions`].
pub struct Summarizer {
    inner: Seq2SeqPipeline<AnySeq2SeqLm>,
}

impl Summarizer {
    /// Wrap a loaded `model` with the tokenizer and generation settings of `files` (the
    /// `trident` crate's `summarizer()` loads the model of any family).
    pub fn new(model: AnySeq2SeqLm, files: &ModelFiles) -> Result<Self> {
        Ok(Summarizer {
            inner: Seq2SeqPipeline::new(model, files)?,
        })
    }

    fn request<'a>(&self, options: &'a SummarizeOptions) -> Seq2SeqRequest<'a> {
        Seq2SeqRequest {
            task: Some("summarization"),
            default_prefix: "",
            generation: &options.generation,
            max_input_tokens: options.max_input_tokens,
            batch_size: options.batch_size,
            what: "summarize",
            source_language: None,
        }
    }

    /// Summaries of `texts`: for each text, `num_return_sequences` summaries, with the
    /// checkpoint's `task_specific_params["summarization"]` (prefix and generation defaults)
    /// under `options`.
    pub fn run(&self, texts: &[&str], options: &SummarizeOptions) -> Result<Vec<Vec<Summary>>> {
        self.run_with_progress(texts, options, &mut |_, _| {})
    }

    /// [`run`](Self::run), calling `on_progress(pieces done, pieces in all)` as the pieces of
    /// the documents are summarized.
    pub fn run_with_progress(
        &self,
        texts: &[&str],
        options: &SummarizeOptions,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<Summary>>> {
        let request = self.request(options);
        let mut results = self.inner.run_with_progress(texts, &request, on_progress)?;
        if options.resummarize {
            for r in results.iter_mut().filter(|r| r.chunks > 1) {
                let joined: Vec<&str> = r.texts.iter().map(String::as_str).collect();
                let again = self.inner.run(&joined, &request)?;
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

    /// The generation settings (prefix included) a call with `options` runs with.
    pub fn settings(&self, options: &SummarizeOptions) -> Result<GenerationConfig> {
        self.inner.settings(&self.request(options))
    }

    /// Longest input in tokens before a document is split, for `options`.
    pub fn max_input_tokens(&self, options: &SummarizeOptions) -> usize {
        self.inner.max_input_tokens(options.max_input_tokens)
    }

    /// The encoder inputs of `text` for a call with `options` (prefix included; one per
    /// piece of a long document), as [`run`](Self::run) tokenizes them.
    pub fn inputs(&self, text: &str, options: &SummarizeOptions) -> Result<Vec<crate::Encoded>> {
        self.inner.inputs(text, &self.request(options))
    }

    /// The model, tokenizer and checkpoint settings underneath.
    pub fn pipeline(&self) -> &Seq2SeqPipeline<AnySeq2SeqLm> {
        &self.inner
    }
}
