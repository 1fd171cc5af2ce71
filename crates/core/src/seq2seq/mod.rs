//! The one text-to-text pipeline, for every encoder-decoder family (T5, BART, Marian,
//! M2M100/NLLB), following transformers 4.x's `SummarizationPipeline` and
//! `TranslationPipeline`: apply the task's `task_specific_params` (prefix and generation
//! defaults), tokenize `prefix + text`, generate, decode without special tokens.
//!
//! One difference, on purpose: a document longer than the encoder's limit is not cut. It is
//! split at sentence boundaries into pieces that fit ([`crate::chunk`]), each piece is
//! processed, and the results are joined; each output says into how many pieces its input
//! was split.
//!
//! The pipeline holds only what is fixed once loaded (model, tokenizer, the checkpoint's
//! generation settings); every call brings its own [`Seq2SeqRequest`].

pub mod summarize;
pub mod translate;

pub use summarize::{SummarizeOptions, Summarizer, Summary};
pub use translate::{TranslateOptions, Translation, Translator};

use crate::chunk;
use crate::generation::{self, bad_words_ids, GenerationConfig, Hooks, Seq2SeqDecoder, Seq2SeqLm};
use crate::{Batch, Encoded, Error, ModelFiles, PaddingSide, Result, TextEncoder};

/// The input limit when neither the caller nor tokenizer_config.json gives one (T5's
/// relative positions have no hard limit; 512 is what T5 was trained on).
pub const DEFAULT_MAX_INPUT_TOKENS: usize = 512;

/// What one input became.
#[derive(Debug, Clone, PartialEq)]
pub struct TextResult {
    /// One text per returned sequence.
    pub texts: Vec<String>,
    /// The generated ids of each returned sequence (its pieces' ids in order).
    pub token_ids: Vec<Vec<i64>>,
    /// Pieces the input was split into to fit the encoder.
    pub chunks: usize,
    /// Tokens generated, over all pieces and returned sequences.
    pub generated_tokens: usize,
}

/// The outputs of an encoder-decoder's full (uncached) forward pass, as transformers'
/// `Seq2SeqLMOutput` names them.
#[derive(Debug)]
pub struct Seq2SeqOutput {
    /// `[batch, src, d_model]`.
    pub encoder_last_hidden_state: tch::Tensor,
    /// `[batch, tgt, d_model]`, after the decoder's final norm when it has one.
    pub decoder_last_hidden_state: tch::Tensor,
    /// `[batch, tgt, vocab]`, f32.
    pub logits: tch::Tensor,
}

/// Any encoder-decoder model, chosen at run time from the checkpoint's `model_type` (the
/// pipelines below hold one; the `trident` crate's loader picks the family).
pub type AnySeq2SeqLm = Box<dyn Seq2SeqLm + Send + Sync>;

impl<T: Seq2SeqLm + ?Sized> Seq2SeqLm for Box<T> {
    fn device(&self) -> tch::Device {
        (**self).device()
    }

    fn num_decoder_layers(&self) -> usize {
        (**self).num_decoder_layers()
    }

    fn decoder_start_token_id(&self) -> i64 {
        (**self).decoder_start_token_id()
    }

    fn encode(&self, input_ids: &tch::Tensor, attention_mask: &tch::Tensor) -> Result<tch::Tensor> {
        (**self).encode(input_ids, attention_mask)
    }

    fn max_input_positions(&self) -> Option<usize> {
        (**self).max_input_positions()
    }

    fn next_logits(
        &self,
        ids: &tch::Tensor,
        encoder_hidden: &tch::Tensor,
        encoder_mask: &tch::Tensor,
        groups: i64,
        caches: &mut [crate::nn::LayerCache],
    ) -> Result<tch::Tensor> {
        (**self).next_logits(ids, encoder_hidden, encoder_mask, groups, caches)
    }
}

/// The language token that starts every input of a multilingual model (M2M100's `__fr__`,
/// NLLB's `fra_Latn`).
#[derive(Debug, Clone, Copy)]
pub struct SourceLanguage<'a> {
    /// Its id.
    pub id: i64,
    /// Its token (`__fr__`, `fra_Latn`).
    pub token: &'a str,
    /// Every language token's id: a tokenizer that already put one first (NLLB's
    /// tokenizer.json puts its default language there) has it replaced, not doubled.
    pub all: &'a [i64],
}

