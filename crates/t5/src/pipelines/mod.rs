//! Text-to-text pipelines on T5: summarization and translation, as thin task wrappers over
//! core's one encoder-decoder pipeline ([`trident_core::seq2seq`]), which follows
//! transformers 4.x's `SummarizationPipeline` and `TranslationPipeline` and splits a document
//! too long for the encoder at sentence boundaries instead of cutting it.

pub mod summarize;
pub mod translate;

pub use summarize::{SummarizeOptions, Summarizer, Summary};
pub use translate::{TranslateOptions, Translation, Translator};
pub use trident_core::seq2seq::DEFAULT_MAX_INPUT_TOKENS;

use crate::model::T5ForConditionalGeneration;
use trident_core::seq2seq::Seq2SeqPipeline;
use trident_core::{LoadOptions, ModelFiles, Result};

/// Load T5 and wrap it in core's text-to-text pipeline.
pub(crate) fn load(
    files: &ModelFiles,
    options: &LoadOptions,
) -> Result<Seq2SeqPipeline<T5ForConditionalGeneration>> {
    let model = T5ForConditionalGeneration::from_pretrained(
        files,
        options.device.resolve()?,
        options.dtype,
    )?;
    Seq2SeqPipeline::new(model, files)
}
