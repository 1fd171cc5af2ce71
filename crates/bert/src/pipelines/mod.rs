//! Text in, typed results out: tokenization, batching and post-processing around the models,
//! with transformers' pipeline semantics and field names.

pub mod classify;
pub mod embed;
pub mod ner;

use crate::config::EncoderConfig;
use trident_core::text::{by_length_batches, Batch, PaddingSide};
use trident_core::{Encoded, LoadOptions, ModelFiles, Result, TextEncoder};

/// Texts (or windows) per forward pass when a call does not say.
pub const DEFAULT_BATCH_SIZE: usize = 8;

/// An error unless `batch_size` is at least 1.
pub(crate) fn check_batch_size(batch_size: usize) -> Result<()> {
    if batch_size == 0 {
        return Err(trident_core::Error::Input(
            "batch_size must be at least 1".into(),
        ));
    }
    Ok(())
}

/// config.json, the tokenizer and the device, which every pipeline loads first.
pub(crate) fn load_common(
    files: &ModelFiles,
    options: &LoadOptions,
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

/// Run `forward` over tokenized items in length-sorted, right-padded batches, on the model's
/// device and without gradients, counting the tokens; results come back in input order.
/// `forward` gets the padded batch and the items in it, and returns one result per item.
pub(crate) fn run_batches<I, T>(
    items: &[I],
    encoding: impl Fn(&I) -> &Encoded,
    batch_size: usize,
    tokenizer: &TextEncoder,
    device: tch::Device,
    tokens: &std::sync::atomic::AtomicUsize,
    mut forward: impl FnMut(&Batch, &[&I]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let total: usize = items.iter().map(|i| encoding(i).len()).sum();
    tokens.fetch_add(total, std::sync::atomic::Ordering::Relaxed);
    by_length_batches(
        items,
        batch_size,
        |i| encoding(i).len(),
        |group| {
            let encodings = group.iter().map(|i| encoding(i).clone()).collect();
            let batch = Batch::new(encodings, tokenizer.pad_id, PaddingSide::Right, device)?;
            tch::no_grad(|| forward(&batch, group))
        },
    )
}
