//! Trident: task-specific transformer models on libtorch that load Hugging Face checkpoints
//! (config.json, tokenizer.json, safetensors) directly.
//!
//! This crate re-exports the workspace: [`core`] (layers, weights, tokenization, generation),
//! [`bert`] (encoder-only), [`t5`] (encoder-decoder) and [`gpt`] (decoder-only).

pub use trident_bert as bert;
pub use trident_core as core;
pub use trident_gpt as gpt;
pub use trident_t5 as t5;

pub use trident_core::{DeviceChoice, Error, ModelFiles, Result};

/// The README's Rust examples, compiled by `cargo test --doc` so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
