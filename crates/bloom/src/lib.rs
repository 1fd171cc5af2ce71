//! trident-bloom: BLOOM ([`BloomForCausalLM`]), a decoder-only family built from core's blocks:
//! a LayerNorm on the word embeddings, pre-LN blocks with a fused per-head q/k/v projection,
//! ALiBi position biases (core's [`trident_core::nn::alibi_bias`]) instead of position
//! embeddings, a tanh-GELU MLP and a head tied to the embeddings. Generation goes through core's
//! one engine ([`trident_core::generation::CausalLm`]); [`generator`] builds core's
//! text-generation pipeline on it.
//!
//! ```no_run
//! use trident_core::causal::GenerateOptions;
//! use trident_core::{LoadOptions, ModelFiles};
//! let files = ModelFiles::local("weights/bloom-tiny")?;
//! let generator = trident_bloom::generator(&files, &LoadOptions::default())?;
//! for text in &generator.run(&["The United Nations said"], &GenerateOptions::default())?[0] {
//!     println!("{}", text.generated_text);
//! }
//! # Ok::<(), trident_core::Error>(())
//! ```

pub mod config;
pub mod model;

pub use config::BloomConfig;
pub use model::{per_head_qkv_order, BloomForCausalLM, BloomModel};

use trident_core::causal::TextGenerator;
use trident_core::{LoadOptions, ModelFiles, Result};

/// Core's [`TextGenerator`] on a BLOOM checkpoint. Its context is config.json's `seq_length`
/// (2048 when absent): ALiBi has no position table, so this is the length BLOOM was trained on,
/// not a hard limit of the model.
pub fn generator(files: &ModelFiles, options: &LoadOptions) -> Result<TextGenerator> {
    TextGenerator::load(files, || {
        let model =
            BloomForCausalLM::from_pretrained(files, options.device.resolve()?, options.dtype)?;
        let (context, bos) = (model.config.seq_length as usize, model.config.bos_token_id);
        Ok((Box::new(model), context, bos))
    })
}
