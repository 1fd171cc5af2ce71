//! trident-bart: BART and distilbart ([`BartForConditionalGeneration`]), and the encoder-decoder
//! code that Marian and M2M100/NLLB share with it ([`Layout`]), as transformers' classes do.
//!
//! Summarization and translation run through core's one text-to-text pipeline
//! ([`trident_core::seq2seq`]); generation through core's one engine.

pub mod config;
pub mod model;

pub use config::BartConfig;
pub use model::{BartForConditionalGeneration, BartStack, Layout, PositionStyle, Seq2SeqOutput};
