//! Text-to-text pipelines on T5, following transformers 4.x's `SummarizationPipeline` and
//! `TranslationPipeline`: apply `task_specific_params[task]` (the prefix and generation
//! defaults), tokenize `prefix + text`, generate, decode without special tokens.
//!
//! One difference, on purpose: a document longer than the encoder's limit is not cut. It is
//! split at sentence boundaries into pieces that fit, each piece is processed, and the results
//! are joined; each output says into how many pieces its input was split.

pub mod chunk;
pub mod summarize;
pub mod translate;

pub use summarize::{Summarizer, SummarizerOptions, Summary};
pub use translate::{Translation, Translator, TranslatorOptions};

use crate::model::T5ForConditionalGeneration;
use std::collections::BTreeMap;
use trident_core::config::{read_json, CommonConfig, GenerationDefaults};
use trident_core::generation::{self, bad_words_ids, GenerationConfig, GenerationOptions, Hooks};
use trident_core::{
    Batch, DeviceChoice, Dtype, Encoded, Error, ModelFiles, PaddingSide, Result, TextEncoder,
};

/// The input limit when neither the caller nor tokenizer_config.json gives one (T5's
/// relative positions have no hard limit; 512 is what T5 was trained on).
pub const DEFAULT_MAX_INPUT_TOKENS: usize = 512;

/// What one input became.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TextResult {
    /// One text per returned sequence.
    pub texts: Vec<String>,
    /// The generated ids of each returned sequence (its pieces' ids in order).
    pub token_ids: Vec<Vec<i64>>,
    /// Pieces the input was split into to fit the encoder.
    pub chunks: usize,
    /// Tokens generated, over all pieces and returned sequences.
    pub generated_tokens: usize,
}

/// Settings every text-to-text pipeline takes.
#[derive(Debug, Clone)]
pub(crate) struct Settings<'a> {
    pub device: DeviceChoice,
    pub dtype: Dtype,
    pub generation: &'a GenerationOptions,
    pub max_input_tokens: Option<usize>,
    pub batch_size: usize,
}

/// The model, tokenizer and generation settings of a text-to-text task.
pub(crate) struct Seq2Seq {
    pub model: T5ForConditionalGeneration,
    pub tokenizer: TextEncoder,
    pub generation: GenerationConfig,
    pub prefix: String,
    pub max_input_tokens: usize,
    pub batch_size: usize,
}

/// The task-specific parameters of config.json.
pub(crate) fn task_params(files: &ModelFiles) -> Result<BTreeMap<String, serde_json::Value>> {
    let config: CommonConfig = read_json(&files.get("config.json")?)?;
    Ok(config.task_specific_params)
}

impl Seq2Seq {
    /// Load the model and tokenizer, and settle the generation config: transformers'
    /// defaults, then generation_config.json / config.json, then `task` (a
    /// `task_specific_params` entry), then the caller's options.
    pub fn load(
        files: &ModelFiles,
        task: Option<&serde_json::Value>,
        default_prefix: &str,
        settings: Settings,
    ) -> Result<Self> {
        let config_path = files.get("config.json")?;
        let from_config = GenerationDefaults::from_file(&config_path)?;
        let checkpoint = match files.get_optional("generation_config.json")? {
            Some(p) => GenerationDefaults::from_file(&p)?.or(&from_config),
            None => from_config,
        };
        let task: GenerationDefaults = match task {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::config(&config_path, format!("task_specific_params: {e}")))?,
            None => GenerationDefaults::default(),
        };
        let defaults = task.or(&checkpoint);
        let tokenizer = TextEncoder::from_files(files)?;
        let mut generation =
            GenerationConfig::from_defaults(&defaults)?.with_options(settings.generation);
        generation
            .bad_words_ids
            .extend(bad_words_ids(&settings.generation.bad_words, &tokenizer)?);
        generation.validate()?;
        if settings.batch_size == 0 {
            return Err(Error::Input("batch size must be at least 1".into()));
        }
        let model = T5ForConditionalGeneration::from_pretrained(
            files,
            settings.device.resolve()?,
            settings.dtype,
        )?;
        let max_input_tokens = settings
            .max_input_tokens
            .or(tokenizer.model_max_length)
            .unwrap_or(DEFAULT_MAX_INPUT_TOKENS);
        Ok(Seq2Seq {
            model,
            tokenizer,
            generation,
            prefix: defaults
                .prefix
                .unwrap_or_else(|| default_prefix.to_string()),
            max_input_tokens,
            batch_size: settings.batch_size,
        })
    }

    /// Process `texts` (`what` names the task in errors: "summarize", "translate").
    pub fn run(&self, texts: &[&str], what: &str) -> Result<Vec<TextResult>> {
        // (input index, prefix + piece, tokenized) for every piece of every input.
        let mut jobs: Vec<(usize, Encoded)> = Vec::new();
        let mut chunks = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            if text.trim().is_empty() {
                let which = match texts.len() {
                    1 => "the text".to_string(),
                    n => format!("text {} of {n}", i + 1),
                };
                return Err(Error::Input(format!(
                    "{which} is empty: there is nothing to {what}"
                )));
            }
            let pieces =
                chunk::split_to_fit(&self.tokenizer, &self.prefix, text, self.max_input_tokens)?;
            chunks.push(pieces.len());
            jobs.extend(pieces.into_iter().map(|p| (i, p.encoded)));
        }
        let copies = self.generation.num_return_sequences;
        let mut results: Vec<TextResult> = chunks
            .iter()
            .map(|&chunks| TextResult {
                texts: vec![String::new(); copies],
                token_ids: vec![Vec::new(); copies],
                chunks,
                generated_tokens: 0,
            })
            .collect();
        for group in jobs.chunks(self.batch_size) {
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
            let sequences =
                generation::generate_with(&self.model, &batch, &self.generation, hooks)?;
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
        }
        Ok(results)
    }
}