/// One call's settings.
#[derive(Debug, Clone)]
pub struct Seq2SeqRequest<'a> {
    /// The `task_specific_params` entry to apply (`summarization`, `translation_en_to_de`).
    pub task: Option<&'a str>,
    /// The prefix when neither the task nor the caller gives one.
    pub default_prefix: &'a str,
    /// The caller's generation settings, over the checkpoint's and the task's.
    pub generation: &'a GenerationConfig,
    /// Longest input in tokens before a document is split (default: the tokenizer's
    /// `model_max_length`, else [`DEFAULT_MAX_INPUT_TOKENS`]).
    pub max_input_tokens: Option<usize>,
    /// Pieces generated together in one batch (at least 1).
    pub batch_size: usize,
    /// Names the task in errors ("summarize", "translate").
    pub what: &'a str,
    /// The source-language token to start each input with (multilingual models).
    pub source_language: Option<SourceLanguage<'a>>,
}

/// A loaded encoder-decoder model with its tokenizer and the checkpoint's generation
/// settings.
pub struct Seq2SeqPipeline<M> {
    /// The model.
    pub model: M,
    /// Its tokenizer.
    pub tokenizer: TextEncoder,
    files: ModelFiles,
    checkpoint: GenerationConfig,
    /// `task_specific_params`, read once at load.
    tasks: std::collections::BTreeMap<String, GenerationConfig>,
}

impl<M: Seq2SeqLm> Seq2SeqPipeline<M> {
    /// Wrap a loaded `model` with the tokenizer and generation settings of `files`.
    pub fn new(model: M, files: &ModelFiles) -> Result<Self> {
        Ok(Seq2SeqPipeline {
            model,
            tokenizer: TextEncoder::from_files(files)?,
            files: files.clone(),
            checkpoint: GenerationConfig::from_checkpoint(files, None)?,
            tasks: GenerationConfig::task_params(files)?,
        })
    }

    /// The tasks of the checkpoint's `task_specific_params`.
    pub fn tasks(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }

    /// The checkpoint's files.
    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    /// The settings a request runs with: the checkpoint's, the task's, then the caller's;
    /// the prefix falls back to `default_prefix`. Invalid settings are errors here.
    pub fn settings(&self, request: &Seq2SeqRequest) -> Result<GenerationConfig> {
        let base = match request.task.and_then(|t| self.tasks.get(t)) {
            Some(task) => self.checkpoint.merge(task),
            None => self.checkpoint.clone(),
        };
        let mut config = base.merge(request.generation);
        if config.prefix.is_none() {
            config.prefix = Some(request.default_prefix.to_string());
        }
        if let Some(words) = &request.generation.bad_words {
            let mut ids = config.bad_words_ids.take().unwrap_or_default();
            ids.extend(bad_words_ids(words, &self.tokenizer)?);
            config.bad_words_ids = Some(ids);
        }
        config.validate()?;
        Ok(config)
    }

    /// Longest input in tokens before a document is split, for `asked`: the caller's, else
    /// the tokenizer's `model_max_length`, else [`DEFAULT_MAX_INPUT_TOKENS`]; never more
    /// than the encoder has positions for.
    pub fn max_input_tokens(&self, asked: Option<usize>) -> usize {
        let wanted = asked
            .or(self.tokenizer.model_max_length)
            .unwrap_or(DEFAULT_MAX_INPUT_TOKENS);
        match self.model.max_input_positions() {
            Some(limit) => wanted.min(limit),
            None => wanted,
        }
    }

    /// Process `texts` with `request`.
    pub fn run(&self, texts: &[&str], request: &Seq2SeqRequest) -> Result<Vec<TextResult>> {
        self.run_with_progress(texts, request, &mut |_, _| {})
    }

