//! Text-to-text pipelines on T5: summarization and translation through core's one
//! encoder-decoder pipeline ([`trident_core::seq2seq`]), which follows transformers 4.x's
//! `SummarizationPipeline` and `TranslationPipeline` and splits a document too long for the
//! encoder at sentence boundaries instead of cutting it.

pub use trident_core::seq2seq::{
    SummarizeOptions, Summarizer, Summary, TranslateOptions, Translation, Translator,
    DEFAULT_MAX_INPUT_TOKENS,
};

use crate::model::T5ForConditionalGeneration;
use trident_core::{LoadOptions, ModelFiles, Result};

/// Load T5 for core's pipelines.
fn load(files: &ModelFiles, options: &LoadOptions) -> Result<T5ForConditionalGeneration> {
    T5ForConditionalGeneration::from_pretrained(files, options.device.resolve()?, options.dtype)
}

/// A [`Summarizer`] on a T5 checkpoint.
pub fn summarizer(files: &ModelFiles, options: &LoadOptions) -> Result<Summarizer> {
    Summarizer::new(Box::new(load(files, options)?), files)
}

/// A [`Translator`] on a T5 checkpoint.
pub fn translator(files: &ModelFiles, options: &LoadOptions) -> Result<Translator> {
    Translator::new(Box::new(load(files, options)?), files)
}
