//! trident-core: what every Trident model shares.
//!
//! The path of a text through a model, and the module for each step:
//! 1. find the model's files ([`files`]) and read its config ([`config`]);
//! 2. tokenize the text into ids with character offsets ([`text`]);
//! 3. load the weights into the layers ([`weights`], [`nn`]);
//! 4. embed ids, add positions, run attention and feed-forward layers ([`nn`]);
//! 5. turn logits into probabilities and results (the pipelines of each model crate), or
//!    into new tokens (generation).

pub mod causal;
pub mod chat;
pub mod chunk;
pub mod config;
pub mod device;
pub mod dtype;
pub mod error;
pub mod files;
pub mod generation;
pub mod nn;
pub mod sentencepiece;
pub mod seq2seq;
pub mod text;
pub mod train;
pub mod weights;

pub use chat::ChatTemplate;
pub use device::{DeviceChoice, LoadOptions};
pub use dtype::Dtype;
pub use error::{Error, Result};
pub use files::{HubOptions, ModelFiles};
pub use sentencepiece::SentencePieceModel;
pub use text::{Batch, Encoded, PaddingSide, TextEncoder};
pub use weights::{Checkpoint, WeightPath, Weights};

/// The libtorch version Trident was built against (from the installed wheel).
pub const LIBTORCH_VERSION: &str = env!("TRIDENT_LIBTORCH_VERSION");

/// Run on `n` CPU threads: libtorch's operations and Trident's own parallel kernels (the
/// streamed products and int8 quantization on libtorch's OpenMP threads, the optimizer
/// update on rayon's pool) alike.
/// Call it once, before any model runs; rayon's pool cannot be resized afterwards.
pub fn set_threads(n: usize) -> Result<()> {
    let threads = i32::try_from(n)
        .ok()
        .filter(|&t| t > 0)
        .ok_or_else(|| Error::Input(format!("threads must be from 1 to {}, got {n}", i32::MAX)))?;
    tch::set_num_threads(threads);
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| {
            Error::Input(format!(
                "cannot set {n} threads: {e} (set them before any model runs)"
            ))
        })
}
