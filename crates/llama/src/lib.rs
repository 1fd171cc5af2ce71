//! trident-llama: the Llama family of decoder-only models ([`LlamaForCausalLM`]): RMSNorm,
//! SwiGLU feed-forward, rotary positions (with the `llama3`, `linear` and `dynamic` scalings)
//! and grouped-query attention, all from core's blocks. Generation goes through core's one
//! engine ([`trident_core::generation::CausalLm`]).
//!
//! The same model runs the variants transformers builds from Llama's code, chosen by
//! config.json's `model_type` ([`MODEL_TYPES`], [`Family`]): `mistral` (a sliding window over
//! the keys) and `qwen2` (biases on q/k/v, a sliding window only when switched on).

pub mod config;
pub mod model;

pub use config::{Family, LlamaConfig, MODEL_TYPES};
pub use model::{LlamaForCausalLM, LlamaModel};

use trident_core::causal::TextGenerator;
use trident_core::{LoadOptions, ModelFiles, Result};

/// Core's [`TextGenerator`] on a Llama, Mistral or Qwen2 checkpoint.
pub fn generator(files: &ModelFiles, options: &LoadOptions) -> Result<TextGenerator> {
    TextGenerator::load(files, || {
        let model =
            LlamaForCausalLM::from_pretrained(files, options.device.resolve()?, options.dtype)?;
        let (context, bos) = (
            model.config.max_position_embeddings as usize,
            model.config.bos_token_id,
        );
        Ok((Box::new(model), context, bos))
    })
}
