//! trident-t5: the encoder-decoder T5 ([`T5ForConditionalGeneration`]) and the pipelines built
//! on it: core's [`Summarizer`] and [`Translator`], built by [`summarizer`] and [`translator`].
//!
//! T5 v1.0 (t5-small, t5-base: ReLU, tied embeddings) and v1.1 / flan-t5 / mT5 (gated-GELU,
//! untied `lm_head`) load from Hugging Face checkpoints; generation goes through
//! trident-core's one engine ([`trident_core::generation`]).

pub mod config;
pub mod model;
pub mod pipelines;

pub use config::T5Config;
pub use model::T5ForConditionalGeneration;

pub use pipelines::{
    summarizer, translator, SummarizeOptions, Summarizer, Summary, TranslateOptions, Translation,
    Translator,
};