    /// [`run`](Self::run), calling `on_progress(pieces done, pieces in all)` after each batch
    /// of pieces: a long document is many pieces, and this is how a caller can show them.
    pub fn run_with_progress(
        &self,
        texts: &[&str],
        request: &Seq2SeqRequest,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<TextResult>> {
        let config = self.settings(request)?;
        if request.batch_size == 0 {
            return Err(Error::Input("batch_size must be at least 1".into()));
        }
        let batch_size = request.batch_size;
        // (input index, tokenized prefix + piece) for every piece of every input.
        let mut jobs: Vec<(usize, Encoded)> = Vec::new();
        let mut chunks = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            if text.trim().is_empty() {
                let which = match texts.len() {
                    1 => "the text".to_string(),
                    n => format!("text {} of {n}", i + 1),
                };
                return Err(Error::Input(format!(
                    "{which} is empty: there is nothing to {}",
                    request.what
                )));
            }
            let pieces = self.pieces(text, &config, request)?;
            chunks.push(pieces.len());
            jobs.extend(pieces.into_iter().map(|encoded| (i, encoded)));
        }
        let copies = config.num_return_sequences();
        let mut results: Vec<TextResult> = chunks
            .iter()
            .map(|&chunks| TextResult {
                texts: vec![String::new(); copies],
                token_ids: vec![Vec::new(); copies],
                chunks,
                generated_tokens: 0,
            })
            .collect();
        let mut done = 0;
        on_progress(done, jobs.len());
        for group in jobs.chunks(batch_size) {
            let encodings = group.iter().map(|(_, e)| e.clone()).collect();
            let batch = Batch::new(
                encodings,
                self.tokenizer.pad_id,
                PaddingSide::Right,
                self.model.device(),
            )?;
            // Stop strings are checked on the decoded text.
            let decode = |ids: &[i64]| self.tokenizer.decode(ids, true);
            let hooks = Hooks {
                on_token: None,
                detokenize: Some(&decode),
            };
            let sequences = tch::no_grad(|| {
                generation::generate_with(&Seq2SeqDecoder(&self.model), &batch, &config, hooks)
            })?;
            for (n, seq) in sequences.iter().enumerate() {
                let result = &mut results[group[seq.input].0];
                let text = self.tokenizer.decode(seq.generated(), true)?;
                result.generated_tokens += seq.generated().len();
                result.token_ids[n % copies].extend_from_slice(seq.generated());
                // The pieces of a long input are joined in order.
                let slot = &mut result.texts[n % copies];
                if slot.is_empty() {
                    slot.push_str(&text);
                } else if !text.trim().is_empty() {
                    slot.push(' ');
                    slot.push_str(text.trim_start());
                }
            }
            done += group.len();
            on_progress(done, jobs.len());
        }
        Ok(results)
    }
}

impl<M: Seq2SeqLm> Seq2SeqPipeline<M> {
    /// The encoder inputs of one `text` as [`run`](Self::run) builds them: the prefix of the
    /// request's settings, the source-language token, and the split into pieces that fit the
    /// encoder (one piece for a text that fits).
    pub fn inputs(&self, text: &str, request: &Seq2SeqRequest) -> Result<Vec<Encoded>> {
        self.pieces(text, &self.settings(request)?, request)
    }

    /// [`inputs`](Self::inputs) under the settings `config` already merged for `request`.
    fn pieces(
        &self,
        text: &str,
        config: &GenerationConfig,
        request: &Seq2SeqRequest,
    ) -> Result<Vec<Encoded>> {
        let prefix = config.prefix.clone().unwrap_or_default();
        let max_input_tokens = self.max_input_tokens(request.max_input_tokens);
        // A language token that the tokenizer does not put there takes one position.
        let limit = match request.source_language {
            Some(_) => max_input_tokens.saturating_sub(1).max(1),
            None => max_input_tokens,
        };
        let pieces = chunk::split_to_fit(&self.tokenizer, &prefix, text, limit)?;
        Ok(pieces
            .into_iter()
            .map(|p| match request.source_language {
                Some(language) => with_language(p.encoded, language),
                None => p.encoded,
            })
            .collect())
    }
}

/// `encoded` starting with `language`'s token: the tokenizer's own language token (first) is
/// replaced, otherwise the token is put before the text.
fn with_language(mut encoded: Encoded, language: SourceLanguage) -> Encoded {
    if encoded
        .ids
        .first()
        .is_some_and(|id| language.all.contains(id))
    {
        encoded.ids[0] = language.id;
        encoded.tokens[0] = language.token.to_string();
        return encoded;
    }
    encoded.ids.insert(0, language.id);
    encoded.type_ids.insert(0, 0);
    encoded.tokens.insert(0, language.token.to_string());
    encoded.offsets.insert(0, (0, 0));
    encoded.special.insert(0, true);
    encoded.word_ids.insert(0, None);
    encoded
}
