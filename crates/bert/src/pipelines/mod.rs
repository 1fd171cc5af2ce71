//! Text in, typed results out: tokenization, batching and post-processing around the models,
//! with transformers' pipeline semantics and field names.

pub mod classify;
pub mod embed;
pub mod ner;

use crate::config::EncoderConfig;
use trident_core::{DeviceChoice, ModelFiles, Result, TextEncoder};

/// Options every encoder pipeline takes.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Where to run.
    pub device: DeviceChoice,
    /// Texts (or windows) per forward pass.
    pub batch_size: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            device: DeviceChoice::Auto,
            batch_size: 8,
        }
    }
}

/// config.json, the tokenizer and the device, which every pipeline loads first.
pub(crate) fn load_common(
    files: &ModelFiles,
    options: &PipelineOptions,
) -> Result<(EncoderConfig, TextEncoder, tch::Device)> {
    let config = EncoderConfig::from_file(&files.get("config.json")?)?;
    let tokenizer = TextEncoder::from_files(files)?;
    Ok((config, tokenizer, options.device.resolve()?))
}

/// The longest input the model takes: the smaller of the tokenizer's and the model's limits.
pub(crate) fn max_tokens(config: &EncoderConfig, tokenizer: &TextEncoder) -> usize {
    let model = config.max_input_tokens();
    tokenizer.model_max_length.map_or(model, |t| t.min(model))
}
