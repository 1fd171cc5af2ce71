//! Trident: task-specific transformer models on libtorch that load Hugging Face checkpoints
//! (config.json, tokenizer.json, safetensors) directly.
//!
//! This crate re-exports the workspace: [`core`] (layers, weights, tokenization, generation),
//! [`bert`] (encoder-only), the encoder-decoders [`t5`], [`bart`], [`marian`] and [`m2m100`],
//! and the decoder-only [`gpt`], [`llama`] (Llama, Mistral, Qwen2) and [`bloom`]. [`summarizer`] and [`translator`] load an
//! encoder-decoder checkpoint of any of those families, [`generator`] a decoder-only one,
//! chosen by its config.json.

pub use trident_bart as bart;
pub use trident_bert as bert;
pub use trident_bloom as bloom;
pub use trident_core as core;
pub use trident_gpt as gpt;
pub use trident_llama as llama;
pub use trident_m2m100 as m2m100;
pub use trident_marian as marian;
pub use trident_t5 as t5;

pub mod explain;
pub mod seq2seq;
pub use seq2seq::{generator, load_seq2seq, summarizer, translator};

pub use trident_core::{DeviceChoice, Error, ModelFiles, Result};

/// The README's Rust examples, compiled by `cargo test --doc` so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
